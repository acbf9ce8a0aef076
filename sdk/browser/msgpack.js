// MessagePack for the presence-relay browser SDK: encode(value) -> Uint8Array and
// decode(bytes) -> value. No dependency; runs unchanged in browsers and in Node.
//
// Encoding choices are msgpack-python's defaults (`msgpack.packb`), so the SDK's frames are
// byte-equal to the relay's golden vectors (tests/vectors/protocol_v1.json): the smallest
// int form, non-negative integers always in the uint forms, str8 from 32 bytes, float64 for
// every non-integral number. A JS number cannot say whether it was 50 or 50.0: integral
// numbers are encoded as integers (the relay accepts an integer scroll percentage).
// -0 is encoded as the integer 0. Integers past 2^53 can be given (and come back) as BigInt.

const MAX_DEPTH = 256;
const utf8 = new TextEncoder();
const strict = new TextDecoder('utf-8', { fatal: true });

class Writer {
  constructor() {
    this.buf = new Uint8Array(256);
    this.view = new DataView(this.buf.buffer);
    this.pos = 0;
  }

  reserve(n) {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  u8(v) { this.reserve(1); this.buf[this.pos++] = v; }
  u16(v) { this.reserve(2); this.view.setUint16(this.pos, v); this.pos += 2; }
  u32(v) { this.reserve(4); this.view.setUint32(this.pos, v); this.pos += 4; }
  bytes(b) { this.reserve(b.length); this.buf.set(b, this.pos); this.pos += b.length; }

  head(v, fixBase, fixMax, c8, c16, c32) {
    if (v <= fixMax && fixBase !== null) this.u8(fixBase | v);
    else if (v < 0x100 && c8 !== null) { this.u8(c8); this.u8(v); }
    else if (v < 0x10000) { this.u8(c16); this.u16(v); }
    else { this.u8(c32); this.u32(v); }
  }

  int(v) { // v: an integral Number or a BigInt, in [-2^63, 2^64 - 1]
    const n = typeof v === 'bigint' ? v : null;
    const x = n === null ? v : Number(v);
    if (n !== null && (n > 0xffffffffffffffffn || n < -0x8000000000000000n)) {
      throw new RangeError(`integer out of msgpack range: ${v}`);
    }
    if (x >= 0) {
      if (x < 0x80) this.u8(x);
      else if (x < 0x100) { this.u8(0xcc); this.u8(x); }
      else if (x < 0x10000) { this.u8(0xcd); this.u16(x); }
      else if (x < 0x100000000) { this.u8(0xce); this.u32(x); }
      else {
        const b = n !== null ? n : BigInt(v);
        if (b > 0xffffffffffffffffn) throw new RangeError(`integer out of msgpack range: ${v}`);
        this.u8(0xcf); this.reserve(8); this.view.setBigUint64(this.pos, b); this.pos += 8;
      }
    } else if (x >= -32) this.u8(x & 0xff);
    else if (x >= -0x80) { this.u8(0xd0); this.reserve(1); this.view.setInt8(this.pos, x); this.pos += 1; }
    else if (x >= -0x8000) { this.u8(0xd1); this.reserve(2); this.view.setInt16(this.pos, x); this.pos += 2; }
    else if (x >= -0x80000000) { this.u8(0xd2); this.reserve(4); this.view.setInt32(this.pos, x); this.pos += 4; }
    else {
      const b = n !== null ? n : BigInt(v);
      if (b < -0x8000000000000000n) throw new RangeError(`integer out of msgpack range: ${v}`);
      this.u8(0xd3); this.reserve(8); this.view.setBigInt64(this.pos, b); this.pos += 8;
    }
  }

  value(v, depth) {
    if (depth > MAX_DEPTH) throw new RangeError('msgpack: nesting deeper than 256');
    if (v === null || v === undefined) { this.u8(0xc0); return; }
    switch (typeof v) {
      case 'boolean': this.u8(v ? 0xc3 : 0xc2); return;
      case 'bigint': this.int(v); return;
      case 'number':
        if (Number.isInteger(v) && v <= 18446744073709551615 && v >= -9223372036854775808) {
          this.int(v === 0 ? 0 : v);
        } else {
          this.u8(0xcb); this.reserve(8); this.view.setFloat64(this.pos, v); this.pos += 8;
        }
        return;
      case 'string': {
        const b = utf8.encode(v);
        this.head(b.length, 0xa0, 31, 0xd9, 0xda, 0xdb);
        this.bytes(b);
        return;
      }
      default: break;
    }
    if (v instanceof Uint8Array || v instanceof ArrayBuffer) {
      const b = v instanceof Uint8Array ? v : new Uint8Array(v);
      this.head(b.length, null, -1, 0xc4, 0xc5, 0xc6);
      this.bytes(b);
      return;
    }
    if (Array.isArray(v)) {
      this.head(v.length, 0x90, 15, null, 0xdc, 0xdd);
      for (const item of v) this.value(item, depth + 1);
      return;
    }
    if (v instanceof Map) {
      this.head(v.size, 0x80, 15, null, 0xde, 0xdf);
      for (const [k, item] of v) { this.value(k, depth + 1); this.value(item, depth + 1); }
      return;
    }
    if (typeof v === 'object' && (Object.getPrototypeOf(v) === Object.prototype
        || Object.getPrototypeOf(v) === null)) {
      const keys = Object.keys(v);
      this.head(keys.length, 0x80, 15, null, 0xde, 0xdf);
      for (const k of keys) { this.value(k, depth + 1); this.value(v[k], depth + 1); }
      return;
    }
    throw new TypeError(`msgpack: cannot encode ${Object.prototype.toString.call(v)}`);
  }
}

/** MessagePack bytes of `value` (msgpack-python's choices; see the header). */
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

