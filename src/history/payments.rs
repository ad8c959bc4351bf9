//! The payment history: every checkout and automatic top-up a user started, with where it ended,
//! kept for as long as the history keeps anything (not `payments.retention`, after which the
//! engine forgets a settled payment).
//!
//! One row per payment, written by the feeder from the log: `PaymentInitialized` inserts it
//! (`pending`), `PaymentCheckoutOpened` adds the gateway's page, `PaymentSucceeded` marks it
//! `succeeded` with the ledger entry that credited it (the record's own LSN, the `ent_<lsn>` that
//! `/entries` lists as the top-up), and `PaymentFailed` marks it `failed` with the decline. A
//! payment recorded failed that is later reported paid turns `succeeded`, as in the engine.
//!
//! A package bought for a credit pool is a payment of the pool: its row has the pool in `pool_id`
//! and an empty `user_id`, is made by `PoolPaymentInitialized` and settled by the `PoolPayment…`
//! events as above; the index `(tenant, pool_id, lsn_created)` lists a pool's payments.
//!
//! The key `(tenant, user_id, lsn_created)` lists a user's payments newest first, and the LSN of
//! the record that started a payment never changes, so it is a stable cursor. Settlements find
//! their row by reference: a reference is unique among the payments the engine remembers, but
//! one may be issued again after its payment was forgotten (an `Idempotency-Key` used again after
//! `payments.retention`), so the index on it is not unique and a settlement updates the newest
//! payment of that reference, which is the one the engine settled.
//!
//! If the history began after the log's start was removed, a settlement may come for a payment
//! whose start it never saw: it updates nothing, and the history lists what it saw.
//!
//! This module must not decide anything about a payment: it records what the log says.

use rusqlite::{params, Transaction};

use super::reader::Reader;
use super::StoreError;
use crate::engine::event::Event;
use crate::engine::types::PaymentPurpose;

