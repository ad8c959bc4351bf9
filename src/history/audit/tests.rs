//! The audit's tests: what events make, the chain across steps, the encoding, and every kind of
//! tampering `verify` must name.

use std::path::Path;

use rusqlite::Connection;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::*;
use crate::engine::event::{Event, Meta, PackageRecord, Secret, TenantSettingsRecord, WalletRef};
use crate::engine::types::{CreditKind, Currency, DebitKind};
use crate::history::Store;

const ADA: WalletRef<'static> = WalletRef {
    tenant: "acme",
    user: "ada",
    currency: Currency::CREDITS,
};

fn meta(actor: &'static str, description: Option<&'static str>) -> Meta<'static> {
    Meta {
        time_ms: 1_700_000_000_000,
        actor,
        description,
        reference: None,
        metadata: None,
        idempotency: None,
    }
}

/// The events of a small history, in log order from LSN 1; some are not audited.
fn events() -> Vec<Event<'static>> {
    let admin = meta("acme-admin", None);
    vec![
        Event::TenantUpserted {
            tenant: "acme",
            settings: TenantSettingsRecord {
                name: Some("Acme"),
                default_currency: Currency::CREDITS,
                currencies: Vec::new(),
            },
            meta: meta("system", None),
        },
        Event::Credited {
            wallet: ADA,
            kind: CreditKind::Grant,
            amount: 100,
            balance_after: 100,
            available_after: 100,
            meta: Meta {
                metadata: Some(r#"{"ticket":7}"#),
                ..meta("acme-admin", Some("welcome"))
            },
        },
        // Usage: not audited, but it moves the balance the next record starts from.
        Event::Debited {
            wallet: ADA,
            kind: DebitKind::Usage,
            amount: 30,
            balance_after: 70,
            available_after: 70,
            action: None,
            pool: None,
            meta: meta("acme-service", None),
        },
        Event::Debited {
            wallet: ADA,
            kind: DebitKind::Revoke,
            amount: 20,
            balance_after: 50,
            available_after: 50,
            action: None,
            pool: None,
            meta: meta("acme-admin", Some("fraud")),
        },
        Event::ActionPut {
            tenant: "acme",
            action: "gpt",
            cost: 3,
            currency: Currency::CREDITS,
            description: None,
            meta: admin,
        },
        Event::ActionPut {
            tenant: "acme",
            action: "gpt",
            cost: 4,
            currency: Currency::CREDITS,
            description: Some("dearer"),
            meta: admin,
        },
        Event::PackagePut {
            tenant: "acme",
            package: "starter",
            terms: PackageRecord {
                name: "Starter",
                credits: 500,
                currency: Currency::CREDITS,
                price_minor: 200_000,
                price_currency: Currency::new("NGN").unwrap(),
                active: true,
                position: 0,
            },
            meta: admin,
        },
        Event::AutoTopupSet {
            wallet: ADA,
            threshold: 10,
            package: "starter",
            payment_method: Some("AUTH_secret_token"),
            max_per_day: 2,
            meta: admin,
        },
        Event::AutoTopupDisabled {
            wallet: ADA,
            reason: "card declined",
            meta: meta("system", None),
        },
        Event::TenantWebhookSet {
            tenant: "acme",
            url: Some("https://acme.example/hooks"),
            secret: Some(Secret("whsec-very-secret-value")),
            meta: meta("platform", None),
        },
        Event::ActionDeleted {
            tenant: "acme",
            action: "gpt",
            meta: admin,
        },
        Event::OverdraftSet {
            wallet: WalletRef {
                tenant: "globex",
                ..ADA
            },
            limit: 50,
            meta: meta("globex-admin", None),
        },
    ]
}

/// A history at `path` fed with `events`, `per_step` records per transaction.
fn feed(path: &Path, events: &[Event<'_>], per_step: usize) {
    let mut store = Store::open(path).unwrap();
    let mut lsn = store.next_lsn().unwrap();
    for step in events.chunks(per_step) {
        let mut feed = store.begin().unwrap();
        for event in step {
            feed.apply(lsn, event).unwrap();
            lsn += 1;
        }
        feed.commit(lsn).unwrap();
    }
}

fn all(path: &Path, tenant: &str) -> Vec<Record> {
    let reader = Reader::new(path, std::sync::Arc::default());
    let mut records = reader
        .audit(tenant, &Filter::default(), None, 1000)
        .unwrap();
    records.reverse();
    records
}

fn json(text: Option<&str>) -> Value {
    text.map_or(Value::Null, |text| serde_json::from_str(text).unwrap())
}

fn fed() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.sqlite3");
    feed(&path, &events(), 3);
    (dir, path)
}

