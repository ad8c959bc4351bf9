// The HTTP API as the dashboard uses it: the key lives in sessionStorage (this tab only), every
// call sends it as a bearer token, and an answer that is not a 2xx becomes an ApiError carrying
// the problem+json document (its `detail`, and the `field` it names, if any).

const KEY = "creditd.key";
const TENANT = "creditd.tenant";

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
    this.field = this.problem.field || null;
  }
}

export function key() {
  return sessionStorage.getItem(KEY);
}

export function setKey(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
  if (!value) setTenant(null);
}

// The tenant a platform key acts in (sent as X-Tenant), or null for the key's own.
export function tenant() {
  return sessionStorage.getItem(TENANT);
}

export function setTenant(value) {
  if (value) sessionStorage.setItem(TENANT, value);
  else sessionStorage.removeItem(TENANT);
}

function newIdempotencyKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// Sends one request; POSTs carry a fresh Idempotency-Key, so a retried click is applied once.
export async function call(method, path, body) {
  const headers = { Authorization: `Bearer ${key() || ""}`, Accept: "application/json" };
  if (tenant()) headers["X-Tenant"] = tenant();
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (method === "POST") headers["Idempotency-Key"] = newIdempotencyKey();
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, { detail: `the server could not be reached (${error.message})` });
  }
  const text = await response.text();
  let document = null;
  try {
    document = text ? JSON.parse(text) : null;
  } catch {
    document = { detail: text };
  }
  if (!response.ok) throw new ApiError(response.status, document);
  return document;
}

export const get = (path) => call("GET", path);

// A query string from the defined, non-empty values of `params`.
export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(name, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

export const segment = encodeURIComponent;
