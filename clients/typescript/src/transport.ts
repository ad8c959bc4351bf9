/**
 * The one way a request leaves the SDK: URL and headers from the route table, one deadline per
 * call, retries with exponential backoff and jitter, the same `Idempotency-Key` on every attempt,
 * and problem answers turned into typed errors.
 *
 * What is retried: no answer (refused, reset, the attempt cut off by the deadline), `503` (after
 * its `Retry-After` if longer than the backoff), `409 idempotency-key-in-flight` and
 * `500 write-outcome-unknown`. Never any other 4xx. Every operation the SDK calls is safe to
 * retry: each state-changing POST carries an idempotency key, and the other writes (PUT, PATCH,
 * DELETE, issuing a stream token or a portal link, abandoning a checkout) have the same effect
 * however often they arrive.
 */
import {
  CreditdConnectionError,
  CreditdError,
  CreditdTimeoutError,
  IdempotencyKeyInFlightError,
  ServerBusyError,
  WriteOutcomeUnknownError,
  problemError,
  type ProblemBody,
} from "./errors.js";
import type { Route } from "./routes.js";
import { requireWebCrypto } from "./webcrypto.js";

/** A `fetch` function: the platform's, or one a test or an application supplies. */
export type FetchLike = (input: string, init: RequestInit) => Promise<Response>;

/** How a client reaches the server. */
export interface ClientOptions {
  /** The server's base URL, such as `https://credits.example.com`. */
  baseUrl: string;
  /** The API key (`Authorization: Bearer <apiKey>`). */
  apiKey: string;
  /** The tenant to act in (`X-Tenant`), for a platform key. */
  tenant?: string;
  /** The time one call may take, all retries included, in milliseconds (default 10 000). */
  timeoutMs?: number;
  /** Retries after the first attempt (default 3). */
  maxRetries?: number;
  /** The first backoff delay in milliseconds (default 100); it doubles per retry, with jitter. */
  retryBaseDelayMs?: number;
  /** The longest backoff delay in milliseconds (default 2 000). */
  retryMaxDelayMs?: number;
  /** The `fetch` to use (default: the platform's). */
  fetch?: FetchLike;
}

/** Options of one call. */
export interface CallOptions {
  /** The `Idempotency-Key` to send (default: a random UUID per call, for the POSTs that take one). */
  idempotencyKey?: string;
  /** This call's timeout in milliseconds, retries included. */
  timeoutMs?: number;
  /** This call's retries after the first attempt. */
  maxRetries?: number;
  /** The tenant to act in, for this call (`X-Tenant`). */
  tenant?: string;
  /** A request id to send as `X-Request-Id` (the server echoes it, and logs it). */
  requestId?: string;
  /** Aborts the call (no retry after it). */
  signal?: AbortSignal;
}

/** What the answer said besides its body. */
export interface ResponseMeta {
  /** The HTTP status. */
  readonly status: number;
  /** Whether the server replayed a stored answer (`Idempotent-Replayed: true`). */
  readonly replayed: boolean;
  /** The `Idempotency-Key` the call carried, if any. */
  readonly idempotencyKey: string | undefined;
  /** The answer's `X-Request-Id`. */
  readonly requestId: string | undefined;
  /** Attempts made, the successful one included. */
  readonly attempts: number;
  /** The answer's headers. */
  readonly headers: Headers;
}

/**
 * An answer's body with `meta`, a non-enumerable property (absent from `JSON.stringify` and
 * object spreads) holding what the answer said besides its body.
 */
export type WithMeta<T> = T & { readonly meta: ResponseMeta };

/** A request, ready to send. */
export interface Call {
  readonly route: Route;
  readonly path?: Record<string, string>;
  readonly query?: object;
  readonly body?: unknown;
}

const DEFAULT_TIMEOUT_MS = 10_000;
const DEFAULT_RETRIES = 3;
const DEFAULT_BASE_DELAY_MS = 100;
const DEFAULT_MAX_DELAY_MS = 2_000;

