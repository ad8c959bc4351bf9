/**
 * Reserve, work, capture: the shape of a metered call whose cost is known only at the end (a
 * model call billed by tokens). The hold is placed before the work, so a wallet that cannot pay
 * is refused before any work is done; the real cost is captured after; the hold is released if
 * the work throws, so a failed call costs nothing.
 */
import type { CreditdClient } from "./client.js";
import type { CallOptions, WithMeta } from "./transport.js";
import type { CaptureAnswer, ReservationAnswer } from "./types.js";

/** What to hold: an `amount`, or a catalogue `action` × `quantity`. */
export type ReservationSpec = (
  | { amount: number; action?: undefined; quantity?: undefined }
  | { action: string; quantity?: number; amount?: undefined }
) & {
  /** The hold's lifetime in seconds (server default 300). */
  ttlSeconds?: number;
  /** The wallet's currency. */
  currency?: string;
  /** Recorded on the reservation and its capture. */
  description?: string;
  /** Recorded on the reservation. */
  metadata?: Record<string, unknown>;
};

/** The hold, as the work sees it. */
export interface Hold {
  readonly reservationId: string;
  /** What is held. */
  readonly amount: number;
  /** When the hold lapses unless extended (RFC 3339). */
  readonly expiresAt: string;
  /** Gives the hold a new lifetime, for work that runs longer than planned. */
  extend(ttlSeconds: number): Promise<void>;
}

/**
 * The work: given the hold, it does its job and says what it cost. `cost` absent: capture all
 * that is held; `cost: 0`: release the hold; otherwise capture `cost` (more than held is charged
 * from the wallet if it can pay, else `InsufficientCreditsError` and the hold stays).
 */
export type ReservationWork<W extends { cost?: number }> = (hold: Hold) => Promise<W>;

/** What `withReservation` resolves to. */
export interface ReservationOutcome<W> {
  /** What the work returned. */
  readonly result: W;
  /** The reservation's answer. */
  readonly reservation: WithMeta<ReservationAnswer>;
  /** The capture's answer; absent when the cost was 0 and the hold was released. */
  readonly capture: WithMeta<CaptureAnswer> | undefined;
}

/** See the module doc; `CreditdClient.withReservation` is the usual way in. */
export async function withReservation<W extends { cost?: number }>(
  client: CreditdClient,
  userId: string,
  spec: ReservationSpec,
  work: ReservationWork<W>,
  options?: CallOptions,
): Promise<ReservationOutcome<W>> {
  const reservation = await client.reservations.reserve(
    userId,
    {
      ...(spec.amount !== undefined ? { amount: spec.amount } : { action: spec.action, quantity: spec.quantity }),
      ttl_seconds: spec.ttlSeconds,
      currency: spec.currency,
      description: spec.description,
      metadata: spec.metadata,
    },
    options,
  );
  const reservationId = reservation.reservation_id;
  if (reservationId === undefined) {
    throw new Error("creditd: the reservation answer carries no reservation_id");
  }
  let expiresAt = reservation.expires_at;
  const hold: Hold = {
    reservationId,
    amount: reservation.amount,
    get expiresAt() {
      return expiresAt;
    },
    async extend(ttlSeconds: number) {
      const extended = await client.reservations.extend(reservationId, { ttl_seconds: ttlSeconds }, options);
      expiresAt = extended.expires_at ?? expiresAt;
    },
  };
  let result: W;
  try {
    result = await work(hold);
  } catch (error) {
    // The work failed: nothing is charged. A release that fails too leaves the hold to lapse at
    // its expiry; the work's error is the one that matters to the caller.
    await client.reservations.release(reservationId, undefined, options).catch(() => undefined);
    throw error;
  }
  if (result.cost !== undefined && !(Number.isSafeInteger(result.cost) && result.cost >= 0)) {
    await client.reservations.release(reservationId, undefined, options).catch(() => undefined);
    throw new RangeError(`creditd: a cost must be a whole number of credits, 0 or more (got ${result.cost}); the hold was released`);
  }
  if (result.cost === 0) {
    await client.reservations.release(reservationId, undefined, options);
    return { result, reservation, capture: undefined };
  }
  const capture = await client.reservations.capture(
    reservationId,
    { amount: result.cost, description: spec.description },
    options,
  );
  return { result, reservation, capture };
}
