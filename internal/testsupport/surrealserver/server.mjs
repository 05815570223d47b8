// A `surreal start`-compatible test server around the real SurrealDB engine
// embedded in the npm package @surrealdb/node (see issue 4, "Real SurrealDB in
// tests"; no SurrealDB server binary can be installed on the test machines).
//
//   surreal start --bind 127.0.0.1:PORT --user U --pass P [--log LEVEL] <store>
//
// store: mem:// (or memory), surrealkv://PATH, surrealkv+versioned://PATH,
// rocksdb://PATH (file://PATH is taken as rocksdb). PORT 0 picks a free port.
// Once ready it prints "listening on 127.0.0.1:PORT" on stdout.
//
// It serves GET /health, GET /version, the WebSocket RPC endpoint /rpc
// (subprotocol cbor) that github.com/surrealdb/surrealdb.go speaks for ws://
// URLs, and POST /rpc (CBOR) for its http:// URLs. Every RPC
// request is relayed to the engine's execute(bytes) untouched except for its
// `session` field; the engine's raw result bytes are wrapped into the
// {id, result} / {id, error} frame without being decoded, so CBOR tags
// (record ids, datetimes, durations, decimals, NONE, ...) survive exactly.
//
// One engine per process (two mem:// engines are separate datastores and a
// second process cannot open the same on-disk store); each WebSocket
// connection gets its own engine session, and each SurrealDB 3 session a
// client attaches on it (request field `session`) gets another one.
// The embedded engine enforces no authentication, so this server does:
// see handleRequest.

import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import crypto from "node:crypto";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { WebSocketServer } from "ws";
import {
  Raw,
  Tagged,
  TAG_UUID,
  arrayHeader,
  arrayItems,
  asBuffer,
  decode,
  encode,
  mapEntries,
  mapHeader,
} from "./cbor.mjs";

const require = createRequire(import.meta.url);

// ---------------------------------------------------------------------------
// Command line

const USAGE = `usage: surreal start [--bind ADDR:PORT] [--user USER] [--pass PASS] [--log LEVEL]
                     [--unauthenticated] [--strict] [-A|--allow-all] [--no-banner] [STORE]
  STORE: mem:// (default; also "memory"), surrealkv://PATH, surrealkv+versioned://PATH, rocksdb://PATH
  ADDR:PORT defaults to 127.0.0.1:8000; port 0 picks a free port.
  Environment: SURREAL_BIND, SURREAL_USER, SURREAL_PASS, SURREAL_PATH, SURREAL_LOG.
This is the orchestrator's test stand-in for the SurrealDB server: the real
SurrealDB engine from the npm package @surrealdb/node, served over WebSocket RPC.`;

class UsageError extends Error {}

export function parseArgs(argv, env = process.env) {
  const opts = {
    bind: env.SURREAL_BIND || "127.0.0.1:8000",
    user: env.SURREAL_USER ?? env.SURREAL_USERNAME,
    pass: env.SURREAL_PASS ?? env.SURREAL_PASSWORD,
    log: env.SURREAL_LOG || "info",
    store: env.SURREAL_PATH || "mem://",
    unauthenticated: env.SURREAL_UNAUTHENTICATED === "true",
    strict: env.SURREAL_STRICT === "true",
    allowAll: false,
    banner: true,
  };
  const args = [...argv];
  if (args[0] === "start") args.shift();
  else if (args[0] === "version" || args[0] === "--version" || args[0] === "-V") return { version: true };
  else if (args[0] === "help" || args[0] === "--help" || args[0] === "-h") return { help: true };
  else if (args.length > 0 && !args[0].startsWith("-")) throw new UsageError(`unknown command ${JSON.stringify(args[0])}`);
  let storeSeen = false;
  for (let i = 0; i < args.length; i++) {
    let a = args[i];
    let inline;
    if (a.startsWith("--") && a.includes("=")) {
      inline = a.slice(a.indexOf("=") + 1);
      a = a.slice(0, a.indexOf("="));
    }
    const value = () => {
      if (inline !== undefined) return inline;
      if (i + 1 >= args.length) throw new UsageError(`${a} needs a value`);
      return args[++i];
    };
    switch (a) {
      case "-b":
      case "--bind":
        opts.bind = value();
        break;
      case "-u":
      case "--user":
      case "--username":
        opts.user = value();
        break;
      case "-p":
      case "--pass":
      case "--password":
        opts.pass = value();
        break;
      case "-l":
      case "--log":
        opts.log = value();
        break;
      case "--unauthenticated":
        opts.unauthenticated = true;
        break;
      case "-s":
      case "--strict":
        opts.strict = true;
        break;
      case "-A":
      case "--allow-all":
        opts.allowAll = true;
        break;
      case "--no-banner":
        opts.banner = false;
        break;
      case "-h":
      case "--help":
        return { help: true };
      default:
        if (a.startsWith("-")) {
          // Capability flags (--allow-scripting, --deny-net, ...) are accepted
          // and ignored: the engine runs with its default capabilities.
          if (/^--(allow|deny)-[a-z-]+$/.test(a)) {
            opts.ignored = [...(opts.ignored ?? []), a];
            break;
          }
          throw new UsageError(`unknown option ${a}`);
        }
        if (storeSeen) throw new UsageError(`unexpected argument ${JSON.stringify(a)}`);
        opts.store = a;
        storeSeen = true;
    }
  }
  if ((opts.user === undefined) !== (opts.pass === undefined)) {
    throw new UsageError("--user and --pass must be given together");
  }
  const m = /^(.*):(\d+)$/.exec(opts.bind);
  if (!m || Number(m[2]) > 65535) throw new UsageError(`invalid --bind ${JSON.stringify(opts.bind)} (want ADDR:PORT)`);
  opts.host = m[1].replace(/^\[(.*)\]$/, "$1") || "127.0.0.1";
  opts.port = Number(m[2]);
  opts.engineURL = engineURL(opts.store);
  return opts;
}