  need(n) {
    if (this.pos + n > this.b.length) {
      throw new Error(`msgpack: truncated at byte ${this.pos} (needs ${n} more)`);
    }
  }

  u8() { this.need(1); return this.b[this.pos++]; }
  u16() { this.need(2); const v = this.view.getUint16(this.pos); this.pos += 2; return v; }
  u32() { this.need(4); const v = this.view.getUint32(this.pos); this.pos += 4; return v; }

  big(signed) {
    this.need(8);
    const v = signed ? this.view.getBigInt64(this.pos) : this.view.getBigUint64(this.pos);
    this.pos += 8;
    const n = Number(v);
    return Number.isSafeInteger(n) ? n : v;
  }

  str(n) {
    this.need(n);
    const at = this.pos;
    this.pos += n;
    try {
      return strict.decode(this.b.subarray(at, at + n));
    } catch {
      throw new Error(`msgpack: invalid UTF-8 in the string at byte ${at}`);
    }
  }

  bin(n) {
    this.need(n);
    const out = this.b.slice(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  array(n, depth) {
    // Each element takes at least one byte: a length past the input is truncation.
    this.need(n);
    const out = new Array(n);
    for (let i = 0; i < n; i += 1) out[i] = this.value(depth + 1);
    return out;
  }

  map(n, depth) {
    this.need(2 * n);
    const entries = [];
    let plain = true;
    for (let i = 0; i < n; i += 1) {
      const k = this.value(depth + 1);
      const v = this.value(depth + 1);
      if (typeof k !== 'string') plain = false;
      entries.push([k, v]);
    }
    if (!plain) return new Map(entries);
    const obj = {};
    for (const [k, v] of entries) {
      Object.defineProperty(obj, k, { value: v, enumerable: true, writable: true, configurable: true });
    }
    return obj;
  }

  value(depth) {
    if (depth > MAX_DEPTH) throw new Error(`msgpack: nesting deeper than ${MAX_DEPTH} at byte ${this.pos}`);
    const at = this.pos;
    const c = this.u8();
    if (c < 0x80) return c;
    if (c < 0x90) return this.map(c & 0x0f, depth);
    if (c < 0xa0) return this.array(c & 0x0f, depth);
    if (c < 0xc0) return this.str(c & 0x1f);
    if (c >= 0xe0) return c - 0x100;
    switch (c) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return this.bin(this.u8());
      case 0xc5: return this.bin(this.u16());
      case 0xc6: return this.bin(this.u32());
      case 0xca: { this.need(4); const v = this.view.getFloat32(this.pos); this.pos += 4; return v; }
      case 0xcb: { this.need(8); const v = this.view.getFloat64(this.pos); this.pos += 8; return v; }
      case 0xcc: return this.u8();
      case 0xcd: return this.u16();
      case 0xce: return this.u32();
      case 0xcf: return this.big(false);
      case 0xd0: { this.need(1); const v = this.view.getInt8(this.pos); this.pos += 1; return v; }
      case 0xd1: { this.need(2); const v = this.view.getInt16(this.pos); this.pos += 2; return v; }
      case 0xd2: { this.need(4); const v = this.view.getInt32(this.pos); this.pos += 4; return v; }
      case 0xd3: return this.big(true);
      case 0xd9: return this.str(this.u8());
      case 0xda: return this.str(this.u16());
      case 0xdb: return this.str(this.u32());
      case 0xdc: return this.array(this.u16(), depth);
      case 0xdd: return this.array(this.u32(), depth);
      case 0xde: return this.map(this.u16(), depth);
      case 0xdf: return this.map(this.u32(), depth);
      case 0xc1: throw new Error(`msgpack: the never-used byte 0xc1 at byte ${at}`);
      default: // 0xc7-0xc9, 0xd4-0xd8: ext types, which the protocol never uses
        throw new Error(`msgpack: ext type 0x${c.toString(16)} at byte ${at} is not supported`);
    }
  }
}

/** The one value in `bytes` (Uint8Array, ArrayBuffer or DataView); throws Error if malformed. */
export function decode(bytes) {
  let b = bytes;
  if (b instanceof ArrayBuffer) b = new Uint8Array(b);
  else if (b instanceof DataView) b = new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  else if (!(b instanceof Uint8Array)) throw new TypeError('msgpack: decode needs bytes');
  const r = new Reader(b);
  const value = r.value(0);
  if (r.pos !== b.length) {
    throw new Error(`msgpack: ${b.length - r.pos} trailing bytes after the value at byte ${r.pos}`);
  }
  return value;
}
