/**
 * `CreditdClient`: every route of the API as a typed method, grouped as an application uses
 * them (users, wallet, reservations, billing, payments, pools, reports, audit, portal, tenants).
 * Each method builds its request from the route table (`routes.ts`), and its body, query and
 * answer types come from the spec (`types.ts`), so a change of the contract is a compile error
 * where it matters.
 */
import { ROUTES, type RoutedOperation } from "./routes.js";
import { readEvents, type StreamEvent } from "./sse.js";
import { Transport, type CallOptions, type ClientOptions, type WithMeta } from "./transport.js";
import type { Query, RequestBody, ResponseBody, Wallet } from "./types.js";
import { withReservation, type ReservationSpec, type ReservationWork, type ReservationOutcome } from "./reservation.js";

/** What a call of `operation` resolves to: its answer's body, with `meta`. */
export type Answer<K extends RoutedOperation> = Promise<WithMeta<ResponseBody<K>>>;

/** One event of the wallet stream: the wallet view after a change, with its LSN as `id`. */
export interface WalletEvent extends StreamEvent {
  /** The wallet view (for `wallet` events). */
  readonly wallet: Wallet | undefined;
}

/** Options of the wallet stream. */
export interface StreamOptions {
  /** Resume after this event id (`Last-Event-ID`). */
  lastEventId?: string;
  /** Closes the stream. */
  signal?: AbortSignal;
  /** The wallet's currency. */
  currency?: string;
}

/** A client of one creditd server, with one API key. */
export class CreditdClient {
  /** The transport: base URL, key, retries, timeouts. */
  readonly transport: Transport;

  constructor(options: ClientOptions) {
    this.transport = new Transport(options);
  }

  private call<K extends RoutedOperation>(
    operation: K,
    parts: { path?: Record<string, string>; query?: object; body?: unknown },
    options?: CallOptions,
  ): Answer<K> {
    return this.transport.send<ResponseBody<K>>({ route: ROUTES[operation], ...parts }, options);
  }

  private text(operation: RoutedOperation, options?: CallOptions): Promise<string> {
    return this.transport.sendText({ route: ROUTES[operation] }, options);
  }

  /** Every item of a paged listing, page after page, following `next_cursor`. */
  private async *pages<Page extends { next_cursor?: string | null }, Item>(
    page: (cursor: string | undefined) => Promise<Page>,
    items: (page: Page) => Item[],
  ): AsyncGenerator<Item> {
    let cursor: string | undefined;
    do {
      const answer = await page(cursor);
      yield* items(answer);
      cursor = answer.next_cursor ?? undefined;
    } while (cursor !== undefined);
  }

  /** The key's name, role and tenant (`GET /v1/me`). */
  me(options?: CallOptions): Answer<"getMe"> {
    return this.call("getMe", {}, options);
  }

  /** Probes and documents: open routes, no key needed. */
  readonly health = {
    /** `GET /livez`: 200 while the process runs. */
    live: (options?: CallOptions) => this.text("livez", options),
    /** `GET /readyz`: recovery done and the log writable (else a `ServerBusyError`, after retries). */
    ready: (options?: CallOptions) => this.text("readyz", options),
    /** `GET /healthz`: the same as `ready`. */
    health: (options?: CallOptions) => this.text("healthz", options),
    /** `GET /metrics`: Prometheus text. */
    metrics: (options?: CallOptions) => this.text("metrics", options),
    /** `GET /openapi.yaml`: the contract, as the server serves it. */
    openapi: (options?: CallOptions) => this.text("openapi", options),
  };

  /** Users: profiles, synced from the application's sign-in. */
  readonly users = {
    /** Users by id prefix, a page at a time (`next_cursor`). */
    list: (query?: Query<"listUsers">, options?: CallOptions) => this.call("listUsers", { query }, options),
    /**
     * Creates the user (201) or updates it (200), changing only the fields sent: a sign-in sync
     * never wipes a name set elsewhere; `null` clears a field.
     */
    put: (userId: string, body: RequestBody<"putUser"> = {}, options?: CallOptions) =>
      this.call("putUser", { path: { user_id: userId }, body }, options),
    /** Every user whose id starts with `prefix`, page after page. */
    iterate: (query: Omit<Query<"listUsers">, "cursor"> = {}, options?: CallOptions) =>
      this.pages(
        (cursor) => this.call("listUsers", { query: { ...query, cursor } }, options),
        (page) => page.users,
      ),
    /** The user with its wallet. */
    get: (userId: string, options?: CallOptions) => this.call("getUser", { path: { user_id: userId } }, options),
    /** The same as `put`: the call to make on every sign-in. */
    sync: (userId: string, body: RequestBody<"putUser"> = {}, options?: CallOptions) =>
      this.call("putUser", { path: { user_id: userId }, body }, options),
    /** Merges the fields sent (`PATCH`); `metadata` is merged as RFC 7396 says. */
    update: (userId: string, body: RequestBody<"patchUser">, options?: CallOptions) =>
      this.call("patchUser", { path: { user_id: userId }, body }, options),
  };

