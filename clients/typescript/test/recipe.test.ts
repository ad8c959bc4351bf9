/**
 * The whole recipe against a real server, as an application's back end walks it: sync a user,
 * welcome credits, gate a feature with a debit, a 402 with its top-up URL, a portal link and a
 * checkout paid through the sandbox page the way a browser posts its form, the balance risen,
 * and the signed notification of that top-up received, verified, and refused when tampered
 * with or stale.
 */
import assert from "node:assert/strict";
import { createServer, type Server as HttpServer } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, test } from "node:test";

import {
  InsufficientCreditsError,
  SignatureVerificationError,
  verifyNotification,
  type CreditdClient,
} from "../src/index.js";
import { ADMIN_KEY, PLATFORM_KEY, SERVICE_KEY, Server, client, uniqueId } from "./harness.js";

interface Received {
  rawBody: Buffer;
  signature: string | undefined;
}

let server: Server;
let service: CreditdClient;
let admin: CreditdClient;
let platform: CreditdClient;
let listener: HttpServer;
const received: Received[] = [];
const WEBHOOK_SECRET = "whsec-test-0123456789abcdef";

before(async () => {
  server = await Server.start();
  service = client(server.url, SERVICE_KEY);
  admin = client(server.url, ADMIN_KEY);
  platform = client(server.url, PLATFORM_KEY);
  listener = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on("data", (chunk: Buffer) => chunks.push(chunk));
    request.on("end", () => {
      const signature = request.headers["creditd-signature"];
      received.push({ rawBody: Buffer.concat(chunks), signature: Array.isArray(signature) ? signature[0] : signature });
      response.writeHead(200).end();
    });
  });
  await new Promise<void>((resolve) => listener.listen(0, "127.0.0.1", resolve));
});

after(async () => {
  await server?.stop();
  await new Promise((resolve) => listener?.close(resolve));
});

