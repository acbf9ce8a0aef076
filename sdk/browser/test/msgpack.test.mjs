// The browser SDK's MessagePack codec against msgpack-python's bytes (run:
// `node --test sdk/browser/test/msgpack.test.mjs`). Expected hex below was produced with
// msgpack-python's `packb` (default options); the golden vectors are the relay's own.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';

import { decode, encode } from '../msgpack.js';

const VECTORS = JSON.parse(fs.readFileSync(
  new URL('../../../tests/vectors/protocol_v1.json', import.meta.url), 'utf8')).vectors;
const unhex = (s) => Uint8Array.from(s.match(/../g) ?? [], (x) => parseInt(x, 16));
const hex = (b) => Buffer.from(b).toString('hex');

// Vectors whose bytes are deliberately not the smallest form (the relay must accept them),
// or whose value has an integral float (50.0 is the number 50 in JS, encoded as an integer).
const NOT_REENCODABLE = new Set([
  'hello_info_map16', 'join_doc_id_str8', 'cursor_array16_header', 'cursor_uint32_small_ints',
  'cursor_uint64_small_ints', 'cursor_int8_positive', 'viewport_float32_pct',
  'viewport_float_pct_100', 'viewport_single_line', 'viewport_max_u32', 'joined_two_members',
  'batch_viewport_integral_pct', 'batch_every_event', 'batch_max_u32',
]);

test('golden vectors decode to their values', () => {
  let n = 0;
  for (const v of VECTORS) {
    if (!('value' in v)) continue;
    assert.deepEqual(decode(unhex(v.hex)), v.value, v.name);
    n += 1;
  }
  assert.ok(n >= 60, `only ${n} vectors with values`);
});

test('golden vectors re-encode byte for byte, except the listed ones', () => {
  const differ = [];
  for (const v of VECTORS) {
    if (!('value' in v)) continue;
    if (hex(encode(v.value)) !== v.hex) differ.push(v.name);
  }
  assert.deepEqual(new Set(differ), NOT_REENCODABLE);
});

test('protocol-error vectors decode or throw an Error, nothing else', () => {
  for (const v of VECTORS) {
    if (!('error' in v)) continue;
    try { decode(unhex(v.hex)); } catch (err) { assert.ok(err instanceof Error, v.name); }
  }
});

test('integers take the smallest form, as msgpack-python', () => {
  const cases = [
    [0, '00'], [127, '7f'], [128, 'cc80'], [255, 'ccff'], [256, 'cd0100'], [65535, 'cdffff'],
    [65536, 'ce00010000'], [2 ** 32 - 1, 'ceffffffff'], [2 ** 32, 'cf0000000100000000'],
    [2 ** 53 - 1, 'cf001fffffffffffff'], [-1, 'ff'], [-32, 'e0'], [-33, 'd0df'],
    [-128, 'd080'], [-129, 'd1ff7f'], [-32768, 'd18000'], [-32769, 'd2ffff7fff'],
    [-(2 ** 31), 'd280000000'], [-(2 ** 31) - 1, 'd3ffffffff7fffffff'],
    [2n ** 64n - 1n, 'cfffffffffffffffff'], [-(2n ** 63n), 'd38000000000000000'],
  ];
  for (const [value, expected] of cases) {
    assert.equal(hex(encode(value)), expected, String(value));
    const back = decode(unhex(expected));
    assert.equal(typeof value === 'bigint' ? BigInt(back) : back, value);
  }
  assert.equal(typeof decode(unhex('cfffffffffffffffff')), 'bigint');
  assert.throws(() => encode(2n ** 64n), RangeError);
});

