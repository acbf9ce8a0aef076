// Unit tests of the browser SDK's MessagePack codec (sdk/browser/msgpack.js) against
// msgpack-python. Run: `node --test sdk/browser/test/msgpack.test.mjs` (from any directory).
//
// Every expected hex string (or length + SHA-256 for the long ones) below was produced once by
// msgpack-python 1.x `msgpack.packb(value)` with default options, in the repository's .venv;
// the golden vectors are the relay's own (tests/vectors/protocol_v1.json).

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { test } from 'node:test';

import { decode, encode } from '../msgpack.js';

const VECTORS = JSON.parse(fs.readFileSync(
  new URL('../../../tests/vectors/protocol_v1.json', import.meta.url), 'utf8')).vectors;
const WITH_VALUE = VECTORS.filter((v) => 'value' in v);
const WITH_ERROR = VECTORS.filter((v) => 'error' in v);

const unhex = (s) => Uint8Array.from(s.match(/../g) ?? [], (x) => parseInt(x, 16));
const hex = (b) => Buffer.from(b).toString('hex');
const sha256 = (b) => createHash('sha256').update(b).digest('hex');

// Vectors with a value whose bytes encode() does not reproduce, each for a reason:
// (a) the bytes are deliberately not msgpack-python's canonical form (the relay must accept
//     them anyway), so `msgpack.packb(value).hex() != hex` in Python too;
// (b) the value holds a float with an integral value (Python 100.0); JSON.parse makes it the
//     JS number 100, which encode() writes as an int while the bytes hold a float64.
const NOT_REENCODABLE = {
  hello_info_map16: '(a) the 1-entry info map is a map16 header, not a fixmap',
  join_doc_id_str8: '(a) the 5-byte doc_id is a str8, not a fixstr',
  status_str8: '(a) the 8-byte status is a str8, not a fixstr',
  cursor_array16_header: '(a) the 5-item frame is an array16 header, not a fixarray',
  cursor_uint32_small_ints: '(a) small ints as uint32',
  cursor_uint64_small_ints: '(a) small ints as uint64',
  cursor_int8_positive: '(a) small non-negative ints as int8',
  viewport_float32_pct: '(a) the percentage is a float32 (encode() only writes float64)',
  viewport_float_pct_100: '(b) percentage 100.0',
  viewport_single_line: '(b) percentage 0.0',
  viewport_max_u32: '(b) percentage 100.0',
  joined_two_members: '(b) a member viewport percentage 25.0',
  batch_viewport_integral_pct: '(b) percentage 50.0',
  batch_every_event: '(b) a viewport percentage 0.0',
  batch_max_u32: '(b) percentage 100.0',
};

// The error vectors whose bytes are not one well-formed msgpack value (msgpack.unpackb raises
// on exactly these); every other error vector is valid msgpack but a bad protocol frame.
const NOT_MSGPACK = [
  'garbage_byte_c1', 'garbage_text', 'empty_bytes', 'truncated_array', 'truncated_str',
  'invalid_utf8_str', 'trailing_bytes', 'two_frames_in_one',
];

// A decode failure must be an Error from the codec, naming the byte offset.
const CODEC_ERROR = (err) => err instanceof Error && /^msgpack: /.test(err.message)
  && /at byte \d+/.test(err.message);

// mulberry32: a small seeded PRNG, so every run sees the same "random" inputs.
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test('the vector file is the one these tests were written against', () => {
  assert.equal(WITH_VALUE.length + WITH_ERROR.length, VECTORS.length);
  assert.ok(WITH_VALUE.length >= 60, `only ${WITH_VALUE.length} vectors with a value`);
  for (const v of VECTORS) assert.ok(v.direction === 'client' || v.direction === 'server', v.name);
});

test('every golden vector with a value decodes to it', () => {
  // None is excluded: no vector's value holds bin or an unsafe integer (which JSON cannot
  // express), and decode() gives integral floats as the same JS numbers JSON.parse does.
  for (const v of WITH_VALUE) assert.deepEqual(decode(unhex(v.hex)), v.value, v.name);
});

