//! The history: the ledger kept for reading, fed from the durable log.
//!
//! The engine keeps balances; the log keeps every change until snapshots let it go. The history
//! keeps the movements of every wallet for as long as `history.retention` says, in an embedded
//! SQLite database (`<data_dir>/history.sqlite3`) that operators and finance can open with any
//! SQLite tool. It is fed by a [`Feeder`] that follows the log ([`crate::wal::follow`]) beside the
//! writer: it reads only records the log has made durable, never takes an engine lock and never
//! sits on the path of a debit.
//!
//! Exactly once: the feeder writes the entries of a stretch of the log and the LSN it reached in
//! one SQLite transaction, so after a crash it starts again from the last committed LSN, with no
//! gap and no duplicate. It keeps a retention hold on the log at that LSN, so that no segment it
//! has not consumed is removed.
//!
//! - [`audit`]: the audit log, a hash chain of every change made by hand, and its verification.
//! - `entry`: the ledger entry an event makes (crate-private, like the events it reads).
//! - [`store`]: the database: schema, the feeder's transaction, the checkpoint.
//! - [`worker`]: the feeder's thread and its retention hold.
//! - [`reader`]: read-only access for the API.
//! - [`retention`]: removing entries and payments older than `history.retention`.
//! - [`payments`]: the payment history, a table of its own (one row per payment).
//! - [`pools`]: the ledger of credit pools (their credits and what they paid for members).
//! - [`rollup`]: usage and revenue counters kept by the feeder, for the reports.
//! - `user_block`: the byte format of a block of users' usage totals (crate-private).
//! - [`reports`]: the usage and revenue reports, read from the rollups.

pub mod audit;
pub(crate) mod entry;
pub mod payments;
pub mod pools;
pub mod reader;
pub mod reports;
pub mod retention;
pub mod rollup;
pub mod store;
mod user_block;
pub mod worker;

use std::path::Path;

use crate::codec;
use crate::engine::event::Event;
use crate::wal::follow::{FollowError, Follower};
use crate::wal::Storage;
pub use store::{Store, StoreError};

/// The database's file name in the data directory.
pub const FILE_NAME: &str = "history.sqlite3";

/// The name of the feeder's retention hold on the log.
pub const RETENTION_HOLD: &str = "history";

/// Records a step applies between two offers of its core to whatever else is ready to run
/// (`sched_yield`): about a quarter of a millisecond of work. The scheduler lets a running
/// thread finish its slice (a few milliseconds) before a thread that wakes may take its core,
/// whatever their priorities, so a step applying thousands of records could hold a request's
/// thread off its core that long; yielding every few hundred records bounds that wait. When
/// nothing else is ready, the yield returns at once and costs a system call. While the feeder
/// rests at `SCHED_IDLE` a waking thread preempts it at once and the yields are redundant; they
/// still bound the wait while a reader has raised it (see [`worker::Nudge`]).
const YIELD_EVERY_RECORDS: u32 = 256;

