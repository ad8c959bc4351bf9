/**
 * The SDK held against `docs/openapi.yaml`: the generated types are what the generator makes of
 * the spec today, every operation of the spec has an SDK method (or a stated reason not to),
 * and every SDK method sends its route's method and path, with an idempotency key exactly where
 * the spec takes one.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import { parse } from "yaml";

import { CreditdClient, NOT_IN_SDK, ROUTES, type Route } from "../src/index.js";

const PACKAGE_DIR = fileURLToPath(new URL("../../", import.meta.url));
const SPEC_PATH = join(PACKAGE_DIR, "../../docs/openapi.yaml");

interface SpecOperation {
  operationId: string;
  method: string;
  path: string;
  idempotencyKey: boolean;
}

function specOperations(): SpecOperation[] {
  // Strict YAML: a duplicated key is an error, as it is for the generator.
  const spec = parse(readFileSync(SPEC_PATH, "utf8"), { uniqueKeys: true }) as {
    paths: Record<string, Record<string, unknown>>;
  };
  const operations: SpecOperation[] = [];
  for (const [path, item] of Object.entries(spec.paths)) {
    const shared = (item.parameters as { $ref?: string }[] | undefined) ?? [];
    for (const method of ["get", "put", "post", "patch", "delete"]) {
      const operation = item[method] as { operationId: string; parameters?: { $ref?: string }[] } | undefined;
      if (!operation) {
        continue;
      }
      const parameters = [...shared, ...(operation.parameters ?? [])];
      operations.push({
        operationId: operation.operationId,
        method: method.toUpperCase(),
        path,
        idempotencyKey: parameters.some((parameter) => parameter.$ref === "#/components/parameters/IdempotencyKey"),
      });
    }
  }
  return operations;
}

test("src/openapi.ts is what `npm run generate` makes of docs/openapi.yaml today", () => {
  const script = (JSON.parse(readFileSync(join(PACKAGE_DIR, "package.json"), "utf8")) as { scripts: Record<string, string> })
    .scripts.generate ?? "";
  assert.ok(script.startsWith("openapi-typescript "), `unexpected generate script: ${script}`);
  const dir = mkdtempSync(join(tmpdir(), "creditd-ts-gen-"));
  try {
    const output = join(dir, "openapi.ts");
    const args = script
      .split(/\s+/)
      .slice(1)
      .map((arg) => (arg === "src/openapi.ts" ? output : arg));
    execFileSync(process.execPath, [join(PACKAGE_DIR, "node_modules/openapi-typescript/bin/cli.js"), ...args], {
      cwd: PACKAGE_DIR,
      stdio: ["ignore", "ignore", "pipe"],
    });
    const fresh = readFileSync(output, "utf8");
    const committed = readFileSync(join(PACKAGE_DIR, "src/openapi.ts"), "utf8");
    assert.ok(
      fresh === committed,
      "docs/openapi.yaml changed since src/openapi.ts was generated: run `npm run generate` in " +
        "clients/typescript, fix what the compiler then reports, and commit both",
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("every operation of the spec has an SDK method or a stated reason, with the spec's method and path", () => {
  const operations = specOperations();
  const routes: Record<string, Route> = ROUTES;
  const excluded: Record<string, string> = NOT_IN_SDK;
  const ids = new Set(operations.map((operation) => operation.operationId));
  for (const operation of operations) {
    const route = routes[operation.operationId];
    if (!route) {
      assert.ok(
        excluded[operation.operationId],
        `${operation.method} ${operation.path} (${operation.operationId}) has no SDK method: add it to ROUTES in src/routes.ts and to CreditdClient`,
      );
      continue;
    }
    assert.ok(!excluded[operation.operationId], `${operation.operationId} is both routed and excluded`);
    assert.equal(route.method, operation.method, `${operation.operationId}: method`);
    assert.equal(route.path, operation.path, `${operation.operationId}: path`);
    assert.equal(
      route.idempotencyKey,
      operation.idempotencyKey,
      `${operation.operationId}: the spec ${operation.idempotencyKey ? "takes" : "does not take"} an Idempotency-Key`,
    );
  }
  for (const id of [...Object.keys(routes), ...Object.keys(excluded)]) {
    assert.ok(ids.has(id), `${id} is in the SDK's table but not in the spec`);
  }
});

function resolve(target: unknown, dotted: string): (...args: unknown[]) => unknown {
  let owner: unknown = undefined;
  let value: unknown = target;
  for (const part of dotted.split(".")) {
    owner = value;
    value = (value as Record<string, unknown>)[part];
  }
  assert.equal(typeof value, "function", `CreditdClient.${dotted} is not a method`);
  return (value as (...args: unknown[]) => unknown).bind(owner);
}

test("every SDK method in the table sends its route, with an idempotency key where the spec takes one", async () => {
  const sent: { method: string; url: string; headers: Headers }[] = [];
  const recording = async (url: string, init: RequestInit): Promise<Response> => {
    sent.push({ method: init.method ?? "GET", url, headers: new Headers(init.headers) });
    return new Response("{}", { status: 200, headers: { "Content-Type": "application/json" } });
  };
  const sdk = new CreditdClient({ baseUrl: "http://creditd.test", apiKey: "k", fetch: recording, tenant: "acme" });
  for (const [operationId, route] of Object.entries(ROUTES) as [string, Route][]) {
    const params = [...route.path.matchAll(/\{([a-z_]+)\}/g)].map((match) => `${match[1]} /x`);
    const method = resolve(sdk, route.sdk);
    const result = method(...params);
    if (result && typeof (result as AsyncGenerator).next === "function") {
      await (result as AsyncGenerator).next();
    } else {
      await result;
    }
    const request = sent.pop();
    assert.ok(request, `${route.sdk} sent nothing`);
    assert.equal(sent.length, 0, `${route.sdk} sent more than one request`);
    const expected = route.path.replace(/\{([a-z_]+)\}/g, (_, name: string) => encodeURIComponent(`${name} /x`));
    assert.equal(request.method, route.method, `${route.sdk} (${operationId})`);
    assert.equal(new URL(request.url).pathname, expected, `${route.sdk} (${operationId})`);
    assert.equal(request.headers.get("authorization"), "Bearer k");
    assert.equal(request.headers.get("x-tenant"), "acme");
    const key = request.headers.get("idempotency-key");
    assert.equal(key !== null, route.idempotencyKey, `${route.sdk}: Idempotency-Key ${key}`);
  }
});