test('golden vectors re-encode byte for byte, except exactly the listed ones', () => {
  const differ = [];
  for (const v of WITH_VALUE) {
    if (hex(encode(v.value)) !== v.hex) differ.push(v.name);
  }
  assert.deepEqual(differ.sort(), Object.keys(NOT_REENCODABLE).sort());
  // (b)-vectors do re-encode once their integral percentages are written as floats:
  // the difference is only that JS number, nothing in the encoder.
  for (const name of Object.keys(NOT_REENCODABLE)) {
    if (NOT_REENCODABLE[name].startsWith('(b)')) {
      const v = VECTORS.find((x) => x.name === name);
      assert.ok(v.hex.includes('cb'), name);
    }
  }
});

test('protocol-error vectors decode or throw an Error, and exactly the non-msgpack ones throw', () => {
  const threw = [];
  for (const v of WITH_ERROR) {
    try {
      decode(unhex(v.hex));
    } catch (err) {
      assert.ok(CODEC_ERROR(err), `${v.name}: ${err}`);
      threw.push(v.name);
    }
  }
  assert.deepEqual(threw.sort(), [...NOT_MSGPACK].sort());
});

test('integers take the smallest form, as msgpack-python', () => {
  const cases = [
    [0, '00'], [127, '7f'], [128, 'cc80'], [255, 'ccff'], [256, 'cd0100'], [65535, 'cdffff'],
    [65536, 'ce00010000'], [2 ** 32 - 1, 'ceffffffff'], [2 ** 32, 'cf0000000100000000'],
    [2 ** 53 - 1, 'cf001fffffffffffff'], [2n ** 64n - 1n, 'cfffffffffffffffff'],
    [-1, 'ff'], [-32, 'e0'], [-33, 'd0df'], [-128, 'd080'], [-129, 'd1ff7f'],
    [-32768, 'd18000'], [-32769, 'd2ffff7fff'], [-(2 ** 31), 'd280000000'],
    [-(2 ** 31) - 1, 'd3ffffffff7fffffff'], [-(2n ** 63n), 'd38000000000000000'],
  ];
  for (const [value, expected] of cases) {
    assert.equal(hex(encode(value)), expected, `encode ${value}`);
    const back = decode(unhex(expected));
    if (typeof value === 'bigint') {
      assert.equal(typeof back, 'bigint', `decode ${expected}`); // unsafe as a Number
      assert.equal(back, value);
    } else {
      assert.equal(back, value, `decode ${expected}`);
    }
  }
  // A BigInt encodes as the same int as the Number; a safe uint64/int64 decodes to a Number.
  assert.equal(hex(encode(5n)), '05');
  assert.equal(hex(encode(-200n)), 'd1ff38');
  assert.equal(hex(encode(2n ** 32n)), 'cf0000000100000000');
  assert.equal(decode(unhex('cf0000000000000005')), 5);
  assert.equal(decode(unhex('d3fffffffffffffffb')), -5);
  assert.equal(decode(unhex('cf0020000000000000')), 2n ** 53n);
  assert.equal(decode(unhex('d3ffdfffffffffffff')), -(2n ** 53n) - 1n);
  // An integral Number past 2^53 is an int too, and so comes back as a BigInt.
  assert.equal(hex(encode(2 ** 60)), 'cf1000000000000000');
  assert.equal(decode(encode(2 ** 60)), 2n ** 60n);
  assert.equal(hex(encode(-(2 ** 63))), 'd38000000000000000');
  // -0 is the integer 0 (see msgpack.js: Python's float -0.0 would be cb8000000000000000).
  assert.equal(hex(encode(-0)), '00');
  assert.throws(() => encode(2n ** 64n), RangeError);
  assert.throws(() => encode(-(2n ** 63n) - 1n), RangeError);
});