#[test]
fn every_change_by_hand_is_a_record_with_what_it_replaced() {
    let (_dir, path) = fed();
    let records = all(&path, "acme");
    let actions: Vec<&str> = records.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "tenant.upsert",
            "credit.grant",
            "wallet.revoke",
            "action.put",
            "action.put",
            "package.put",
            "auto_topup.set",
            "auto_topup.disable",
            "tenant.webhook",
            "action.delete",
        ]
    );
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>(), "dense, one chain");
    let lsns: Vec<u64> = records.iter().map(|r| r.lsn).collect();
    assert_eq!(lsns, [1, 2, 4, 5, 6, 7, 8, 9, 10, 11]);

    let grant = &records[1];
    assert_eq!(
        (grant.actor.as_str(), grant.target.as_str()),
        ("acme-admin", "user:ada")
    );
    assert_eq!(
        json(grant.before.as_deref()),
        json!({"balance": 0, "currency": "credits"})
    );
    let after = json(grant.after.as_deref());
    assert_eq!(after["balance"], 100);
    assert_eq!(after["amount"], 100);
    assert_eq!(after["description"], "welcome");
    assert_eq!(after["metadata"]["ticket"], 7);
    assert_eq!(after["entry_id"], "ent_2");
    // The revoke starts from the balance usage left, not from the grant's.
    let revoke = &records[2];
    assert_eq!(json(revoke.before.as_deref())["balance"], 70);
    let after = json(revoke.after.as_deref());
    assert_eq!(
        (after["balance"].clone(), after["amount"].clone()),
        (json!(50), json!(-20))
    );
    assert_eq!(after["description"], "fraud");

    let (first, second) = (&records[3], &records[4]);
    assert_eq!(first.before, None);
    assert_eq!(first.target, "action:gpt");
    assert_eq!(second.before, first.after);
    assert_eq!(json(second.after.as_deref())["cost"], 4);
    let deleted = &records[9];
    assert_eq!(deleted.before, second.after);
    assert_eq!(deleted.after, None);

    let rule = json(records[6].after.as_deref());
    assert_eq!(rule["threshold"], 10);
    assert_eq!(rule["enabled"], true);
    let disabled = &records[7];
    assert_eq!(disabled.actor, "system");
    assert_eq!(disabled.before, records[6].after);
    let after = json(disabled.after.as_deref());
    assert_eq!(
        (after["enabled"].clone(), after["threshold"].clone()),
        (json!(false), json!(10))
    );
    assert_eq!(after["disabled_reason"], "card declined");

    // Secrets never enter the audit; their fingerprints show that they changed.
    let webhook = json(records[8].after.as_deref());
    assert_eq!(webhook["url"], "https://acme.example/hooks");
    assert_eq!(webhook["secret_sha256_prefix"].as_str().unwrap().len(), 8);
    let text = std::fs::read(&path).unwrap();
    for secret in ["whsec-very-secret-value", "AUTH_secret_token"] {
        assert!(
            !text.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} is in the file"
        );
    }
    assert_eq!(
        rule["payment_method_sha256_prefix"],
        fingerprint("AUTH_secret_token")
    );

    // Another tenant's record is in the same chain, not in acme's list.
    let globex = all(&path, "globex");
    assert_eq!(globex.len(), 1);
    assert_eq!(
        (globex[0].seq, globex[0].action.as_str()),
        (11, "overdraft.set")
    );
    assert_eq!(
        json(globex[0].after.as_deref()),
        json!({"currency": "credits", "overdraft_limit": 50})
    );
    let verified = verify(&path).unwrap();
    assert_eq!(verified.records, 11);
    assert_eq!(hex(&verified.last_hash), globex[0].hash);
}