function engineURL(store) {
  if (store === "memory" || store === "mem" || store === "mem://" || store === "memory://") return "mem://";
  const m = /^([a-z+]+):\/\/(.*)$/.exec(store);
  if (!m) throw new UsageError(`invalid store ${JSON.stringify(store)} (want mem://, surrealkv://PATH or rocksdb://PATH)`);
  const [, scheme, rest] = m;
  if (rest === "" && scheme !== "mem") throw new UsageError(`store ${JSON.stringify(store)} has no path`);
  switch (scheme) {
    case "mem":
      return "mem://";
    case "rocksdb":
    case "file":
      return `rocksdb://${rest}`;
    case "surrealkv":
    case "surrealkv+versioned":
      return `${scheme}://${rest}`;
    default:
      throw new UsageError(`unsupported store scheme ${JSON.stringify(scheme)} (want mem, surrealkv or rocksdb)`);
  }
}

// ---------------------------------------------------------------------------
// Logging, in the spirit of the real server's output

const LEVELS = { none: 0, full: 5, error: 1, warn: 2, info: 3, debug: 4, trace: 5 };
let logLevel = LEVELS.info;

function log(level, target, msg) {
  if ((LEVELS[level] ?? 3) > logLevel) return;
  process.stdout.write(`${new Date().toISOString()} ${level.toUpperCase().padStart(5)} ${target}: ${msg}\n`);
}

// ---------------------------------------------------------------------------
// The native engine

function loadNative() {
  if (process.env.NAPI_RS_NATIVE_LIBRARY_PATH) return require(process.env.NAPI_RS_NATIVE_LIBRARY_PATH);
  let dist;
  try {
    dist = path.dirname(fileURLToPath(import.meta.resolve("@surrealdb/node")));
  } catch {
    // import.meta.resolve is synchronous from Node 20.6 on; else look for
    // node_modules the way Node would.
    for (let dir = path.dirname(fileURLToPath(import.meta.url)); ; dir = path.dirname(dir)) {
      const candidate = path.join(dir, "node_modules", "@surrealdb", "node", "dist");
      if (fs.existsSync(candidate)) {
        dist = candidate;
        break;
      }
      if (path.dirname(dir) === dir) {
        throw new Error("cannot find the npm package @surrealdb/node (run `npm install` in the repo root)");
      }
    }
  }
  const prefix = `surrealdb-node.${process.platform}-${process.arch}`;
  let candidates = fs.readdirSync(dist).filter((f) => f.startsWith(prefix) && f.endsWith(".node"));
  if (process.platform === "linux") {
    const glibc = Boolean(process.report?.getReport?.()?.header?.glibcVersionRuntime);
    candidates.sort((a, b) => Number(b.includes(glibc ? "-gnu" : "-musl")) - Number(a.includes(glibc ? "-gnu" : "-musl")));
  }
  const errors = [];
  for (const f of candidates) {
    try {
      return require(path.join(dist, f));
    } catch (err) {
      errors.push(`${f}: ${err.message}`);
    }
  }
  throw new Error(`no usable native SurrealDB engine for ${process.platform}-${process.arch} in ${dist}: ${errors.join("; ") || "none shipped"}`);
}

// ---------------------------------------------------------------------------
// RPC errors, shaped like the engine's own (SurrealDB 3: code, message, kind,
// details); surrealdb.go reads code and message (Error() is the message).