test('floats are float64, and float32 decodes', () => {
  assert.equal(hex(encode(0.5)), 'cb3fe0000000000000');
  assert.equal(hex(encode(-1.5)), 'cbbff8000000000000');
  assert.equal(hex(encode(1e300)), 'cb7e37e43c8800759c'); // integral, beyond the int range
  assert.equal(hex(encode(2 ** 64)), 'cb43f0000000000000'); // Python: packb(float(2**64))
  assert.equal(hex(encode(NaN)), 'cb7ff8000000000000');
  assert.equal(hex(encode(Infinity)), 'cb7ff0000000000000');
  assert.equal(hex(encode(-Infinity)), 'cbfff0000000000000');
  assert.equal(decode(unhex('cb8000000000000000')), -0);
  // Python: msgpack.packb(42.5, use_single_float=True) and packb(-0.1, use_single_float=True)
  assert.equal(decode(unhex('ca422a0000')), 42.5);
  assert.equal(decode(unhex('cabdcccccd')), Math.fround(-0.1));
  assert.ok(Number.isNaN(decode(unhex('ca7fc00000'))));
});

test('strings: fixstr / str8 / str16 / str32 by UTF-8 length', () => {
  // [byte length, msgpack-python bytes: full hex, or [first bytes, total length, SHA-256]]
  const cases = [
    [0, 'a0'],
    [31, 'bf78787878787878787878787878787878787878787878787878787878787878'],
    [32, 'd9207878787878787878787878787878787878787878787878787878787878787878'],
    [255, ['d9ff7878', 257, '359de2a1267b5042ac12d1ce4661cb1dfee3da46316341b41f61ecdcd35835a6']],
    [256, ['da010078', 259, '812c21cd063664cf24bdb0c1de5c57e6b0d9a3576f54bc5891f2c52ef67b881a']],
    [65535, ['daffff78', 65538, 'c09966194b0ff2c503279bb172bd56189e276f5473b75e841810cbe0291c0243']],
    [65536, ['db000100', 65541, 'b9e568708bf0ca2fe11ac7557eb959207098fd662c78913c4a1e7935ac1e5238']],
  ];
  for (const [n, expected] of cases) {
    const s = 'x'.repeat(n);
    const b = encode(s);
    if (typeof expected === 'string') {
      assert.equal(hex(b), expected, `str ${n}`);
    } else {
      assert.equal(hex(b.subarray(0, 4)), expected[0], `str ${n}`);
      assert.equal(b.length, expected[1], `str ${n}`);
      assert.equal(sha256(b), expected[2], `str ${n}`);
    }
    assert.equal(decode(b), s);
  }
  const text = [
    ['Zoë', 'a45a6fc3ab'],
    ['😀', 'a4f09f9880'],
    ['\ufeffBOM', 'a6efbbbf424f4d'], // a leading U+FEFF is a character, kept both ways
    ['é'.repeat(20), `d928${'c3a9'.repeat(20)}`], // 20 characters, 40 bytes: str8
  ];
  for (const [s, expected] of text) {
    assert.equal(hex(encode(s)), expected, s);
    assert.equal(decode(unhex(expected)), s);
  }
  // 16 'é' are 32 bytes (str8) though only 16 characters; 15 are 30 bytes (fixstr).
  assert.equal(hex(encode('é'.repeat(16)).subarray(0, 2)), 'd920');
  assert.equal(hex(encode('é'.repeat(15)).subarray(0, 1)), 'be');
  // A lone surrogate has no UTF-8 form (msgpack-python refuses it too).
  assert.throws(() => encode('a\ud800b'), TypeError);
  assert.throws(() => encode({ k: '\udc00' }), TypeError);
  assert.throws(() => encode({ '\ud83d': 1 }), TypeError);
});

