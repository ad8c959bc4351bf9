/**
 * Types of the API, derived from `openapi.ts`, which `openapi-typescript` generates from
 * `docs/openapi.yaml` (`npm run generate`). Nothing here is written by hand beyond picking names:
 * when the contract changes, regenerating `openapi.ts` changes these types, and the compiler
 * points at every call that no longer fits.
 */
import type { components, operations } from "./openapi.js";

/** Every operation of the API, by its `operationId`. */
export type Operations = operations;
/** The `operationId` of an operation. */
export type OperationId = keyof operations;

type Json<T> = T extends { content: { "application/json": infer Body } } ? Body : never;
type Responses<K extends OperationId> = operations[K]["responses"];
type SuccessCode<K extends OperationId> = Extract<keyof Responses<K>, 200 | 201 | 204>;

/** The JSON body an operation takes. */
export type RequestBody<K extends OperationId> = operations[K] extends {
  requestBody?: infer Request;
}
  ? Json<NonNullable<Request>>
  : never;

/** The JSON body of an operation's success answer (`{}` for `204 No Content`). */
export type ResponseBody<K extends OperationId> =
  SuccessCode<K> extends infer Code
    ? Code extends keyof Responses<K>
      ? Code extends 204
        ? Record<string, never>
        : Json<Responses<K>[Code]>
      : never
    : never;

/** The query parameters of an operation. */
export type Query<K extends OperationId> = NonNullable<operations[K]["parameters"]["query"]>;

type Schemas = components["schemas"];

/** The wallet view: balance, reserved, available, status, every currency, the pool membership. */
export type Wallet = Schemas["Wallet"];
/** A user's profile with its wallet in the tenant's default currency. */
export type User = Schemas["User"];
/** One currency's balance of a wallet. */
export type Balance = Schemas["Balance"];
/** An RFC 9457 problem as the API sends it. */
export type Problem = Schemas["Problem"];
/** The answer of a credit. */
export type CreditAnswer = Schemas["CreditAnswer"];
/** The answer of a debit. */
export type DebitAnswer = Schemas["DebitAnswer"];
/** The answer of a reservation. */
export type ReservationAnswer = Schemas["ReservationAnswer"];
/** An open reservation (a hold). */
export type Reservation = Schemas["Reservation"];
/** The answer of a capture. */
export type CaptureAnswer = Schemas["CaptureAnswer"];
/** A priced catalogue action. */
export type Action = Schemas["Action"];
/** A top-up package. */
export type Package = Schemas["Package"];
/** A payment (checkout or auto top-up). */
export type Payment = Schemas["Payment"];
/** A credit pool. */
export type Pool = Schemas["Pool"];
/** A tenant and its settings. */
export type Tenant = Schemas["Tenant"];
/** An automatic top-up rule. */
export type AutoTopupRule = Schemas["AutoTopupRule"];

/**
 * A notification creditd sends to a tenant's `webhook_url` (`wallet.low_balance`,
 * `wallet.depleted`, `topup.succeeded`, `topup.failed`, `autotopup.disabled`).
 */
export type Notification =
  | Schemas["WalletLowBalanceEvent"]
  | Schemas["WalletDepletedEvent"]
  | Schemas["TopupSucceededEvent"]
  | Schemas["TopupFailedEvent"]
  | Schemas["AutoTopupDisabledEvent"];
