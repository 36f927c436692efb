// Every call the page makes: keys from the tab's session storage, server errors as ApiError,
// the server-down signal, and readers for SSE and NDJSON streams.

const API_KEY = "mmserve.apiKey";
const ADMIN_KEY = "mmserve.adminKey";

export const keys = {
  get api() {
    return sessionStorage.getItem(API_KEY) || "";
  },
  get admin() {
    return sessionStorage.getItem(ADMIN_KEY) || "";
  },
  save(api, admin) {
    for (const [name, value] of [[API_KEY, api], [ADMIN_KEY, admin]]) {
      if (value) sessionStorage.setItem(name, value);
      else sessionStorage.removeItem(name);
    }
  },
  forget() {
    this.save("", "");
  },
};

/** An error answer of the server: its own message, status, code and Retry-After seconds. */
export class ApiError extends Error {
  constructor(status, message, { code = null, param = null, details = null, retryAfter = null } = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.param = param;
    this.details = details;
    this.retryAfter = retryAfter;
  }
}

/** The server did not answer at all (connection refused, reset, DNS). */
export class ServerDown extends Error {}

const listeners = { down: [], up: [], unauthorized: [] };
export function on(event, fn) {
  listeners[event].push(fn);
}
function emit(event, ...args) {
  for (const fn of listeners[event]) fn(...args);
}

function headersFor(path, json) {
  const headers = {};
  if (json) headers["Content-Type"] = "application/json";
  // /admin/* takes the admin key when the server has one, else the API key.
  const key = path.startsWith("/admin/") ? keys.admin || keys.api : keys.api;
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

// Error types that say nothing beyond the message; other `details` (an exception class) help.
const GENERIC_DETAILS = /(_error|^service_unavailable)$/;

/** The ApiError of a non-2xx response, from either envelope (native or OpenAI). */
export async function errorOf(res, path) {
  let message = `${res.status} ${res.statusText || "error"}`;
  let fields = {};
  try {
    const body = await res.json();
    const err = body.error;
    if (typeof err === "string") {
      message = err;
      fields = { code: body.code, param: body.param, details: body.details };
    } else if (err && typeof err.message === "string") {
      message = err.message;
      fields = { code: err.code, param: err.param };
    }
  } catch {
    // not JSON (a proxy's page): keep the status line
  }
  if (fields.details && !GENERIC_DETAILS.test(fields.details)) {
    message = `${message} (${fields.details})`;
  }
  const retry = parseFloat(res.headers.get("Retry-After"));
  fields.retryAfter = Number.isFinite(retry) ? retry : null;
  if (res.status === 401) emit("unauthorized", path);
  return new ApiError(res.status, message, fields);
}

/**
 * Call the server. Resolves to the parsed JSON (or the Response with raw: true);
 * rejects with ApiError (an error answer), ServerDown (no answer) or an AbortError.
 */
export async function call(path, { method = "GET", body, signal, raw = false } = {}) {
  let res;
  try {
    res = await fetch(path, {
      method,
      headers: headersFor(path, body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    emit("down", err);
    throw new ServerDown("the server did not answer");
  }
  emit("up");
  if (!res.ok) throw await errorOf(res, path);
  return raw ? res : res.json();
}

async function* lines(res, separator) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let at;
      while ((at = buffer.indexOf(separator)) >= 0) {
        yield buffer.slice(0, at);
        buffer = buffer.slice(at + separator.length);
      }
    }
    if (buffer.trim()) yield buffer;
  } finally {
    reader.releaseLock();
  }
}

/** Server-sent events of a response: each `data:` payload parsed, "[DONE]" as the string. */
export async function* sseEvents(res) {
  for await (const event of lines(res, "\n\n")) {
    const data = event
      .split("\n")
      .filter((line) => line.startsWith("data:"))
      .map((line) => line.slice(5).trimStart())
      .join("\n");
    if (!data) continue; // comment lines (": ...") keep the connection alive
    yield data === "[DONE]" ? data : JSON.parse(data);
  }
}

/** NDJSON lines of a response, parsed. */
export async function* ndjson(res) {
  for await (const line of lines(res, "\n")) {
    if (line.trim()) yield JSON.parse(line);
  }
}