const errParse = () => ({ code: -32700, kind: "Validation", message: "Parse error" });
const errInvalidRequest = (why) => ({ code: -32600, kind: "Validation", message: `Invalid request${why ? `: ${why}` : ""}` });
const errInvalidParams = (why) => ({ code: -32602, kind: "Validation", message: `Invalid params${why ? `: ${why}` : ""}` });
const errAuth = () => ({
  code: -32002,
  kind: "NotAllowed",
  message: "There was a problem with authentication",
  details: { kind: "Auth", details: { kind: "InvalidAuth" } },
});
const errNotSignedIn = (method) => ({
  code: -32002,
  kind: "NotAllowed",
  message: "Not enough permissions to perform this action",
  details: {
    kind: "Auth",
    details: { kind: "NotAllowed", details: { actor: "anonymous", action: method, resource: "rpc" } },
  },
});
const errSessionNotFound = (id) => ({
  code: -32000,
  kind: "NotFound",
  message: `Session not found: ${id}`,
  details: { kind: "Session", details: { id } },
});
const errSessionExists = (id) => ({
  code: -32000,
  kind: "AlreadyExists",
  message: `Session already exists: ${id}`,
  details: { kind: "Session", details: { id } },
});
const errInternal = (msg) => ({ code: -32000, kind: "Internal", message: `There was a problem with the database: ${msg}` });

// ---------------------------------------------------------------------------
// Root-credential tokens: JWT-shaped, HS512-signed with a key derived from the
// root credentials, so a token stays valid across a restart with the same
// --user/--pass (as tokens of the real server's root user do) and on any
// connection.

const TOKEN_TTL_SECONDS = 3600;
const b64url = (b) => Buffer.from(b).toString("base64url");

function tokenKey(user, pass) {
  return crypto.createHash("sha256").update(`surrealserver-token\0${user}\0${pass}`).digest();
}

function issueToken(key, user) {
  const now = Math.floor(Date.now() / 1000);
  const header = b64url(JSON.stringify({ typ: "JWT", alg: "HS512" }));
  const claims = b64url(
    JSON.stringify({ iat: now, nbf: now, exp: now + TOKEN_TTL_SECONDS, iss: "SurrealDB", jti: crypto.randomUUID(), ID: user }),
  );
  const sig = crypto.createHmac("sha512", key).update(`${header}.${claims}`).digest("base64url");
  return `${header}.${claims}.${sig}`;
}