  /** The wallet: balance, credits, debits, the ledger, the live stream. */
  readonly wallet = {
    /** The wallet view (`?currency=` for another currency than the tenant's default). */
    get: (userId: string, query?: Query<"getWallet">, options?: CallOptions) =>
      this.call("getWallet", { path: { user_id: userId }, query }, options),
    /** Adds credits (a grant by default). Idempotent: one key per call, kept across retries. */
    credit: (userId: string, body: RequestBody<"credit">, options?: CallOptions) =>
      this.call("credit", { path: { user_id: userId }, body }, options),
    /**
     * Takes `amount`, or a catalogue `action` × `quantity`. A wallet that cannot pay throws
     * `InsufficientCreditsError` and nothing is written.
     */
    debit: (userId: string, body: RequestBody<"debit">, options?: CallOptions) =>
      this.call("debit", { path: { user_id: userId }, body }, options),
    /** Up to 8192 debits in one request, each applied (or refused) on its own. */
    debitBatch: (debits: RequestBody<"batchDebit">["debits"], options?: CallOptions) =>
      this.call("batchDebit", { body: { debits } }, options),
    /** Takes credits back (admin key), with a reason. */
    revoke: (userId: string, body: RequestBody<"revoke">, options?: CallOptions) =>
      this.call("revoke", { path: { user_id: userId }, body }, options),
    /** The ledger, newest first, a page at a time. */
    entries: (userId: string, query?: Query<"listEntries">, options?: CallOptions) =>
      this.call("listEntries", { path: { user_id: userId }, query }, options),
    /** Every entry of the ledger that matches, newest first, page after page. */
    iterateEntries: (userId: string, query: Omit<Query<"listEntries">, "cursor"> = {}, options?: CallOptions) =>
      this.pages(
        (cursor) => this.call("listEntries", { path: { user_id: userId }, query: { ...query, cursor } }, options),
        (page) => page.entries,
      ),
    /** Sets how far below zero the wallet may go (admin key). */
    setOverdraft: (userId: string, body: RequestBody<"putOverdraft">, options?: CallOptions) =>
      this.call("putOverdraft", { path: { user_id: userId }, body }, options),
    /** A short-lived token for the wallet stream, for a browser's `EventSource`. */
    streamToken: (userId: string, body?: RequestBody<"createStreamToken">, options?: CallOptions) =>
      this.call("createStreamToken", { path: { user_id: userId }, body }, options),
    /** The stream URL with a token, for a browser's `new EventSource(url)`. */
    streamUrl: (userId: string, token: string) =>
      this.transport.url(ROUTES.streamWallet, { user_id: userId }, { token }),
    /**
     * The live wallet stream: the wallet view at once, then after every change, until `signal`
     * aborts or the server ends it. Keep-alive comments are skipped.
     */
    stream: (userId: string, options: StreamOptions = {}): AsyncGenerator<WalletEvent> =>
      this.stream(userId, options),
  };

  private async *stream(userId: string, options: StreamOptions): AsyncGenerator<WalletEvent> {
    const url = this.transport.url(ROUTES.streamWallet, { user_id: userId }, { currency: options.currency });
    const headers: Record<string, string> = { ...this.transport.headers(), Accept: "text/event-stream" };
    if (options.lastEventId !== undefined) {
      headers["Last-Event-ID"] = options.lastEventId;
    }
    const response = await this.transport.open(url, headers, options.signal);
    if (!response.body) {
      return;
    }
    for await (const event of readEvents(response.body)) {
      const wallet = event.event === "wallet" ? (JSON.parse(event.data) as Wallet) : undefined;
      yield { ...event, wallet };
    }
  }

