//! The history after a step that failed: nothing of the step stays, in the database or in the
//! feeder. A step spans many batches of the log; when it fails in a later one, the rollback
//! undoes the earlier ones too, so the next step must start again at the checkpoint, not at the
//! batch that failed (or the earlier batches' entries would never be written). And the rollback
//! takes back the account ids the step created, so the next step must not file entries under the
//! ids it remembers: a user created later, in another tenant say, would be given the same id and
//! shown another user's entries.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use creditd::engine::types::CreditKind;
use creditd::engine::{
    Clock, Context, CreditRequest, Engine, EngineOptions, ManualClock, ProfileUpdate,
};
use creditd::history::reader::{Filter, Reader};
use creditd::history::{Feeder, FILE_NAME};
use creditd::wal::memory::MemStorage;

const CALLER: Context<'static> = Context {
    actor: "faults",
    idempotency: None,
};

fn engine(storage: &MemStorage) -> Arc<Engine> {
    let options = EngineOptions {
        data_dir: "/data".into(),
        background: false,
        shards: 4,
        ..EngineOptions::default()
    };
    let clock = Arc::new(ManualClock::new(1_700_000_000_000)) as Arc<dyn Clock>;
    Engine::open(options, Arc::new(storage.clone()), clock).unwrap()
}

/// Creates `user` in `tenant` and credits it `amount`; the credit's LSN.
fn credit(engine: &Engine, tenant: &str, user: &str, amount: i64) -> u64 {
    let (tenant, _, _) = engine.upsert_tenant(tenant, None, None, &CALLER).unwrap();
    let profile = ProfileUpdate {
        email: None,
        name: None,
        metadata: None,
    };
    engine.upsert_user(&tenant, user, profile, &CALLER).unwrap();
    let request = CreditRequest::new(user, amount, CreditKind::Grant);
    let lsn = engine.credit(&tenant, &request, &CALLER).unwrap().lsn;
    engine.wal().flush().unwrap();
    lsn
}

/// The amounts of `user`'s entries in `tenant`, oldest first.
fn amounts(path: &Path, tenant: &str, user: &str) -> Vec<i64> {
    let reader = Reader::new(path, Arc::new(AtomicU64::new(0)));
    let mut listed = reader
        .entries(tenant, user, &Filter::default(), None, 100)
        .unwrap();
    listed.reverse();
    listed.iter().map(|entry| entry.amount).collect()
}

#[test]
fn a_failed_step_leaves_neither_a_gap_nor_an_account_id_behind() {
    let storage = MemStorage::new();
    let engine = engine(&storage);
    credit(&engine, "acme", "ada", 100);
    let bob = credit(&engine, "globex", "bob", 200);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    let mut feeder = Feeder::open(
        &path,
        Path::new("/data/wal"),
        creditd::codec::FORMAT_VERSION,
        1 << 20,
    )
    .unwrap();
    // A row already at bob's LSN makes the step fail there, in the second batch, after it
    // wrote ada's entry and created the accounts of ada and bob.
    let sql = rusqlite::Connection::open(&path).unwrap();
    sql.execute(
        "INSERT INTO entries (lsn, account, kind, amount, currency, available_after, actor,
                              created_ms)
         VALUES (?1, 999, 'grant', 1, 'credits', 1, 'x', 0)",
        [i64::try_from(bob).unwrap()],
    )
    .unwrap();
    let durable = engine.wal().durable_lsn();
    feeder
        .step(&**engine.storage(), durable, 1000)
        .expect_err("the row in the way fails the step");
    let accounts: i64 = sql
        .query_row("SELECT count(*) FROM accounts", [], |row| row.get(0))
        .unwrap();
    assert_eq!(accounts, 0, "the failed step's accounts were rolled back");

    // The obstacle goes; a user of globex appears; the step is tried again.
    sql.execute("DELETE FROM entries", []).unwrap();
    credit(&engine, "globex", "carol", 300);
    let durable = engine.wal().durable_lsn();
    feeder.step(&**engine.storage(), durable, 1000).unwrap();
    assert_eq!(
        amounts(&path, "acme", "ada"),
        [100],
        "ada's credit, in the batch before the one that failed, is applied again"
    );
    assert_eq!(amounts(&path, "globex", "bob"), [200]);
    assert_eq!(
        amounts(&path, "globex", "carol"),
        [300],
        "carol is shown her own entries, and only those"
    );
    let orphans: i64 = sql
        .query_row(
            "SELECT count(*) FROM entries WHERE account NOT IN (SELECT id FROM accounts)",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(orphans, 0, "every entry belongs to an account");
}