/// The payments table and the index settlements find their row by.
pub(crate) const PAYMENTS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS payments (
    tenant         TEXT    NOT NULL,
    user_id        TEXT    NOT NULL,
    reference      TEXT    NOT NULL,
    lsn_created    INTEGER NOT NULL,
    package_id     TEXT    NOT NULL,
    credits        INTEGER NOT NULL,
    currency       TEXT    NOT NULL,
    amount_minor   INTEGER NOT NULL,
    price_currency TEXT    NOT NULL,
    status         TEXT    NOT NULL,
    gateway        TEXT    NOT NULL,
    purpose        TEXT    NOT NULL,
    metadata       TEXT,
    checkout_url   TEXT,
    created_ms     INTEGER NOT NULL,
    settled_ms     INTEGER,
    entry_lsn      INTEGER,
    reason         TEXT,
    detail         TEXT,
    pool_id        TEXT,
    PRIMARY KEY (tenant, user_id, lsn_created)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS payments_by_reference ON payments (reference, lsn_created);
CREATE INDEX IF NOT EXISTS payments_by_pool ON payments (tenant, pool_id, lsn_created)
    WHERE pool_id IS NOT NULL;
";

/// Where a payment stands, as stored and as the API filters on it.
pub const STATUSES: &[&str] = &[PENDING, SUCCEEDED, FAILED];
const PENDING: &str = "pending";
const SUCCEEDED: &str = "succeeded";
const FAILED: &str = "failed";

/// The row a settlement changes: the newest payment of its reference (`?3`), in the event's
/// wallet (`?1`, `?2`). A macro, so that each statement is one constant string.
macro_rules! newest_of_reference {
    () => {
        " WHERE tenant = ?1 AND user_id = ?2
            AND lsn_created = (SELECT max(lsn_created) FROM payments WHERE reference = ?3)"
    };
}

/// Applies the event at `lsn` to the payments table, if it is about a payment.
pub(crate) fn apply(
    transaction: &Transaction<'_>,
    lsn: u64,
    event: &Event<'_>,
) -> Result<(), StoreError> {
    match *event {
        Event::PaymentInitialized {
            wallet,
            reference,
            terms,
            gateway,
            purpose,
            ref meta,
        } => {
            let mut statement = transaction.prepare_cached(
                "INSERT INTO payments (tenant, user_id, reference, lsn_created, package_id,
                    credits, currency, amount_minor, price_currency, status, gateway, purpose,
                    metadata, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )?;
            statement.execute(params![
                wallet.tenant,
                wallet.user,
                reference,
                to_i64(lsn, "lsn")?,
                terms.package,
                terms.credits,
                wallet.currency.as_str(),
                terms.amount_minor,
                terms.price_currency.as_str(),
                PENDING,
                gateway,
                purpose_name(purpose),
                meta.metadata,
                meta.time_ms,
            ])?;
        }
        Event::PoolPaymentInitialized {
            tenant,
            pool,
            currency,
            reference,
            terms,
            gateway,
            ref meta,
        } => {
            let mut statement = transaction.prepare_cached(
                "INSERT INTO payments (tenant, user_id, pool_id, reference, lsn_created,
                    package_id, credits, currency, amount_minor, price_currency, status, gateway,
                    purpose, metadata, created_ms)
                 VALUES (?1, '', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )?;
            statement.execute(params![
                tenant,
                pool,
                reference,
                to_i64(lsn, "lsn")?,
                terms.package,
                terms.credits,
                currency.as_str(),
                terms.amount_minor,
                terms.price_currency.as_str(),
                PENDING,
                gateway,
                purpose_name(PaymentPurpose::Checkout),
                meta.metadata,
                meta.time_ms,
            ])?;
        }
        Event::PoolPaymentCheckoutOpened {
            tenant,
            reference,
            checkout_url,
            ..
        } => {
            let mut statement = transaction.prepare_cached(concat!(
                "UPDATE payments SET checkout_url = ?4",
                newest_of_reference!()
            ))?;
            statement.execute(params![tenant, "", reference, checkout_url])?;
        }
        Event::PoolPaymentSucceeded {
            tenant,
            reference,
            ref meta,
            ..
        } => {
            let mut statement = transaction.prepare_cached(concat!(
                "UPDATE payments SET status = ?4, settled_ms = ?5, entry_lsn = ?6, reason = NULL,
                    detail = NULL",
                newest_of_reference!()
            ))?;
            statement.execute(params![
                tenant,
                "",
                reference,
                SUCCEEDED,
                meta.time_ms,
                to_i64(lsn, "lsn")?,
            ])?;
        }
        Event::PoolPaymentFailed {
            tenant,
            reference,
            decline,
            reason,
            ref meta,
            ..
        } => {
            let mut statement = transaction.prepare_cached(concat!(
                "UPDATE payments SET status = ?4, settled_ms = ?5, reason = ?6, detail = ?7",
                newest_of_reference!()
            ))?;
            statement.execute(params![
                tenant,
                "",
                reference,
                FAILED,
                meta.time_ms,
                decline.as_str(),
                reason,
            ])?;
        }
        Event::PaymentCheckoutOpened {
            wallet,
            reference,
            checkout_url,
            ..
        } => {
            let mut statement = transaction.prepare_cached(concat!(
                "UPDATE payments SET checkout_url = ?4",
                newest_of_reference!()
            ))?;
            statement.execute(params![wallet.tenant, wallet.user, reference, checkout_url])?;
        }
        Event::PaymentSucceeded {
            wallet,
            reference,
            ref meta,
            ..
        } => {
            let mut statement = transaction.prepare_cached(concat!(
                "UPDATE payments SET status = ?4, settled_ms = ?5, entry_lsn = ?6, reason = NULL,
                    detail = NULL",
                newest_of_reference!()
            ))?;
            statement.execute(params![
                wallet.tenant,
                wallet.user,
                reference,
                SUCCEEDED,
                meta.time_ms,
                to_i64(lsn, "lsn")?,
            ])?;
        }
        Event::PaymentFailed {
            wallet,
            reference,
            decline,
            reason,
            ref meta,
        } => {
            let mut statement = transaction.prepare_cached(concat!(
                "UPDATE payments SET status = ?4, settled_ms = ?5, reason = ?6, detail = ?7",
                newest_of_reference!()
            ))?;
            statement.execute(params![
                wallet.tenant,
                wallet.user,
                reference,
                FAILED,
                meta.time_ms,
                decline.as_str(),
                reason,
            ])?;
        }
        _ => {}
    }
    Ok(())
}

fn purpose_name(purpose: PaymentPurpose) -> &'static str {
    match purpose {
        PaymentPurpose::Checkout => "checkout",
        PaymentPurpose::AutoTopup => "auto_topup",
    }
}

fn to_i64(value: u64, what: &'static str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Overflow(what))
}