  /** Reservations (holds): for work whose cost is known only at the end. */
  readonly reservations = {
    /** Holds `amount` (or `action` × `quantity`) for `ttl_seconds`; 402 as for a debit. */
    reserve: (userId: string, body: RequestBody<"reserve">, options?: CallOptions) =>
      this.call("reserve", { path: { user_id: userId }, body }, options),
    /** Charges the hold (all of it by default, or `amount`, more if the wallet can pay). */
    capture: (reservationId: string, body: RequestBody<"capture"> = {}, options?: CallOptions) =>
      this.call("capture", { path: { reservation_id: reservationId }, body }, options),
    /** Gives the hold a new lifetime. */
    extend: (reservationId: string, body: RequestBody<"extend">, options?: CallOptions) =>
      this.call("extend", { path: { reservation_id: reservationId }, body }, options),
    /** Lets the hold go, charging nothing. */
    release: (reservationId: string, body?: RequestBody<"release">, options?: CallOptions) =>
      this.call("release", { path: { reservation_id: reservationId }, body }, options),
    /** The user's open holds. */
    listOpen: (userId: string, options?: CallOptions) =>
      this.call("listReservations", { path: { user_id: userId } }, options),
    /** One hold. */
    get: (reservationId: string, options?: CallOptions) =>
      this.call("getReservation", { path: { reservation_id: reservationId } }, options),
  };

  /**
   * Reserves before the work, captures its real cost after, and releases the hold if the work
   * throws. A wallet that cannot pay throws `InsufficientCreditsError` before the work starts.
   */
  withReservation<W extends { cost?: number }>(
    userId: string,
    spec: ReservationSpec,
    work: ReservationWork<W>,
    options?: CallOptions,
  ): Promise<ReservationOutcome<W>> {
    return withReservation(this, userId, spec, work, options);
  }

  /** Billing: what a top-up page needs, the catalogue, packages, automatic top-up. */
  readonly billing = {
    /** The wallet, the active packages and the actions: everything a top-up page shows. */
    bootstrap: (userId: string, query?: Query<"bootstrap">, options?: CallOptions) =>
      this.call("bootstrap", { path: { user_id: userId }, query }, options),
    /** The priced catalogue actions. */
    listActions: (options?: CallOptions) => this.call("listActions", {}, options),
    getAction: (action: string, options?: CallOptions) => this.call("getAction", { path: { action } }, options),
    /** Creates or changes an action's price (admin key). */
    putAction: (action: string, body: RequestBody<"putAction">, options?: CallOptions) =>
      this.call("putAction", { path: { action }, body }, options),
    /** Removes an action (admin key). */
    deleteAction: (action: string, options?: CallOptions) => this.call("deleteAction", { path: { action } }, options),
    /** The top-up packages. */
    listPackages: (query?: Query<"listPackages">, options?: CallOptions) => this.call("listPackages", { query }, options),
    getPackage: (packageId: string, options?: CallOptions) =>
      this.call("getPackage", { path: { package_id: packageId } }, options),
    /** Creates or changes a package (admin key). */
    putPackage: (packageId: string, body: RequestBody<"putPackage">, options?: CallOptions) =>
      this.call("putPackage", { path: { package_id: packageId }, body }, options),
    /** Removes a package (admin key). */
    deletePackage: (packageId: string, options?: CallOptions) =>
      this.call("deletePackage", { path: { package_id: packageId } }, options),
    /** A user's automatic top-up rule. */
    getAutoTopup: (userId: string, query?: Query<"getAutoTopup">, options?: CallOptions) =>
      this.call("getAutoTopup", { path: { user_id: userId }, query }, options),
    /** Sets a user's automatic top-up rule (admin key). */
    putAutoTopup: (userId: string, body: RequestBody<"putAutoTopup">, options?: CallOptions) =>
      this.call("putAutoTopup", { path: { user_id: userId }, body }, options),
    /** Removes a user's automatic top-up rule (admin key). */
    deleteAutoTopup: (userId: string, query?: Query<"deleteAutoTopup">, options?: CallOptions) =>
      this.call("deleteAutoTopup", { path: { user_id: userId }, query }, options),
  };

