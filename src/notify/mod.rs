//! Notifications to tenants' applications: `wallet.low_balance`, `wallet.depleted`,
//! `topup.succeeded`, `topup.failed`, `autotopup.disabled`. The engine raises them as it records
//! the events they follow from (the log's records are *events*; what is sent to a tenant is a
//! *notification*). Each is sent once the record it follows from is durable, as a JSON POST to the
//! tenant's endpoint, signed like Stripe's webhooks, and retried with doubling delays. Delivery is
//! at least once across clean stops, never blocks a debit, and never changes state.
//!
//! Its parts, one job each:
//! - [`payload`]: the JSON body a tenant receives.
//! - [`signing`]: the `Creditd-Signature` header.
//! - [`outbox`]: what is accepted and not yet delivered, kept across a clean stop.
//! - [`delivery`]: the thread and tasks that send, with their bounds per tenant and in all.
//!
//! The configuration and the metric keep their older names (`[payments.events]`,
//! `creditd_events_delivered_total`, the `events-pending.json` file): they are part of the
//! contract with operators.

pub mod delivery;
pub mod outbox;
pub mod payload;
pub mod signing;

pub use delivery::{spawn, Notifier};
pub use outbox::{restore, Outbox, PENDING_FILE};
pub use payload::Notification;
pub use signing::SIGNATURE_HEADER;
