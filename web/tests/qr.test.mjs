// Unit tests of the QR encoder: run with `node --test web/tests/`.
// The vectors come from the Python `qrcode` package (gen-qr-vectors.py).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { encode, toSvg, byteCapacity, rsRemainder } from '../assets/qr.js';

const vectors = JSON.parse(readFileSync(new URL('./qr-vectors.json', import.meta.url), 'utf8'));

test('Reed-Solomon remainder matches the spec example (1-M "01234567")', () => {
  // ISO/IEC 18004 Annex I: data codewords of "01234567" at 1-M and their 10 EC codewords.
  const data = [0x10, 0x20, 0x0c, 0x56, 0x61, 0x80, 0xec, 0x11, 0xec, 0x11, 0xec, 0x11, 0xec, 0x11, 0xec, 0x11];
  assert.deepEqual(rsRemainder(data, 10), [0xa5, 0x24, 0xd4, 0xc1, 0xed, 0x36, 0xc7, 0x87, 0x2c, 0x55]);
});

test('byte capacities match the spec table', () => {
  assert.deepEqual([1, 2, 5, 10].map((v) => byteCapacity(v, 'L')), [17, 32, 106, 271]);
  assert.deepEqual([1, 2, 5, 10].map((v) => byteCapacity(v, 'M')), [14, 26, 84, 213]);
});

for (const v of vectors) {
  test(`matches python-qrcode: ${v.ecl} mask ${v.mask} v${v.version} ${JSON.stringify(v.text.slice(0, 24))}`, () => {
    const qr = encode(v.text, { ecl: v.ecl, mask: v.mask });
    assert.equal(qr.version, v.version, 'version');
    const rows = qr.modules.map((row) => row.map((d) => (d ? '1' : '0')).join(''));
    assert.equal(rows.length, v.rows.length);
    for (let r = 0; r < rows.length; r++) assert.equal(rows[r], v.rows[r], `row ${r}`);
  });
}

test('automatic mask gives a valid code of the same modules as that fixed mask', () => {
  const auto = encode('http://127.0.0.1:8080/?quiz=abc12345');
  const fixed = encode('http://127.0.0.1:8080/?quiz=abc12345', { mask: auto.mask });
  assert.deepEqual(auto.modules, fixed.modules);
});

test('too long text is refused with a clear error', () => {
  assert.throws(() => encode('x'.repeat(272), { ecl: 'L' }), /too long/);
});

test('svg has the quiet zone and escapes the title', () => {
  const qr = encode('hi');
  const svg = toSvg(qr, { border: 4, title: 'join <quiz>' });
  assert.match(svg, /viewBox="0 0 29 29"/);
  assert.match(svg, /join &#60;quiz&#62;/);
});
