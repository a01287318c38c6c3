// A small QR Code encoder (ISO/IEC 18004): byte mode, error correction L or M,
// versions 1-10 (up to 213 bytes at M, 271 at L) — plenty for a join link.
// No dependencies; renders to an SVG string. Tested against the Python
// `qrcode` package's output in web/tests/qr.test.mjs.

// [ecCodewordsPerBlock, blocks in group 1, data codewords each, blocks in group 2, data codewords each]
const BLOCKS = {
  L: [null, [7, 1, 19], [10, 1, 34], [15, 1, 55], [20, 1, 80], [26, 1, 108],
    [18, 2, 68], [20, 2, 78], [24, 2, 97], [30, 2, 116], [18, 2, 68, 2, 69]],
  M: [null, [10, 1, 16], [16, 1, 28], [26, 1, 44], [18, 2, 32], [24, 2, 43],
    [16, 4, 27], [18, 4, 31], [22, 2, 38, 2, 39], [22, 3, 36, 2, 37], [26, 4, 43, 1, 44]],
};
const ALIGN = [null, [], [6, 18], [6, 22], [6, 26], [6, 30], [6, 34],
  [6, 22, 38], [6, 24, 42], [6, 26, 46], [6, 28, 50]];
const FORMAT_EC_BITS = { L: 1, M: 0 };
export const MAX_VERSION = 10;

// GF(256) with the QR polynomial x^8 + x^4 + x^3 + x^2 + 1.
const EXP = new Uint8Array(512);
const LOG = new Uint8Array(256);
(() => {
  let x = 1;
  for (let i = 0; i < 255; i++) {
    EXP[i] = x;
    LOG[x] = i;
    x <<= 1;
    if (x & 0x100) x ^= 0x11d;
  }
  for (let i = 255; i < 512; i++) EXP[i] = EXP[i - 255];
})();
const gfMul = (a, b) => (a === 0 || b === 0 ? 0 : EXP[LOG[a] + LOG[b]]);

function rsGenerator(degree) {
  // Coefficients of prod_{i<degree} (x - a^i), highest power first, leading 1 omitted.
  let poly = [1];
  for (let i = 0; i < degree; i++) {
    const next = new Array(poly.length + 1).fill(0);
    for (let j = 0; j < poly.length; j++) {
      next[j] ^= poly[j];
      next[j + 1] ^= gfMul(poly[j], EXP[i]);
    }
    poly = next;
  }
  return poly.slice(1);
}

export function rsRemainder(data, degree) {
  const gen = rsGenerator(degree);
  const rem = new Array(degree).fill(0);
  for (const b of data) {
    const factor = b ^ rem.shift();
    rem.push(0);
    for (let i = 0; i < degree; i++) rem[i] ^= gfMul(gen[i], factor);
  }
  return rem;
}

function dataCapacity(version, ecl) {
  const [, n1, d1, n2 = 0, d2 = 0] = BLOCKS[ecl][version];
  return n1 * d1 + n2 * d2;
}

/** Bytes (UTF-8) that fit at this version and level in byte mode. */
export function byteCapacity(version, ecl = 'M') {
  const countBits = version <= 9 ? 8 : 16;
  return Math.floor((dataCapacity(version, ecl) * 8 - 4 - countBits) / 8);
}

function encodeData(bytes, version, ecl) {
  const cap = dataCapacity(version, ecl);
  const bits = [];
  const put = (val, len) => { for (let i = len - 1; i >= 0; i--) bits.push((val >>> i) & 1); };
  put(0b0100, 4);
  put(bytes.length, version <= 9 ? 8 : 16);
  for (const b of bytes) put(b, 8);
  put(0, Math.min(4, cap * 8 - bits.length));
  put(0, (8 - (bits.length % 8)) % 8);
  const out = [];
  for (let i = 0; i < bits.length; i += 8) {
    let b = 0;
    for (let j = 0; j < 8; j++) b = (b << 1) | bits[i + j];
    out.push(b);
  }
  for (let pad = 0xec; out.length < cap; pad ^= 0xec ^ 0x11) out.push(pad);
  return out;
}

function interleave(data, version, ecl) {
  const [ecLen, n1, d1, n2 = 0, d2 = 0] = BLOCKS[ecl][version];
  const blocks = [];
  let k = 0;
  for (let i = 0; i < n1 + n2; i++) {
    const len = i < n1 ? d1 : d2;
    const d = data.slice(k, k + len);
    k += len;
    blocks.push({ d, e: rsRemainder(d, ecLen) });
  }
  const out = [];
  const maxD = Math.max(d1, d2);
  for (let i = 0; i < maxD; i++) for (const b of blocks) if (i < b.d.length) out.push(b.d[i]);
  for (let i = 0; i < ecLen; i++) for (const b of blocks) out.push(b.e[i]);
  return out;
}