/// One payment as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedPayment {
    /// The LSN of the record that started it: the list's order and its cursor.
    pub lsn_created: u64,
    /// creditd's reference.
    pub reference: String,
    /// The package bought.
    pub package_id: String,
    /// Credits it adds.
    pub credits: i64,
    /// The wallet currency of the credits.
    pub currency: String,
    /// Its price, in minor units.
    pub amount_minor: i64,
    /// The currency of the price.
    pub price_currency: String,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    /// The gateway.
    pub gateway: String,
    /// `checkout` or `auto_topup`.
    pub purpose: String,
    /// The caller's metadata, a JSON object as text.
    pub metadata: Option<String>,
    /// The gateway's checkout page.
    pub checkout_url: Option<String>,
    /// When it started (ms since the epoch).
    pub created_ms: i64,
    /// When it succeeded or failed.
    pub settled_ms: Option<i64>,
    /// The LSN of the ledger entry that credited it.
    pub entry_lsn: Option<u64>,
    /// How it failed (`soft_decline`, `hard_decline`, `amount_mismatch`, `abandoned`).
    pub reason: Option<String>,
}

/// The columns a listing reads, in [`ListedPayment`]'s order.
macro_rules! listed_columns {
    () => {
        "SELECT lsn_created, reference, package_id, credits, currency, amount_minor,
                price_currency, status, gateway, purpose, metadata, checkout_url,
                created_ms, settled_ms, entry_lsn, reason
         FROM payments "
    };
}

/// The page of a listing: started before `?3`, in status `?4` if not null, at most `?5`.
macro_rules! listed_page {
    () => {
        " AND lsn_created < ?3 AND (?4 IS NULL OR status = ?4)
         ORDER BY lsn_created DESC LIMIT ?5"
    };
}

impl Reader {
    /// `user`'s payments in `tenant`, newest first, started before `before_lsn` (a cursor), only
    /// those in `status` if given, at most `limit`.
    pub fn payments(
        &self,
        tenant: &str,
        user: &str,
        status: Option<&str>,
        before_lsn: Option<u64>,
        limit: u32,
    ) -> Result<Vec<ListedPayment>, StoreError> {
        const SQL: &str = concat!(
            listed_columns!(),
            "WHERE tenant = ?1 AND user_id = ?2",
            listed_page!()
        );
        self.list_payments(SQL, [tenant, user], status, before_lsn, limit)
    }

    /// The payments of the credit pool `pool` in `tenant` (packages bought for it), as
    /// [`Reader::payments`] lists a user's.
    pub fn pool_payments(
        &self,
        tenant: &str,
        pool: &str,
        status: Option<&str>,
        before_lsn: Option<u64>,
        limit: u32,
    ) -> Result<Vec<ListedPayment>, StoreError> {
        const SQL: &str = concat!(
            listed_columns!(),
            "WHERE tenant = ?1 AND pool_id = ?2",
            listed_page!()
        );
        self.list_payments(SQL, [tenant, pool], status, before_lsn, limit)
    }