test('arrays, maps and nested structures', () => {
  const arrays = [
    [0, '90'], [15, '9f000102030405060708090a0b0c0d0e'],
    [16, 'dc0010000102030405060708090a0b0c0d0e0f'],
    [65535, ['dcffff00', 112633, '0035d3e2b271c53b01accc5560580e19056b67ddeab36e81a258e0b1106075cc']],
    [65536, ['dd000100', 112637, 'c108f16f584cd5a44f810c445f3ade82e652c75767c532c5c9714e8d53d8f4dc']],
  ];
  for (const [n, expected] of arrays) {
    const a = Array.from({ length: n }, (_, i) => i % 300); // Python: [i % 300 for i in range(n)]
    const b = encode(a);
    if (typeof expected === 'string') {
      assert.equal(hex(b), expected, `array ${n}`);
    } else {
      assert.equal(hex(b.subarray(0, 4)), expected[0], `array ${n}`);
      assert.equal(b.length, expected[1], `array ${n}`);
      assert.equal(sha256(b), expected[2], `array ${n}`);
    }
    assert.deepEqual(decode(b), a);
  }
  const map = (n) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, i]));
  const entries = (n) => Array.from({ length: n }, (_, i) => {
    const k = hex(new TextEncoder().encode(`k${i}`));
    return `${i < 10 ? 'a2' : 'a3'}${k}${hex([i])}`;
  }).join('');
  assert.equal(hex(encode(map(15))), `8f${entries(15)}`); // Python: {f"k{i}": i for i in range(15)}
  assert.equal(hex(encode(map(16))), `de0010${entries(16)}`);
  assert.equal(hex(encode(new Map(Object.entries(map(16))))), `de0010${entries(16)}`);
  assert.deepEqual(decode(encode(map(16))), map(16));
  assert.equal(hex(encode({})), '80');
  assert.equal(hex(encode(new Map())), '80');

  // Python: packb([1, [2, {"a": [None, True, False]}], "s", {"m": {"n": {}}, "l": [[], [[]]]},
  //                -1.5, 2**40, -2**40])
  const nested = [1, [2, { a: [null, true, false] }], 's', { m: { n: {} }, l: [[], [[]]] },
    -1.5, 2 ** 40, -(2 ** 40)];
  const nestedHex = '9701920281a16193c0c3c2a17382a16d81a16e80a16c92909190cbbff8000000000000'
    + 'cf0000010000000000d3ffffff0000000000';
  assert.equal(hex(encode(nested)), nestedHex);
  assert.deepEqual(decode(unhex(nestedHex)), nested);
  const frame = { user: { id: 'u-42', tags: ['a', 'b'], n: null }, cur: [4, 0, 10, 4, 120], pct: 37.5 };
  const frameHex = '83a47573657283a26964a4752d3432a47461677392a161a162a16ec0a36375729504000a0478'
    + 'a3706374cb4042c00000000000';
  assert.equal(hex(encode(frame)), frameHex);
  assert.deepEqual(decode(unhex(frameHex)), frame);

  // undefined is nil; a hole in an array too.
  assert.equal(hex(encode([undefined, , 1])), '93c0c001'); // eslint-disable-line no-sparse-arrays
  assert.equal(hex(encode({ a: undefined })), '81a161c0');
  // A map with a non-string key decodes to a Map; with string keys only, to a plain object.
  assert.deepEqual(decode(unhex('81c0c3')), new Map([[null, true]]));
  assert.deepEqual(decode(unhex('820102a161c2')), new Map([[1, 2], ['a', false]]));
  assert.equal(hex(encode(new Map([[1, 2], ['a', false]]))), '820102a161c2');
  // Duplicate keys: the last one wins (as in a Python dict).
  assert.deepEqual(decode(unhex('82a16101a16102')), { a: 2 });
  // "__proto__" is an ordinary own key, never the prototype.
  const p = decode(unhex('81a95f5f70726f746f5f5f81a17801'));
  assert.equal(Object.getPrototypeOf(p), Object.prototype);
  assert.deepEqual(Object.keys(p), ['__proto__']);
  assert.deepEqual(p.__proto__, { x: 1 }); // eslint-disable-line no-proto
  assert.equal(hex(encode(p)), '81a95f5f70726f746f5f5f81a17801');
  // Objects without a prototype are plain too.
  assert.equal(hex(encode(Object.assign(Object.create(null), { a: 1 }))), '81a16101');
});