async function waitFor<T>(what: string, probe: () => T | undefined, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = probe();
    if (found !== undefined) {
      return found;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

test("the recipe: sync, welcome credits, gate, 402, top up through the sandbox, balance rose, signed notification", async () => {
  const port = (listener.address() as AddressInfo).port;
  const tenant = await platform.tenants.put("default", {
    webhook_url: `http://127.0.0.1:${port}/creditd-events`,
    webhook_secret: WEBHOOK_SECRET,
  });
  assert.equal(tenant.tenant_id, "default");
  assert.equal(JSON.stringify(tenant).includes(WEBHOOK_SECRET), false, "the secret is never shown");

  const packageId = uniqueId("starter");
  await admin.billing.putPackage(packageId, {
    name: "Starter",
    credits: 500,
    price_minor: 200000,
    price_currency: "NGN",
  });
  await admin.billing.putAction("summarize", { cost: 7, description: "Summarize a document" });

  // Sign-in: sync the user (created), then again with one field (updated, the email kept).
  const userId = uniqueId("ada");
  const created = await service.users.put(userId, { email: "ada@example.com", name: "Ada" });
  assert.equal(created.meta.status, 201);
  const synced = await service.users.put(userId, { metadata: { plan: "free" } });
  assert.equal(synced.meta.status, 200);
  assert.equal(synced.email, "ada@example.com");
  assert.equal(synced.name, "Ada");

  // Welcome credits.
  const welcome = await service.wallet.credit(userId, { amount: 20, description: "welcome" });
  assert.equal(welcome.balance, 20);
  assert.equal(welcome.meta.replayed, false);
  assert.match(welcome.meta.idempotencyKey ?? "", /^[0-9a-f-]{36}$/);

  // Gate a feature: each use is a debit by action.
  const used = await service.wallet.debit(userId, { action: "summarize", quantity: 2 });
  assert.equal(used.charged, 14);
  assert.equal(used.balance, 6);

  // Not enough: a 402 with what is needed and where to top up; nothing was written.
  const refusal = await service.wallet.debit(userId, { action: "summarize" }).then(
    () => assert.fail("a debit past the balance must be refused"),
    (error: unknown) => error,
  );
  assert.ok(refusal instanceof InsufficientCreditsError, String(refusal));
  assert.equal(refusal.status, 402);
  assert.equal(refusal.slug, "insufficient-credits");
  assert.equal(refusal.type, "https://creditd.dev/problems/insufficient-credits");
  assert.equal(refusal.required, 7);
  assert.equal(refusal.available, 6);
  assert.equal(refusal.balance, 6);
  assert.equal(refusal.currency, "credits");
  assert.equal(refusal.topupUrl, `${server.url}/v1/billing/bootstrap/${userId}`);
  assert.equal((await service.wallet.get(userId)).balance, 6);

  // What the top-up URL leads to: the packages on offer.
  const bootstrap = await service.billing.bootstrap(userId);
  assert.ok(bootstrap.available_packages.some((offered) => offered.package_id === packageId));

  // The hosted page: a signed link to send the person to.
  const portal = await service.portal.createSession(userId);
  assert.match(portal.url, /\/portal\//);
  assert.equal((await fetch(portal.url)).status, 200);

  // Or a checkout of one package, paid on the sandbox page as a browser posts its form.
  const payment = await service.payments.initialize({
    user_id: userId,
    package_id: packageId,
    email: "ada@example.com",
    metadata: { order: "o-1" },
  });
  assert.match(payment.checkout_url, /\/sandbox\/checkout\//);
  const page = await fetch(payment.checkout_url);
  assert.equal(page.status, 200);
  assert.match(await page.text(), /<form/i);
  const paid = await fetch(payment.checkout_url, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: "action=pay",
    redirect: "manual",
  });
  assert.equal(paid.status, 303);

  const settled = await service.payments.get(payment.reference);
  assert.equal(settled.status, "succeeded");
  const wallet = await service.wallet.get(userId);
  assert.equal(wallet.balance, 506);
  const history = await service.payments.list(userId);
  assert.deepEqual(
    history.payments.map((item) => [item.reference, item.status]),
    [[payment.reference, "succeeded"]],
  );

  // And the feature works again.
  assert.equal((await service.wallet.debit(userId, { action: "summarize" })).balance, 499);

  // The top-up's notification reached the tenant's endpoint, signed.
  const delivery = await waitFor("the topup.succeeded notification", () =>
    received.find((one) => one.rawBody.toString().includes(payment.reference)),
  );
  const notification = await verifyNotification(delivery.rawBody, delivery.signature, WEBHOOK_SECRET);
  assert.equal(notification.type, "topup.succeeded");
  assert.equal(notification.tenant_id, "default");
  assert.equal(notification.data?.user_id, userId);
  assert.deepEqual((notification.data as Record<string, unknown>).metadata, { order: "o-1" });

  // A changed body, another secret, a stale or a missing signature: refused.
  const tampered = Buffer.from(delivery.rawBody.toString().replace('"credits":500', '"credits":5000'));
  assert.notDeepEqual(tampered, delivery.rawBody);
  await assert.rejects(verifyNotification(tampered, delivery.signature, WEBHOOK_SECRET), SignatureVerificationError);
  await assert.rejects(
    verifyNotification(delivery.rawBody, delivery.signature, "another-secret-0123456789"),
    SignatureVerificationError,
  );
  const sentAt = Number(/t=(\d+)/.exec(delivery.signature ?? "")?.[1]);
  await assert.rejects(
    verifyNotification(delivery.rawBody, delivery.signature, WEBHOOK_SECRET, { now: sentAt + 301 }),
    /outside the tolerance/,
  );
  // Within a wider tolerance the same delivery is accepted: it is the age that was refused.
  await verifyNotification(delivery.rawBody, delivery.signature, WEBHOOK_SECRET, { now: sentAt + 301, toleranceSeconds: 600 });
  await assert.rejects(verifyNotification(delivery.rawBody, undefined, WEBHOOK_SECRET), SignatureVerificationError);
  await assert.rejects(verifyNotification(delivery.rawBody, "v1=00", WEBHOOK_SECRET), /malformed/);
});

test("the ledger, the live stream and a reservation follow the same wallet", async () => {
  const userId = uniqueId("grace");
  await service.users.put(userId, { name: "Grace" });
  await service.wallet.credit(userId, { amount: 100, description: "welcome" });

  const controller = new AbortController();
  const stream = service.wallet.stream(userId, { signal: controller.signal });
  const first = await stream.next();
  assert.equal(first.value?.event, "wallet");
  assert.equal(first.value?.wallet?.balance, 100);

  const outcome = await service.withReservation(userId, { amount: 30 }, async (hold) => {
    assert.equal(hold.amount, 30);
    const during = await service.wallet.get(userId);
    assert.equal(during.reserved, 30);
    return { cost: 12, text: "a summary" };
  });
  assert.equal(outcome.result.text, "a summary");
  assert.equal(outcome.capture?.charged, 12);
  assert.equal(outcome.capture?.balance, 88);

  // The stream shows the balance reach 88 (the hold and the capture are changes of their own).
  for (;;) {
    const next = await stream.next();
    assert.equal(next.done, false, "the stream ended early");
    if (next.value?.wallet?.balance === 88 && next.value.wallet.reserved === 0) {
      assert.match(next.value.id ?? "", /^\d+$/);
      break;
    }
  }
  controller.abort();
  await stream.return(undefined);

  // The ledger is fed from the log on its own thread: it catches up within moments.
  const deadline = Date.now() + 10_000;
  let kinds: string[] = [];
  while (Date.now() < deadline) {
    kinds = [];
    for await (const entry of service.wallet.iterateEntries(userId, { limit: 1 })) {
      kinds.push(entry.kind);
    }
    if (kinds.includes("capture")) {
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  // Newest first, one page of one entry at a time: the capture, then the welcome grant.
  assert.deepEqual(kinds, ["capture", "grant"]);

  const found: string[] = [];
  for await (const user of service.users.iterate({ prefix: userId, limit: 1 })) {
    found.push(user.user_id);
  }
  assert.deepEqual(found, [userId]);

  // Work that throws releases its hold: nothing is charged.
  await assert.rejects(
    service.withReservation(userId, { amount: 50 }, async () => {
      throw new Error("the model is down");
    }),
    /the model is down/,
  );
  const after = await service.wallet.get(userId);
  assert.equal(after.balance, 88);
  assert.equal(after.reserved, 0);
  assert.deepEqual((await service.reservations.listOpen(userId)).reservations, []);

  // A cost that is no amount (negative, fractional): refused, and the hold released.
  await assert.rejects(service.withReservation(userId, { amount: 10 }, async () => ({ cost: 2.5 })), RangeError);
  // A cost of 0: the hold is released, nothing captured.
  const free = await service.withReservation(userId, { amount: 10 }, async () => ({ cost: 0 }));
  assert.equal(free.capture, undefined);
  assert.equal((await service.wallet.get(userId)).reserved, 0);
  assert.equal((await service.wallet.get(userId)).balance, 88);

  // A hold the wallet cannot give: refused before the work runs.
  let ran = false;
  await assert.rejects(
    service.withReservation(userId, { amount: 1000 }, async () => {
      ran = true;
      return { cost: 1 };
    }),
    InsufficientCreditsError,
  );
  assert.equal(ran, false);
});