/// Why a feeding step failed. Nothing of the step was committed; the next step retries it.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The log could not be followed.
    #[error("reading the log: {0}")]
    Log(#[from] FollowError<StoreError>),
    /// The database refused the step.
    #[error("history database: {0}")]
    Store(#[from] StoreError),
}

/// Feeds the history from the log, a transaction per step.
#[derive(Debug)]
pub struct Feeder {
    store: Store,
    follower: Follower,
}

impl Feeder {
    /// Opens (or creates) the database at `path` and follows the log in `wal_dir` from where the
    /// database stopped.
    pub fn open(
        path: &Path,
        wal_dir: &Path,
        format_version: u32,
        max_record_bytes: u32,
    ) -> Result<Feeder, StoreError> {
        let store = Store::open(path)?;
        let next_lsn = store.next_lsn()?;
        let follower = Follower::new(wal_dir, next_lsn, format_version, max_record_bytes);
        Ok(Feeder { store, follower })
    }

    /// Remembers about `capacity` accounts (`history.account_cache`).
    pub fn set_account_cache(&mut self, capacity: usize) {
        self.store.set_account_cache(capacity);
    }

    /// The account lookups since the last call, and how many accounts it remembers now.
    pub fn take_account_lookups(&mut self) -> (store::Lookups, usize) {
        self.store.take_lookups()
    }

    /// The first LSN not yet in the history: where its retention hold must stand.
    pub fn next_lsn(&self) -> u64 {
        self.follower.next_lsn()
    }

    /// The database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// One purge transaction of [`retention::purge_step`].
    pub fn purge(
        &mut self,
        cutoff_ms: i64,
        rows: u64,
        payments: bool,
    ) -> Result<retention::Purged, StoreError> {
        retention::purge_step(&mut self.store, cutoff_ms, rows, payments)
    }

    /// Whether the history has applied nothing yet.
    pub fn is_fresh(&self) -> Result<bool, StoreError> {
        Ok(self.follower.next_lsn() == 1 && self.store.next_lsn()? == 1)
    }

    /// Makes the history go on at `lsn`: the log before it is gone.
    pub fn start_at(&mut self, lsn: u64) -> Result<(), StoreError> {
        self.store.begin()?.commit(lsn)?;
        self.follower.rewind(lsn);
        Ok(())
    }

    /// Applies the durable records from [`Feeder::next_lsn`] up to `durable_lsn`, at most
    /// `max_records` of them (whole batches, so perhaps a few more), in one transaction with the
    /// new checkpoint. Returns how many records it applied.
    pub fn step(
        &mut self,
        storage: &dyn Storage,
        durable_lsn: u64,
        max_records: u64,
    ) -> Result<u64, FeedError> {
        let start = self.follower.next_lsn();
        if durable_lsn < start {
            return Ok(0);
        }
        let mut transaction = self.store.begin()?;
        let follower = &mut self.follower;
        let mut since_yield = 0u32;
        let applied = follower.poll(storage, durable_lsn, max_records, |frame| {
            let event = codec::decode::<Event<'_>>(frame.payload)
                .map_err(|error| StoreError::Undecodable(frame.lsn, error.to_string()))?;
            since_yield += 1;
            if since_yield == YIELD_EVERY_RECORDS {
                since_yield = 0;
                std::thread::yield_now();
            }
            transaction.apply(frame.lsn, &event)
        });
        let committed = match applied {
            Ok(applied) => transaction
                .commit(follower.next_lsn())
                .map(|()| applied)
                .map_err(FeedError::from),
            Err(error) => {
                drop(transaction);
                Err(error.into())
            }
        };
        if committed.is_err() {
            // Nothing of the step stays: the next one starts again at the checkpoint (the
            // follower itself would resume at the batch that failed, after the batches the
            // rollback undid), and the account ids the rollback took back may be given again.
            self.follower.rewind(start);
            self.store.forget_accounts();
        }
        committed
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::types::CreditKind;
    use crate::engine::{
        CaptureRequest, Clock, Context, CreditRequest, DebitRequest, Engine, EngineOptions,
        ManualClock, ProfileUpdate, ReserveRequest, Spend,
    };
    use crate::wal::memory::MemStorage;

    const CALLER: Context<'static> = Context {
        actor: "app-key",
        idempotency: None,
    };

    fn engine(storage: &MemStorage) -> Arc<Engine> {
        let options = EngineOptions {
            data_dir: "/data".into(),
            background: false,
            shards: 4,
            segment_bytes: 4096,
            ..EngineOptions::default()
        };
        let clock = Arc::new(ManualClock::new(1_700_000_000_000)) as Arc<dyn Clock>;
        Engine::open(options, Arc::new(storage.clone()), clock).unwrap()
    }

    /// ada's entries as the API reads them, oldest first.
    fn listed(path: &Path) -> Vec<reader::Listed> {
        let applied = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let reader = reader::Reader::new(path, applied);
        let filter = reader::Filter::default();
        let mut listed = reader.entries("acme", "ada", &filter, None, 1000).unwrap();
        listed.reverse();
        listed
    }

    fn lsns_of(listed: &[reader::Listed]) -> Vec<u64> {
        listed.iter().map(|entry| entry.lsn).collect()
    }

    fn feeder(path: &Path) -> Feeder {
        let wal = Path::new("/data/wal");
        Feeder::open(path, wal, codec::FORMAT_VERSION, 1 << 20).unwrap()
    }

    /// Writes, for ada: a credit of 100, a debit of 2 × `gpt` (3 each), a reservation of 10
    /// captured at 7, a reservation of 5 released, then `debits` debits of 1. Returns the LSNs
    /// of the entries, in order.
    fn write(engine: &Engine, debits: u64) -> Vec<u64> {
        let (tenant, _, _) = engine.upsert_tenant("acme", None, None, &CALLER).unwrap();
        let profile = ProfileUpdate {
            email: None,
            name: None,
            metadata: None,
        };
        engine
            .upsert_user(&tenant, "ada", profile, &CALLER)
            .unwrap();
        engine
            .put_action(&tenant, "gpt", 3, None, None, &CALLER)
            .unwrap();
        let mut lsns = Vec::new();
        let credit = CreditRequest {
            user: "ada",
            amount: 100,
            kind: CreditKind::Grant,
            currency: None,
            description: Some("welcome"),
            reference: None,
            metadata: Some(r#"{"campaign":"launch"}"#),
            grant_cap_per_day: None,
        };
        lsns.push(engine.credit(&tenant, &credit, &CALLER).unwrap().lsn);
        let debit = |spend| DebitRequest {
            user: "ada",
            spend,
            currency: None,
            description: None,
            reference: None,
            metadata: None,
            dry_run: false,
        };
        let by_action = debit(Spend::Action {
            name: "gpt",
            quantity: 2,
        });
        lsns.push(engine.debit(&tenant, &by_action, &CALLER).unwrap().lsn);
        let reserve = |amount| ReserveRequest {
            user: "ada",
            spend: Spend::Amount(amount),
            currency: None,
            ttl_seconds: Some(60),
            description: None,
            metadata: None,
            dry_run: false,
        };
        let held = engine.reserve(&tenant, &reserve(10), &CALLER).unwrap().lsn;
        let capture = CaptureRequest {
            reservation_id: held,
            amount: Some(7),
            description: None,
            metadata: None,
        };
        lsns.push(engine.capture(&tenant, &capture, &CALLER).unwrap().lsn);
        let held = engine.reserve(&tenant, &reserve(5), &CALLER).unwrap().lsn;
        lsns.push(engine.release(&tenant, held, &CALLER).unwrap().lsn);
        for _ in 0..debits {
            let one = debit(Spend::Amount(1));
            lsns.push(engine.debit(&tenant, &one, &CALLER).unwrap().lsn);
            // One batch each, so that a feeding step can stop between them.
            engine.wal().flush().unwrap();
        }
        engine.wal().flush().unwrap();
        lsns
    }

    #[test]
    fn every_movement_becomes_an_entry_with_its_balance_action_and_actor() {
        let storage = MemStorage::new();
        let engine = engine(&storage);
        let lsns = write(&engine, 0);
        let dir = tempfile::tempdir().unwrap();
        let mut feeder = feeder(&dir.path().join("history.sqlite3"));
        let applied = feeder
            .step(&storage, engine.wal().durable_lsn(), 1000)
            .unwrap();
        assert_eq!(applied, engine.wal().durable_lsn(), "every record read");
        let listed = listed(&dir.path().join("history.sqlite3"));
        assert_eq!(lsns_of(&listed), lsns);
        let entry = |lsn| listed.iter().find(|entry| entry.lsn == lsn).unwrap();
        let credit = entry(lsns[0]);
        assert_eq!((credit.kind.as_str(), credit.amount), ("grant", 100));
        assert_eq!(credit.balance_after, Some(100));
        assert_eq!(credit.actor, "app-key");
        let debit = entry(lsns[1]);
        assert_eq!((debit.kind.as_str(), debit.amount), ("debit", -6));
        assert_eq!(debit.action.as_deref(), Some("gpt"));
        assert_eq!(debit.quantity, Some(2));
        assert_eq!(debit.balance_after, Some(94));
        let capture = entry(lsns[2]);
        assert_eq!((capture.kind.as_str(), capture.amount), ("capture", -7));
        assert_eq!(capture.balance_after, Some(87));
        let release = entry(lsns[3]);
        assert_eq!((release.kind.as_str(), release.amount), ("release", 5));
        assert_eq!(release.balance_after, None);
        assert_eq!(release.currency, "credits");
        assert_eq!(
            feeder.store().next_lsn().unwrap(),
            engine.wal().durable_lsn() + 1
        );
    }

    #[test]
    fn a_reopened_history_goes_on_from_its_checkpoint_with_no_gap_and_no_duplicate() {
        let storage = MemStorage::new();
        let engine = engine(&storage);
        let lsns = write(&engine, 80);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.sqlite3");
        let durable = engine.wal().durable_lsn();
        let mut steps = 0;
        loop {
            // A restart between every step: a new feeder on the same file.
            let mut feeder = feeder(&path);
            let before = feeder.next_lsn();
            feeder.step(&storage, durable, 7).unwrap();
            steps += 1;
            if feeder.next_lsn() == before {
                break;
            }
        }
        assert!(steps > 10, "fed in many small steps");
        let feeder = feeder(&path);
        assert_eq!(lsns_of(&listed(&path)), lsns);
        assert_eq!(feeder.store().count().unwrap(), lsns.len() as u64);
        assert_eq!(feeder.next_lsn(), durable + 1);
    }

    #[test]
    fn a_failed_step_keeps_nothing_and_the_next_one_applies_it_whole() {
        let storage = MemStorage::new();
        let engine = engine(&storage);
        let lsns = write(&engine, 3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.sqlite3");
        let durable = engine.wal().durable_lsn();
        let mut feeder = feeder(&path);
        // A row that is already there makes the insert of that entry fail mid-step.
        {
            let mut feed = feeder.store.begin().unwrap();
            let event = Event::Credited {
                wallet: crate::engine::event::WalletRef {
                    tenant: "acme",
                    user: "ada",
                    currency: crate::engine::types::Currency::CREDITS,
                },
                kind: CreditKind::Grant,
                amount: 1,
                balance_after: 1,
                available_after: 1,
                meta: crate::engine::event::Meta {
                    time_ms: 0,
                    actor: "x",
                    description: None,
                    reference: None,
                    metadata: None,
                    idempotency: None,
                },
            };
            feed.insert(&entry::of(lsns[2], &event).unwrap()).unwrap();
            feed.commit(1).unwrap();
        }
        let error = feeder.step(&storage, durable, 1000).unwrap_err();
        assert!(matches!(error, FeedError::Log(_)), "{error:?}");
        assert_eq!(
            feeder.next_lsn(),
            1,
            "the follower went back to the checkpoint"
        );
        assert_eq!(lsns_of(&listed(&path)), [lsns[2]]);
        // Remove the obstacle: the same step now applies everything.
        feeder
            .store
            .connection
            .execute("DELETE FROM entries", [])
            .unwrap();
        feeder.step(&storage, durable, 1000).unwrap();
        assert_eq!(lsns_of(&listed(&path)), lsns);
    }
}
