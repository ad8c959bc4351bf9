/**
 * `verifyNotification` on its own: a signature made by the same scheme as the server's
 * (HMAC-SHA256 of "t.body", checked here against a fixed vector computed with Node's crypto),
 * several `v1` values during a secret's rotation, and every way a header can be wrong.
 */
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { test } from "node:test";

import { SignatureVerificationError, signNotification, verifyNotification } from "../src/index.js";

const SECRET = "whsec-0123456789abcdef";
const BODY = '{"id":"evt_7_wallet_depleted","type":"wallet.depleted","created_at":"2026-12-02T10:00:00.000Z","tenant_id":"default","data":{"user_id":"ada","currency":"credits","available":0}}';
const T = 1_764_669_600;

test("the signature is HMAC-SHA256 of t.body, hex, and verifies", async () => {
  const header = await signNotification(BODY, SECRET, T);
  const expected = createHmac("sha256", SECRET).update(`${T}.${BODY}`).digest("hex");
  assert.equal(header, `t=${T},v1=${expected}`);
  const event = await verifyNotification(new TextEncoder().encode(BODY), header, SECRET, { now: T + 10 });
  assert.equal(event.type, "wallet.depleted");
  assert.equal(event.id, "evt_7_wallet_depleted");
});

test("one matching v1 among several suffices (a secret's rotation)", async () => {
  const good = (await signNotification(BODY, SECRET, T)).split("v1=")[1];
  const header = `t=${T},v1=${"ab".repeat(32)},v1=${good}`;
  assert.equal((await verifyNotification(BODY, header, SECRET, { now: T })).type, "wallet.depleted");
});

test("refused: missing, malformed, wrong secret, changed body, too old, too new, not an object", async () => {
  const header = await signNotification(BODY, SECRET, T);
  const refused = async (body: string, value: string | undefined, now = T, pattern?: RegExp) => {
    const error = await verifyNotification(body, value, SECRET, { now }).catch((caught: unknown) => caught);
    assert.ok(error instanceof SignatureVerificationError, `accepted ${value}`);
    if (pattern) {
      assert.match(error.message, pattern);
    }
  };
  await refused(BODY, undefined, T, /no Creditd-Signature/);
  await refused(BODY, "", T, /no Creditd-Signature/);
  await refused(BODY, "garbage", T, /malformed/);
  await refused(BODY, `t=${T}`, T, /malformed/);
  await refused(BODY, `t=soon,v1=${"00".repeat(32)}`, T, /malformed/);
  await refused(BODY, `t=${T},v1=${"0".repeat(10_000)}`, T, /malformed/);
  await refused(BODY, await signNotification(BODY, "another-secret-0123", T), T, /does not match/);
  await refused(BODY.replace('"available":0', '"available":9'), header, T, /does not match/);
  await refused(BODY, header, T + 301, /tolerance/);
  await refused(BODY, header, T - 301, /tolerance/);
  await refused("[1,2]", await signNotification("[1,2]", SECRET, T), T, /not a JSON object/);
  // The edge of the window is inside it.
  assert.equal((await verifyNotification(BODY, header, SECRET, { now: T + 300 })).type, "wallet.depleted");
});