test('bin: Uint8Array and ArrayBuffer in, a fresh Uint8Array out', () => {
  const cases = [
    [0, 'c400'],
    [255, ['c4ff0001', 257, '54b41709330208d86ca4346d5a21caa025b3991f4e51655f37a416b140cb7a10']],
    [256, ['c5010000', 259, '65e5320fe7b4f02bdaba66bc8643fa74abbb3203e85dc32a1a8b70e4723f5b03']],
  ];
  for (const [n, expected] of cases) {
    const data = Uint8Array.from({ length: n }, (_, i) => i % 256); // Python: bytes(i % 256 ...)
    for (const input of [data, data.buffer]) {
      const b = encode(input);
      if (typeof expected === 'string') {
        assert.equal(hex(b), expected, `bin ${n}`);
      } else {
        assert.equal(hex(b.subarray(0, 4)), expected[0], `bin ${n}`);
        assert.equal(b.length, expected[1], `bin ${n}`);
        assert.equal(sha256(b), expected[2], `bin ${n}`);
      }
      assert.deepEqual(decode(b), data);
    }
  }
  const bytes = unhex('92c403010203c0');
  const out = decode(bytes);
  bytes[3] = 99;
  assert.deepEqual(out, [new Uint8Array([1, 2, 3]), null]); // a copy, not a view
  assert.equal(Object.getPrototypeOf(decode(Buffer.from('c401ff', 'hex'))), Uint8Array.prototype);
  assert.equal(hex(encode(Buffer.from('abcd', 'hex'))), 'c402abcd'); // a Buffer is a Uint8Array
  assert.equal(hex(encode(new Uint8Array([0, 1, 2, 3]).subarray(1, 3))), 'c4020102');
});

test('decode takes a Uint8Array, an ArrayBuffer or a DataView (views at any offset)', () => {
  const whole = unhex('ff93a17801c3ff');
  const inner = '93a17801c3';
  assert.deepEqual(decode(whole.subarray(1, 6)), ['x', 1, true]);
  assert.deepEqual(decode(whole.slice(1, 6).buffer), ['x', 1, true]);
  assert.deepEqual(decode(new DataView(whole.buffer, 1, 5)), ['x', 1, true]);
  assert.deepEqual(decode(Buffer.from(inner, 'hex')), ['x', 1, true]);
  for (const bad of [null, undefined, 'c0', [0xc0], new Uint16Array(1), 0]) {
    assert.throws(() => decode(bad), TypeError);
  }
});

test('encode refuses what msgpack cannot say, with a TypeError', () => {
  const bad = [new Date(0), () => 1, Symbol('s'), new Uint16Array(2), new DataView(new ArrayBuffer(1)),
    new Set([1]), /re/, new (class Point { constructor() { this.x = 1; } })(), new Number(1),
    new String('s'), Promise.resolve(), new Error('e'), [1, { deep: new Date(0) }]];
  for (const v of bad) {
    assert.throws(() => encode(v), (err) => err instanceof TypeError && /^msgpack: cannot encode/.test(err.message),
      String(typeof v === 'symbol' ? 'symbol' : v));
  }
  assert.throws(() => encode(new Date(0)), /Date/);
  // A cycle, or nesting deeper than decode() accepts, is a RangeError (not a stack overflow).
  const cycle = [];
  cycle.push(cycle);
  assert.throws(() => encode(cycle), /nested deeper than 256/);
  let deep = 0;
  for (let i = 0; i < 256; i += 1) deep = [deep];
  assert.deepEqual(decode(encode(deep)), deep); // 256 levels: fine both ways
  assert.throws(() => encode([deep]), RangeError);
});

