// A minimal CBOR (RFC 8949) reader/writer for the test SurrealDB server.
//
// The server must not decode and re-encode the values it relays (SurrealDB
// encodes record ids, datetimes, durations, decimals, UUIDs, NONE, ... as CBOR
// tags, and a generic round trip can change them), so besides a small decoder
// for the few values it inspects (method, session, auth params) this module
// can split a map into its entries as raw byte ranges and build new maps from
// raw, already-encoded pieces.

export class CborError extends Error {}

/** A tagged value: tag number and decoded content. */
export class Tagged {
  constructor(tag, value) {
    this.tag = tag;
    this.value = value;
  }
}

/** Already-encoded CBOR bytes, written verbatim by encode(). */
export class Raw {
  constructor(bytes) {
    this.bytes = bytes;
  }
}

export const TAG_NONE = 6;
export const TAG_UUID = 37;

const MAX_DEPTH = 512;

/** asBuffer views any Uint8Array (the native engine returns plain ones) as a Buffer. */
export function asBuffer(u8) {
  return Buffer.isBuffer(u8) ? u8 : Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);
}

function need(buf, pos, n) {
  if (pos + n > buf.length) throw new CborError("truncated CBOR item");
}

// readHead reads an item head: major type, additional info and argument.
// The argument is a Number when it is a safe integer, else a BigInt;
// for indefinite lengths (info 31) it is -1.
function readHead(buf, pos) {
  need(buf, pos, 1);
  const b = buf[pos];
  const major = b >> 5;
  const info = b & 0x1f;
  pos += 1;
  let arg;
  if (info < 24) {
    arg = info;
  } else if (info === 24) {
    need(buf, pos, 1);
    arg = buf[pos];
    pos += 1;
  } else if (info === 25) {
    need(buf, pos, 2);
    arg = buf.readUInt16BE(pos);
    pos += 2;
  } else if (info === 26) {
    need(buf, pos, 4);
    arg = buf.readUInt32BE(pos);
    pos += 4;
  } else if (info === 27) {
    need(buf, pos, 8);
    const big = buf.readBigUInt64BE(pos);
    arg = big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
    pos += 8;
  } else if (info === 31) {
    if (major === 0 || major === 1 || major === 6) throw new CborError("invalid indefinite length");
    arg = -1;
  } else {
    throw new CborError(`reserved additional info ${info}`);
  }
  return { major, info, arg, pos };
}

function length(h) {
  if (typeof h.arg === "bigint") throw new CborError("length too large");
  return h.arg;
}

/** skip returns the offset just after the CBOR item starting at pos. */
export function skip(buf, pos, depth = 0) {
  if (depth > MAX_DEPTH) throw new CborError("CBOR nesting too deep");
  const h = readHead(buf, pos);
  pos = h.pos;
  switch (h.major) {
    case 0:
    case 1:
      return pos;
    case 2:
    case 3:
      if (h.arg === -1) {
        for (;;) {
          need(buf, pos, 1);
          if (buf[pos] === 0xff) return pos + 1;
          const c = readHead(buf, pos);
          if (c.major !== h.major || c.arg === -1) throw new CborError("invalid indefinite string chunk");
          pos = c.pos + length(c);
          need(buf, pos, 0);
        }
      }
      need(buf, pos, length(h));
      return pos + length(h);
    case 4:
    case 5: {
      const per = h.major === 5 ? 2 : 1;
      if (h.arg === -1) {
        for (;;) {
          need(buf, pos, 1);
          if (buf[pos] === 0xff) return pos + 1;
          for (let k = 0; k < per; k++) pos = skip(buf, pos, depth + 1);
        }
      }
      const n = length(h) * per;
      for (let i = 0; i < n; i++) pos = skip(buf, pos, depth + 1);
      return pos;
    }
    case 6:
      return skip(buf, pos, depth + 1);
    case 7:
      if (h.info === 31) throw new CborError("unexpected break");
      return pos;
  }
  throw new CborError("unreachable");
}

function halfToFloat(h) {
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  let v;
  if (exp === 0) v = mant * 2 ** -24;
  else if (exp !== 31) v = (mant + 1024) * 2 ** (exp - 25);
  else v = mant === 0 ? Infinity : NaN;
  return h & 0x8000 ? -v : v;
}

/**
 * decodeAt decodes the item at pos into plain JS values: integers (Number or
 * BigInt), Buffer (bytes), string, Array, plain object (maps whose keys are
 * all strings) or Map, Tagged, booleans, null, undefined, floats.
 */