    fn list_payments(
        &self,
        sql: &'static str,
        [tenant, owner]: [&str; 2],
        status: Option<&str>,
        before_lsn: Option<u64>,
        limit: u32,
    ) -> Result<Vec<ListedPayment>, StoreError> {
        let before = before_lsn.map_or(i64::MAX, |lsn| i64::try_from(lsn).unwrap_or(i64::MAX));
        self.with_connection(|connection| {
            let mut statement = connection.prepare_cached(sql)?;
            let rows =
                statement.query_map(params![tenant, owner, before, status, limit], |row| {
                    Ok(ListedPayment {
                        lsn_created: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
                        reference: row.get(1)?,
                        package_id: row.get(2)?,
                        credits: row.get(3)?,
                        currency: row.get(4)?,
                        amount_minor: row.get(5)?,
                        price_currency: row.get(6)?,
                        status: row.get(7)?,
                        gateway: row.get(8)?,
                        purpose: row.get(9)?,
                        metadata: row.get(10)?,
                        checkout_url: row.get(11)?,
                        created_ms: row.get(12)?,
                        settled_ms: row.get(13)?,
                        entry_lsn: row
                            .get::<_, Option<i64>>(14)?
                            .and_then(|lsn| u64::try_from(lsn).ok()),
                        reason: row.get(15)?,
                    })
                })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    use super::*;
    use crate::codec;
    use crate::engine::payments::{CheckoutRequest, Settlement, Verdict};
    use crate::engine::types::{Currency, Decline};
    use crate::engine::{
        Clock, Context, Engine, EngineOptions, ManualClock, PackageSpec, ProfileUpdate, Tenant,
    };
    use crate::history::Feeder;
    use crate::wal::memory::MemStorage;

    const ADMIN: Context<'static> = Context {
        actor: "admin",
        idempotency: None,
    };
    const DAY_MS: i64 = 86_400_000;

    struct Setup {
        storage: MemStorage,
        clock: Arc<ManualClock>,
        engine: Arc<Engine>,
        tenant: Arc<Tenant>,
        dir: tempfile::TempDir,
    }

    impl Setup {
        fn new() -> Setup {
            let storage = MemStorage::new();
            let clock = Arc::new(ManualClock::new(1_700_000_000_000));
            let options = EngineOptions {
                data_dir: "/data".into(),
                background: false,
                shards: 4,
                segment_bytes: 4096,
                ..EngineOptions::default()
            };
            let engine = Engine::open(
                options,
                Arc::new(storage.clone()),
                Arc::clone(&clock) as Arc<dyn Clock>,
            )
            .unwrap();
            let (tenant, _, _) = engine.upsert_tenant("acme", None, None, &ADMIN).unwrap();
            let package = PackageSpec {
                name: "Starter",
                credits: 500,
                currency: Currency::CREDITS,
                price_minor: 200_000,
                price_currency: Currency::new("NGN").unwrap(),
                active: true,
                position: 0,
            };
            engine
                .put_package(&tenant, "starter", &package, &ADMIN)
                .unwrap();
            for user in ["ada", "bob"] {
                let profile = ProfileUpdate {
                    email: None,
                    name: None,
                    metadata: None,
                };
                engine.upsert_user(&tenant, user, profile, &ADMIN).unwrap();
            }
            Setup {
                storage,
                clock,
                engine,
                tenant,
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn checkout(&self, user: &str, reference: &str, metadata: Option<&str>) {
            let request = CheckoutRequest {
                user,
                package: "starter",
                reference,
                gateway: "sandbox",
                metadata,
            };
            self.engine
                .start_checkout(&self.tenant, &request, &ADMIN)
                .unwrap();
        }

        fn settle(&self, reference: &str, verdict: &Verdict<'_>) -> Settlement {
            self.engine
                .settle_payment(reference, "sandbox", verdict, "")
                .unwrap()
        }

        fn path(&self) -> std::path::PathBuf {
            self.dir.path().join("history.sqlite3")
        }

        /// Feeds everything durable into the history.
        fn feed(&self) {
            self.engine.wal().flush().unwrap();
            let wal = Path::new("/data/wal");
            let mut feeder =
                Feeder::open(&self.path(), wal, codec::FORMAT_VERSION, 1 << 20).unwrap();
            feeder
                .step(&self.storage, self.engine.wal().durable_lsn(), 100_000)
                .unwrap();
        }

        fn list(&self, user: &str, status: Option<&str>) -> Vec<ListedPayment> {
            let reader = Reader::new(&self.path(), Arc::new(AtomicU64::new(0)));
            reader.payments("acme", user, status, None, 1000).unwrap()
        }
    }

    const PAID: Verdict<'static> = Verdict::Paid {
        paid_minor: 200_000,
        paid_currency: Currency::CREDITS,
        method: None,
    };

    fn paid() -> Verdict<'static> {
        Verdict::Paid {
            paid_minor: 200_000,
            paid_currency: Currency::new("NGN").unwrap(),
            method: None,
        }
    }

    fn declined(decline: Decline) -> Verdict<'static> {
        Verdict::Declined {
            decline,
            reason: "the card was declined",
        }
    }

    #[test]
    fn every_payment_is_listed_newest_first_with_where_it_ended() {
        let s = Setup::new();
        s.checkout("ada", "cd_paid", Some(r#"{"order":"A-1"}"#));
        s.engine
            .open_checkout("cd_paid", "https://pay.example.com/cd_paid")
            .unwrap();
        s.checkout("ada", "cd_declined", None);
        s.checkout("ada", "cd_open", None);
        s.checkout("bob", "cd_bob", None);
        s.clock.advance_ms(5_000);
        let Settlement::Credited { lsn: credit, .. } = s.settle("cd_paid", &paid()) else {
            panic!("not credited");
        };
        s.settle("cd_declined", &declined(Decline::Hard));
        // Another currency than the price's: recorded failed as a mismatch.
        s.settle("cd_bob", &PAID);
        s.feed();

        let listed = s.list("ada", None);
        let references: Vec<&str> = listed.iter().map(|p| p.reference.as_str()).collect();
        assert_eq!(references, ["cd_open", "cd_declined", "cd_paid"]);
        let [open, failed, succeeded] = &listed[..] else {
            panic!("{listed:?}");
        };
        assert!(
            open.lsn_created > failed.lsn_created && failed.lsn_created > succeeded.lsn_created
        );
        assert_eq!(
            (open.status.as_str(), open.settled_ms, open.entry_lsn),
            ("pending", None, None)
        );
        assert_eq!(succeeded.status, "succeeded");
        assert_eq!(succeeded.entry_lsn, Some(credit));
        assert_eq!(succeeded.settled_ms, Some(succeeded.created_ms + 5_000));
        assert_eq!(succeeded.metadata.as_deref(), Some(r#"{"order":"A-1"}"#));
        assert_eq!(
            succeeded.checkout_url.as_deref(),
            Some("https://pay.example.com/cd_paid")
        );
        assert_eq!(
            (succeeded.package_id.as_str(), succeeded.credits),
            ("starter", 500)
        );
        assert_eq!(
            (
                succeeded.amount_minor,
                succeeded.price_currency.as_str(),
                succeeded.currency.as_str()
            ),
            (200_000, "NGN", "credits")
        );
        assert_eq!(
            (succeeded.gateway.as_str(), succeeded.purpose.as_str()),
            ("sandbox", "checkout")
        );
        assert_eq!(
            (failed.status.as_str(), failed.reason.as_deref()),
            ("failed", Some("hard_decline"))
        );
        assert_eq!(failed.entry_lsn, None);
        let bob = s.list("bob", None);
        assert_eq!(bob.len(), 1);
        assert_eq!(bob[0].reason.as_deref(), Some("amount_mismatch"));

        let only = |status| {
            s.list("ada", Some(status))
                .into_iter()
                .map(|p| p.reference)
                .collect::<Vec<_>>()
        };
        assert_eq!(only("pending"), ["cd_open"]);
        assert_eq!(only("succeeded"), ["cd_paid"]);
        assert_eq!(only("failed"), ["cd_declined"]);
        // Pages cut by the starting LSN.
        let reader = Reader::new(&s.path(), Arc::new(AtomicU64::new(0)));
        let page = reader
            .payments("acme", "ada", None, Some(failed.lsn_created), 1)
            .unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].reference, "cd_paid");
        assert!(reader
            .payments("globex", "ada", None, None, 10)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_payment_recorded_failed_then_reported_paid_turns_succeeded() {
        let s = Setup::new();
        s.checkout("ada", "cd_late", None);
        s.settle("cd_late", &declined(Decline::Abandoned));
        s.feed();
        assert_eq!(s.list("ada", None)[0].status, "failed");
        let Settlement::Credited { lsn, .. } = s.settle("cd_late", &paid()) else {
            panic!("not credited");
        };
        s.feed();
        let listed = s.list("ada", None);
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (
                listed[0].status.as_str(),
                listed[0].entry_lsn,
                listed[0].reason.as_deref()
            ),
            ("succeeded", Some(lsn), None)
        );
    }

    #[test]
    fn the_history_keeps_payments_the_engine_forgot_and_a_reference_issued_again_is_a_new_row() {
        let s = Setup::new();
        s.checkout("ada", "cd_again", Some(r#"{"first":true}"#));
        s.settle("cd_again", &paid());
        s.clock.advance_ms(8 * DAY_MS);
        s.engine.purge_expired(s.clock.now_ms());
        assert!(s.engine.payment("cd_again").is_none(), "forgotten");
        // The same reference, issued again (a key used again), for another user, then declined.
        s.checkout("bob", "cd_again", None);
        s.settle("cd_again", &declined(Decline::Soft));
        s.feed();
        let ada = s.list("ada", None);
        assert_eq!(ada.len(), 1);
        assert_eq!(ada[0].status, "succeeded", "the first one is untouched");
        assert_eq!(ada[0].metadata.as_deref(), Some(r#"{"first":true}"#));
        let bob = s.list("bob", None);
        assert_eq!(bob.len(), 1);
        assert_eq!(
            (bob[0].status.as_str(), bob[0].metadata.as_deref()),
            ("failed", None)
        );
    }
}