/** A random UUID v4, from WebCrypto (browsers, Node 18+). */
export function randomKey(): string {
  const crypto = requireWebCrypto();
  if (typeof crypto.randomUUID === "function") {
    return crypto.randomUUID();
  }
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = ((bytes[6] ?? 0) & 0x0f) | 0x40;
  bytes[8] = ((bytes[8] ?? 0) & 0x3f) | 0x80;
  const hex = Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** Fills a path template: each `{name}` becomes the percent-encoded parameter. */
export function fillPath(template: string, params: Record<string, string> = {}): string {
  return template.replace(/\{([a-z_]+)\}/g, (_, name: string) => {
    const value = params[name];
    if (typeof value !== "string" || value === "") {
      throw new TypeError(`creditd: path parameter ${name} must be a non-empty string`);
    }
    return encodeURIComponent(value);
  });
}

function queryString(query: object | undefined): string {
  if (!query) {
    return "";
  }
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null) {
      search.append(name, String(value));
    }
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/** `Retry-After` in seconds (delta-seconds or an HTTP date), if present and sensible. */
function retryAfterSeconds(headers: Headers): number | undefined {
  const value = headers.get("retry-after");
  if (value === null) {
    return undefined;
  }
  if (/^\d+$/.test(value.trim())) {
    return Number(value.trim());
  }
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, (date - Date.now()) / 1000);
}

/** What went wrong with a connection: `fetch failed` says little, its cause (ECONNREFUSED) more. */
function describe(cause: unknown): string {
  const parts: string[] = [];
  for (let error = cause, depth = 0; error instanceof Error && depth < 3; error = error.cause, depth += 1) {
    parts.push(error.message);
  }
  return parts.join(": ") || String(cause);
}

