/**
 * A retry that must not charge twice. A TCP proxy between the SDK and the server lets a debit
 * reach the server; when the server's answer comes back, the proxy drops the SDK's connection
 * instead of passing the answer on, SIGKILLs the server, restarts it on the same data
 * directory, and forwards the SDK's retry (same Idempotency-Key) to the new process. The wallet
 * is charged exactly once, and the SDK reports the answer as a replay.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { connect, createServer, type Server as NetServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";

import { SERVICE_KEY, Server, client, uniqueId } from "./harness.js";

/** The proxy: forwards to `upstream`, and can be armed to crash the server on a debit's answer. */
class CrashingProxy {
  private listener: NetServer | undefined;
  private upstream: Promise<Server>;
  private armed = false;
  /** The first bytes of the answer the SDK never saw. */
  swallowed = "";
  /** Connections opened to the proxy. */
  connections = 0;
  readonly sockets = new Set<Socket>();

  constructor(server: Server, private readonly restart: () => Promise<Server>) {
    this.upstream = Promise.resolve(server);
  }

  async listen(): Promise<string> {
    this.listener = createServer((downstream) => void this.accept(downstream));
    await new Promise<void>((resolve) => this.listener!.listen(0, "127.0.0.1", resolve));
    return `http://127.0.0.1:${(this.listener.address() as { port: number }).port}`;
  }

  /** Crashes the server on the next answer to a debit. */
  arm(): void {
    this.armed = true;
  }

  server(): Promise<Server> {
    return this.upstream;
  }

  private async accept(downstream: Socket): Promise<void> {
    this.connections += 1;
    this.sockets.add(downstream);
    downstream.pause();
    // A connection that arrives while the server restarts waits for the new one.
    const server = await this.upstream;
    const target = new URL(server.url);
    const upstream = connect(Number(target.port), target.hostname);
    this.sockets.add(upstream);
    let lastRequest = "";
    downstream.on("data", (chunk: Buffer) => {
      // A request's head starts a chunk (the SDK waits for each answer before the next request
      // on a connection); its body may follow in chunks of its own.
      const text = chunk.toString("latin1");
      if (/^[A-Z]+ \S+ HTTP\/1\.1\r\n/.test(text)) {
        lastRequest = text;
      }
      upstream.write(chunk);
    });
    upstream.on("data", (chunk: Buffer) => {
      if (this.armed && /^POST \/v1\/users\/[^/]+\/debit /.test(lastRequest)) {
        this.armed = false;
        this.swallowed = chunk.toString("latin1");
        downstream.destroy();
        upstream.destroy();
        this.upstream = (async () => {
          await server.kill();
          return this.restart();
        })();
        return;
      }
      downstream.write(chunk);
    });
    const close = () => {
      downstream.destroy();
      upstream.destroy();
    };
    downstream.on("error", close).on("close", close);
    upstream.on("error", close).on("close", close);
    downstream.resume();
  }

  async close(): Promise<void> {
    this.sockets.forEach((socket) => socket.destroy());
    await new Promise((resolve) => this.listener?.close(resolve));
  }
}

const dataDir = mkdtempSync(join(tmpdir(), "creditd-ts-crash-"));
let proxy: CrashingProxy | undefined;

after(async () => {
  await proxy?.close();
  await (await proxy?.server())?.stop();
  rmSync(dataDir, { recursive: true, force: true });
});

test("a debit whose answer is lost in a crash is retried with its key and charged once", async () => {
  const first = await Server.start({ dataDir });
  proxy = new CrashingProxy(first, () => Server.start({ dataDir }));
  const url = await proxy.listen();
  const sdk = client(url, SERVICE_KEY, { timeoutMs: 30_000, maxRetries: 3 });

  const userId = uniqueId("crash");
  await sdk.users.put(userId, {});
  await sdk.wallet.credit(userId, { amount: 100 });

  proxy.arm();
  const debit = await sdk.wallet.debit(userId, { amount: 10, description: "one image" });

  // The first server answered 200 (so the debit was durable) and died before the SDK saw it.
  assert.match(proxy.swallowed, /^HTTP\/1\.1 200 /);
  const second = await proxy.server();
  assert.notEqual(second.url, first.url, "the retry reached a new process");
  assert.equal(debit.meta.attempts, 2);
  assert.equal(debit.meta.replayed, true);
  assert.equal(debit.charged, 10);
  assert.equal(debit.balance, 90);

  // Charged exactly once: the balance, and the ledger's debits.
  const wallet = await sdk.wallet.get(userId);
  assert.equal(wallet.balance, 90);
  const deadline = Date.now() + 10_000;
  let debits = 0;
  while (Date.now() < deadline) {
    const entries = (await sdk.wallet.entries(userId)).entries;
    debits = entries.filter((entry) => entry.kind === "debit").length;
    if (entries.some((entry) => entry.entry_id === debit.entry_id)) {
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  assert.equal(debits, 1);
});