test('random structures round-trip through encode and decode', () => {
  const rnd = prng(0x5eed);
  const int = (n) => Math.floor(rnd() * n);
  const chars = ['a', 'Z', '0', ' ', '~', 'é', 'ß', '€', '中', '😀', '\u0000', '\ufeff', '\n'];
  const str = () => {
    const n = [0, 1, 5, 15, 16, 31, 32, 40, 100, 300][int(10)];
    let s = '';
    for (let i = 0; i < n; i += 1) s += chars[int(chars.length)];
    return s;
  };
  const number = () => {
    switch (int(8)) {
      case 0: return int(256) - 128;
      case 1: return int(2 ** 16) - 2 ** 15;
      case 2: return int(2 ** 32) * (rnd() < 0.5 ? -1 : 1);
      case 3: return Math.floor((rnd() - 0.5) * 2 ** 54) || 1; // any safe integer (not -0)
      case 4: { // an integral Number past 2^53 is written as an int and comes back a BigInt
        const x = (rnd() - 0.5) * 10 ** int(20);
        return Number.isInteger(x) && !Number.isSafeInteger(x) ? BigInt(x) : x;
      }
      case 5: return [NaN, Infinity, -Infinity, 1e300, -5e-324, 0.1][int(6)];
      case 6: // beyond 2^53: a BigInt (decode gives back a BigInt only when unsafe)
        return rnd() < 0.5 ? 2n ** 53n + BigInt(int(2 ** 32)) * BigInt(int(2 ** 32))
          : -(2n ** 53n) - 1n - BigInt(int(2 ** 32)) * BigInt(int(2 ** 30));
      default: return [0, 127, 128, 255, 256, 65535, 65536, -32, -33, 2 ** 53 - 1][int(10)];
    }
  };
  const gen = (depth) => {
    const leaf = depth > 4;
    switch (int(leaf ? 6 : 9)) {
      case 0: return null;
      case 1: return rnd() < 0.5;
      case 2: case 3: return number();
      case 4: return str();
      case 5: return Uint8Array.from({ length: [0, 1, 7, 255, 256, 300][int(6)] }, () => int(256));
      case 6: return Array.from({ length: [0, 1, 3, 15, 16, 20][int(6)] }, () => gen(depth + 1));
      case 7: return Object.fromEntries(Array.from({ length: int(18) }, () => [str(), gen(depth + 1)]));
      default: { // a Map with at least one non-string key (else it would decode as an object)
        const m = new Map([[number(), gen(depth + 1)]]);
        for (let i = int(4); i > 0; i -= 1) m.set(rnd() < 0.5 ? str() : number(), gen(depth + 1));
        return m;
      }
    }
  };
  for (let i = 0; i < 3000; i += 1) {
    const v = gen(0);
    const b = encode(v);
    assert.deepEqual(decode(b), v, `case ${i}`);
    assert.deepEqual(encode(decode(b)), b, `case ${i} re-encodes`);
  }
});

