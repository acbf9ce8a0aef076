// Type declarations for msgpack.js, the SDK's MessagePack codec (`presence-relay/msgpack`).
// encode() makes exactly msgpack-python's `packb` choices, so its bytes equal the relay's
// golden vectors (tests/vectors/protocol_v1.json); see the header of msgpack.js.

/**
 * What `encode()` accepts: null and undefined (nil), booleans, numbers (integral ones in
 * [-2^63, 2^64 - 1] as ints, every other as float64), BigInts in that range, strings without
 * lone surrogates, Uint8Array / ArrayBuffer (bin), arrays, Maps and plain objects (their own
 * enumerable string keys), nested at most 256 deep. Anything else throws a TypeError.
 */
export type Encodable =
  | null
  | undefined
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | ArrayBuffer
  | readonly Encodable[]
  | ReadonlyMap<Encodable, Encodable>
  | { readonly [key: string]: Encodable };

/**
 * What `decode()` returns: nil as null; ints as a Number when safe, else a BigInt; floats as
 * a Number; str as a string; bin as a fresh Uint8Array; an array as an Array; a map as a
 * plain object when every key is a string, else a Map.
 */
export type Decoded =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array<ArrayBuffer>
  | Decoded[]
  | { [key: string]: Decoded }
  | Map<Decoded, Decoded>;

/** The MessagePack bytes of `value`, exactly as msgpack-python's `packb` (see the header). */
export declare function encode(value: Encodable): Uint8Array<ArrayBuffer>;

/**
 * The one MessagePack value in `bytes` (a Uint8Array, ArrayBuffer or DataView).
 * Throws an Error naming the problem and its byte offset when the bytes are not exactly one
 * well-formed value (truncated, trailing bytes, 0xc1, invalid UTF-8, ext, nesting deeper than
 * 256); a TypeError when `bytes` is none of those types.
 */
export declare function decode(bytes: Uint8Array | ArrayBuffer | DataView): Decoded;

// Only what is exported above is the module's API.
export {};
