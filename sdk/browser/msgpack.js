// MessagePack for the presence-relay browser SDK: encode(value) -> Uint8Array and
// decode(bytes) -> value. One dependency-free ES module; runs unchanged in browsers
// (<script type="module">) and in Node 20.
//
// Why these choices: the relay's golden vectors (tests/vectors/protocol_v1.json) are the bytes
// of msgpack-python's `msgpack.packb` with default options, so encode() makes exactly its
// choices and the SDK's frames are byte-equal to them:
//   - null and undefined -> nil; true/false -> 0xc3/0xc2.
//   - an integral number in [-2^63, 2^64 - 1] (or a BigInt in that range) -> the smallest int
//     form; non-negative values always take the uint forms (positive fixint, uint8..uint64),
//     negative ones negative fixint, int8..int64. A BigInt outside it -> RangeError.
//   - every other number (fractional, NaN, +-Infinity, integral beyond the int range) -> float64.
//     Never float32.
//   - strings -> UTF-8 in fixstr / str8 (from 32 bytes) / str16 / str32. A string with a lone
//     surrogate has no UTF-8 form: TypeError (msgpack-python refuses it too).
//   - Uint8Array / ArrayBuffer -> bin8 / bin16 / bin32.
//   - arrays -> fixarray / array16 / array32; Maps and plain objects -> fixmap / map16 / map32,
//     in iteration order (an object's own enumerable string keys, as Object.keys orders them:
//     integer-like keys first). Anything else -> TypeError.
// What a JS number cannot say: whether it was 50 or 50.0 (integral numbers are encoded as
// integers, so Python's float 50.0 re-encodes as int 50), nor -0.0 from 0 (-0 is encoded as
// the integer 0, where Python would write the float -0.0). An integral number past 2^53 is
// written as an int, so it decodes as a BigInt. Containers may nest 256 deep.
//
// decode() reads the whole format except ext/timestamp (0xc7-0xc9, 0xd4-0xd8 are refused):
// uint64/int64 come back as a Number when safe, else a BigInt; float32/float64 as a Number;
// bin as a fresh Uint8Array; a map as a plain object when every key is a string, else a Map.
// Malformed input (truncated, trailing bytes, 0xc1, invalid UTF-8, ext, nesting deeper than
// 256) throws an Error whose message names the problem and the byte offset.

const MAX_DEPTH = 256;
const INT_MIN = -(2 ** 63); // exact as a double
const UINT_END = 2 ** 64; // exact as a double; the largest encodable uint is 2^64 - 1
const U64_MAX = 0xffffffffffffffffn;
const I64_MIN = -0x8000000000000000n;

const utf8 = new TextEncoder();
// ignoreBOM: keep a leading U+FEFF as a character (the default would silently drop it).
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const LONE_SURROGATE = /\p{Surrogate}/u;

function wellFormed(s) {
  return typeof s.isWellFormed === 'function' ? s.isWellFormed() : !LONE_SURROGATE.test(s);
}

function describe(v) {
  if (typeof v === 'function') return 'a function';
  if (typeof v === 'symbol') return 'a symbol';
  const tag = Object.prototype.toString.call(v).slice(8, -1);
  const name = v && v.constructor && typeof v.constructor.name === 'string' ? v.constructor.name : '';
  return name && name !== tag ? `${tag} (${name})` : tag;
}

class Writer {
  constructor() {
    this.buf = new Uint8Array(256);
    this.view = new DataView(this.buf.buffer);
    this.pos = 0;
  }