const MASKS = [
  (r, c) => (r + c) % 2 === 0,
  (r) => r % 2 === 0,
  (r, c) => c % 3 === 0,
  (r, c) => (r + c) % 3 === 0,
  (r, c) => (Math.floor(r / 2) + Math.floor(c / 3)) % 2 === 0,
  (r, c) => ((r * c) % 2) + ((r * c) % 3) === 0,
  (r, c) => (((r * c) % 2) + ((r * c) % 3)) % 2 === 0,
  (r, c) => (((r + c) % 2) + ((r * c) % 3)) % 2 === 0,
];

function bch(value, poly, polyDegree) {
  let rem = value << polyDegree;
  for (let i = 31 - Math.clz32(rem); i >= polyDegree; i--) {
    if ((rem >>> i) & 1) rem ^= poly << (i - polyDegree);
  }
  return (value << polyDegree) | rem;
}

class Matrix {
  constructor(version) {
    this.version = version;
    this.size = version * 4 + 17;
    const n = this.size;
    this.dark = Array.from({ length: n }, () => new Array(n).fill(false));
    this.fixed = Array.from({ length: n }, () => new Array(n).fill(false));
  }

  set(r, c, dark) {
    this.dark[r][c] = dark;
    this.fixed[r][c] = true;
  }

  drawFunctionPatterns() {
    const n = this.size;
    for (let i = 0; i < n; i++) {
      this.set(6, i, i % 2 === 0);
      this.set(i, 6, i % 2 === 0);
    }
    for (const [r0, c0] of [[0, 0], [0, n - 7], [n - 7, 0]]) {
      for (let r = -1; r <= 7; r++) {
        for (let c = -1; c <= 7; c++) {
          const rr = r0 + r;
          const cc = c0 + c;
          if (rr < 0 || rr >= n || cc < 0 || cc >= n) continue;
          const ring = Math.max(Math.abs(r - 3), Math.abs(c - 3));
          this.set(rr, cc, ring !== 2 && ring !== 4);
        }
      }
    }
    const pos = ALIGN[this.version];
    for (const r of pos) {
      for (const c of pos) {
        if ((r === 6 && c === 6) || (r === 6 && c === n - 7) || (r === n - 7 && c === 6)) continue;
        for (let dr = -2; dr <= 2; dr++) {
          for (let dc = -2; dc <= 2; dc++) this.set(r + dr, c + dc, Math.max(Math.abs(dr), Math.abs(dc)) !== 1);
        }
      }
    }
    this.drawFormat('M', 0); // reserve; overwritten once the mask is known
    if (this.version >= 7) {
      const bits = bch(this.version, 0x1f25, 12);
      for (let i = 0; i < 18; i++) {
        const bit = ((bits >>> i) & 1) === 1;
        const a = n - 11 + (i % 3);
        const b = Math.floor(i / 3);
        this.set(b, a, bit);
        this.set(a, b, bit);
      }
    }
  }

  drawFormat(ecl, mask) {
    const n = this.size;
    const bits = bch((FORMAT_EC_BITS[ecl] << 3) | mask, 0x537, 10) ^ 0x5412;
    const bit = (i) => ((bits >>> i) & 1) === 1;
    for (let i = 0; i <= 5; i++) this.set(i, 8, bit(i));
    this.set(7, 8, bit(6));
    this.set(8, 8, bit(7));
    this.set(8, 7, bit(8));
    for (let i = 9; i < 15; i++) this.set(8, 14 - i, bit(i));
    for (let i = 0; i < 8; i++) this.set(8, n - 1 - i, bit(i));
    for (let i = 8; i < 15; i++) this.set(n - 15 + i, 8, bit(i));
    this.set(n - 8, 8, true); // the dark module
  }

  placeData(codewords) {
    const n = this.size;
    let i = 0;
    const total = codewords.length * 8;
    for (let right = n - 1; right >= 1; right -= 2) {
      if (right === 6) right = 5;
      const upward = ((right + 1) & 2) === 0;
      for (let v = 0; v < n; v++) {
        const r = upward ? n - 1 - v : v;
        for (let j = 0; j < 2; j++) {
          const c = right - j;
          if (this.fixed[r][c]) continue;
          this.dark[r][c] = i < total && ((codewords[i >>> 3] >>> (7 - (i & 7))) & 1) === 1;
          i++;
        }
      }
    }
  }