export function decodeAt(buf, pos, depth = 0) {
  if (depth > MAX_DEPTH) throw new CborError("CBOR nesting too deep");
  const h = readHead(buf, pos);
  pos = h.pos;
  switch (h.major) {
    case 0:
      return { value: h.arg, pos };
    case 1:
      return { value: typeof h.arg === "bigint" ? -1n - h.arg : -1 - h.arg, pos };
    case 2:
    case 3: {
      let bytes;
      if (h.arg === -1) {
        const parts = [];
        for (;;) {
          need(buf, pos, 1);
          if (buf[pos] === 0xff) {
            pos += 1;
            break;
          }
          const c = readHead(buf, pos);
          if (c.major !== h.major || c.arg === -1) throw new CborError("invalid indefinite string chunk");
          need(buf, c.pos, length(c));
          parts.push(buf.subarray(c.pos, c.pos + length(c)));
          pos = c.pos + length(c);
        }
        bytes = Buffer.concat(parts);
      } else {
        need(buf, pos, length(h));
        bytes = buf.subarray(pos, pos + length(h));
        pos += length(h);
      }
      return { value: h.major === 2 ? Buffer.from(bytes) : bytes.toString("utf8"), pos };
    }
    case 4: {
      const out = [];
      if (h.arg === -1) {
        for (;;) {
          need(buf, pos, 1);
          if (buf[pos] === 0xff) return { value: out, pos: pos + 1 };
          const r = decodeAt(buf, pos, depth + 1);
          out.push(r.value);
          pos = r.pos;
        }
      }
      for (let i = 0; i < length(h); i++) {
        const r = decodeAt(buf, pos, depth + 1);
        out.push(r.value);
        pos = r.pos;
      }
      return { value: out, pos };
    }
    case 5: {
      const entries = [];
      const more = (i) => (h.arg === -1 ? (need(buf, pos, 1), buf[pos] !== 0xff) : i < length(h));
      for (let i = 0; more(i); i++) {
        const k = decodeAt(buf, pos, depth + 1);
        const v = decodeAt(buf, k.pos, depth + 1);
        entries.push([k.value, v.value]);
        pos = v.pos;
      }
      if (h.arg === -1) pos += 1;
      if (entries.every(([k]) => typeof k === "string")) {
        const obj = Object.create(null);
        for (const [k, v] of entries) obj[k] = v;
        return { value: obj, pos };
      }
      return { value: new Map(entries), pos };
    }
    case 6: {
      const r = decodeAt(buf, pos, depth + 1);
      return { value: new Tagged(h.arg, r.value), pos: r.pos };
    }
    case 7:
      switch (h.info) {
        case 20:
          return { value: false, pos };
        case 21:
          return { value: true, pos };
        case 22:
          return { value: null, pos };
        case 23:
          return { value: undefined, pos };
        case 25:
          return { value: halfToFloat(h.arg), pos };
        case 26: {
          const b = Buffer.alloc(4);
          b.writeUInt32BE(h.arg);
          return { value: b.readFloatBE(0), pos };
        }
        case 27: {
          const b = Buffer.alloc(8);
          b.writeBigUInt64BE(BigInt(h.arg));
          return { value: b.readDoubleBE(0), pos };
        }
        default:
          if (h.info === 31) throw new CborError("unexpected break");
          return { value: new Tagged(-1, h.arg), pos }; // other simple value
      }
  }
  throw new CborError("unreachable");
}

/** decode decodes exactly one item filling buf. */
export function decode(buf) {
  buf = asBuffer(buf);
  const r = decodeAt(buf, 0);
  if (r.pos !== buf.length) throw new CborError("trailing bytes after CBOR item");
  return r.value;
}

/**
 * mapEntries splits the CBOR map filling buf into its entries without
 * decoding the values: [{key (decoded), keyRaw, raw}] where keyRaw and raw are
 * the exact encoded bytes. Throws if buf is not exactly one map.
 */
export function mapEntries(buf) {
  buf = asBuffer(buf);
  const h = readHead(buf, 0);
  if (h.major !== 5) throw new CborError("not a CBOR map");
  let pos = h.pos;
  const out = [];
  const more = (i) => (h.arg === -1 ? (need(buf, pos, 1), buf[pos] !== 0xff) : i < length(h));
  for (let i = 0; more(i); i++) {
    const kStart = pos;
    const k = decodeAt(buf, pos);
    const vEnd = skip(buf, k.pos);
    out.push({ key: k.value, keyRaw: buf.subarray(kStart, k.pos), raw: buf.subarray(k.pos, vEnd) });
    pos = vEnd;
  }
  if (h.arg === -1) pos += 1;
  if (pos !== buf.length) throw new CborError("trailing bytes after CBOR map");
  return out;
}