  reserve(n) {
    const end = this.pos + n;
    if (end <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < end) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  u8(v) { this.reserve(1); this.buf[this.pos++] = v; }
  u8u8(a, b) { this.reserve(2); this.buf[this.pos++] = a; this.buf[this.pos++] = b; }
  u8u16(a, b) { this.reserve(3); this.buf[this.pos] = a; this.view.setUint16(this.pos + 1, b); this.pos += 3; }
  u8u32(a, b) { this.reserve(5); this.buf[this.pos] = a; this.view.setUint32(this.pos + 1, b); this.pos += 5; }

  // A length header: fix form (when fixBase is given), then 8 (when c8 is given), 16, 32 bits.
  head(n, fixBase, fixMax, c8, c16, c32, what) {
    if (fixBase !== 0 && n <= fixMax) this.u8(fixBase | n);
    else if (c8 !== 0 && n < 0x100) this.u8u8(c8, n);
    else if (n < 0x10000) this.u8u16(c16, n);
    else if (n <= 0xffffffff) this.u8u32(c32, n);
    else throw new RangeError(`msgpack: ${what} of length ${n} exceeds 2^32 - 1`);
  }

  int(v) { // v: an integral Number in [-2^63, 2^64) or a BigInt
    let x = v;
    if (typeof v === 'bigint') {
      if (v > U64_MAX || v < I64_MIN) {
        throw new RangeError(`msgpack: integer ${v} is outside [-2^63, 2^64 - 1]`);
      }
      x = Number(v); // exact below 2^32 in magnitude, which is all the small forms look at
    }
    if (x >= 0) {
      if (x < 0x80) this.u8(x);
      else if (x < 0x100) this.u8u8(0xcc, x);
      else if (x < 0x10000) this.u8u16(0xcd, x);
      else if (x < 0x100000000) this.u8u32(0xce, x);
      else {
        this.reserve(9); this.buf[this.pos] = 0xcf;
        this.view.setBigUint64(this.pos + 1, BigInt(v)); this.pos += 9;
      }
    } else if (x >= -0x20) this.u8(x & 0xff);
    else if (x >= -0x80) this.u8u8(0xd0, x & 0xff);
    else if (x >= -0x8000) this.u8u16(0xd1, x & 0xffff);
    else if (x >= -0x80000000) this.u8u32(0xd2, x >>> 0);
    else {
      this.reserve(9); this.buf[this.pos] = 0xd3;
      this.view.setBigInt64(this.pos + 1, BigInt(v)); this.pos += 9;
    }
  }

  str(s) {
    if (!wellFormed(s)) throw new TypeError('msgpack: cannot encode a string with a lone surrogate as UTF-8');
    // UTF-8 takes at most 3 bytes per UTF-16 unit: encode after the largest header this
    // string could need, then close the gap if the real length needs a smaller one.
    const max = s.length * 3;
    const guess = max < 32 ? 1 : max < 0x100 ? 2 : max < 0x10000 ? 3 : 5;
    this.reserve(guess + max);
    const at = this.pos;
    const { written } = utf8.encodeInto(s, this.buf.subarray(at + guess, at + guess + max));
    if (written > 0xffffffff) throw new RangeError(`msgpack: string of ${written} bytes exceeds 2^32 - 1`);
    const size = written < 32 ? 1 : written < 0x100 ? 2 : written < 0x10000 ? 3 : 5;
    if (size !== guess) this.buf.copyWithin(at + size, at + guess, at + guess + written);
    if (size === 1) this.buf[at] = 0xa0 | written;
    else if (size === 2) { this.buf[at] = 0xd9; this.buf[at + 1] = written; }
    else if (size === 3) { this.buf[at] = 0xda; this.view.setUint16(at + 1, written); }
    else { this.buf[at] = 0xdb; this.view.setUint32(at + 1, written); }
    this.pos = at + size + written;
  }

  bin(b) {
    this.head(b.length, 0, -1, 0xc4, 0xc5, 0xc6, 'bin');
    this.reserve(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }

  value(v, depth) {
    if (v === null || v === undefined) { this.u8(0xc0); return; }
    switch (typeof v) {
      case 'boolean': this.u8(v ? 0xc3 : 0xc2); return;
      case 'number':
        if (Number.isInteger(v) && v >= INT_MIN && v < UINT_END) this.int(v === 0 ? 0 : v);
        else { this.reserve(9); this.buf[this.pos] = 0xcb; this.view.setFloat64(this.pos + 1, v); this.pos += 9; }
        return;
      case 'bigint': this.int(v); return;
      case 'string': this.str(v); return;
      case 'object': break;
      default: throw new TypeError(`msgpack: cannot encode ${describe(v)}`);
    }
    if (v instanceof Uint8Array) { this.bin(v); return; }
    if (v instanceof ArrayBuffer) { this.bin(new Uint8Array(v)); return; }
    const isArray = Array.isArray(v);
    const isMap = !isArray && v instanceof Map;
    let proto = null;
    if (!isArray && !isMap) {
      proto = Object.getPrototypeOf(v);
      if (proto !== Object.prototype && proto !== null) {
        throw new TypeError(`msgpack: cannot encode ${describe(v)} (only null, booleans, numbers, `
          + 'BigInts, strings, Uint8Array, ArrayBuffer, arrays, Maps and plain objects)');
      }
    }
    if (depth >= MAX_DEPTH) {
      throw new RangeError(`msgpack: containers nested deeper than ${MAX_DEPTH} (a cycle?)`);
    }
    if (isArray) {
      this.head(v.length, 0x90, 15, 0, 0xdc, 0xdd, 'array');
      for (let i = 0; i < v.length; i += 1) this.value(v[i], depth + 1);
    } else if (isMap) {
      this.head(v.size, 0x80, 15, 0, 0xde, 0xdf, 'map');
      for (const [k, item] of v) { this.value(k, depth + 1); this.value(item, depth + 1); }
    } else {
      const keys = Object.keys(v);
      this.head(keys.length, 0x80, 15, 0, 0xde, 0xdf, 'map');
      for (const k of keys) { this.str(k); this.value(v[k], depth + 1); }
    }
  }
}

/** The MessagePack bytes of `value`, exactly as msgpack-python's `packb` (see the header). */
export function encode(value) {
  const w = new Writer();
  w.value(value, 0);
  return w.buf.slice(0, w.pos);
}

class Reader {
  constructor(bytes) {
    this.b = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.pos = 0;
  }

  need(n, at) {
    if (this.pos + n > this.b.length) {
      throw new Error(`msgpack: truncated input at byte ${this.pos}: the value at byte ${at} `
        + `needs ${n} more byte(s), ${this.b.length - this.pos} left`);
    }
  }

  u8(at) { this.need(1, at); return this.b[this.pos++]; }
  u16(at) { this.need(2, at); const v = this.view.getUint16(this.pos); this.pos += 2; return v; }
  u32(at) { this.need(4, at); const v = this.view.getUint32(this.pos); this.pos += 4; return v; }

  i8(at) { this.need(1, at); const v = this.view.getInt8(this.pos); this.pos += 1; return v; }
  i16(at) { this.need(2, at); const v = this.view.getInt16(this.pos); this.pos += 2; return v; }
  i32(at) { this.need(4, at); const v = this.view.getInt32(this.pos); this.pos += 4; return v; }

  f32(at) { this.need(4, at); const v = this.view.getFloat32(this.pos); this.pos += 4; return v; }
  f64(at) { this.need(8, at); const v = this.view.getFloat64(this.pos); this.pos += 8; return v; }

  big(signed, at) {
    this.need(8, at);
    const v = signed ? this.view.getBigInt64(this.pos) : this.view.getBigUint64(this.pos);
    this.pos += 8;
    const n = Number(v);
    return Number.isSafeInteger(n) ? n : v;
  }

  str(n, at) {
    this.need(n, at);
    const start = this.pos;
    const end = start + n;
    this.pos = end;
    if (n <= 16) { // short ASCII (most keys and names) without a TextDecoder call
      let s = '';
      for (let i = start; i < end; i += 1) {
        const c = this.b[i];
        if (c >= 0x80) { s = null; break; }
        s += String.fromCharCode(c);
      }
      if (s !== null) return s;
    }
    try {
      return strictUtf8.decode(this.b.subarray(start, end));
    } catch {
      throw new Error(`msgpack: invalid UTF-8 in the str at byte ${at}`);
    }
  }

  bin(n, at) {
    this.need(n, at);
    const out = this.b.slice(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  array(n, depth, at) {
    if (depth >= MAX_DEPTH) throw new Error(`msgpack: containers nested deeper than ${MAX_DEPTH} at byte ${at}`);
    this.need(n, at); // each item takes at least one byte: refuse a length past the input now
    const out = new Array(n);
    for (let i = 0; i < n; i += 1) out[i] = this.value(depth + 1);
    return out;
  }

  map(n, depth, at) {
    if (depth >= MAX_DEPTH) throw new Error(`msgpack: containers nested deeper than ${MAX_DEPTH} at byte ${at}`);
    this.need(2 * n, at);
    const keys = new Array(n);
    const values = new Array(n);
    let plain = true;
    for (let i = 0; i < n; i += 1) {
      const k = this.value(depth + 1);
      keys[i] = k;
      values[i] = this.value(depth + 1);
      if (typeof k !== 'string') plain = false;
    }
    if (!plain) {
      const m = new Map();
      for (let i = 0; i < n; i += 1) m.set(keys[i], values[i]);
      return m;
    }
    const obj = {};
    for (let i = 0; i < n; i += 1) {
      if (keys[i] === '__proto__') { // an own property, never the prototype
        Object.defineProperty(obj, '__proto__', {
          value: values[i], enumerable: true, writable: true, configurable: true,
        });
      } else obj[keys[i]] = values[i];
    }
    return obj;
  }

  value(depth) {
    const at = this.pos;
    const c = this.u8(at);
    if (c < 0x80) return c;
    if (c < 0x90) return this.map(c & 0x0f, depth, at);
    if (c < 0xa0) return this.array(c & 0x0f, depth, at);
    if (c < 0xc0) return this.str(c & 0x1f, at);
    if (c >= 0xe0) return c - 0x100;
    switch (c) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return this.bin(this.u8(at), at);
      case 0xc5: return this.bin(this.u16(at), at);
      case 0xc6: return this.bin(this.u32(at), at);
      case 0xca: return this.f32(at);
      case 0xcb: return this.f64(at);
      case 0xcc: return this.u8(at);
      case 0xcd: return this.u16(at);
      case 0xce: return this.u32(at);
      case 0xcf: return this.big(false, at);
      case 0xd0: return this.i8(at);
      case 0xd1: return this.i16(at);
      case 0xd2: return this.i32(at);
      case 0xd3: return this.big(true, at);
      case 0xd9: return this.str(this.u8(at), at);
      case 0xda: return this.str(this.u16(at), at);
      case 0xdb: return this.str(this.u32(at), at);
      case 0xdc: return this.array(this.u16(at), depth, at);
      case 0xdd: return this.array(this.u32(at), depth, at);
      case 0xde: return this.map(this.u16(at), depth, at);
      case 0xdf: return this.map(this.u32(at), depth, at);
      case 0xc1: throw new Error(`msgpack: the never-used type byte 0xc1 at byte ${at}`);
      default: // 0xc7-0xc9 (ext 8/16/32), 0xd4-0xd8 (fixext 1..16), timestamps among them
        throw new Error(`msgpack: ext type byte 0x${c.toString(16)} at byte ${at} is not supported`);
    }
  }
}

/**
 * The one MessagePack value in `bytes` (a Uint8Array, ArrayBuffer or DataView).
 * Throws an Error naming the problem and its byte offset when the bytes are not exactly one
 * well-formed value; a TypeError when `bytes` is none of those types.
 */
export function decode(bytes) {
  let b;
  // Always a plain Uint8Array view (a Node Buffer's slice() would share memory, not copy).
  if (bytes instanceof Uint8Array || bytes instanceof DataView) {
    b = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  } else if (bytes instanceof ArrayBuffer) {
    b = new Uint8Array(bytes);
  } else {
    throw new TypeError(`msgpack: decode needs a Uint8Array, ArrayBuffer or DataView, not ${describe(bytes)}`);
  }
  const r = new Reader(b);
  const value = r.value(0);
  if (r.pos !== b.length) {
    throw new Error(`msgpack: ${b.length - r.pos} trailing byte(s) after the value, at byte ${r.pos}`);
  }
  return value;
}