  applyMask(mask) {
    const f = MASKS[mask];
    for (let r = 0; r < this.size; r++) {
      for (let c = 0; c < this.size; c++) if (!this.fixed[r][c] && f(r, c)) this.dark[r][c] = !this.dark[r][c];
    }
  }

  penalty() {
    const n = this.size;
    const m = this.dark;
    let score = 0;
    // Rule 1: runs of five or more same-coloured modules in a row or column.
    // Rule 3: 1:1:3:1:1 finder-like patterns with four light modules on a side.
    const pattern = [true, false, true, true, true, false, true];
    for (let line = 0; line < 2; line++) {
      for (let a = 0; a < n; a++) {
        const at = (b) => (line === 0 ? m[a][b] : m[b][a]);
        let run = 1;
        for (let b = 1; b <= n; b++) {
          if (b < n && at(b) === at(b - 1)) {
            run++;
          } else {
            if (run >= 5) score += run - 2;
            run = 1;
          }
        }
        for (let b = 0; b + 7 <= n; b++) {
          let ok = true;
          for (let k = 0; k < 7 && ok; k++) ok = at(b + k) === pattern[k];
          if (!ok) continue;
          const lightBefore = b >= 4 && [1, 2, 3, 4].every((k) => !at(b - k));
          const lightAfter = b + 11 <= n && [7, 8, 9, 10].every((k) => !at(b + k));
          if (lightBefore) score += 40;
          if (lightAfter) score += 40;
        }
      }
    }
    // Rule 2: 2x2 blocks of one colour.
    for (let r = 0; r < n - 1; r++) {
      for (let c = 0; c < n - 1; c++) {
        const v = m[r][c];
        if (v === m[r][c + 1] && v === m[r + 1][c] && v === m[r + 1][c + 1]) score += 3;
      }
    }
    // Rule 4: balance of dark and light.
    let dark = 0;
    for (const row of m) for (const v of row) if (v) dark++;
    const percent = (dark * 100) / (n * n);
    score += Math.floor(Math.abs(percent - 50) / 5) * 10;
    return score;
  }
}

/**
 * Encodes `text` (UTF-8, byte mode). Options: `ecl` 'L' or 'M' (default 'M'),
 * `version` (default: the smallest that fits), `mask` 0-7 (default: the one
 * with the lowest penalty). Returns `{version, ecl, mask, size, modules}`,
 * `modules[row][col]` true for dark.
 */
export function encode(text, opts = {}) {
  const ecl = opts.ecl || 'M';
  if (!BLOCKS[ecl]) throw new Error(`unsupported error correction level ${ecl}`);
  const bytes = typeof text === 'string' ? Array.from(new TextEncoder().encode(text)) : Array.from(text);
  let version = opts.version;
  if (version === undefined) {
    version = 1;
    while (version <= MAX_VERSION && byteCapacity(version, ecl) < bytes.length) version++;
  }
  if (version < 1 || version > MAX_VERSION || byteCapacity(version, ecl) < bytes.length) {
    throw new Error(`text too long for a version ${MAX_VERSION} QR code (${bytes.length} bytes)`);
  }
  const codewords = interleave(encodeData(bytes, version, ecl), version, ecl);
  const build = (mask) => {
    const q = new Matrix(version);
    q.drawFunctionPatterns();
    q.placeData(codewords);
    q.applyMask(mask);
    q.drawFormat(ecl, mask);
    return q;
  };
  let best;
  let bestMask = opts.mask;
  if (bestMask === undefined) {
    let bestScore = Infinity;
    for (let mask = 0; mask < 8; mask++) {
      const q = build(mask);
      const s = q.penalty();
      if (s < bestScore) {
        bestScore = s;
        best = q;
        bestMask = mask;
      }
    }
  } else {
    best = build(bestMask);
  }
  return { version, ecl, mask: bestMask, size: best.size, modules: best.dark };
}

/** An SVG document for the code, with a quiet zone of `border` modules. */
export function toSvg(qr, { border = 4, title = 'QR code' } = {}) {
  const dim = qr.size + border * 2;
  let path = '';
  qr.modules.forEach((row, r) => {
    row.forEach((dark, c) => {
      if (dark) path += `M${c + border} ${r + border}h1v1h-1z`;
    });
  });
  const esc = String(title).replace(/[&<>"]/g, (ch) => `&#${ch.charCodeAt(0)};`);
  return `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${dim} ${dim}" shape-rendering="crispEdges" role="img" aria-label="${esc}">`
    + `<title>${esc}</title><rect width="100%" height="100%" fill="#fff"/><path d="${path}" fill="#000"/></svg>`;
}