  /** Payments: checkouts through the tenant's gateway. */
  readonly payments = {
    /** Starts a checkout of a package: `{checkout_url, reference}`. */
    initialize: (body: RequestBody<"initializePayment">, options?: CallOptions) =>
      this.call("initializePayment", { body }, options),
    /** A payment by its reference. */
    get: (reference: string, options?: CallOptions) =>
      this.call("getPayment", { path: { reference } }, options),
    /** Marks a pending checkout abandoned (admin key). */
    abandon: (reference: string, options?: CallOptions) =>
      this.call("abandonPayment", { path: { reference } }, options),
    /** A user's checkouts and automatic top-ups, newest first. */
    list: (userId: string, query?: Query<"listUserPayments">, options?: CallOptions) =>
      this.call("listUserPayments", { path: { user_id: userId }, query }, options),
  };

  /** Credit pools: an organisation's shared balance (admin key, but `getMember`). */
  readonly pools = {
    list: (query?: Query<"listPools">, options?: CallOptions) => this.call("listPools", { query }, options),
    get: (poolId: string, options?: CallOptions) => this.call("getPool", { path: { pool_id: poolId } }, options),
    put: (poolId: string, body: RequestBody<"putPool">, options?: CallOptions) =>
      this.call("putPool", { path: { pool_id: poolId }, body }, options),
    credit: (poolId: string, body: RequestBody<"creditPool">, options?: CallOptions) =>
      this.call("creditPool", { path: { pool_id: poolId }, body }, options),
    members: (poolId: string, query?: Query<"listPoolMembers">, options?: CallOptions) =>
      this.call("listPoolMembers", { path: { pool_id: poolId }, query }, options),
    entries: (poolId: string, query?: Query<"listPoolEntries">, options?: CallOptions) =>
      this.call("listPoolEntries", { path: { pool_id: poolId }, query }, options),
    /** The packages bought for the pool (`payments.initialize` with `pool_id`), newest first. */
    payments: (poolId: string, query?: Query<"listPoolPayments">, options?: CallOptions) =>
      this.call("listPoolPayments", { path: { pool_id: poolId }, query }, options),
    /** The pool a user draws on. */
    getMember: (userId: string, options?: CallOptions) =>
      this.call("getMembership", { path: { user_id: userId } }, options),
    /** Makes the user a member of a pool, with a daily cap. */
    setMember: (userId: string, body: RequestBody<"putMembership">, options?: CallOptions) =>
      this.call("putMembership", { path: { user_id: userId }, body }, options),
    /** The user pays alone again. */
    removeMember: (userId: string, options?: CallOptions) =>
      this.call("deleteMembership", { path: { user_id: userId } }, options),
  };

  /** Usage and revenue over whole UTC hours. */
  readonly reports = {
    usage: (query?: Query<"usageReport">, options?: CallOptions) => this.call("usageReport", { query }, options),
    revenue: (query?: Query<"revenueReport">, options?: CallOptions) => this.call("revenueReport", { query }, options),
  };

  /** The hash-chained audit of every change made by hand (admin key). */
  readonly audit = {
    list: (query?: Query<"listAudit">, options?: CallOptions) => this.call("listAudit", { query }, options),
    /** Every record that matches, newest first, page after page. */
    iterate: (query: Omit<Query<"listAudit">, "cursor"> = {}, options?: CallOptions) =>
      this.pages(
        (cursor) => this.call("listAudit", { query: { ...query, cursor } }, options),
        (page) => page.records,
      ),
    /** Recomputes the hash chain: `intact`, or the first bad record. */
    verify: (options?: CallOptions) => this.call("verifyAudit", {}, options),
  };

  /** The hosted top-up page. */
  readonly portal = {
    /** A signed link, valid for minutes, to the user's top-up page: redirect the person there. */
    createSession: (userId: string, body: RequestBody<"createPortalSession"> = {}, options?: CallOptions) =>
      this.call("createPortalSession", { path: { user_id: userId }, body }, options),
  };

  /** Tenants and their settings (platform key). */
  readonly tenants = {
    list: (options?: CallOptions) => this.call("listTenants", {}, options),
    get: (tenantId: string, options?: CallOptions) =>
      this.call("getTenant", { path: { tenant_id: tenantId } }, options),
    put: (tenantId: string, body: RequestBody<"putTenant">, options?: CallOptions) =>
      this.call("putTenant", { path: { tenant_id: tenantId }, body }, options),
  };
}
