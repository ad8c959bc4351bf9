//! The route handlers, one file per API resource. Each handler takes the request context of
//! [`super::call`] (an [`Open`](super::call::Open) or a [`Call`](super::call::Call)), parses its
//! body, calls the engine (or the payments service), waits for its record to be durable and
//! renders the answer. No handler holds a lock across an `.await`. Which route calls which
//! handler, and with which role, is declared once, in [`super::router`]'s table.
//!
//! The files depend on the shared parts of `api` (`call`, `dto`, `problem`, `request`,
//! `response`), and one on another only where a view is shared: `catalogue` shows a wallet as
//! `users` does, and `reports` waits for the history as `entries` does.

pub mod audit;
pub mod catalogue;
pub mod dashboard;
pub mod entries;
pub mod health;
pub mod payment_history;
pub mod payments;
pub mod pools;
pub mod portal;
pub mod reports;
pub mod reservations;
pub mod sandbox;
pub mod stream;
pub mod tenants;
pub mod users;