function head(major, n) {
  if (typeof n === "bigint") {
    const b = Buffer.alloc(9);
    b[0] = (major << 5) | 27;
    b.writeBigUInt64BE(n, 1);
    return b;
  }
  if (n < 24) return Buffer.from([(major << 5) | n]);
  if (n < 0x100) return Buffer.from([(major << 5) | 24, n]);
  if (n < 0x10000) {
    const b = Buffer.alloc(3);
    b[0] = (major << 5) | 25;
    b.writeUInt16BE(n, 1);
    return b;
  }
  if (n < 0x100000000) {
    const b = Buffer.alloc(5);
    b[0] = (major << 5) | 26;
    b.writeUInt32BE(n, 1);
    return b;
  }
  const b = Buffer.alloc(9);
  b[0] = (major << 5) | 27;
  b.writeBigUInt64BE(BigInt(n), 1);
  return b;
}

/**
 * arrayItems splits the CBOR array filling buf into the raw bytes of its
 * items (at most max of them). Throws if buf is not an array.
 */
export function arrayItems(buf, max = Infinity) {
  buf = asBuffer(buf);
  const h = readHead(buf, 0);
  if (h.major !== 4) throw new CborError("not a CBOR array");
  let pos = h.pos;
  const out = [];
  for (let i = 0; out.length < max; i++) {
    if (h.arg === -1 ? (need(buf, pos, 1), buf[pos] === 0xff) : i >= length(h)) break;
    const end = skip(buf, pos);
    out.push(buf.subarray(pos, end));
    pos = end;
  }
  return out;
}

/** arrayHeader encodes the head of a definite-length array of n items. */
export function arrayHeader(n) {
  return head(4, n);
}

/** mapHeader encodes the head of a definite-length map of n entries. */
export function mapHeader(n) {
  return head(5, n);
}

function encodeInto(v, out, depth) {
  if (depth > MAX_DEPTH) throw new CborError("value nesting too deep");
  if (v instanceof Raw) {
    out.push(v.bytes);
  } else if (v === null) {
    out.push(Buffer.from([0xf6]));
  } else if (v === undefined) {
    out.push(Buffer.from([0xf7]));
  } else if (v === true || v === false) {
    out.push(Buffer.from([v ? 0xf5 : 0xf4]));
  } else if (typeof v === "number") {
    if (Number.isSafeInteger(v)) {
      out.push(v >= 0 ? head(0, v) : head(1, -1 - v));
    } else {
      const b = Buffer.alloc(9);
      b[0] = 0xfb;
      b.writeDoubleBE(v, 1);
      out.push(b);
    }
  } else if (typeof v === "bigint") {
    out.push(v >= 0n ? head(0, v) : head(1, -1n - v));
  } else if (typeof v === "string") {
    const s = Buffer.from(v, "utf8");
    out.push(head(3, s.length), s);
  } else if (v instanceof Uint8Array) {
    out.push(head(2, v.length), Buffer.from(v.buffer, v.byteOffset, v.length));
  } else if (Array.isArray(v)) {
    out.push(head(4, v.length));
    for (const x of v) encodeInto(x, out, depth + 1);
  } else if (v instanceof Tagged) {
    out.push(head(6, v.tag));
    encodeInto(v.value, out, depth + 1);
  } else if (v instanceof Map) {
    out.push(head(5, v.size));
    for (const [k, x] of v) {
      encodeInto(k, out, depth + 1);
      encodeInto(x, out, depth + 1);
    }
  } else if (typeof v === "object") {
    const keys = Object.keys(v).filter((k) => v[k] !== undefined);
    out.push(head(5, keys.length));
    for (const k of keys) {
      encodeInto(k, out, depth + 1);
      encodeInto(v[k], out, depth + 1);
    }
  } else {
    throw new CborError(`cannot encode ${typeof v}`);
  }
}

/** encode encodes a JS value (see decodeAt for the types; Raw is verbatim). */
export function encode(v) {
  const out = [];
  encodeInto(v, out, 0);
  return Buffer.concat(out);
}
