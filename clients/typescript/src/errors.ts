/**
 * Errors. Every refusal of the API is an RFC 9457 problem with a stable `type` URI
 * (`https://creditd.dev/problems/<slug>`); it surfaces as a `CreditdError`, or the subclass named
 * after its slug for the problems a caller acts on. A slug this SDK does not know yet surfaces as
 * the base class, so a newer server never breaks an older client. A call that got no answer at
 * all (refused, reset) surfaces as a `CreditdConnectionError`, one cut off by its timeout as a
 * `CreditdTimeoutError`. Every error the SDK throws is a `CreditdException`.
 */

/** The prefix of every problem `type`. */
export const PROBLEM_TYPE_PREFIX = "https://creditd.dev/problems/";

/** A problem body: `type`, `title`, `status`, `detail` and any extension members. */
export interface ProblemBody {
  type?: string;
  title?: string;
  status?: number;
  detail?: string;
  [member: string]: unknown;
}

function numberOf(value: unknown): number | undefined {
  return typeof value === "number" ? value : undefined;
}

function stringOf(value: unknown): string | undefined {
  return typeof value === "string" ? value : undefined;
}

/** The root of every error the SDK throws. */
export class CreditdException extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The API answered with a problem. */
export class CreditdError extends CreditdException {
  /** The HTTP status. */
  readonly status: number;
  /** The full problem type URI. */
  readonly type: string;
  /** The last part of `type`, such as `insufficient-credits`. */
  readonly slug: string;
  /** The problem type's fixed summary. */
  readonly title: string;
  /** What happened this time. */
  readonly detail: string;
  /** The whole problem body, extension members included. */
  readonly problem: ProblemBody;
  /** The answer's `X-Request-Id`, if any. */
  readonly requestId: string | undefined;

  constructor(status: number, problem: ProblemBody, requestId?: string) {
    const type = stringOf(problem.type) ?? "about:blank";
    const title = stringOf(problem.title) ?? `HTTP ${status}`;
    const detail = stringOf(problem.detail) ?? "";
    super(detail ? `${title}: ${detail}` : title);
    this.status = status;
    this.type = type;
    this.slug = type.startsWith(PROBLEM_TYPE_PREFIX) ? type.slice(PROBLEM_TYPE_PREFIX.length) : type;
    this.title = title;
    this.detail = detail;
    this.problem = problem;
    this.requestId = requestId;
  }
}

/**
 * 402 `insufficient-credits`: the wallet (and the pool it draws on) cannot pay. Nothing was
 * written. `topupUrl` is where the person can buy more.
 */
export class InsufficientCreditsError extends CreditdError {
  /** What the wallet holds now. */
  readonly balance: number | undefined;
  /** Balance less open reservations. */
  readonly available: number | undefined;
  /** What a spend may take now (available plus the overdraft limit). */
  readonly spendable: number | undefined;
  /** What the refused spend asked for. */
  readonly required: number | undefined;
  /** The wallet's overdraft limit. */
  readonly overdraftLimit: number | undefined;
  /** The wallet's currency. */
  readonly currency: string | undefined;
  /** The bootstrap URL of the user, for a top-up. */
  readonly topupUrl: string | undefined;
  /** For a pool member: what the pool could still give it today. */
  readonly poolAvailable: number | undefined;

  constructor(status: number, problem: ProblemBody, requestId?: string) {
    super(status, problem, requestId);
    this.balance = numberOf(problem.balance);
    this.available = numberOf(problem.available);
    this.spendable = numberOf(problem.spendable);
    this.required = numberOf(problem.required);
    this.overdraftLimit = numberOf(problem.overdraft_limit);
    this.currency = stringOf(problem.currency);
    this.topupUrl = stringOf(problem.topup_url);
    this.poolAvailable = numberOf(problem.pool_available);
  }
}

