/**
 * An AI gateway's metering, as a request handler for Node's `http` module (it also mounts as an
 * Express route: `app.post("/v1/chat", meteredChat(options))`). For each request it:
 *
 * 1. reserves what the call may cost at most (`max_tokens` × the price per token), so a user who
 *    cannot pay is refused with a 402 and a top-up link before the model runs;
 * 2. calls the model, which reports the tokens it used;
 * 3. captures the real cost, and the rest of the hold goes back to the wallet;
 * 4. releases the whole hold if the model fails, so a failed call costs nothing.
 *
 * In an application, import from "creditd" instead of "../src/index.js".
 */
import type { IncomingMessage, ServerResponse } from "node:http";

import { CreditdClient, InsufficientCreditsError } from "../src/index.js";

/** What a model answers: its text and the tokens it used, as model APIs report them. */
export interface ModelAnswer {
  text: string;
  usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
}

/** A model: the prompt and the most tokens it may produce, to its answer. */
export type Model = (prompt: string, maxTokens: number) => Promise<ModelAnswer>;

/** The handler's settings. */
export interface MeteredChatOptions {
  creditd: CreditdClient;
  model: Model;
  /** Credits per token. */
  creditsPerToken: number;
  /** Who is calling: in a real gateway, from the session or the API key. Here: `X-User-Id`. */
  userIdOf?: (request: IncomingMessage) => string | undefined;
  /** The most tokens a call may ask for (default 4096). */
  maxTokensLimit?: number;
}

/** The model failed (as opposed to the billing around it). */
class ModelError extends Error {
  constructor(cause: unknown) {
    super("the model failed", { cause });
  }
}

function send(response: ServerResponse, status: number, body: unknown): void {
  response.writeHead(status, { "Content-Type": "application/json" }).end(JSON.stringify(body));
}

async function readJson(request: IncomingMessage, limitBytes = 1 << 20): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request) {
    size += (chunk as Buffer).length;
    if (size > limitBytes) {
      throw new RangeError("body too large");
    }
    chunks.push(chunk as Buffer);
  }
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

/** The handler: `POST` with `{"prompt": "...", "max_tokens": 256}`. */
export function meteredChat(options: MeteredChatOptions) {
  const { creditd, model, creditsPerToken } = options;
  const userIdOf = options.userIdOf ?? ((request) => request.headers["x-user-id"]?.toString());
  const maxTokensLimit = options.maxTokensLimit ?? 4096;

  return async (request: IncomingMessage, response: ServerResponse): Promise<void> => {
    const userId = userIdOf(request);
    if (!userId) {
      send(response, 401, { error: "who is calling?" });
      return;
    }
    let prompt: string;
    let maxTokens: number;
    try {
      const body = (await readJson(request)) as { prompt?: unknown; max_tokens?: unknown };
      if (typeof body.prompt !== "string" || body.prompt === "") {
        throw new TypeError("prompt must be a non-empty string");
      }
      prompt = body.prompt;
      maxTokens = body.max_tokens === undefined ? 256 : Number(body.max_tokens);
      if (!Number.isInteger(maxTokens) || maxTokens < 1 || maxTokens > maxTokensLimit) {
        throw new TypeError(`max_tokens must be an integer from 1 to ${maxTokensLimit}`);
      }
    } catch (error) {
      send(response, 400, { error: error instanceof Error ? error.message : "bad request" });
      return;
    }

    try {
      const outcome = await creditd.withReservation(
        userId,
        // The most the call can cost: every token it may read and write. The prompt's tokens are
        // estimated from its length (4 characters a token), generously.
        { amount: (Math.ceil(prompt.length / 4) + maxTokens) * creditsPerToken, description: "chat completion" },
        async () => {
          const answer = await model(prompt, maxTokens).catch((cause: unknown) => {
            throw new ModelError(cause);
          });
          return { cost: answer.usage.total_tokens * creditsPerToken, answer };
        },
      );
      send(response, 200, {
        text: outcome.result.answer.text,
        usage: outcome.result.answer.usage,
        charged: outcome.capture?.charged ?? 0,
        balance: outcome.capture?.balance,
      });
    } catch (error) {
      if (error instanceof InsufficientCreditsError) {
        // Send the person to the hosted top-up page of their wallet.
        const portal = await creditd.portal.createSession(userId).catch(() => undefined);
        send(response, 402, {
          error: "insufficient credits",
          required: error.required,
          available: error.available,
          topup_url: portal?.url ?? error.topupUrl,
        });
        return;
      }
      if (error instanceof ModelError) {
        send(response, 502, { error: "the model failed; nothing was charged" });
        return;
      }
      // creditd could not be reached or refused otherwise: fail closed, the model never ran
      // unpaid (a failed capture leaves the hold to lapse at its expiry).
      send(response, 503, { error: "billing is unavailable; try again shortly" });
    }
  };
}