test('floats, strings, arrays, maps, bin', () => {
  assert.equal(hex(encode(0.5)), 'cb3fe0000000000000');
  assert.equal(hex(encode(-1.5)), 'cbbff8000000000000');
  assert.equal(hex(encode(1e300)), 'cb7e37e43c8800759c');
  assert.equal(decode(unhex('ca422a0000')), 42.5); // float32
  for (const [n, prefix] of [[0, 'a0'], [31, 'bf'], [32, 'd920'], [255, 'd9ff'], [256, 'da0100'],
    [65535, 'daffff'], [65536, 'db00010000']]) {
    const s = 'x'.repeat(n);
    assert.ok(hex(encode(s)).startsWith(prefix), `str ${n}`);
    assert.equal(decode(encode(s)), s);
  }
  assert.equal(hex(encode('Zoë')), 'a45a6fc3ab');
  assert.equal(hex(encode('😀')), 'a4f09f9880');
  for (const [n, prefix] of [[0, '90'], [15, '9f'], [16, 'dc0010'], [65535, 'dcffff'],
    [65536, 'dd00010000']]) {
    const a = new Array(n).fill(0);
    assert.ok(hex(encode(a)).startsWith(prefix), `array ${n}`);
    assert.deepEqual(decode(encode(a)), a);
  }
  const map = (n) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, i]));
  assert.ok(hex(encode(map(15))).startsWith('8f'));
  assert.ok(hex(encode(map(16))).startsWith('de0010'));
  for (const [n, prefix] of [[0, 'c400'], [255, 'c4ff'], [256, 'c50100']]) {
    const b = new Uint8Array(n).fill(1);
    assert.ok(hex(encode(b)).startsWith(prefix), `bin ${n}`);
    assert.deepEqual(decode(encode(b)), b);
  }
  assert.equal(hex(encode([1, [2, { a: [null, true, false] }], 's'])), '9301920281a16193c0c3c2a173');
  assert.deepEqual(decode(unhex('81c0c3')), new Map([[null, true]])); // a non-string key
  assert.throws(() => encode(new Date()), TypeError);
});

test('random structures round-trip', () => {
  let seed = 12345;
  const rnd = () => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed / 0x80000000; };
  const gen = (depth) => {
    const k = Math.floor(rnd() * (depth > 3 ? 6 : 8));
    switch (k) {
      case 0: return null;
      case 1: return rnd() < 0.5;
      case 2: return Math.floor((rnd() - 0.5) * 2 ** (rnd() * 52));
      case 3: return (rnd() - 0.5) * 1e6 + 0.25;
      case 4: return 'é'.repeat(Math.floor(rnd() * 40));
      case 5: return new Uint8Array(Math.floor(rnd() * 10)).fill(7);
      case 6: return Array.from({ length: Math.floor(rnd() * 6) }, () => gen(depth + 1));
      default: return Object.fromEntries(
        Array.from({ length: Math.floor(rnd() * 5) }, (_, i) => [`k${i}`, gen(depth + 1)]));
    }
  };
  for (let i = 0; i < 3000; i += 1) {
    const v = gen(0);
    assert.deepEqual(decode(encode(v)), v);
  }
});

test('hostile input throws an Error, never anything else', () => {
  for (const v of VECTORS) {
    if (!('value' in v)) continue; // (an error vector's prefix may be a whole value)
    const b = unhex(v.hex);
    for (let cut = 0; cut < b.length; cut += 1) {
      assert.throws(() => decode(b.subarray(0, cut)), Error, `${v.name} cut at ${cut}`);
    }
  }
  assert.throws(() => decode(unhex('9000')), /trailing/);
  assert.throws(() => decode(unhex('c1')), /0xc1/);
  assert.throws(() => decode(unhex('a2c328')), /UTF-8/);
  assert.throws(() => decode(new Uint8Array(300).fill(0x91)), /nesting/);
  assert.throws(() => decode(unhex('d40100')), /ext/);
  assert.throws(() => decode(unhex('dd7fffffff')), /truncated/); // a huge length, no items
  let seed = 99;
  const rnd = () => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed; };
  for (let i = 0; i < 5000; i += 1) {
    const b = Uint8Array.from({ length: rnd() % 24 }, () => rnd() & 0xff);
    try { decode(b); } catch (err) { assert.ok(err instanceof Error); }
  }
});
