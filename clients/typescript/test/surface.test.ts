/**
 * Every group of the client against a real server, for the calls the other tests do not make:
 * each answer parsed and checked for what the call did.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import type { CreditdClient } from "../src/index.js";
import { ADMIN_KEY, PLATFORM_KEY, SERVICE_KEY, Server, client, uniqueId } from "./harness.js";

let server: Server;
let service: CreditdClient;
let admin: CreditdClient;
let platform: CreditdClient;

before(async () => {
  server = await Server.start();
  service = client(server.url, SERVICE_KEY);
  admin = client(server.url, ADMIN_KEY);
  platform = client(server.url, PLATFORM_KEY);
});

after(async () => {
  await server?.stop();
});

test("probes, the spec, metrics and the key", async () => {
  assert.equal((await service.health.live()).trim(), "ok");
  assert.equal((await service.health.ready()).trim(), "ready");
  assert.equal((await service.health.health()).trim(), "ready");
  assert.match(await service.health.metrics(), /^# (HELP|TYPE) creditd_/m);
  assert.match(await service.health.openapi(), /^openapi: 3\./m);
  assert.deepEqual({ ...(await service.me()) }, { name: "dev-service", role: "service", tenant: "default" });
});

test("users and the wallet: update, list, batch, revoke, overdraft, stream token", async () => {
  const userId = uniqueId("surface");
  await service.users.sync(userId, { email: "s@example.com" });
  await service.wallet.credit(userId, { amount: 100 });
  const updated = await service.users.update(userId, { metadata: { plan: "pro" } });
  assert.deepEqual(updated.metadata, { plan: "pro" });
  assert.equal(updated.email, "s@example.com");
  assert.equal((await service.users.get(userId)).wallet.balance, 100);
  assert.deepEqual((await service.users.list({ prefix: userId })).users.map((user) => user.user_id), [userId]);

  const batch = await service.wallet.debitBatch([
    { user_id: userId, amount: 3 },
    { user_id: userId, amount: 1_000 },
  ]);
  assert.deepEqual(batch.results.map((result) => result.status), [200, 402]);
  const revoked = await admin.wallet.revoke(userId, { amount: 2, reason: "a mistaken grant" });
  assert.equal(revoked.balance, 95);
  const overdraft = await admin.wallet.setOverdraft(userId, { overdraft_limit: 5 });
  assert.equal(overdraft.spendable, 100);
  const token = await service.wallet.streamToken(userId);
  const url = service.wallet.streamUrl(userId, token.token);
  const stream = await fetch(url, { headers: { Accept: "text/event-stream" } });
  assert.equal(stream.status, 200);
  assert.match(stream.headers.get("content-type") ?? "", /text\/event-stream/);
  await stream.body?.cancel();
});

test("reservations: get, extend, release", async () => {
  const userId = uniqueId("surface");
  await service.users.put(userId, {});
  await service.wallet.credit(userId, { amount: 50 });
  const hold = await service.reservations.reserve(userId, { amount: 5, ttl_seconds: 60 });
  const id = hold.reservation_id!;
  assert.equal((await service.reservations.get(id)).state, "open");
  const extended = await service.reservations.extend(id, { ttl_seconds: 600 });
  assert.ok(Date.parse(extended.expires_at) > Date.parse(hold.expires_at));
  assert.deepEqual((await service.reservations.listOpen(userId)).reservations.map((open) => open.reservation_id), [id]);
  const released = await service.reservations.release(id);
  assert.equal(released.released, 5);
  assert.equal((await service.wallet.get(userId)).available, 50);
});

test("billing: actions, packages, auto top-up; a checkout abandoned", async () => {
  const action = uniqueId("act");
  assert.equal((await admin.billing.putAction(action, { cost: 2 })).meta.status, 201);
  assert.equal((await service.billing.getAction(action)).cost, 2);
  assert.ok((await service.billing.listActions()).actions.some((one) => one.action === action));
  assert.equal((await admin.billing.deleteAction(action)).meta.status, 204);
  await assert.rejects(service.billing.getAction(action), /not found/i);

  const packageId = uniqueId("pkg");
  await admin.billing.putPackage(packageId, { name: "P", credits: 10, price_minor: 100, price_currency: "USD" });
  assert.ok((await service.billing.listPackages()).packages.some((one) => one.package_id === packageId));

  const userId = uniqueId("surface");
  await service.users.put(userId, {});
  const rule = await admin.billing.putAutoTopup(userId, { enabled: true, threshold: 10, package_id: packageId });
  assert.equal(rule.state, "needs_payment_method");
  assert.equal((await service.billing.getAutoTopup(userId)).threshold, 10);
  assert.equal((await admin.billing.deleteAutoTopup(userId)).deleted, true);

  const payment = await service.payments.initialize({ user_id: userId, package_id: packageId, email: "p@example.com" });
  const abandoned = await admin.payments.abandon(payment.reference);
  assert.equal(abandoned.status, "failed");
  assert.equal(abandoned.failure_reason, "abandoned");
  assert.equal((await admin.billing.deletePackage(packageId)).meta.status, 204);
});

test("pools: list, members, entries, membership; reports, audit, tenants", async () => {
  const poolId = uniqueId("org");
  const userId = uniqueId("surface");
  await service.users.put(userId, {});
  await admin.pools.put(poolId, { name: "Org" });
  await admin.pools.credit(poolId, { amount: 40, reason: "prepaid" });
  assert.ok((await admin.pools.list()).pools.some((pool) => pool.pool_id === poolId));
  await admin.pools.setMember(userId, { pool_id: poolId, daily_cap: 30 });
  assert.deepEqual((await admin.pools.members(poolId)).members.map((member) => member.user_id), [userId]);
  assert.equal((await service.pools.getMember(userId)).available_to_user, 30);
  await service.wallet.debit(userId, { amount: 4 });
  assert.equal((await admin.pools.get(poolId)).balance, 36);
  const deadline = Date.now() + 10_000;
  let kinds: string[] = [];
  while (Date.now() < deadline && kinds.length < 2) {
    kinds = (await admin.pools.entries(poolId)).entries.map((entry) => String(entry.kind));
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  assert.equal(kinds.length, 2, `pool entries: ${kinds.join(", ")}`);
  assert.equal((await admin.pools.removeMember(userId)).deleted, true);

  const usage = await service.reports.usage({ user_id: userId, group_by: "day" });
  assert.equal(typeof usage.total_credits, "number");
  assert.ok(Array.isArray((await admin.reports.revenue({ group_by: "package" })).rows));

  const records: string[] = [];
  for await (const record of admin.audit.iterate({ limit: 2 })) {
    records.push(record.action);
  }
  assert.ok(records.includes("pool.member.delete"), records.join(", "));
  assert.equal((await admin.audit.list({ limit: 1 })).records.length, 1);
  const chain = await admin.audit.verify();
  assert.equal(chain.status, "intact");
  assert.equal(chain.records, records.length);

  assert.ok((await platform.tenants.list()).tenants.some((tenant) => tenant.tenant_id === "default"));
  assert.equal((await platform.tenants.get("default")).default_currency, "credits");
  // A platform key acting in another tenant, through the client's tenant option.
  const tenantId = uniqueId("tenant");
  await platform.tenants.put(tenantId, { name: "Other" });
  const other = client(server.url, PLATFORM_KEY, { tenant: tenantId });
  await other.users.put("ada", {});
  await other.wallet.credit("ada", { amount: 7, reason: "setup" });
  assert.equal((await other.wallet.get("ada")).balance, 7);
  await assert.rejects(service.wallet.get("ada"), /not found/i);
});

test("a package bought for a credit pool: admin only, credited to the pool, listed with it", async () => {
  const poolId = uniqueId("pool-pay");
  const packageId = uniqueId("team-pack");
  await admin.pools.put(poolId, { name: "Research" });
  await admin.billing.putPackage(packageId, {
    name: "Team pack",
    credits: 400,
    price_minor: 9_900,
    price_currency: "USD",
  });
  await assert.rejects(
    service.payments.initialize({ pool_id: poolId, package_id: packageId, email: "ops@example.com" }),
    (error: unknown) => error instanceof Error && (error as { status?: number }).status === 403,
  );
  const started = await admin.payments.initialize({
    pool_id: poolId,
    package_id: packageId,
    email: "ops@example.com",
  });
  const paid = await fetch(started.checkout_url, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: "action=pay",
    redirect: "manual",
  });
  assert.equal(paid.status, 303);
  const payment = await admin.payments.get(started.reference);
  assert.equal(payment.status, "succeeded");
  assert.equal(payment.pool_id, poolId);
  assert.equal((await admin.pools.get(poolId)).balance, 400);
  const listed = await admin.pools.payments(poolId, { status: "succeeded" });
  assert.deepEqual(
    listed.payments.map((item) => item.reference),
    [started.reference],
  );
});
