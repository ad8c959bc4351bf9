/**
 * creditd: a TypeScript client for the creditd prepaid-credit wallet and metering engine.
 *
 * ```ts
 * import { CreditdClient, InsufficientCreditsError } from "creditd";
 * const creditd = new CreditdClient({ baseUrl: "https://credits.example.com", apiKey: process.env.CREDITD_KEY! });
 * await creditd.wallet.debit("ada", { action: "chat" });
 * ```
 */
export { CreditdClient, type Answer, type WalletEvent, type StreamOptions } from "./client.js";
export {
  Transport,
  randomKey,
  type CallOptions,
  type ClientOptions,
  type FetchLike,
  type ResponseMeta,
  type WithMeta,
} from "./transport.js";
export * from "./errors.js";
export { ROUTES, NOT_IN_SDK, type Route, type Method, type RoutedOperation } from "./routes.js";
export { verifyNotification, signNotification, SIGNATURE_HEADER, type VerifyOptions } from "./signature.js";
export {
  withReservation,
  type Hold,
  type ReservationSpec,
  type ReservationWork,
  type ReservationOutcome,
} from "./reservation.js";
export { readEvents, type StreamEvent } from "./sse.js";
export type * from "./types.js";
export type { paths, components, operations } from "./openapi.js";