#[test]
fn the_chain_is_the_same_however_the_log_is_cut_into_steps() {
    let (_dir, path) = fed();
    let other = tempfile::tempdir().unwrap();
    let whole = other.path().join("history.sqlite3");
    feed(&whole, &events(), 1000);
    let one_by_one = other.path().join("one.sqlite3");
    feed(&one_by_one, &events(), 1);
    let hashes = |path: &Path| -> Vec<String> {
        let mut records = all(path, "acme");
        records.extend(all(path, "globex"));
        records.into_iter().map(|record| record.hash).collect()
    };
    assert_eq!(hashes(&path), hashes(&whole));
    assert_eq!(hashes(&path), hashes(&one_by_one));
}

#[test]
fn a_step_rolled_back_leaves_no_trace_in_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.sqlite3");
    let events = events();
    feed(&path, &events[..2], 10);
    {
        let mut store = Store::open(&path).unwrap();
        let mut feed = store.begin().unwrap();
        for (lsn, event) in (3..).zip(&events[2..]) {
            feed.apply(lsn, event).unwrap();
        }
        // Dropped without a commit: the transaction rolls back, head and all.
    }
    assert_eq!(verify(&path).unwrap().records, 2);
    feed(&path, &events[2..], 10);
    let (_whole_dir, whole) = fed();
    assert_eq!(verify(&path).unwrap(), verify(&whole).unwrap());
}

#[test]
fn the_canonical_encoding_is_fixed() {
    let record = Canonical {
        seq: 1,
        lsn: 2,
        at_ms: -1,
        tenant: "t",
        actor: "a",
        action: "x.y",
        target: "",
        before: None,
        after: Some("{}"),
    };
    let mut bytes = Vec::new();
    record.encode(&mut bytes).unwrap();
    let mut expected = Vec::new();
    expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
    expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 2]);
    expected.extend_from_slice(&[0xff; 8]);
    expected.extend_from_slice(b"\0\0\0\x01t\0\0\0\x01a\0\0\0\x03x.y\0\0\0\0");
    expected.extend_from_slice(b"\0\x01\0\0\0\x02{}");
    assert_eq!(bytes, expected);
    let hash = record.hash(&GENESIS, &mut bytes).unwrap();
    let mut direct = Sha256::new();
    direct.update([0u8; 32]);
    direct.update(&expected);
    assert_eq!(hash, <Hash>::from(direct.finalize()));
    assert_eq!(unhex(&hex(&hash)), Some(hash));
    // Null and an empty document differ.
    let empty = Canonical {
        after: Some(""),
        ..record
    };
    assert_ne!(
        empty.hash(&GENESIS, &mut bytes),
        record.hash(&GENESIS, &mut bytes)
    );
}

/// A copy of the fed history changed by `sql`: what `verify` says of it.
fn tampered(sql: &str) -> Result<Verified, VerifyError> {
    let (dir, path) = fed();
    let copy = dir.path().join("copy.sqlite3");
    std::fs::copy(&path, &copy).unwrap();
    Connection::open(&copy).unwrap().execute_batch(sql).unwrap();
    verify(&copy)
}

fn broken_at(sql: &str) -> Broken {
    match tampered(sql) {
        Err(VerifyError::Broken(broken)) => broken,
        other => panic!("{sql}: {other:?}"),
    }
}

