/**
 * A real creditd server for the tests: `creditd serve` from the binary at `CREDITD_BIN`, on
 * 127.0.0.1 port 0, with a temporary data directory and the repository's `config.toml` (its
 * development keys), killed at the end.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

import { CreditdClient, type ClientOptions } from "../src/index.js";

/** The repository's root (this file runs from `clients/typescript/build/test/`). */
export const REPO_ROOT = fileURLToPath(new URL("../../../../", import.meta.url));

export const SERVICE_KEY = "dev-service-secret-change-me";
export const ADMIN_KEY = "dev-admin-secret-change-me";
export const PLATFORM_KEY = "dev-platform-secret-change-me";

/** The server binary, or a failure that says how to get one. */
export function creditdBin(): string {
  const bin = process.env.CREDITD_BIN;
  if (!bin) {
    throw new Error(
      "CREDITD_BIN is not set: these tests run against a real creditd server. Build it at the " +
        "repository's root with `cargo build --release`, then run " +
        "`CREDITD_BIN=$PWD/target/release/creditd npm test` (from clients/typescript, an absolute path).",
    );
  }
  if (!existsSync(bin)) {
    throw new Error(`CREDITD_BIN=${bin} does not exist: build it with \`cargo build --release\``);
  }
  return bin;
}

/** A running server. */
export class Server {
  private constructor(
    readonly url: string,
    readonly dataDir: string,
    private readonly child: ChildProcess,
    private readonly ownsDataDir: boolean,
    readonly output: string[],
  ) {}

  /** Starts a server (on `dataDir` if given, else a new temporary one) and waits until it is ready. */
  static async start(options: { dataDir?: string; env?: Record<string, string> } = {}): Promise<Server> {
    const bin = creditdBin();
    const dataDir = options.dataDir ?? mkdtempSync(join(tmpdir(), "creditd-ts-"));
    const child = spawn(bin, ["serve", "--config", join(REPO_ROOT, "config.toml")], {
      cwd: REPO_ROOT,
      env: {
        ...process.env,
        CREDITD_SERVER__LISTEN: "127.0.0.1:0",
        CREDITD_STORAGE__DATA_DIR: dataDir,
        CREDITD_LOG__LEVEL: "warn",
        ...options.env,
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const output: string[] = [];
    child.stderr?.setEncoding("utf8").on("data", (chunk: string) => output.push(chunk));
    const url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`creditd did not start in 30 s:\n${output.join("")}`)), 30_000);
      const lines = createInterface({ input: child.stdout! });
      lines.on("line", (line) => {
        output.push(`${line}\n`);
        const match = /listening on (http:\/\/\S+)/.exec(line);
        if (match) {
          clearTimeout(timer);
          resolve(match[1]!);
        }
      });
      child.once("exit", (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`creditd exited (${code ?? signal}) before listening:\n${output.join("")}`));
      });
    });
    const server = new Server(url, dataDir, child, options.dataDir === undefined, output);
    await server.waitReady();
    return server;
  }

  private async waitReady(): Promise<void> {
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      try {
        if ((await fetch(`${this.url}/readyz`)).ok) {
          return;
        }
      } catch {
        // Not accepting yet.
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    throw new Error(`creditd was not ready in 30 s:\n${this.output.join("")}`);
  }

  /** SIGKILLs the server (a crash) and waits until it is gone. The data directory stays. */
  async kill(): Promise<void> {
    await this.signal("SIGKILL");
  }

  /** Stops the server and removes its data directory if the harness made it. */
  async stop(): Promise<void> {
    await this.signal("SIGTERM");
    if (this.ownsDataDir) {
      rmSync(this.dataDir, { recursive: true, force: true });
    }
  }

  private async signal(signal: NodeJS.Signals): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) {
      return;
    }
    const exited = new Promise<void>((resolve) => this.child.once("exit", () => resolve()));
    this.child.kill(signal);
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 15_000);
    await exited;
    clearTimeout(timer);
  }
}

/** A client of `url` with `apiKey`, fast retries for tests. */
export function client(url: string, apiKey: string, options: Partial<ClientOptions> = {}): CreditdClient {
  return new CreditdClient({ baseUrl: url, apiKey, retryBaseDelayMs: 20, ...options });
}

let counter = 0;
/** An id no other test of this run uses. */
export function uniqueId(prefix: string): string {
  counter += 1;
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${counter}`;
}
