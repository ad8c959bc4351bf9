/**
 * The route table: every operation of `docs/openapi.yaml`, by `operationId`, with its method and
 * path template, the SDK method that calls it, and whether a call carries an `Idempotency-Key`.
 * The client builds every request from this table, and the tests hold it against the spec: an
 * operation the spec gains without a line here, or a line whose method or path differ from the
 * spec's, fails them.
 */
import type { OperationId } from "./types.js";

/** An HTTP method the API uses. */
export type Method = "GET" | "PUT" | "POST" | "PATCH" | "DELETE";

/** One line of the table. */
export interface Route {
  readonly method: Method;
  /** The path template, with `{name}` for each path parameter. */
  readonly path: string;
  /** The SDK method that calls it, as a dotted path on `CreditdClient` (`wallet.debit`). */
  readonly sdk: string;
  /**
   * Whether each call gets an `Idempotency-Key` (generated once per call unless given, and the
   * same on every retry). Every POST that changes state takes one.
   */
  readonly idempotencyKey: boolean;
}

function route(method: Method, path: string, sdk: string, idempotencyKey = false): Route {
  return { method, path, sdk, idempotencyKey };
}

/** Every operation the SDK calls. */
export const ROUTES = {
  livez: route("GET", "/livez", "health.live"),
  readyz: route("GET", "/readyz", "health.ready"),
  healthz: route("GET", "/healthz", "health.health"),
  metrics: route("GET", "/metrics", "health.metrics"),
  openapi: route("GET", "/openapi.yaml", "health.openapi"),
  getMe: route("GET", "/v1/me", "me"),

  listUsers: route("GET", "/v1/users", "users.list"),
  putUser: route("PUT", "/v1/users/{user_id}", "users.put"),
  getUser: route("GET", "/v1/users/{user_id}", "users.get"),
  patchUser: route("PATCH", "/v1/users/{user_id}", "users.update"),

  getWallet: route("GET", "/v1/users/{user_id}/wallet", "wallet.get"),
  streamWallet: route("GET", "/v1/users/{user_id}/wallet/stream", "wallet.stream"),
  createStreamToken: route("POST", "/v1/users/{user_id}/stream-tokens", "wallet.streamToken"),
  listEntries: route("GET", "/v1/users/{user_id}/entries", "wallet.entries"),
  credit: route("POST", "/v1/users/{user_id}/credit", "wallet.credit", true),
  debit: route("POST", "/v1/users/{user_id}/debit", "wallet.debit", true),
  batchDebit: route("POST", "/v1/debits/batch", "wallet.debitBatch", true),
  revoke: route("POST", "/v1/users/{user_id}/revoke", "wallet.revoke", true),
  putOverdraft: route("PUT", "/v1/users/{user_id}/overdraft", "wallet.setOverdraft"),

  reserve: route("POST", "/v1/users/{user_id}/reservations", "reservations.reserve", true),
  listReservations: route("GET", "/v1/users/{user_id}/reservations", "reservations.listOpen"),
  getReservation: route("GET", "/v1/reservations/{reservation_id}", "reservations.get"),
  capture: route("POST", "/v1/reservations/{reservation_id}/capture", "reservations.capture", true),
  extend: route("POST", "/v1/reservations/{reservation_id}/extend", "reservations.extend", true),
  release: route("POST", "/v1/reservations/{reservation_id}/release", "reservations.release", true),

  bootstrap: route("GET", "/v1/billing/bootstrap/{user_id}", "billing.bootstrap"),
  listActions: route("GET", "/v1/actions", "billing.listActions"),
  getAction: route("GET", "/v1/actions/{action}", "billing.getAction"),
  putAction: route("PUT", "/v1/actions/{action}", "billing.putAction"),
  deleteAction: route("DELETE", "/v1/actions/{action}", "billing.deleteAction"),
  listPackages: route("GET", "/v1/packages", "billing.listPackages"),
  getPackage: route("GET", "/v1/packages/{package_id}", "billing.getPackage"),
  putPackage: route("PUT", "/v1/packages/{package_id}", "billing.putPackage"),
  deletePackage: route("DELETE", "/v1/packages/{package_id}", "billing.deletePackage"),
  getAutoTopup: route("GET", "/v1/users/{user_id}/auto-topup", "billing.getAutoTopup"),
  putAutoTopup: route("PUT", "/v1/users/{user_id}/auto-topup", "billing.putAutoTopup"),
  deleteAutoTopup: route("DELETE", "/v1/users/{user_id}/auto-topup", "billing.deleteAutoTopup"),

  initializePayment: route("POST", "/v1/payments/initialize", "payments.initialize", true),
  getPayment: route("GET", "/v1/payments/{reference}", "payments.get"),
  abandonPayment: route("POST", "/v1/payments/{reference}/abandon", "payments.abandon"),
  listUserPayments: route("GET", "/v1/users/{user_id}/payments", "payments.list"),

  listPools: route("GET", "/v1/pools", "pools.list"),
  getPool: route("GET", "/v1/pools/{pool_id}", "pools.get"),
  putPool: route("PUT", "/v1/pools/{pool_id}", "pools.put"),
  creditPool: route("POST", "/v1/pools/{pool_id}/credit", "pools.credit", true),
  listPoolMembers: route("GET", "/v1/pools/{pool_id}/members", "pools.members"),
  listPoolEntries: route("GET", "/v1/pools/{pool_id}/entries", "pools.entries"),
  listPoolPayments: route("GET", "/v1/pools/{pool_id}/payments", "pools.payments"),
  getMembership: route("GET", "/v1/users/{user_id}/pool", "pools.getMember"),
  putMembership: route("PUT", "/v1/users/{user_id}/pool", "pools.setMember"),
  deleteMembership: route("DELETE", "/v1/users/{user_id}/pool", "pools.removeMember"),

  usageReport: route("GET", "/v1/reports/usage", "reports.usage"),
  revenueReport: route("GET", "/v1/reports/revenue", "reports.revenue"),
  listAudit: route("GET", "/v1/audit", "audit.list"),
  verifyAudit: route("GET", "/v1/audit/verify", "audit.verify"),
  createPortalSession: route("POST", "/v1/users/{user_id}/portal-sessions", "portal.createSession"),
  listTenants: route("GET", "/v1/tenants", "tenants.list"),
  getTenant: route("GET", "/v1/tenants/{tenant_id}", "tenants.get"),
  putTenant: route("PUT", "/v1/tenants/{tenant_id}", "tenants.put"),
} as const satisfies Partial<Record<OperationId, Route>>;

/**
 * The operations of the spec the SDK does not call, each with the reason. They are not for an
 * application's back end: a payment gateway, or a person's browser, calls them.
 */
export const NOT_IN_SDK = {
  gatewayWebhook: "called by the payment gateway, with the gateway's own signature",
  dashboardPage: "the operators' dashboard, a page for a browser",
  dashboardFile: "a file of the operators' dashboard",
  portalPage: "the hosted top-up page a person opens (its URL comes from portal.createSession)",
  portalData: "what the hosted top-up page loads, with the portal token as credential",
  portalCheckout: "the Buy button of the hosted top-up page",
  sandboxCheckoutPage: "the sandbox gateway's checkout page, for a person",
  sandboxCheckoutAction: "the Pay and Decline buttons of the sandbox checkout page",
} as const satisfies Partial<Record<OperationId, string>>;

/** An operation the SDK calls. */
export type RoutedOperation = keyof typeof ROUTES;
