/**
 * Every typed error a real server can be made to answer, each provoked the way an application
 * would meet it, and shown to have changed nothing where it refused a write.
 */
import assert from "node:assert/strict";
import { createServer, type Server as NetServer, type Socket } from "node:net";
import { after, before, test } from "node:test";

import {
  ForbiddenError,
  GrantCapExceededError,
  IdempotencyKeyReusedError,
  InsufficientCreditsError,
  InvalidRequestError,
  CreditdConnectionError,
  CreditdTimeoutError,
  PackageNotFoundError,
  PoolNotFoundError,
  ReservationClosedError,
  ReservationNotFoundError,
  ServerBusyError,
  UnauthorizedError,
  UnknownActionError,
  UnknownCurrencyError,
  UserNotFoundError,
  type CreditdClient,
} from "../src/index.js";
import { ADMIN_KEY, SERVICE_KEY, Server, client, uniqueId } from "./harness.js";

let server: Server;
let service: CreditdClient;
let admin: CreditdClient;

before(async () => {
  server = await Server.start();
  service = client(server.url, SERVICE_KEY);
  admin = client(server.url, ADMIN_KEY);
});

after(async () => {
  await server?.stop();
});

async function refusal<E>(promise: Promise<unknown>, kind: new (...args: never[]) => E): Promise<E> {
  const error = await promise.then(
    () => assert.fail(`expected ${kind.name}`),
    (caught: unknown) => caught,
  );
  assert.ok(error instanceof kind, `expected ${kind.name}, got ${String(error)}`);
  return error;
}

async function funded(credits: number): Promise<string> {
  const userId = uniqueId("u");
  await service.users.put(userId, {});
  if (credits > 0) {
    await service.wallet.credit(userId, { amount: credits });
  }
  return userId;
}

test("an idempotency key reused with another body: IdempotencyKeyReusedError; with the same body: a replay", async () => {
  const userId = await funded(100);
  const key = uniqueId("key");
  const first = await service.wallet.debit(userId, { amount: 10 }, { idempotencyKey: key });
  assert.equal(first.meta.replayed, false);
  assert.equal(first.meta.idempotencyKey, key);
  const again = await service.wallet.debit(userId, { amount: 10 }, { idempotencyKey: key });
  assert.equal(again.meta.replayed, true);
  assert.equal(again.entry_id, first.entry_id);
  const error = await refusal(service.wallet.debit(userId, { amount: 11 }, { idempotencyKey: key }), IdempotencyKeyReusedError);
  assert.equal(error.status, 422);
  assert.equal(error.slug, "idempotency-key-reused");
  assert.equal((await service.wallet.get(userId)).balance, 90);
});

test("unknown user, action, currency, reservation, pool and package: their own errors", async () => {
  const missing = await refusal(service.wallet.debit(uniqueId("nobody"), { amount: 1 }), UserNotFoundError);
  assert.equal(missing.status, 404);
  assert.equal(missing.problem.type, "https://creditd.dev/problems/user-not-found");

  const userId = await funded(50);
  const action = await refusal(service.wallet.debit(userId, { action: "no-such-action" }), UnknownActionError);
  assert.equal(action.status, 422);

  const currency = await refusal(service.wallet.credit(userId, { amount: 5, currency: "usdd" }), UnknownCurrencyError);
  assert.equal(currency.status, 422);
  assert.equal(currency.currency, "usdd");
  assert.deepEqual(currency.currencies, ["credits"]);

  const hold = await refusal(service.reservations.capture("rsv_999999999"), ReservationNotFoundError);
  assert.equal(hold.status, 404);

  await refusal(admin.pools.get(uniqueId("no-pool")), PoolNotFoundError);
  await refusal(service.billing.getPackage(uniqueId("no-package")), PackageNotFoundError);
  await refusal(
    service.payments.initialize({ user_id: userId, package_id: uniqueId("no-package"), email: "a@example.com" }),
    PackageNotFoundError,
  );
  assert.equal((await service.wallet.get(userId)).balance, 50);
});

test("a capture after a release: ReservationClosedError, and nothing charged", async () => {
  const userId = await funded(40);
  const reservation = await service.reservations.reserve(userId, { amount: 15 });
  await service.reservations.release(reservation.reservation_id!);
  const error = await refusal(service.reservations.capture(reservation.reservation_id!), ReservationClosedError);
  assert.equal(error.status, 409);
  assert.equal(error.closedAs, "released");
  const wallet = await service.wallet.get(userId);
  assert.equal(wallet.balance, 40);
  assert.equal(wallet.reserved, 0);
});