#[test]
fn a_changed_field_is_named_by_its_seq() {
    let broken = broken_at(r#"UPDATE audit SET after = '{"balance":1000000}' WHERE seq = 3"#);
    assert_eq!(
        (broken.seq, broken.lsn, broken.damage),
        (3, Some(4), Damage::Changed)
    );
    assert_eq!(
        broken.to_string(),
        "audit chain broken at seq 3 (lsn 4): changed"
    );
    for sql in [
        "UPDATE audit SET actor = 'someone-else' WHERE seq = 5",
        "UPDATE audit SET at_ms = at_ms + 1 WHERE seq = 5",
        "UPDATE audit SET tenant = 'globex' WHERE seq = 5",
        "UPDATE audit SET before = NULL WHERE seq = 5",
        "UPDATE audit SET after = 7 WHERE seq = 5",
        "UPDATE audit SET hash = 'not hex' WHERE seq = 5",
    ] {
        let broken = broken_at(sql);
        assert_eq!((broken.seq, broken.damage), (5, Damage::Changed), "{sql}");
    }
}

#[test]
fn a_removed_record_is_named_whether_in_the_middle_or_at_the_end() {
    let middle = broken_at("DELETE FROM audit WHERE seq = 4");
    assert_eq!(
        (middle.seq, middle.lsn, middle.damage),
        (4, None, Damage::Missing)
    );
    assert_eq!(middle.previous_lsn, 4);
    assert_eq!(
        middle.to_string(),
        "audit chain broken at seq 4 (after lsn 4): missing"
    );
    // Removed and the later ones renumbered: the first renumbered one no longer hashes.
    let renumbered =
        broken_at("DELETE FROM audit WHERE seq = 4; UPDATE audit SET seq = seq - 1 WHERE seq > 4");
    assert_eq!((renumbered.seq, renumbered.damage), (4, Damage::Changed));
    // The last record: the anchored head still counts it.
    let last = broken_at("DELETE FROM audit WHERE seq = 11");
    assert_eq!((last.seq, last.damage), (11, Damage::Missing));
    let first = broken_at("DELETE FROM audit WHERE seq = 1");
    assert_eq!((first.seq, first.damage), (1, Damage::Missing));
}

#[test]
fn a_swapped_pair_is_out_of_order() {
    // Adjacent, then apart.
    for (a, b) in [(3, 4), (2, 9)] {
        let sql = format!(
            "UPDATE audit SET seq = -1 WHERE seq = {a};
             UPDATE audit SET seq = {a} WHERE seq = {b};
             UPDATE audit SET seq = {b} WHERE seq = -1;"
        );
        let broken = broken_at(&sql);
        assert_eq!(
            (broken.seq, broken.damage),
            (a, Damage::OutOfOrder),
            "{a}, {b}"
        );
    }
}

#[test]
fn the_head_anchors_the_chain() {
    let extra = broken_at(
        "INSERT INTO audit SELECT seq + 1, lsn + 1, tenant, at_ms, actor, action, target,
            before, after, hash FROM audit WHERE seq = 11",
    );
    // The appended copy does not hash as seq 12.
    assert_eq!((extra.seq, extra.damage), (12, Damage::Changed));
    let moved_head = broken_at("UPDATE audit_head SET seq = 10");
    assert_eq!(
        (moved_head.seq, moved_head.damage),
        (11, Damage::Unanchored)
    );
    let other_hash = broken_at(&format!("UPDATE audit_head SET hash = '{}'", hex(&[7; 32])));
    assert_eq!(
        (other_hash.seq, other_hash.damage),
        (11, Damage::Unanchored)
    );
    let gone = broken_at("DELETE FROM audit_head");
    assert_eq!(gone.damage, Damage::Unanchored);
    // The untouched copy checks out.
    assert_eq!(tampered("SELECT 1").unwrap().records, 11);
}

#[test]
fn an_empty_chain_checks_out_and_a_file_without_one_is_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.sqlite3");
    drop(Store::open(&path).unwrap());
    assert_eq!(
        verify(&path).unwrap(),
        Verified {
            records: 0,
            last_hash: GENESIS
        }
    );
    let other = dir.path().join("other.sqlite3");
    Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    assert!(matches!(verify(&other), Err(VerifyError::Unreadable(_))));
}

#[test]
fn the_listing_filters_and_pages_by_seq() {
    let (_dir, path) = fed();
    let reader = Reader::new(&path, std::sync::Arc::default());
    let by_admin = Filter {
        actor: Some("acme-admin".into()),
        ..Filter::default()
    };
    let page = reader.audit("acme", &by_admin, None, 3).unwrap();
    let seqs: Vec<u64> = page.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [10, 7, 6]);
    let next = reader.audit("acme", &by_admin, Some(6), 3).unwrap();
    let seqs: Vec<u64> = next.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [5, 4, 3]);
    let window = Filter {
        from_ms: Some(1_700_000_000_000),
        to_ms: Some(1_700_000_000_001),
        ..Filter::default()
    };
    assert_eq!(reader.audit("acme", &window, None, 100).unwrap().len(), 10);
    let before = Filter {
        to_ms: Some(1_700_000_000_000),
        ..Filter::default()
    };
    assert!(reader.audit("acme", &before, None, 100).unwrap().is_empty());
}
