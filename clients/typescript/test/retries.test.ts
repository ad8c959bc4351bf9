/**
 * The retry policy, answer by answer, with a scripted `fetch`: what is retried, with the same
 * key each time; what is not; the `Retry-After` honoured; the deadline over all attempts; and
 * the error classes of answers a real server gives only when something is broken.
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  CreditdClient,
  CreditdError,
  IdempotencyKeyInFlightError,
  InsufficientCreditsError,
  CreditdConnectionError,
  ServerBusyError,
  WriteOutcomeUnknownError,
  type FetchLike,
} from "../src/index.js";

type Step = { status: number; body?: unknown; headers?: Record<string, string> } | "reset";

interface Sent {
  method: string;
  url: string;
  key: string | null;
  body: string | undefined;
}

function scripted(steps: Step[]): { fetch: FetchLike; sent: Sent[] } {
  const sent: Sent[] = [];
  const fetch: FetchLike = async (url, init) => {
    sent.push({
      method: init.method ?? "GET",
      url,
      key: new Headers(init.headers).get("idempotency-key"),
      body: init.body as string | undefined,
    });
    const step = steps.shift();
    if (step === undefined) {
      throw new Error("the script ran out of answers");
    }
    if (step === "reset") {
      throw new TypeError("fetch failed", { cause: new Error("ECONNRESET") });
    }
    const problem = step.status >= 400;
    return new Response(JSON.stringify(step.body ?? {}), {
      status: step.status,
      headers: { "Content-Type": problem ? "application/problem+json" : "application/json", ...step.headers },
    });
  };
  return { fetch, sent };
}

function problem(status: number, slug: string, extra: Record<string, unknown> = {}) {
  return { type: `https://creditd.dev/problems/${slug}`, title: slug, status, detail: `${slug} happened`, ...extra };
}

function sdk(fetch: FetchLike, options: { maxRetries?: number; timeoutMs?: number } = {}): CreditdClient {
  return new CreditdClient({ baseUrl: "http://creditd.test", apiKey: "k", fetch, retryBaseDelayMs: 5, ...options });
}

const DEBITED = { entry_id: "e1", charged: 5, from_wallet: 5, from_pool: 0, balance: 95, available: 95 };

test("retried with the same key and the same bytes: a reset, 503, 409 in flight, 500 write-outcome-unknown", async () => {
  const { fetch, sent } = scripted([
    "reset",
    { status: 503, body: problem(503, "log-backpressure"), headers: { "Retry-After": "0" } },
    { status: 409, body: problem(409, "idempotency-key-in-flight") },
    { status: 500, body: problem(500, "write-outcome-unknown") },
    { status: 200, body: DEBITED, headers: { "Idempotent-Replayed": "true" } },
  ]);
  const answer = await sdk(fetch, { maxRetries: 4 }).wallet.debit("ada", { amount: 5 });
  assert.equal(sent.length, 5);
  assert.equal(new Set(sent.map((one) => one.key)).size, 1);
  assert.match(sent[0]!.key ?? "", /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(new Set(sent.map((one) => one.body)).size, 1);
  assert.equal(answer.balance, 95);
  assert.equal(answer.meta.replayed, true);
  assert.equal(answer.meta.attempts, 5);
  assert.equal(answer.meta.idempotencyKey, sent[0]!.key);
  assert.deepEqual(JSON.parse(JSON.stringify(answer)), DEBITED, "meta stays out of the body");
});

test("each call gets its own key, and a given key is sent as is", async () => {
  const { fetch, sent } = scripted([{ status: 200, body: DEBITED }, { status: 200, body: DEBITED }, { status: 200, body: DEBITED }]);
  const client = sdk(fetch);
  await client.wallet.debit("ada", { amount: 5 });
  await client.wallet.debit("ada", { amount: 5 });
  await client.wallet.debit("ada", { amount: 5 }, { idempotencyKey: "order-42" });
  assert.notEqual(sent[0]!.key, sent[1]!.key);
  assert.equal(sent[2]!.key, "order-42");
});

test("never retried: 402, 422, 404, 401, 403, 409 reservation-closed", async () => {
  const cases: [number, string][] = [
    [402, "insufficient-credits"],
    [422, "invalid-request"],
    [404, "user-not-found"],
    [401, "unauthorized"],
    [403, "forbidden"],
    [409, "reservation-closed"],
  ];
  for (const [status, slug] of cases) {
    const { fetch, sent } = scripted([{ status, body: problem(status, slug) }, { status: 200, body: DEBITED }]);
    const error = await sdk(fetch).wallet.debit("ada", { amount: 5 }).catch((caught: unknown) => caught);
    assert.ok(error instanceof CreditdError, String(error));
    assert.equal(error.slug, slug);
    assert.equal(sent.length, 1, `${slug} was retried`);
  }
});

test("retries run out: the last error, after 1 + maxRetries attempts", async () => {
  const busy = { status: 503, body: problem(503, "server-busy"), headers: { "Retry-After": "0" } };
  const { fetch, sent } = scripted([busy, busy, busy, busy]);
  const error = await sdk(fetch, { maxRetries: 2 }).wallet.get("ada").catch((caught: unknown) => caught);
  assert.ok(error instanceof ServerBusyError, String(error));
  assert.equal(error.retryAfter, 0);
  assert.equal(sent.length, 3);

  const unknown = scripted([{ status: 500, body: problem(500, "write-outcome-unknown") }]);
  const outcome = await sdk(unknown.fetch, { maxRetries: 0 }).wallet.credit("ada", { amount: 1 }).catch((caught: unknown) => caught);
  assert.ok(outcome instanceof WriteOutcomeUnknownError, String(outcome));

  const inFlight = scripted([{ status: 409, body: problem(409, "idempotency-key-in-flight") }]);
  const flight = await sdk(inFlight.fetch, { maxRetries: 0 }).wallet.debit("ada", { amount: 1 }).catch((caught: unknown) => caught);
  assert.ok(flight instanceof IdempotencyKeyInFlightError, String(flight));
});

test("Retry-After is honoured, and a wait past the call's deadline is not taken", async () => {
  const slow = { status: 503, body: problem(503, "log-backpressure"), headers: { "Retry-After": "1" } };
  const { fetch, sent } = scripted([slow, { status: 200, body: { ok: true } }]);
  const started = Date.now();
  await sdk(fetch).wallet.get("ada");
  assert.ok(Date.now() - started >= 1_000, "retried before Retry-After");
  assert.equal(sent.length, 2);

  const late = scripted([slow, { status: 200, body: {} }]);
  const quick = Date.now();
  const error = await sdk(late.fetch, { timeoutMs: 300 }).wallet.get("ada").catch((caught: unknown) => caught);
  assert.ok(error instanceof ServerBusyError, String(error));
  assert.ok(Date.now() - quick < 900, "waited past the deadline");
  assert.equal(late.sent.length, 1);
});

test("problem answers map by slug; an unknown slug is the base error; a non-JSON error page still surfaces", async () => {
  const { fetch } = scripted([
    { status: 402, body: problem(402, "insufficient-credits", { available: 3, required: 5, spendable: 3, balance: 3, currency: "credits", topup_url: "http://x/top", pool_available: 1 }) },
    { status: 418, body: problem(418, "brand-new-problem", { extra: 1 }) },
  ]);
  const client = sdk(fetch);
  const insufficient = await client.wallet.debit("ada", { amount: 5 }).catch((caught: unknown) => caught);
  assert.ok(insufficient instanceof InsufficientCreditsError);
  assert.deepEqual(
    [insufficient.available, insufficient.required, insufficient.spendable, insufficient.balance, insufficient.currency, insufficient.topupUrl, insufficient.poolAvailable],
    [3, 5, 3, 3, "credits", "http://x/top", 1],
  );
  const unknown = await client.wallet.get("ada").catch((caught: unknown) => caught);
  assert.equal((unknown as Error).constructor, CreditdError);
  assert.equal((unknown as CreditdError).slug, "brand-new-problem");
  assert.equal((unknown as CreditdError).problem.extra, 1);

  const html: FetchLike = async () => new Response("<html>bad gateway</html>", { status: 502, statusText: "Bad Gateway" });
  const proxied = await sdk(html).wallet.get("ada").catch((caught: unknown) => caught);
  assert.ok(proxied instanceof CreditdError);
  assert.equal(proxied.status, 502);
  assert.match(proxied.detail, /bad gateway/);
});

test("an aborted call is not retried and rejects with the abort's reason", async () => {
  const controller = new AbortController();
  let calls = 0;
  const hanging: FetchLike = (_url, init) =>
    new Promise((_resolve, reject) => {
      calls += 1;
      init.signal?.addEventListener("abort", () => reject(init.signal?.reason));
    });
  const pending = sdk(hanging).wallet.get("ada", undefined, { signal: controller.signal });
  setTimeout(() => controller.abort(new Error("the user went away")), 20);
  await assert.rejects(pending, /the user went away/);
  assert.equal(calls, 1);
  assert.ok(!(await pending.catch((caught: unknown) => caught) instanceof CreditdConnectionError));
});
