//! The Rust client of creditd, a prepaid-credit wallet and metering engine.
//!
//! ```no_run
//! # async fn run() -> Result<(), creditd_client::ClientError> {
//! use creditd_client::{Client, ClientError, Debit, UserProfile};
//!
//! let creditd = Client::new("http://127.0.0.1:8080", "dev-service-secret-change-me")?;
//! creditd.users().sync("ada", &UserProfile::default()).await?;
//! match creditd.wallets().debit("ada", &Debit::action("chat", 1), None).await {
//!     Ok(receipt) => println!("balance now {}", receipt.balance),
//!     Err(ClientError::InsufficientCredits { .. }) => {
//!         let portal = creditd.portal().create_session("ada", None).await?;
//!         println!("top up at {}", portal.url);
//!     }
//!     Err(other) => return Err(other),
//! }
//! # Ok(()) }
//! ```
//!
//! The parts:
//! - [`Client`] (`client.rs`): base URL, key, tenant, timeout, retries; [`Client::request`] is
//!   the one way a call leaves, and the flat methods of the first version stay.
//! - The groups of an application's request path (`groups.rs`): [`Users`], [`Wallets`],
//!   [`Reservations`], [`Payments`], [`Portal`]; and of an operator's tools (`operations.rs`):
//!   [`Billing`], [`Pools`], [`Reports`], [`Audit`], [`Tenants`], [`Health`].
//! - [`ClientError`] (`error.rs`): a variant per problem a caller acts on, the problem body
//!   always at hand.
//! - `transport.rs`: the [`Transport`] seam, the [`RetryPolicy`] and the idempotency keys.
//! - `reservation.rs`: [`Reservations::with_reservation`] and [`ReservationGuard`], reserve
//!   before the work and capture its real cost after.
//! - `signature.rs`: [`verify_notification`] for the signed notifications creditd sends.
//! - `stream.rs`: [`Wallets::stream`], the live balance stream ([`WalletStream`]).
//!
//! It depends on hyper's HTTP/1.1 client and nothing of the server.
#![warn(missing_docs)]

mod client;
mod error;
mod groups;
mod operations;
mod reservation;
mod signature;
mod stream;
mod transport;
mod types;

pub use client::{Answered, Client, ClientBuilder, DEFAULT_TIMEOUT};
pub use error::{ClientError, Problem, PROBLEM_TYPE_PREFIX};
pub use groups::{Payments, Portal, Reservations, Users, Wallets};
pub use operations::{Audit, Billing, Health, Pools, Reports, Tenants};
pub use reservation::{ActiveHold, ReservationGuard, Reserved};
pub use signature::{
    sign, verify_notification, verify_notification_with, verify_signature, Notification,
    SignatureVerificationError, VerifyOptions, DEFAULT_TOLERANCE, SIGNATURE_HEADER,
};
pub use stream::{WalletEvent, WalletStream};
pub use transport::{
    new_idempotency_key, BoxFuture, HyperTransport, RetryPolicy, StreamingBody, Transport,
};
pub use types::{
    Balance, BatchDebit, Capture, Checkout, Credit, Debit, EntriesPage, Entry, Hold, Me,
    Membership, Payment, PaymentsPage, Pool, PortalSession, Query, Receipt, Release, Reservation,
    StreamToken, User, UserProfile, UsersPage, Wallet,
};
