/**
 * Checks the notifications creditd sends to a tenant's `webhook_url`: the header
 * `Creditd-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>" under the
 * tenant's webhook_secret>`, the way Stripe signs its webhooks. WebCrypto only, so it runs in
 * Node 18+, Deno, Bun, edge runtimes and browsers.
 */
import { SignatureVerificationError } from "./errors.js";
import type { Notification } from "./types.js";
import { requireWebCrypto } from "./webcrypto.js";

/** The header that carries the signature. */
export const SIGNATURE_HEADER = "Creditd-Signature";

/** Options of `verifyNotification`. */
export interface VerifyOptions {
  /** How far the signature's time may be from now, in seconds (default 300). */
  toleranceSeconds?: number;
  /** Now, in unix seconds (default the clock's). */
  now?: number;
}

/** Longer headers are refused before any work: a few signatures fit in far less. */
const MAX_HEADER_CHARS = 4096;

const encoder = new TextEncoder();

function bytesOf(value: string | Uint8Array): Uint8Array<ArrayBuffer> {
  return typeof value === "string" ? encoder.encode(value) : new Uint8Array(value);
}

function hexToBytes(hex: string): Uint8Array | undefined {
  if (hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) {
    return undefined;
  }
  const bytes = new Uint8Array(hex.length / 2);
  for (let i = 0; i < bytes.length; i += 1) {
    bytes[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  }
  return bytes;
}

/** Compares in time that depends on the length alone, never on where the bytes differ. */
function equalConstantTime(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) {
    return false;
  }
  let difference = 0;
  for (let i = 0; i < a.length; i += 1) {
    difference |= (a[i] ?? 0) ^ (b[i] ?? 0);
  }
  return difference === 0;
}

/** The HMAC-SHA256 of `"<timestamp>.<body>"` under `secret`. */
async function mac(secret: string | Uint8Array, timestamp: string, body: Uint8Array): Promise<Uint8Array> {
  const crypto = requireWebCrypto().subtle;
  const key = await crypto.importKey("raw", bytesOf(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const prefix = encoder.encode(`${timestamp}.`);
  const message = new Uint8Array(prefix.length + body.length);
  message.set(prefix, 0);
  message.set(body, prefix.length);
  return new Uint8Array(await crypto.sign("HMAC", key, message));
}

/**
 * The `Creditd-Signature` value for `body` at `timestamp` (unix seconds): for tests, and for
 * anyone relaying notifications.
 */
export async function signNotification(
  rawBody: string | Uint8Array,
  secret: string | Uint8Array,
  timestamp: number,
): Promise<string> {
  const tag = await mac(secret, String(timestamp), bytesOf(rawBody));
  return `t=${timestamp},v1=${Array.from(tag, (byte) => byte.toString(16).padStart(2, "0")).join("")}`;
}

/**
 * Verifies a notification and returns it parsed, or throws `SignatureVerificationError`.
 * `rawBody` must be the body exactly as received (read it before any JSON parser touches it).
 * A header may carry several `v1=` signatures (during a secret's rotation): one match suffices.
 */
export async function verifyNotification(
  rawBody: string | Uint8Array,
  signatureHeader: string | null | undefined,
  secret: string | Uint8Array,
  options: VerifyOptions = {},
): Promise<Notification> {
  if (!signatureHeader || !signatureHeader.trim()) {
    throw new SignatureVerificationError(`no ${SIGNATURE_HEADER} header`);
  }
  if (signatureHeader.length > MAX_HEADER_CHARS) {
    throw new SignatureVerificationError(`malformed ${SIGNATURE_HEADER} header`);
  }
  let timestamp: string | undefined;
  const signatures: Uint8Array[] = [];
  for (const part of signatureHeader.split(",")) {
    const [name, ...rest] = part.trim().split("=");
    const value = rest.join("=");
    if (name === "t") {
      timestamp = value;
    } else if (name === "v1") {
      const bytes = hexToBytes(value);
      if (bytes) {
        signatures.push(bytes);
      }
    }
  }
  if (timestamp === undefined || !/^\d+$/.test(timestamp) || signatures.length === 0) {
    throw new SignatureVerificationError(`malformed ${SIGNATURE_HEADER} header`);
  }
  const tolerance = options.toleranceSeconds ?? 300;
  const now = options.now ?? Math.floor(Date.now() / 1000);
  if (Math.abs(now - Number(timestamp)) > tolerance) {
    throw new SignatureVerificationError(
      `the signature's timestamp is outside the tolerance of ${tolerance} s (a replay, or a skewed clock)`,
    );
  }
  const body = bytesOf(rawBody);
  const expected = await mac(secret, timestamp, body);
  if (!signatures.some((signature) => equalConstantTime(signature, expected))) {
    throw new SignatureVerificationError("the signature does not match the body");
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder().decode(body));
  } catch {
    throw new SignatureVerificationError("the signed body is not JSON");
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new SignatureVerificationError("the signed body is not a JSON object");
  }
  return parsed as Notification;
}
