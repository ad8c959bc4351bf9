/**
 * WebCrypto: the platform's `globalThis.crypto` (browsers, Deno, Bun, edge runtimes, Node 19+),
 * or, on Node 18 where that global may be missing, `node:crypto`'s `webcrypto`, loaded only then.
 */
const NODE_CRYPTO = "node:crypto";

async function nodeWebCrypto(): Promise<Crypto | undefined> {
  try {
    const module = (await import(/* @vite-ignore */ /* webpackIgnore: true */ NODE_CRYPTO)) as { webcrypto?: Crypto };
    return module.webcrypto;
  } catch {
    return undefined;
  }
}

/** The WebCrypto of this platform, if it has one. */
export const webCrypto: Crypto | undefined = globalThis.crypto ?? (await nodeWebCrypto());

/** WebCrypto, or an error that says the platform lacks it. */
export function requireWebCrypto(): Crypto {
  if (!webCrypto) {
    throw new Error("creditd: this platform has no WebCrypto (globalThis.crypto)");
  }
  return webCrypto;
}