test('hostile input: every failure is an Error naming the problem and the byte offset', () => {
  assert.throws(() => decode(new Uint8Array(0)), (e) => CODEC_ERROR(e) && /truncated/.test(e.message));
  assert.throws(() => decode(unhex('9000')), (e) => CODEC_ERROR(e) && /trailing.*at byte 1/.test(e.message));
  assert.throws(() => decode(unhex('c1')), (e) => CODEC_ERROR(e) && /0xc1 at byte 0/.test(e.message));
  assert.throws(() => decode(unhex('9201c1')), (e) => CODEC_ERROR(e) && /0xc1 at byte 2/.test(e.message));
  for (const bad of ['a2c328', 'a2fffe', 'a3eda080', 'a2c0af', 'a4f4908080', 'd902c328']) {
    // a bad continuation, bytes never in UTF-8, an encoded surrogate, an overlong form, > U+10FFFF
    assert.throws(() => decode(unhex(`91${bad}`)), (e) => CODEC_ERROR(e) && /UTF-8.*at byte 1/.test(e.message), bad);
  }
  for (const c of ['c7', 'c8', 'c9', 'd4', 'd5', 'd6', 'd7', 'd8']) {
    // ext with a complete payload (e.g. a timestamp 0xd6ff...) is still refused
    assert.throws(() => decode(unhex(`${c}${'00'.repeat(20)}`)), (e) => CODEC_ERROR(e) && /ext/.test(e.message), c);
  }
  assert.throws(() => decode(unhex('d6ff00000000')), /ext type byte 0xd6 at byte 0/);
  // Lengths far past the input are truncation, not a huge allocation.
  for (const h of ['dd7fffffff', 'ddffffffff', 'dfffffffff', 'dbffffffff', 'c6ffffffff', 'dc0002c0']) {
    assert.throws(() => decode(unhex(h)), (e) => CODEC_ERROR(e) && /truncated/.test(e.message), h);
  }
  // Nesting: 256 levels decode; 257, and 300 fixarray headers, are refused.
  assert.equal(decode(new Uint8Array([...new Array(255).fill(0x91), 0x90])).length, 1);
  assert.throws(() => decode(new Uint8Array([...new Array(256).fill(0x91), 0x90])),
    (e) => CODEC_ERROR(e) && /nested deeper than 256 at byte 256/.test(e.message));
  assert.throws(() => decode(new Uint8Array(300).fill(0x91)), (e) => CODEC_ERROR(e) && /nested/.test(e.message));
  assert.throws(() => decode(new Uint8Array(300).fill(0x81)), (e) => CODEC_ERROR(e) && /nested/.test(e.message));
});

test('hostile input: every strict prefix of a well-formed golden vector throws', () => {
  let prefixes = 0;
  for (const v of VECTORS) {
    const b = unhex(v.hex);
    const wellFormed = !NOT_MSGPACK.includes(v.name);
    for (let cut = 0; cut < b.length; cut += 1) {
      if (wellFormed) {
        assert.throws(() => decode(b.subarray(0, cut)), CODEC_ERROR, `${v.name} cut at ${cut}`);
        prefixes += 1;
      } else { // a prefix of malformed bytes may be well-formed ("9504000a0478" of trailing_bytes)
        try { decode(b.subarray(0, cut)); } catch (err) { assert.ok(CODEC_ERROR(err), `${v.name} cut at ${cut}`); }
      }
    }
    if (wellFormed) {
      assert.throws(() => decode(Uint8Array.from([...b, 0xc0])), /trailing/, `${v.name} + a byte`);
    }
  }
  assert.ok(prefixes > 3000);
});

test('hostile input: random and mutated bytes only ever throw a codec Error, quickly', () => {
  const rnd = prng(99);
  const int = (n) => Math.floor(rnd() * n);
  const started = performance.now();
  const attempt = (b, what) => {
    try {
      decode(b);
    } catch (err) {
      if (!CODEC_ERROR(err)) assert.fail(`${what} ${hex(b)}: ${err && err.stack}`);
    }
  };
  for (let i = 0; i < 5000; i += 1) {
    attempt(Uint8Array.from({ length: int(40) }, () => int(256)), 'random');
  }
  // Golden vectors with a few bytes overwritten, inserted or deleted.
  const golden = VECTORS.map((v) => unhex(v.hex)).filter((b) => b.length > 0);
  for (let i = 0; i < 5000; i += 1) {
    const b = [...golden[int(golden.length)]];
    for (let k = 1 + int(3); k > 0; k -= 1) {
      const at = int(b.length + 1);
      const op = int(3);
      if (op === 0 && at < b.length) b[at] = int(256);
      else if (op === 1) b.splice(at, 0, int(256));
      else b.splice(at, 1);
    }
    attempt(Uint8Array.from(b), 'mutated');
  }
  assert.ok(performance.now() - started < 10_000, 'decoding 10000 short inputs took over 10 s');
});
