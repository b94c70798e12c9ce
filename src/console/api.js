// The management API as the console uses it: the token kept in
// sessionStorage, one fetch wrapper that sends it and turns the API's error
// object into an ApiError carrying its message, and the paths of the
// current namespace. The pages decide what to show; a 401 anywhere is
// handed to the app, which returns to the sign-in page.

const TOKEN_KEY = "nr-console.token";
const NAMESPACE_KEY = "nr-console.namespace";

export const session = {
  get token() { return sessionStorage.getItem(TOKEN_KEY); },
  set token(value) { sessionStorage.setItem(TOKEN_KEY, value); },
  get namespace() { return sessionStorage.getItem(NAMESPACE_KEY); },
  set namespace(value) { sessionStorage.setItem(NAMESPACE_KEY, value); },
  clear() { sessionStorage.removeItem(TOKEN_KEY); sessionStorage.removeItem(NAMESPACE_KEY); },
};

// A refused or failed call: the HTTP status (0 when the API could not be
// reached), the API's machine code and its sentence.
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let unauthorized = () => {};

// Sets what happens when the API answers 401 (the token is unknown,
// revoked or expired).
export function onUnauthorized(handler) {
  unauthorized = handler;
}

// Calls `method` on `/v1` + `path` with `body` as JSON (when given);
// resolves to the decoded answer (null for 204), rejects with ApiError.
export async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = session.token;
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers, cache: "no-store", credentials: "omit", redirect: "error" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    // Relative to /console/, so a reverse proxy may serve both under a prefix.
    response = await fetch(`../v1${path}`, init);
  } catch (e) {
    throw new ApiError(0, "unreachable", `The API cannot be reached (${e.message}).`);
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = data && data.error ? data.error : {};
    const failure = new ApiError(response.status, error.code || "http_" + response.status,
      error.message || `The API answered HTTP ${response.status}.`);
    if (response.status === 401) unauthorized(failure);
    throw failure;
  }
  if (data === null) throw new ApiError(response.status, "bad_response", "The API answered something that is not JSON.");
  return data;
}

// `/namespaces/{ns}` + each part, URI-encoded.
export function nsPath(ns, ...parts) {
  return [`/namespaces/${encodeURIComponent(ns)}`, ...parts.map((p) => encodeURIComponent(p))].join("/");
}

// `path` with the non-empty entries of `query` as its query string.
export function withQuery(path, query) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") q.set(k, v);
  }
  const qs = q.toString();
  return qs ? `${path}?${qs}` : path;
}

// Every channel of `ns`, following the cursor (at most `pages` pages of
// 100), for the pickers of the event log and the recover page.
export async function allChannels(ns, pages = 10) {
  const items = [];
  let cursor = null;
  for (let i = 0; i < pages; i++) {
    const page = await call("GET", withQuery(nsPath(ns, "channels"), { limit: 100, cursor }));
    items.push(...page.items);
    cursor = page.next_cursor;
    if (!cursor) break;
  }
  return items;
}

// Every rule (subscription) of `ns`, following the cursor (at most `pages`
// pages of 100).
export async function allRules(ns, pages = 10) {
  const items = [];
  let cursor = null;
  for (let i = 0; i < pages; i++) {
    const page = await call("GET", withQuery(nsPath(ns, "rules"), { limit: 100, cursor }));
    items.push(...page.items);
    cursor = page.next_cursor;
    if (!cursor) break;
  }
  return items;
}

// The event types of `ns` (seen, subscribed to or described), sorted.
export async function eventTypes(ns) {
  return (await call("GET", nsPath(ns, "event-types"))).items;
}