/** 422 `idempotency-key-reused`: the key was used before with a different request. */
export class IdempotencyKeyReusedError extends CreditdError {}
/** 409 `idempotency-key-in-flight`: a request with this key is still running (retried). */
export class IdempotencyKeyInFlightError extends CreditdError {}
/** 404 `user-not-found`. */
export class UserNotFoundError extends CreditdError {}
/** 404 `reservation-not-found`. */
export class ReservationNotFoundError extends CreditdError {}
/** 409 `reservation-closed`: captured, released or expired already (`closedAs` says which). */
export class ReservationClosedError extends CreditdError {
  /** `captured`, `released` or `expired`. */
  readonly closedAs: string | undefined;
  constructor(status: number, problem: ProblemBody, requestId?: string) {
    super(status, problem, requestId);
    this.closedAs = stringOf(problem.closed_as);
  }
}
/** 422 `unknown-action`: no such catalogue action. */
export class UnknownActionError extends CreditdError {}
/** 422 `unknown-currency`: the tenant has no such currency. */
export class UnknownCurrencyError extends CreditdError {
  /** The currency asked for. */
  readonly currency: string | undefined;
  /** The tenant's currencies. */
  readonly currencies: string[] | undefined;
  constructor(status: number, problem: ProblemBody, requestId?: string) {
    super(status, problem, requestId);
    this.currency = stringOf(problem.currency);
    this.currencies = Array.isArray(problem.currencies)
      ? problem.currencies.filter((code): code is string => typeof code === "string")
      : undefined;
  }
}
/** 403 `grant-cap-exceeded`: a service key's grants today would pass its daily cap. */
export class GrantCapExceededError extends CreditdError {
  /** The cap per UTC day. */
  readonly cap: number | undefined;
  /** Granted today already. */
  readonly grantedToday: number | undefined;
  /** What this grant asked for. */
  readonly requested: number | undefined;
  /** The currency. */
  readonly currency: string | undefined;
  constructor(status: number, problem: ProblemBody, requestId?: string) {
    super(status, problem, requestId);
    this.cap = numberOf(problem.cap);
    this.grantedToday = numberOf(problem.granted_today);
    this.requested = numberOf(problem.requested);
    this.currency = stringOf(problem.currency);
  }
}
/** 404 `pool-not-found`. */
export class PoolNotFoundError extends CreditdError {}
/** 404 `package-not-found`. */
export class PackageNotFoundError extends CreditdError {}
/** 401 `unauthorized`: no key, or an unknown one. */
export class UnauthorizedError extends CreditdError {}
/** 403 `forbidden`: the key's role may not do this. */
export class ForbiddenError extends CreditdError {}
/** 422 `invalid-request` or 400 `malformed-request`; `field` names the bad field if known. */
export class InvalidRequestError extends CreditdError {
  /** The field at fault, when the server names one. */
  readonly field: string | undefined;
  constructor(status: number, problem: ProblemBody, requestId?: string) {
    super(status, problem, requestId);
    this.field = stringOf(problem.field);
  }
}
/** 503: the server is busy, not ready, shutting down, or its log refuses writes (retried). */
export class ServerBusyError extends CreditdError {
  /** The answer's `Retry-After`, in seconds, if it had one. */
  readonly retryAfter: number | undefined;
  constructor(status: number, problem: ProblemBody, requestId?: string, retryAfter?: number) {
    super(status, problem, requestId);
    this.retryAfter = retryAfter;
  }
}
/**
 * 500 `write-outcome-unknown`: the log failed after the change was queued; it may or may not
 * have taken effect. The SDK retries with the same `Idempotency-Key`, which answers what happened
 * once the server is back; this error surfaces only when the retries ran out.
 */
export class WriteOutcomeUnknownError extends CreditdError {}

/** No answer: the connection was refused or reset (after the retries). */
export class CreditdConnectionError extends CreditdException {
  /** The `Idempotency-Key` the attempts carried, if any: retry with it to learn the outcome. */
  readonly idempotencyKey: string | undefined;
  constructor(message: string, options: { cause?: unknown; idempotencyKey?: string }) {
    super(message, { cause: options.cause });
    this.idempotencyKey = options.idempotencyKey;
  }
}

/** No answer within the call's timeout (all attempts together). */
export class CreditdTimeoutError extends CreditdConnectionError {}

/** A notification's signature did not verify (absent, malformed, wrong, or too old). */
export class SignatureVerificationError extends CreditdException {}

type ProblemClass = new (status: number, problem: ProblemBody, requestId?: string) => CreditdError;

const BY_SLUG: Record<string, ProblemClass> = {
  "insufficient-credits": InsufficientCreditsError,
  "idempotency-key-reused": IdempotencyKeyReusedError,
  "idempotency-key-in-flight": IdempotencyKeyInFlightError,
  "user-not-found": UserNotFoundError,
  "reservation-not-found": ReservationNotFoundError,
  "reservation-closed": ReservationClosedError,
  "unknown-action": UnknownActionError,
  "unknown-currency": UnknownCurrencyError,
  "grant-cap-exceeded": GrantCapExceededError,
  "pool-not-found": PoolNotFoundError,
  "package-not-found": PackageNotFoundError,
  unauthorized: UnauthorizedError,
  forbidden: ForbiddenError,
  "invalid-request": InvalidRequestError,
  "malformed-request": InvalidRequestError,
  "write-outcome-unknown": WriteOutcomeUnknownError,
};

/** The error for a problem answer: the class named after its slug, else by status, else the base. */
export function problemError(
  status: number,
  problem: ProblemBody,
  requestId?: string,
  retryAfter?: number,
): CreditdError {
  const type = stringOf(problem.type) ?? "";
  const slug = type.startsWith(PROBLEM_TYPE_PREFIX) ? type.slice(PROBLEM_TYPE_PREFIX.length) : "";
  const known = BY_SLUG[slug];
  if (known) {
    return new known(status, problem, requestId);
  }
  if (status === 503) {
    return new ServerBusyError(status, problem, requestId, retryAfter);
  }
  return new CreditdError(status, problem, requestId);
}
