/**
 * The gateway example (`examples/gateway.ts`) against a real server: a call is reserved,
 * answered, and charged what the model reports; a failing model costs nothing; a user who cannot
 * pay gets a 402 with a top-up link, and the model is not called.
 */
import assert from "node:assert/strict";
import { createServer, type Server as HttpServer } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, test } from "node:test";

import { meteredChat, type Model } from "../examples/gateway.js";
import type { CreditdClient } from "../src/index.js";
import { SERVICE_KEY, Server, client, uniqueId } from "./harness.js";

let server: Server;
let creditd: CreditdClient;
let gateway: HttpServer;
let gatewayUrl: string;
let modelCalls = 0;
let modelFails = false;

/** A fake model: echoes the prompt's words, and reports one token per word read and written. */
const model: Model = async (prompt, maxTokens) => {
  modelCalls += 1;
  if (modelFails) {
    throw new Error("upstream model timed out");
  }
  const words = prompt.split(/\s+/).filter(Boolean);
  const reply = words.slice(0, maxTokens).reverse();
  return {
    text: reply.join(" "),
    usage: { prompt_tokens: words.length, completion_tokens: reply.length, total_tokens: words.length + reply.length },
  };
};

before(async () => {
  server = await Server.start();
  creditd = client(server.url, SERVICE_KEY);
  gateway = createServer(meteredChat({ creditd, model, creditsPerToken: 2 }));
  await new Promise<void>((resolve) => gateway.listen(0, "127.0.0.1", resolve));
  gatewayUrl = `http://127.0.0.1:${(gateway.address() as AddressInfo).port}/v1/chat`;
});

after(async () => {
  await new Promise((resolve) => gateway?.close(resolve));
  await server?.stop();
});

async function chat(userId: string, prompt: string, maxTokens = 16) {
  const response = await fetch(gatewayUrl, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-User-Id": userId },
    body: JSON.stringify({ prompt, max_tokens: maxTokens }),
  });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

test("a call is charged the tokens the model reports, and the rest of the hold goes back", async () => {
  const userId = uniqueId("gw");
  await creditd.users.put(userId, {});
  await creditd.wallet.credit(userId, { amount: 200 });
  const answer = await chat(userId, "one two three four five");
  assert.equal(answer.status, 200);
  assert.equal(answer.body.text, "five four three two one");
  assert.deepEqual(answer.body.usage, { prompt_tokens: 5, completion_tokens: 5, total_tokens: 10 });
  assert.equal(answer.body.charged, 20);
  assert.equal(answer.body.balance, 180);
  const wallet = await creditd.wallet.get(userId);
  assert.equal(wallet.balance, 180);
  assert.equal(wallet.reserved, 0);
});

test("a failing model costs nothing and leaves no hold", async () => {
  const userId = uniqueId("gw");
  await creditd.users.put(userId, {});
  await creditd.wallet.credit(userId, { amount: 200 });
  modelFails = true;
  try {
    const answer = await chat(userId, "hello there");
    assert.equal(answer.status, 502);
  } finally {
    modelFails = false;
  }
  const wallet = await creditd.wallet.get(userId);
  assert.equal(wallet.balance, 200);
  assert.equal(wallet.reserved, 0);
  assert.deepEqual((await creditd.reservations.listOpen(userId)).reservations, []);
});

test("a user who cannot pay gets a 402 with a top-up link, and the model is not called", async () => {
  const userId = uniqueId("gw");
  await creditd.users.put(userId, {});
  await creditd.wallet.credit(userId, { amount: 10 });
  const before = modelCalls;
  const answer = await chat(userId, "a prompt that needs more credits than the wallet holds", 64);
  assert.equal(answer.status, 402);
  assert.equal(answer.body.available, 10);
  assert.ok(Number(answer.body.required) > 10);
  assert.match(String(answer.body.topup_url), /\/portal\//);
  assert.equal(modelCalls, before);
  assert.equal((await creditd.wallet.get(userId)).balance, 10);
});