function verifyToken(key, user, token) {
  if (typeof token !== "string") return false;
  const parts = token.split(".");
  if (parts.length !== 3) return false;
  const want = crypto.createHmac("sha512", key).update(`${parts[0]}.${parts[1]}`).digest();
  const got = Buffer.from(parts[2], "base64url");
  if (got.length !== want.length || !crypto.timingSafeEqual(got, want)) return false;
  try {
    const claims = JSON.parse(Buffer.from(parts[1], "base64url").toString("utf8"));
    return claims.ID === user && typeof claims.exp === "number" && claims.exp > Date.now() / 1000;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------
// Helpers

const NONE = Buffer.from([0xc6, 0xf6]); // CBOR tag 6 (NONE) around null

const newUUID = () => Buffer.from(crypto.randomUUID().replaceAll("-", ""), "hex");
const uuidValue = (bytes) => new Tagged(TAG_UUID, bytes);

function uuidString(v) {
  if (v instanceof Tagged && v.tag === TAG_UUID && Buffer.isBuffer(v.value) && v.value.length === 16) {
    const h = v.value.toString("hex");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }
  if (typeof v === "string") return v;
  return JSON.stringify(v);
}

// buildMap encodes a map from [key, rawValueBytes | Raw | value] pairs.
function buildMap(pairs) {
  const out = [mapHeader(pairs.length)];
  for (const [k, v] of pairs) {
    out.push(encode(k));
    out.push(Buffer.isBuffer(v) ? v : encode(v));
  }
  return Buffer.concat(out);
}

// authParams reads a signin/signup parameter map case-insensitively.
function authParams(p) {
  const get = (...names) => {
    if (!p || typeof p !== "object" || p instanceof Map) return undefined;
    for (const k of Object.keys(p)) if (names.includes(k.toLowerCase())) return p[k];
    return undefined;
  };
  return {
    ns: get("ns", "namespace"),
    db: get("db", "database"),
    ac: get("ac", "access"),
    sc: get("sc", "scope"),
    user: get("user", "username"),
    pass: get("pass", "password"),
  };
}

// Methods a connection may call before it has signed in (the real server, with
// guest access disabled, lets these through and refuses everything that reads
// or writes data).
const UNAUTHENTICATED_OK = new Set([
  "ping",
  "version",
  "health",
  "info",
  "use",
  "let",
  "set",
  "unset",
  "signin",
  "signup",
  "authenticate",
  "invalidate",
  "reset",
  "attach",
  "detach",
  "sessions",
]);

// ---------------------------------------------------------------------------
// The server

export async function startServer(opts, { native } = {}) {
  logLevel = LEVELS[String(opts.log).toLowerCase()] ?? LEVELS.info;
  native ??= loadNative();
  const { SurrealNodeEngine } = native;
  const engineVersion = String(SurrealNodeEngine.version?.() ?? "3.0.2");
  const credentials = opts.user !== undefined ? { user: opts.user, pass: opts.pass, key: tokenKey(opts.user, opts.pass) } : null;
  const authRequired = credentials !== null && !opts.unauthenticated;

  const connectOptions = {};
  if (opts.strict) connectOptions.strict = true;
  if (opts.allowAll) connectOptions.capabilities = true;
  const engine = await SurrealNodeEngine.connect(opts.engineURL, Object.keys(connectOptions).length ? connectOptions : undefined);
  let engineOpen = true;
  let inflight = 0;
  let idle = null; // resolves when inflight drops to 0 during shutdown

  async function execute(bytes) {
    if (!engineOpen) throw new Error("the datastore is shutting down");
    inflight++;
    try {
      return asBuffer(await engine.execute(bytes));
    } finally {
      inflight--;
      if (inflight === 0 && idle) idle();
    }
  }

  // Engine request with a fresh id, for the server's own bookkeeping.
  let ownId = 0;
  const internalRequest = (method, session, params) =>
    encode({ id: `surrealserver-${++ownId}`, method, session: uuidValue(session), ...(params ? { params } : {}) });

  // engine session (hex) -> { conn, clientSessionRaw | null }
  const sessionRoutes = new Map();
  const connections = new Set();

  // ---- live query notifications
  const receiver = await engine.notifications();
  (async () => {
    for (;;) {
      let value;
      try {
        value = await receiver.recv();
      } catch (err) {
        if (engineOpen) log("error", "surreal::rpc", `notification receiver failed: ${err.message}`);
        return;
      }
      if (value === null || value === undefined) return;
      try {
        routeNotification(asBuffer(value));
      } catch (err) {
        log("warn", "surreal::rpc", `dropping malformed notification: ${err.message}`);
      }
    }
  })();

  function routeNotification(bytes) {
    const entries = mapEntries(bytes);
    const sess = entries.find((e) => e.key === "session");
    if (!sess) return;
    const route = sessionRoutes.get(asBuffer(decode(sess.raw).value ?? Buffer.alloc(0)).toString("hex"));
    if (!route) return; // its session is gone
    const pairs = [];
    for (const e of entries) {
      if (e.key === "session") {
        if (route.clientSessionRaw) pairs.push(["session", route.clientSessionRaw]);
      } else {
        pairs.push([e.key, e.raw]);
      }
    }
    route.conn.send(buildMap([["result", buildMap(pairs)]]));
  }

  // ---- per connection state

  class Session {
    constructor(conn, clientSessionRaw, label) {
      this.conn = conn;
      this.clientSessionRaw = clientSessionRaw; // null for the connection's default session
      this.label = label;
      this.engineId = newUUID();
      this.key = this.engineId.toString("hex");
      this.authed = !authRequired;
      this.lives = new Map(); // live query id hex -> uuid bytes
      this.ready = null; // promise: attached in the engine
    }

    attach() {
      sessionRoutes.set(this.key, { conn: this.conn, clientSessionRaw: this.clientSessionRaw });
      this.ready = execute(internalRequest("attach", this.engineId)).then((res) => {
        const err = engineError(res);
        if (err) throw new Error(`attach: ${JSON.stringify(err)}`);
      });
      return this.ready;
    }

    // detach kills the session's live queries (the engine keeps them running
    // after a detach) and detaches it from the engine.
    async detach() {
      sessionRoutes.delete(this.key);
      try {
        await this.ready;
      } catch {
        return;
      }
      if (!engineOpen) return;
      for (const id of this.lives.values()) {
        try {
          await execute(internalRequest("kill", this.engineId, [uuidValue(id)]));
        } catch {
          // already gone
        }
      }
      this.lives.clear();
      try {
        await execute(internalRequest("detach", this.engineId));
      } catch {
        // shutting down
      }
    }
  }

  class Connection {
    // ws is the WebSocket, or null for one HTTP request whose response goes to
    // sink.
    constructor(ws, remote, sink) {
      this.ws = ws;
      this.sink = sink;
      this.remote = remote;
      this.sessions = new Map(); // client session raw hex -> Session ("" = default)
      const def = new Session(this, null, "default");
      this.sessions.set("", def);
      def.attach().catch((err) => log("error", "surreal::rpc", err.message));
    }

    send(bytes) {
      if (this.sink) this.sink(bytes);
      else if (this.ws.readyState === this.ws.OPEN) this.ws.send(bytes, { binary: true });
    }

    async close() {
      const all = [...this.sessions.values()];
      this.sessions.clear();
      await Promise.all(all.map((s) => s.detach()));
    }
  }

  function engineError(res) {
    // execute returns the bare result value, or {error: {code, message, ...}}.
    if (res.length === 0 || res[0] !== 0xa1) return null;
    let entries;
    try {
      entries = mapEntries(res);
    } catch {
      return null;
    }
    if (entries.length !== 1 || entries[0].key !== "error") return null;
    const e = decode(entries[0].raw);
    if (e && typeof e === "object" && typeof e.code === "number" && typeof e.message === "string") return entries[0].raw;
    return null;
  }

  function reply(conn, idRaw, key, value) {
    const pairs = [];
    if (idRaw) pairs.push(["id", idRaw]);
    pairs.push([key, value]);
    conn.send(buildMap(pairs));
  }
  const replyError = (conn, idRaw, err) => reply(conn, idRaw, "error", Buffer.isBuffer(err) ? err : encode(err));
  const replyResult = (conn, idRaw, value) => reply(conn, idRaw, "result", Buffer.isBuffer(value) ? value : encode(value));

  // forward relays the request to the engine in session s and returns the raw
  // response (result value or {error}).
  async function forward(s, entries) {
    await s.ready;
    const pairs = [];
    for (const e of entries) if (e.key !== "session") pairs.push([e.key, e.raw]);
    pairs.push(["session", encode(uuidValue(s.engineId))]);
    return execute(buildMap(pairs));
  }

  function trackLives(s, method, entries, res) {
    if (method === "live") {
      const v = decode(res);
      if (v instanceof Tagged && v.tag === TAG_UUID) s.lives.set(v.value.toString("hex"), v.value);
    } else if (method === "kill") {
      const params = entries.find((e) => e.key === "params");
      if (!params) return;
      const [first] = arrayItems(params.raw, 1);
      const v = first && decode(first);
      if (v instanceof Tagged && v.tag === TAG_UUID) s.lives.delete(v.value.toString("hex"));
      else if (typeof v === "string") s.lives.delete(v.replaceAll("-", "").toLowerCase());
    } else if (method === "query") {
      const params = entries.find((e) => e.key === "params");
      if (!params) return;
      const [first] = arrayItems(params.raw, 1);
      const sql = first && decode(first);
      if (typeof sql !== "string" || !/\blive\b/i.test(sql)) return;
      const results = decode(res);
      if (!Array.isArray(results)) return;
      for (const r of results) {
        const v = r && r.result;
        if (r && r.status === "OK" && v instanceof Tagged && v.tag === TAG_UUID) s.lives.set(v.value.toString("hex"), v.value);
      }
    }
  }

  // handleRequest processes one RPC frame.
  //
  // Authentication (the engine has none): each session (the connection's
  // default one and every one attached with `attach`) starts signed out.
  // - signin with the root --user/--pass (no NS/DB/AC) succeeds locally and
  //   returns a token; other credentials are passed to the engine, so users
  //   defined with DEFINE USER / DEFINE ACCESS work with their own permissions;
  //   failures return the engine's auth error (code -32002, "There was a
  //   problem with authentication").
  // - authenticate accepts a token issued for the root credentials (also by an
  //   earlier run with the same credentials) or one the engine accepts.
  // - invalidate and reset sign the session out.
  // - until signed in, only UNAUTHENTICATED_OK methods are allowed; anything
  //   else gets code -32002 "Not enough permissions to perform this action".
  async function handleRequest(conn, data) {
    let entries;
    try {
      entries = mapEntries(data);
    } catch {
      replyError(conn, null, errParse());
      return;
    }
    const idEntry = entries.find((e) => e.key === "id");
    const idRaw = idEntry ? idEntry.raw : null;
    let method;
    let sessionValue;
    try {
      const m = entries.find((e) => e.key === "method");
      method = m && decode(m.raw);
      const s = entries.find((e) => e.key === "session");
      sessionValue = s ? decode(s.raw) : undefined;
      if (sessionValue === null || (sessionValue instanceof Tagged && sessionValue.tag === 6)) sessionValue = undefined;
    } catch {
      replyError(conn, idRaw, errParse());
      return;
    }
    if (typeof method !== "string" || method === "") {
      replyError(conn, idRaw, errInvalidRequest("missing method"));
      return;
    }
    method = method.toLowerCase();
    const sessionRaw = sessionValue === undefined ? null : encode(sessionValue);
    const sessionKey = sessionRaw ? sessionRaw.toString("hex") : "";

    if (method === "attach") {
      if (!sessionRaw) return replyError(conn, idRaw, errInvalidParams("attach needs a session"));
      if (conn.sessions.has(sessionKey)) return replyError(conn, idRaw, errSessionExists(uuidString(sessionValue)));
      const s = new Session(conn, sessionRaw, uuidString(sessionValue));
      conn.sessions.set(sessionKey, s);
      try {
        await s.attach();
      } catch (err) {
        conn.sessions.delete(sessionKey);
        sessionRoutes.delete(s.key);
        return replyError(conn, idRaw, errInternal(err.message));
      }
      return replyResult(conn, idRaw, null);
    }
    if (method === "health") {
      // The engine has no such method; the server answers NONE while healthy.
      return replyResult(conn, idRaw, NONE);
    }
    if (method === "sessions") {
      const ids = [...conn.sessions.values()].filter((s) => s.clientSessionRaw).map((s) => s.clientSessionRaw);
      return replyResult(conn, idRaw, Buffer.concat([arrayHeader(ids.length), ...ids]));
    }

    const s = conn.sessions.get(sessionKey);
    if (!s) return replyError(conn, idRaw, errSessionNotFound(uuidString(sessionValue)));

    if (method === "detach") {
      if (!sessionRaw) return replyError(conn, idRaw, errInvalidParams("detach needs a session"));
      conn.sessions.delete(sessionKey);
      await s.detach();
      return replyResult(conn, idRaw, null);
    }

    if (method === "signin" && credentials) {
      let p;
      try {
        const params = entries.find((e) => e.key === "params");
        p = params ? decode(params.raw)?.[0] : undefined;
      } catch {
        return replyError(conn, idRaw, errInvalidParams());
      }
      const a = authParams(p);
      const rootForm = a.ns === undefined && a.db === undefined && a.ac === undefined && a.sc === undefined;
      if (rootForm && a.user === credentials.user && a.pass === credentials.pass) {
        // Restore the engine session's full access in case an earlier signin
        // as a less privileged user lowered it.
        await s.ready;
        await execute(internalRequest("invalidate", s.engineId));
        s.authed = true;
        return replyResult(conn, idRaw, issueToken(credentials.key, credentials.user));
      }
      const res = await forward(s, entries);
      const err = engineError(res);
      if (err) {
        s.authed = !authRequired;
        return replyError(conn, idRaw, err);
      }
      s.authed = true;
      return replyResult(conn, idRaw, res);
    }
    if (method === "authenticate" && credentials) {
      let token;
      try {
        const params = entries.find((e) => e.key === "params");
        token = params ? decode(params.raw)?.[0] : undefined;
      } catch {
        return replyError(conn, idRaw, errInvalidParams());
      }
      if (verifyToken(credentials.key, credentials.user, token)) {
        await s.ready;
        await execute(internalRequest("invalidate", s.engineId));
        s.authed = true;
        return replyResult(conn, idRaw, null);
      }
      const res = await forward(s, entries);
      const err = engineError(res);
      if (err) {
        s.authed = !authRequired;
        return replyError(conn, idRaw, err);
      }
      s.authed = true;
      return replyResult(conn, idRaw, res);
    }
    if (method === "signup") {
      const res = await forward(s, entries);
      const err = engineError(res);
      if (err) return replyError(conn, idRaw, err);
      s.authed = true;
      return replyResult(conn, idRaw, res);
    }
    if (method === "invalidate" || method === "reset") {
      const res = await forward(s, entries);
      s.authed = !authRequired;
      const err = engineError(res);
      return err ? replyError(conn, idRaw, err) : replyResult(conn, idRaw, res);
    }

    if (!s.authed && !UNAUTHENTICATED_OK.has(method)) {
      return replyError(conn, idRaw, errNotSignedIn(method));
    }

    const res = await forward(s, entries);
    const err = engineError(res);
    if (err) return replyError(conn, idRaw, err);
    if (method === "live" || method === "kill" || method === "query") {
      try {
        trackLives(s, method, entries, res);
      } catch (e) {
        log("warn", "surreal::rpc", `live query tracking: ${e.message}`);
      }
    }
    return replyResult(conn, idRaw, res);
  }

  // ---- HTTP RPC: POST /rpc with one CBOR request, the way surrealdb.go's
  // http:// connection uses it: namespace and database in the Surreal-NS and
  // Surreal-DB headers, credentials as "Authorization: Bearer TOKEN" (or Basic
  // with the root credentials). Each request runs in a fresh engine session.
  // Live queries need a WebSocket.

  async function readBody(req, limit) {
    const chunks = [];
    let size = 0;
    for await (const chunk of req) {
      size += chunk.length;
      if (size > limit) throw new Error("request body too large");
      chunks.push(chunk);
    }
    return Buffer.concat(chunks);
  }

  async function handleHTTPRequest(req, res) {
    const send = (status, frame) => {
      res.writeHead(status, { "content-type": "application/cbor", "content-length": frame.length });
      res.end(frame);
    };
    const type = String(req.headers["content-type"] ?? "application/cbor").split(";")[0].trim().toLowerCase();
    if (type !== "application/cbor") {
      res.writeHead(415, { "content-type": "text/plain" });
      res.end("this test server only speaks CBOR (Content-Type: application/cbor)\n");
      return;
    }
    const body = await readBody(req, 256 * 1024 * 1024);
    let method;
    try {
      const m = mapEntries(body).find((e) => e.key === "method");
      method = m ? String(decode(m.raw)).toLowerCase() : "";
    } catch {
      return send(400, buildMap([["error", encode(errParse())]]));
    }
    if (["live", "attach", "detach", "begin", "commit", "cancel"].includes(method)) {
      const frame = buildMap([["error", encode(errInvalidRequest(`${method} needs a WebSocket connection`))]]);
      return send(400, frame);
    }
    let response = null;
    const conn = new Connection(null, `${req.socket.remoteAddress}:${req.socket.remotePort}`, (b) => {
      response = b;
    });
    try {
      const s = conn.sessions.get("");
      await s.ready;
      const ns = req.headers["surreal-ns"] ?? req.headers.ns;
      const db = req.headers["surreal-db"] ?? req.headers.db;
      if (ns !== undefined || db !== undefined) {
        const r = await execute(internalRequest("use", s.engineId, [ns ?? null, db ?? null]));
        const err = engineError(r);
        if (err) return send(400, buildMap([["error", err]]));
      }
      const auth = String(req.headers.authorization ?? "");
      if (credentials && auth) {
        let ok = false;
        const [scheme, value = ""] = auth.split(/\s+/, 2);
        if (/^bearer$/i.test(scheme)) {
          ok = verifyToken(credentials.key, credentials.user, value);
          if (!ok) ok = !engineError(await execute(internalRequest("authenticate", s.engineId, [value])));
        } else if (/^basic$/i.test(scheme)) {
          const decoded = Buffer.from(value, "base64").toString("utf8");
          const i = decoded.indexOf(":");
          ok = i >= 0 && decoded.slice(0, i) === credentials.user && decoded.slice(i + 1) === credentials.pass;
        }
        if (!ok) return send(401, buildMap([["error", encode(errAuth())]]));
        s.authed = true;
      }
      await handleRequest(conn, body);
    } finally {
      await conn.close();
    }
    if (response === null) return send(500, buildMap([["error", encode(errInternal("no response"))]]));
    send(200, response);
  }

  // ---- HTTP + WebSocket

  const httpServer = http.createServer((req, res) => {
    const url = new URL(req.url, "http://localhost");
    if (url.pathname === "/health" && (req.method === "GET" || req.method === "HEAD")) {
      res.writeHead(engineOpen ? 200 : 503, { "content-length": 0 });
      res.end();
    } else if (url.pathname === "/version" && (req.method === "GET" || req.method === "HEAD")) {
      const body = `surrealdb-${engineVersion}`;
      res.writeHead(200, { "content-type": "text/plain; charset=utf-8", "content-length": Buffer.byteLength(body) });
      res.end(req.method === "HEAD" ? undefined : body);
    } else if (url.pathname === "/status") {
      res.writeHead(200, { "content-length": 0 });
      res.end();
    } else if (url.pathname === "/rpc" && req.method === "POST") {
      handleHTTPRequest(req, res).catch((err) => {
        log("error", "surreal::rpc", `HTTP request failed: ${err.stack || err.message}`);
        if (!res.headersSent) {
          const body = buildMap([["error", encode(errInternal(err.message))]]);
          res.writeHead(500, { "content-type": "application/cbor", "content-length": body.length });
          res.end(body);
        }
      });
    } else {
      res.writeHead(404, { "content-type": "text/plain" });
      res.end("not found\n");
    }
  });

  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: 256 * 1024 * 1024,
    handleProtocols: (protocols) => {
      if (protocols.has("cbor")) return "cbor";
      return false;
    },
  });

  httpServer.on("upgrade", (req, socket, head) => {
    const url = new URL(req.url, "http://localhost");
    if (url.pathname !== "/rpc") {
      socket.end("HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
      return;
    }
    const offered = String(req.headers["sec-websocket-protocol"] ?? "")
      .split(",")
      .map((p) => p.trim())
      .filter(Boolean);
    if (offered.length > 0 && !offered.includes("cbor")) {
      socket.end(
        "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\nthis test server only speaks the cbor subprotocol\n",
      );
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit("connection", ws, req));
  });

  wss.on("connection", (ws, req) => {
    const conn = new Connection(ws, `${req.socket.remoteAddress}:${req.socket.remotePort}`);
    connections.add(conn);
    log("debug", "surreal::rpc", `WebSocket connection from ${conn.remote}`);
    ws.on("message", (data) => {
      const bytes = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
      handleRequest(conn, bytes).catch((err) => {
        log("error", "surreal::rpc", `request failed: ${err.stack || err.message}`);
        let idRaw = null;
        try {
          idRaw = mapEntries(bytes).find((e) => e.key === "id")?.raw ?? null;
        } catch {
          // unparseable
        }
        replyError(conn, idRaw, errInternal(err.message));
      });
    });
    ws.on("error", (err) => log("debug", "surreal::rpc", `WebSocket error from ${conn.remote}: ${err.message}`));
    ws.on("close", () => {
      connections.delete(conn);
      conn.close().catch((err) => log("warn", "surreal::rpc", `closing session: ${err.message}`));
      log("debug", "surreal::rpc", `WebSocket connection from ${conn.remote} closed`);
    });
  });

  await new Promise((resolve, reject) => {
    httpServer.once("error", reject);
    httpServer.listen(opts.port, opts.host, () => {
      httpServer.off("error", reject);
      resolve();
    });
  });
  const addr = httpServer.address();
  const hostport = `${addr.family === "IPv6" ? `[${addr.address}]` : addr.address}:${addr.port}`;

  let closing = null;
  async function close() {
    if (closing) return closing;
    closing = (async () => {
      log("info", "surreal::net", "Stopping web server");
      httpServer.close();
      for (const conn of connections) conn.ws?.close(1001, "server shutting down");
      await Promise.all([...connections].map((c) => c.close().catch(() => {})));
      if (inflight > 0) {
        await Promise.race([new Promise((r) => (idle = r)), new Promise((r) => setTimeout(r, 2000))]);
      }
      engineOpen = false;
      for (const conn of connections) conn.ws?.terminate();
      engine.free();
      log("info", "surreal::dbs", "Datastore closed");
    })();
    return closing;
  }

  return { address: hostport, port: addr.port, engineVersion, close };
}

export async function main(argv = process.argv.slice(2)) {
  let opts;
  try {
    opts = parseArgs(argv);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`error: ${err.message}\n\n${USAGE}\n`);
      process.exit(2);
    }
    throw err;
  }
  if (opts.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  if (opts.version) {
    const { SurrealNodeEngine } = loadNative();
    process.stdout.write(`${SurrealNodeEngine.version?.() ?? "3.0.2"} for ${process.platform} on ${process.arch} (@surrealdb/node test server)\n`);
    return;
  }
  logLevel = LEVELS[String(opts.log).toLowerCase()] ?? LEVELS.info;

  let server;
  try {
    log("info", "surreal::env", `Running SurrealDB engine via @surrealdb/node for ${process.platform} on ${process.arch}`);
    if (opts.ignored) log("warn", "surreal::env", `ignoring capability flags: ${opts.ignored.join(" ")}`);
    if (!opts.user) log("warn", "surreal::env", "No --user/--pass given: authentication is disabled");
    log("info", "surreal::kvs", `Starting kvs store at ${opts.engineURL}`);
    server = await startServer(opts);
  } catch (err) {
    process.stderr.write(`error: ${err.message}\n`);
    process.exit(1);
  }
  log("info", "surreal::kvs", `Started kvs store at ${opts.engineURL} (SurrealDB ${server.engineVersion})`);
  if (opts.user) log("info", "surreal::dbs", `Credentials were provided for root user '${opts.user}'`);
  log("info", "surreal::net", `Started web server on ${server.address}`);
  // The machine-readable readiness line (PORT is the real one for --bind ...:0).
  process.stdout.write(`listening on ${server.address}\n`);

  const shutdown = (signal) => {
    log("info", "surreal::net", `Received ${signal}, shutting down`);
    server.close().then(
      () => process.exit(0),
      (err) => {
        process.stderr.write(`error during shutdown: ${err.message}\n`);
        process.exit(1);
      },
    );
  };
  process.once("SIGTERM", () => shutdown("SIGTERM"));
  process.once("SIGINT", () => shutdown("SIGINT"));

  // Test harness guard: with SURREAL_EXIT_WITH_PARENT=1, exit when the process
  // that started this one dies (a killed `go test` must not leak servers).
  if (process.env.SURREAL_EXIT_WITH_PARENT === "1") {
    const parent = process.ppid;
    setInterval(() => {
      if (process.ppid !== parent) shutdown("parent exit");
    }, 500).unref();
  }
}
