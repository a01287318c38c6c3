"""Regenerates web/tests/qr-vectors.json from the Python `qrcode` package
(pip install qrcode==8.2). The vectors pin web/assets/qr.js to an independent
encoder: same text, version, level and mask must give the same modules."""
import json
import pathlib

import qrcode
from qrcode.util import QRData, MODE_8BIT_BYTE

LEVELS = {"L": qrcode.constants.ERROR_CORRECT_L, "M": qrcode.constants.ERROR_CORRECT_M}
TEXTS = [
    "hi",
    "http://127.0.0.1:8080/?quiz=abc12345",
    "https://quiz.example.org/?quiz=friday-night_quiz-2026",
    "Grüße, ¿qué tal? 🎉 quiz",
    "x" * 60,
    "https://quiz.example.org/?quiz=" + "a" * 64 + "&lang=en",
    "y" * 120,
    "z" * 150,
    "w" * 180,
    "v" * 212,
    "u" * 271,
]


def case(text, level, mask):
    qr = qrcode.QRCode(error_correction=LEVELS[level], mask_pattern=mask, border=0)
    qr.add_data(QRData(text.encode("utf-8"), mode=MODE_8BIT_BYTE))
    try:
        qr.make(fit=True)
    except Exception:
        return None
    if qr.version > 10:
        return None
    rows = ["".join("1" if m else "0" for m in row) for row in qr.modules]
    return {"text": text, "ecl": level, "mask": mask, "version": qr.version, "rows": rows}


out = []
for i, text in enumerate(TEXTS):
    for level in ("L", "M"):
        c = case(text, level, i % 8)
        if c:
            out.append(c)
# every mask once on one text
for mask in range(8):
    out.append(case(TEXTS[1], "M", mask))
path = pathlib.Path(__file__).with_name("qr-vectors.json")
path.write_text(json.dumps(out, ensure_ascii=False, indent=0) + "\n")
print(f"wrote {len(out)} vectors, versions {sorted({c['version'] for c in out})}")