test("keys: unknown → UnauthorizedError; a role that may not → ForbiddenError; a service grant past its cap → GrantCapExceededError", async () => {
  const stranger = client(server.url, "not-a-key");
  const unauthorized = await refusal(stranger.wallet.get("anyone"), UnauthorizedError);
  assert.equal(unauthorized.status, 401);

  const forbidden = await refusal(service.billing.putAction(uniqueId("a"), { cost: 1 }), ForbiddenError);
  assert.equal(forbidden.status, 403);
  assert.equal(forbidden.slug, "forbidden");

  const userId = await funded(0);
  const cap = await refusal(service.wallet.credit(userId, { amount: 10_001 }), GrantCapExceededError);
  assert.equal(cap.status, 403);
  assert.equal(cap.cap, 10_000);
  assert.equal(cap.requested, 10_001);
  assert.equal((await service.wallet.get(userId)).balance, 0);
  // An admin key may, with a reason.
  await admin.wallet.credit(userId, { amount: 10_001, reason: "enterprise deal" });
  assert.equal((await service.wallet.get(userId)).balance, 10_001);
});

test("bad input: InvalidRequestError naming the field, and nothing written", async () => {
  const userId = await funded(30);
  const zero = await refusal(service.wallet.debit(userId, { amount: 0 }), InvalidRequestError);
  assert.equal(zero.status, 422);
  assert.equal(zero.slug, "invalid-request");
  assert.equal(zero.field, "amount");
  const wrongType = await refusal(service.wallet.debit(userId, { amount: "ten" } as never), InvalidRequestError);
  assert.equal(wrongType.status, 422);
  // A header the server cannot read as text: 400 malformed-request, the same class.
  const malformed = await refusal(service.wallet.debit(userId, { amount: 1 }, { idempotencyKey: "cl\u00e9" }), InvalidRequestError);
  assert.equal(malformed.status, 400);
  assert.equal(malformed.slug, "malformed-request");
  assert.equal((await service.wallet.get(userId)).balance, 30);
});

test("a pool member's 402 says what the pool could still give", async () => {
  const userId = await funded(5);
  const poolId = uniqueId("pool");
  await admin.pools.put(poolId, { name: "Acme" });
  await admin.pools.credit(poolId, { amount: 1_000, reason: "prepaid" });
  await admin.pools.setMember(userId, { pool_id: poolId, daily_cap: 20 });
  const paid = await service.wallet.debit(userId, { amount: 15 });
  assert.equal(paid.from_wallet, 5);
  assert.equal(paid.from_pool, 10);
  const error = await refusal(service.wallet.debit(userId, { amount: 11 }), InsufficientCreditsError);
  assert.equal(error.poolAvailable, 10);
  assert.equal(error.required, 11);
  assert.equal((await admin.pools.get(poolId)).balance, 990);
});

test("503 from the server: ServerBusyError with Retry-After (a stream past streams.max_open)", async () => {
  const busy = await Server.start({ env: { CREDITD_STREAMS__MAX_OPEN: "1" } });
  try {
    const sdk = client(busy.url, SERVICE_KEY);
    const userId = uniqueId("s");
    await sdk.users.put(userId, {});
    const controller = new AbortController();
    const first = sdk.wallet.stream(userId, { signal: controller.signal });
    assert.equal((await first.next()).value?.event, "wallet");
    const second = sdk.wallet.stream(userId);
    const error = await refusal(second.next(), ServerBusyError);
    assert.equal(error.status, 503);
    assert.equal(typeof error.retryAfter, "number");
    controller.abort();
    await first.return(undefined);
  } finally {
    await busy.stop();
  }
});

test("no answer: CreditdConnectionError for a refused connection, CreditdTimeoutError for a server that never answers", async () => {
  // A port that was just free: nothing listens there.
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, "127.0.0.1", resolve));
  const port = (probe.address() as { port: number }).port;
  await new Promise((resolve) => probe.close(resolve));
  const refused = client(`http://127.0.0.1:${port}`, SERVICE_KEY, { maxRetries: 2 });
  const error = await refusal(refused.wallet.debit("ada", { amount: 1 }), CreditdConnectionError);
  assert.ok(!(error instanceof CreditdTimeoutError));
  assert.match(error.idempotencyKey ?? "", /^[0-9a-f-]{36}$/);

  // Accepts, reads, never answers: the call's timeout bounds every attempt together.
  const sockets: Socket[] = [];
  const silent: NetServer = createServer((socket) => {
    sockets.push(socket);
    socket.on("data", () => undefined);
  });
  await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
  try {
    const url = `http://127.0.0.1:${(silent.address() as { port: number }).port}`;
    const started = Date.now();
    await refusal(client(url, SERVICE_KEY, { timeoutMs: 400 }).wallet.get("ada"), CreditdTimeoutError);
    const elapsed = Date.now() - started;
    assert.ok(elapsed >= 350 && elapsed < 8_000, `took ${elapsed} ms`);
  } finally {
    sockets.forEach((socket) => socket.destroy());
    await new Promise((resolve) => silent.close(resolve));
  }
});
