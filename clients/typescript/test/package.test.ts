/**
 * The package as an application gets it: `npm pack`, installed into an empty project, imported
 * by name as ESM, its `.d.ts` types checked by the compiler (a wrong body is a type error), and
 * no runtime import of Node's modules (the browser-safe part stays so).
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, test } from "node:test";

const PACKAGE_DIR = fileURLToPath(new URL("../../", import.meta.url));
const work = mkdtempSync(join(tmpdir(), "creditd-ts-pack-"));

after(() => rmSync(work, { recursive: true, force: true }));

function npm(args: string[], cwd: string): string {
  return execFileSync(process.platform === "win32" ? "npm.cmd" : "npm", args, {
    cwd,
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
}

test("the packed package installs, imports by name, and its types check a consumer", () => {
  npm(["pack", "--silent", "--pack-destination", work], PACKAGE_DIR);
  const tarball = readdirSync(work).find((name) => name.endsWith(".tgz"));
  assert.ok(tarball, "npm pack made no tarball");

  const consumer = join(work, "consumer");
  mkdirSync(consumer);
  writeFileSync(join(consumer, "package.json"), JSON.stringify({ name: "consumer", private: true, type: "module" }));
  npm(["install", "--offline", "--no-audit", "--no-fund", "--silent", join(work, tarball)], consumer);
  const installed = JSON.parse(readFileSync(join(consumer, "node_modules/creditd/package.json"), "utf8")) as {
    dependencies?: Record<string, string>;
  };
  assert.deepEqual(installed.dependencies ?? {}, {}, "no runtime dependencies");

  // No static import of a Node module anywhere in what ships: it loads in a browser.
  const dist = join(consumer, "node_modules/creditd/dist");
  for (const file of readdirSync(dist).filter((name) => name.endsWith(".js"))) {
    const text = readFileSync(join(dist, file), "utf8");
    assert.doesNotMatch(text, /^import .* from "node:/m, `${file} imports a Node module`);
  }

  writeFileSync(
    join(consumer, "main.ts"),
    `import { CreditdClient, InsufficientCreditsError, signNotification, verifyNotification, type Wallet } from "creditd";

const creditd = new CreditdClient({ baseUrl: "http://127.0.0.1:1", apiKey: "k", maxRetries: 0 });
export async function gate(userId: string): Promise<Wallet["balance"] | "top up"> {
  try {
    const answer = await creditd.wallet.debit(userId, { amount: 5, description: "one image" });
    const replayed: boolean = answer.meta.replayed;
    return replayed ? answer.balance : answer.balance;
  } catch (error) {
    if (error instanceof InsufficientCreditsError) {
      const url: string | undefined = error.topupUrl;
      return url ? "top up" : "top up";
    }
    throw error;
  }
}
export async function wrong(): Promise<void> {
  // @ts-expect-error an amount is a number
  await creditd.wallet.debit("ada", { amount: "5" });
  // @ts-expect-error a package needs its price
  await creditd.billing.putPackage("p", { name: "P", credits: 1 });
}

const secret = "whsec-0123456789abcdef";
const body = JSON.stringify({ id: "evt_1", type: "wallet.depleted", created_at: "2026-01-01T00:00:00Z", tenant_id: "t", data: { user_id: "u", currency: "credits", available: 0 } });
const now = 1_700_000_000;
const event = await verifyNotification(body, await signNotification(body, secret, now), secret, { now });
console.log(event.type);
`,
  );
  writeFileSync(
    join(consumer, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: { strict: true, module: "nodenext", moduleResolution: "nodenext", target: "es2022", lib: ["es2022", "dom"], types: [] },
      files: ["main.ts"],
    }),
  );
  const tsc = join(PACKAGE_DIR, "node_modules/typescript/bin/tsc");
  try {
    execFileSync(process.execPath, [tsc, "-p", "."], { cwd: consumer, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  } catch (error) {
    assert.fail(`the consumer does not compile:\n${(error as { stdout?: string }).stdout ?? String(error)}`);
  }
  const output = execFileSync(process.execPath, ["main.js"], { cwd: consumer, encoding: "utf8" });
  assert.equal(output.trim(), "wallet.depleted");
});