function isRetryable(error: unknown): boolean {
  return (
    error instanceof CreditdConnectionError ||
    error instanceof ServerBusyError ||
    error instanceof IdempotencyKeyInFlightError ||
    error instanceof WriteOutcomeUnknownError
  );
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

function attachMeta<T>(body: T, meta: ResponseMeta): WithMeta<T> {
  const target = (typeof body === "object" && body !== null ? body : {}) as T;
  Object.defineProperty(target, "meta", { value: meta, enumerable: false });
  return target as WithMeta<T>;
}

async function parseProblem(response: Response, text: string): Promise<ProblemBody> {
  try {
    const parsed: unknown = JSON.parse(text);
    if (typeof parsed === "object" && parsed !== null && !Array.isArray(parsed)) {
      return parsed as ProblemBody;
    }
  } catch {
    // Not JSON: a proxy's page, say. Described below.
  }
  return {
    title: response.statusText || `HTTP ${response.status}`,
    status: response.status,
    detail: text.slice(0, 500),
  };
}

/** Sends requests for one client. */
export class Transport {
  readonly baseUrl: string;
  private readonly apiKey: string;
  private readonly tenant: string | undefined;
  private readonly timeoutMs: number;
  private readonly maxRetries: number;
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly fetchFn: FetchLike;

  constructor(options: ClientOptions) {
    if (!options.baseUrl) {
      throw new TypeError("creditd: baseUrl is required");
    }
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.apiKey = options.apiKey;
    this.tenant = options.tenant;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.maxRetries = options.maxRetries ?? DEFAULT_RETRIES;
    this.baseDelayMs = options.retryBaseDelayMs ?? DEFAULT_BASE_DELAY_MS;
    this.maxDelayMs = options.retryMaxDelayMs ?? DEFAULT_MAX_DELAY_MS;
    const platformFetch = globalThis.fetch?.bind(globalThis);
    const fetchFn = options.fetch ?? platformFetch;
    if (!fetchFn) {
      throw new TypeError("creditd: no fetch: pass options.fetch on this platform");
    }
    this.fetchFn = fetchFn;
  }

  /** The full URL of a route. */
  url(route: Route, path?: Record<string, string>, query?: object): string {
    return `${this.baseUrl}${fillPath(route.path, path)}${queryString(query)}`;
  }

  /** The headers every keyed request carries. */
  headers(options: CallOptions = {}): Record<string, string> {
    const headers: Record<string, string> = {
      Authorization: `Bearer ${this.apiKey}`,
      Accept: "application/json, application/problem+json",
    };
    const tenant = options.tenant ?? this.tenant;
    if (tenant !== undefined) {
      headers["X-Tenant"] = tenant;
    }
    if (options.requestId !== undefined) {
      headers["X-Request-Id"] = options.requestId;
    }
    return headers;
  }

  /** Sends a call, retrying as the module doc says, and answers its JSON body with `meta`. */
  async send<T>(call: Call, options: CallOptions = {}): Promise<WithMeta<T>> {
    const { text, meta } = await this.exchange(call, options);
    const parsed: unknown = text === "" ? {} : JSON.parse(text);
    return attachMeta(parsed as T, meta);
  }

  /** Sends a call whose success is text (metrics, the spec, a probe), retrying the same way. */
  async sendText(call: Call, options: CallOptions = {}): Promise<string> {
    return (await this.exchange(call, options)).text;
  }

  private async exchange(call: Call, options: CallOptions): Promise<{ text: string; meta: ResponseMeta }> {
    const { route } = call;
    const url = this.url(route, call.path, call.query);
    const headers = this.headers(options);
    const idempotencyKey = route.idempotencyKey ? (options.idempotencyKey ?? randomKey()) : undefined;
    if (idempotencyKey !== undefined) {
      headers["Idempotency-Key"] = idempotencyKey;
    }
    // Serialized once, so every attempt sends the same bytes under the same key.
    let body: string | undefined;
    if (call.body !== undefined) {
      body = JSON.stringify(call.body);
      headers["Content-Type"] = "application/json";
    }
    const deadline = Date.now() + (options.timeoutMs ?? this.timeoutMs);
    const maxRetries = options.maxRetries ?? this.maxRetries;

    for (let attempt = 1; ; attempt += 1) {
      let error: CreditdConnectionError | CreditdError;
      let retryAfterMs = 0;
      const remaining = deadline - Date.now();
      const controller = new AbortController();
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        controller.abort(new Error("creditd: the call's timeout passed"));
      }, Math.max(0, remaining));
      const onAbort = () => controller.abort(options.signal?.reason);
      options.signal?.addEventListener("abort", onAbort, { once: true });
      try {
        if (options.signal?.aborted) {
          throw options.signal.reason;
        }
        let response: Response;
        let text: string;
        try {
          response = await this.fetchFn(url, { method: route.method, headers, body, signal: controller.signal });
          text = await response.text();
        } catch (cause) {
          if (options.signal?.aborted) {
            throw options.signal.reason;
          }
          throw timedOut
            ? new CreditdTimeoutError(`creditd: no answer from ${route.method} ${url} within the call's timeout`, {
                cause,
                idempotencyKey,
              })
            : new CreditdConnectionError(
                `creditd: no answer from ${route.method} ${url}: ${describe(cause)}`,
                { cause, idempotencyKey },
              );
        }
        const requestId = response.headers.get("x-request-id") ?? undefined;
        if (response.ok) {
          const meta: ResponseMeta = {
            status: response.status,
            replayed: response.headers.get("idempotent-replayed") === "true",
            idempotencyKey,
            requestId,
            attempts: attempt,
            headers: response.headers,
          };
          return { text, meta };
        }
        const retryAfter = retryAfterSeconds(response.headers);
        retryAfterMs = (retryAfter ?? 0) * 1000;
        throw problemError(response.status, await parseProblem(response, text), requestId, retryAfter);
      } catch (caught) {
        if (!(caught instanceof CreditdConnectionError || caught instanceof CreditdError)) {
          throw caught;
        }
        error = caught;
      } finally {
        clearTimeout(timer);
        options.signal?.removeEventListener("abort", onAbort);
      }
      if (!isRetryable(error) || attempt > maxRetries) {
        throw error;
      }
      const backoff = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** (attempt - 1));
      const delay = Math.max(retryAfterMs, backoff / 2 + Math.random() * (backoff / 2));
      if (Date.now() + delay >= deadline) {
        throw error;
      }
      await sleep(delay, options.signal);
    }
  }

  /** Opens a streaming GET (the wallet stream): the raw response, or a typed error. */
  async open(url: string, headers: Record<string, string>, signal?: AbortSignal): Promise<Response> {
    let response: Response;
    try {
      response = await this.fetchFn(url, { method: "GET", headers, signal });
    } catch (cause) {
      if (signal?.aborted) {
        throw signal.reason;
      }
      throw new CreditdConnectionError(`creditd: no answer from GET ${url}`, { cause });
    }
    if (!response.ok) {
      const text = await response.text();
      throw problemError(
        response.status,
        await parseProblem(response, text),
        response.headers.get("x-request-id") ?? undefined,
        retryAfterSeconds(response.headers),
      );
    }
    return response;
  }
}
