//! Unit tests of the engine on the in-memory crash-model storage with a hand-driven clock; the
//! payments side's in `payments`.

use std::sync::Arc;

use super::types::{
    ClosedAs, CreditKind, Currency, DebitKind, EngineError, Missing, Outcome, Shortfall,
};
use super::*;
use crate::wal::memory::{FaultPoint, FaultyStorage, MemStorage};
use crate::wal::Storage;
use crate::wal::{AppendError, DurabilityError};

mod money;
mod payments;
mod pools;

const T0: i64 = 1_700_000_000_000;

struct Harness {
    storage: MemStorage,
    clock: Arc<ManualClock>,
    engine: Arc<Engine>,
    tenant: Arc<Tenant>,
}

fn options() -> EngineOptions {
    EngineOptions {
        data_dir: "/data".into(),
        background: false,
        shards: 8,
        segment_bytes: 4096,
        ..EngineOptions::default()
    }
}

fn open(storage: &MemStorage, clock: &Arc<ManualClock>) -> Arc<Engine> {
    Engine::open(
        options(),
        Arc::new(storage.clone()),
        Arc::clone(clock) as Arc<dyn Clock>,
    )
    .expect("open")
}

fn empty_profile() -> ProfileUpdate<'static> {
    ProfileUpdate {
        email: None,
        name: None,
        metadata: None,
    }
}

const ADMIN: Context<'static> = Context {
    actor: "admin-key",
    idempotency: None,
};

impl Harness {
    fn new() -> Harness {
        let storage = MemStorage::new();
        let clock = Arc::new(ManualClock::new(T0));
        let engine = open(&storage, &clock);
        let (tenant, created, _) = engine
            .upsert_tenant("acme", Some("Acme"), None, &ADMIN)
            .unwrap();
        assert!(created);
        Harness {
            storage,
            clock,
            engine,
            tenant,
        }
    }

    fn user(&self, id: &str) {
        self.engine
            .upsert_user(&self.tenant, id, empty_profile(), &ADMIN)
            .unwrap();
    }

    /// Credits and waits until durable, as a client's acknowledgement would.
    fn credit(&self, user: &str, amount: i64) -> Done {
        let done = self
            .engine
            .credit(
                &self.tenant,
                &CreditRequest::new(user, amount, CreditKind::Grant),
                &ADMIN,
            )
            .unwrap();
        self.engine.wait_durable(done.lsn).unwrap();
        done
    }

    /// Debits and, if it succeeded, waits until durable.
    fn debit(&self, user: &str, amount: i64) -> Result<Done, EngineError> {
        let done = self.engine.debit(
            &self.tenant,
            &DebitRequest::new(user, Spend::Amount(amount)),
            &ADMIN,
        )?;
        self.engine.wait_durable(done.lsn)?;
        Ok(done)
    }

    fn wallet(&self, user: &str) -> WalletView {
        self.tenant.wallet(user, None).unwrap()
    }

    /// Simulates a power cut (everything unsynced lost) and reopens on what survived.
    fn crash_and_reopen(&mut self) {
        let image = self.storage.crash_image(|_, _| 0);
        self.storage = image;
        self.engine = open(&self.storage, &self.clock);
        self.tenant = self.engine.tenant("acme").expect("tenant survives");
    }
}

#[test]
fn welcome_credit_debit_and_refusal() {
    let h = Harness::new();
    h.user("alice");
    let credit = h.credit("alice", 20);
    assert_eq!(
        credit.outcome,
        Outcome::Credit {
            entry_id: credit.lsn,
            amount: 20,
            balance: 20,
            available: 20
        }
    );
    let debit = h.debit("alice", 5).unwrap();
    assert!(matches!(
        debit.outcome,
        Outcome::Debit {
            charged: 5,
            balance: 15,
            available: 15,
            kind: DebitKind::Usage,
            ..
        }
    ));
    h.engine.wait_durable(debit.lsn).unwrap();
    let next = h.engine.wal().next_lsn();
    let refused = h.debit("alice", 100);
    assert_eq!(
        refused,
        Err(EngineError::InsufficientCredits(Shortfall {
            currency: Currency::CREDITS,
            balance: 15,
            available: 15,
            overdraft_limit: 0,
            spendable: 15,
            required: 100,
            pool_available: None,
        }))
    );
    assert_eq!(
        h.engine.wal().next_lsn(),
        next,
        "a refused debit writes nothing"
    );
    assert_eq!(h.wallet("alice").balance, 15);
    assert_eq!(
        h.debit("nobody", 1),
        Err(EngineError::NotFound(Missing::User))
    );
}

#[test]
fn bad_amounts_and_ids_are_refused() {
    let h = Harness::new();
    h.user("alice");
    for amount in [0, -1, i64::MIN, i64::MAX] {
        assert!(
            matches!(h.debit("alice", amount), Err(EngineError::Invalid(_))),
            "{amount}"
        );
    }
    let bad_user = CreditRequest::new("bad/user", 5, CreditKind::Grant);
    assert!(matches!(
        h.engine.credit(&h.tenant, &bad_user, &ADMIN),
        Err(EngineError::Invalid(_))
    ));
    let huge = "x".repeat(20_000);
    let mut with_metadata = CreditRequest::new("alice", 5, CreditKind::Grant);
    with_metadata.metadata = Some(&huge);
    assert!(matches!(
        h.engine.credit(&h.tenant, &with_metadata, &ADMIN),
        Err(EngineError::Invalid(_))
    ));
}

#[test]
fn credit_overflow_is_refused_not_wrapped() {
    let h = Harness::new();
    h.user("alice");
    let max = h.engine.options().limits.max_amount;
    let request = CreditRequest::new("alice", max, CreditKind::Grant);
    let mut credits = 0i64;
    let refusal = loop {
        match h.engine.credit(&h.tenant, &request, &ADMIN) {
            Ok(_) => credits += max,
            Err(error) => break error,
        }
    };
    assert_eq!(refusal, EngineError::Overflow);
    assert_eq!(h.wallet("alice").balance, credits);
    assert!(credits > i64::MAX - max);
}

#[test]
fn debits_by_action_use_the_catalogue() {
    let h = Harness::new();
    h.user("alice");
    h.credit("alice", 100);
    h.engine
        .put_action(&h.tenant, "gpt-4o", 7, None, Some("one completion"), &ADMIN)
        .unwrap();
    let done = h
        .engine
        .debit(
            &h.tenant,
            &DebitRequest::new(
                "alice",
                Spend::Action {
                    name: "gpt-4o",
                    quantity: 3,
                },
            ),
            &ADMIN,
        )
        .unwrap();
    assert!(matches!(
        done.outcome,
        Outcome::Debit {
            charged: 21,
            balance: 79,
            ..
        }
    ));
    let unknown = h.engine.debit(
        &h.tenant,
        &DebitRequest::new(
            "alice",
            Spend::Action {
                name: "nope",
                quantity: 1,
            },
        ),
        &ADMIN,
    );
    assert_eq!(unknown, Err(EngineError::NotFound(Missing::Action)));
    let overflow = h.engine.debit(
        &h.tenant,
        &DebitRequest::new(
            "alice",
            Spend::Action {
                name: "gpt-4o",
                quantity: u64::MAX,
            },
        ),
        &ADMIN,
    );
    assert!(matches!(
        overflow,
        Err(EngineError::Invalid(_)) | Err(EngineError::Overflow)
    ));
    h.engine.delete_action(&h.tenant, "gpt-4o", &ADMIN).unwrap();
    assert_eq!(
        h.engine.delete_action(&h.tenant, "gpt-4o", &ADMIN),
        Err(EngineError::NotFound(Missing::Action))
    );
    assert!(h.tenant.actions().is_empty());
}

#[test]
fn dry_run_answers_and_changes_nothing() {
    let h = Harness::new();
    h.user("alice");
    h.credit("alice", 10);
    let next = h.engine.wal().next_lsn();
    let mut request = DebitRequest::new("alice", Spend::Amount(4));
    request.dry_run = true;
    let done = h.engine.debit(&h.tenant, &request, &ADMIN).unwrap();
    assert!(matches!(
        done.outcome,
        Outcome::Debit {
            charged: 4,
            balance: 6,
            available: 6,
            ..
        }
    ));
    assert_eq!(done.lsn, 0);
    request.spend = Spend::Amount(11);
    assert!(matches!(
        h.engine.debit(&h.tenant, &request, &ADMIN),
        Err(EngineError::InsufficientCredits(_))
    ));
    let mut reserve = ReserveRequest::new("alice", Spend::Amount(10));
    reserve.dry_run = true;
    assert!(matches!(
        h.engine
            .reserve(&h.tenant, &reserve, &ADMIN)
            .unwrap()
            .outcome,
        Outcome::Reserve { available: 0, .. }
    ));
    assert_eq!(h.engine.wal().next_lsn(), next);
    assert_eq!(h.wallet("alice").balance, 10);
    assert_eq!(h.wallet("alice").reserved, 0);
}

#[test]
fn overdraft_floor_and_repayment() {
    let h = Harness::new();
    h.user("alice");
    h.credit("alice", 5);
    h.engine
        .set_overdraft(&h.tenant, "alice", None, 10, &ADMIN)
        .unwrap();
    assert!(matches!(
        h.debit("alice", 15).unwrap().outcome,
        Outcome::Debit { balance: -10, .. }
    ));
    assert!(matches!(
        h.debit("alice", 1),
        Err(EngineError::InsufficientCredits(_))
    ));
    assert!(matches!(
        h.engine.set_overdraft(&h.tenant, "alice", None, 5, &ADMIN),
        Err(EngineError::Conflict(_))
    ));
    assert!(matches!(
        h.credit("alice", 12).outcome,
        Outcome::Credit { balance: 2, .. }
    ));
    h.engine
        .set_overdraft(&h.tenant, "alice", None, 0, &ADMIN)
        .unwrap();
    assert!(matches!(
        h.debit("alice", 3),
        Err(EngineError::InsufficientCredits(_))
    ));
}

#[test]
fn revoke_needs_a_reason_and_the_credits() {
    let h = Harness::new();
    h.user("alice");
    h.credit("alice", 10);
    let no_reason = RevokeRequest {
        user: "alice",
        amount: 3,
        currency: None,
        reason: " ",
        allow_negative: false,
    };
    assert!(matches!(
        h.engine.revoke(&h.tenant, &no_reason, &ADMIN),
        Err(EngineError::Invalid(_))
    ));
    let revoke = RevokeRequest {
        reason: "granted by mistake",
        ..no_reason
    };
    let done = h.engine.revoke(&h.tenant, &revoke, &ADMIN).unwrap();
    assert!(matches!(
        done.outcome,
        Outcome::Debit {
            kind: DebitKind::Revoke,
            charged: 3,
            balance: 7,
            ..
        }
    ));
    let too_much = RevokeRequest {
        amount: 8,
        ..revoke
    };
    assert!(matches!(
        h.engine.revoke(&h.tenant, &too_much, &ADMIN),
        Err(EngineError::InsufficientCredits(_))
    ));
}

#[test]
fn reservations_capture_partial_excess_and_refused_excess() {
    let h = Harness::new();
    h.user("alice");
    h.credit("alice", 20);
    let reserve = h
        .engine
        .reserve(
            &h.tenant,
            &ReserveRequest::new("alice", Spend::Amount(10)),
            &ADMIN,
        )
        .unwrap();
    let Outcome::Reserve {
        reservation_id,
        available: 10,
        expires_at_ms,
        ..
    } = reserve.outcome
    else {
        panic!("{reserve:?}")
    };
    assert_eq!(expires_at_ms, T0 + 300_000);
    assert_eq!(h.wallet("alice").reserved, 10);
    assert!(matches!(
        h.debit("alice", 11),
        Err(EngineError::InsufficientCredits(Shortfall {
            available: 10,
            ..
        }))
    ));
    let capture = CaptureRequest {
        reservation_id,
        amount: Some(7),
        description: None,
        metadata: None,
    };
    let done = h.engine.capture(&h.tenant, &capture, &ADMIN).unwrap();
    assert!(matches!(
        done.outcome,
        Outcome::Capture {
            charged: 7,
            released: 3,
            balance: 13,
            available: 13,
            ..
        }
    ));
    assert_eq!(
        h.engine.capture(&h.tenant, &capture, &ADMIN),
        Err(EngineError::ReservationClosed(ClosedAs::Captured))
    );

    // Above the reservation: the excess comes from available when it suffices…
    let second = h
        .engine
        .reserve(
            &h.tenant,
            &ReserveRequest::new("alice", Spend::Amount(5)),
            &ADMIN,
        )
        .unwrap();
    let Outcome::Reserve {
        reservation_id: second_id,
        ..
    } = second.outcome
    else {
        panic!()
    };
    let over = CaptureRequest {
        reservation_id: second_id,
        amount: Some(8),
        description: None,
        metadata: None,
    };
    assert!(matches!(
        h.engine.capture(&h.tenant, &over, &ADMIN).unwrap().outcome,
        Outcome::Capture {
            charged: 8,
            balance: 5,
            ..
        }
    ));
    // …and otherwise the capture is refused and the reservation stays.
    let third = h
        .engine
        .reserve(
            &h.tenant,
            &ReserveRequest::new("alice", Spend::Amount(2)),
            &ADMIN,
        )
        .unwrap();
    let Outcome::Reserve {
        reservation_id: third_id,
        ..
    } = third.outcome
    else {
        panic!()
    };
    let too_much = CaptureRequest {
        reservation_id: third_id,
        amount: Some(100),
        description: None,
        metadata: None,
    };
    assert!(matches!(
        h.engine.capture(&h.tenant, &too_much, &ADMIN),
        Err(EngineError::InsufficientCredits(_))
    ));
    assert_eq!(h.wallet("alice").reserved, 2);
    let released = h.engine.release(&h.tenant, third_id, &ADMIN).unwrap();
    assert!(matches!(
        released.outcome,
        Outcome::Release {
            released: 2,
            available: 5,
            ..
        }
    ));
    assert_eq!(
        h.engine.release(&h.tenant, third_id, &ADMIN),
        Err(EngineError::ReservationClosed(ClosedAs::Released))
    );
    assert_eq!(
        h.engine.release(&h.tenant, 999_999, &ADMIN),
        Err(EngineError::NotFound(Missing::Reservation))
    );
    h.engine.check_invariants().unwrap();
}

#[test]
fn reservations_expire_on_their_own_and_can_be_extended() {
    let h = Harness::new();
    h.user("alice");
    h.credit("alice", 10);
    let mut request = ReserveRequest::new("alice", Spend::Amount(4));
    request.ttl_seconds = Some(10);
    let Outcome::Reserve {
        reservation_id: a, ..
    } = h
        .engine
        .reserve(&h.tenant, &request, &ADMIN)
        .unwrap()
        .outcome
    else {
        panic!()
    };
    let Outcome::Reserve {
        reservation_id: b, ..
    } = h
        .engine
        .reserve(&h.tenant, &request, &ADMIN)
        .unwrap()
        .outcome
    else {
        panic!()
    };
    h.clock.advance_ms(5_000);
    let extended = h.engine.extend(&h.tenant, b, 60, &ADMIN).unwrap();
    assert_eq!(
        extended.outcome,
        Outcome::Extend {
            reservation_id: b,
            expires_at_ms: T0 + 5_000 + 60_000
        }
    );
    h.clock.advance_ms(5_000);
    assert_eq!(h.engine.expire_reservations(h.clock.now_ms()).unwrap(), 1);
    assert_eq!(h.wallet("alice").reserved, 4);
    let capture = CaptureRequest {
        reservation_id: a,
        amount: None,
        description: None,
        metadata: None,
    };
    assert_eq!(
        h.engine.capture(&h.tenant, &capture, &ADMIN),
        Err(EngineError::ReservationClosed(ClosedAs::Expired))
    );
    // Expiry also happens lazily, under the lock, before a decision needs the credits back.
    h.clock.advance_ms(61_000);
    assert!(h.debit("alice", 10).is_ok());
    assert!(matches!(
        h.tenant.reservation(b).unwrap().state,
        ReservationState::Closed(ClosedAs::Expired)
    ));
    h.engine.check_invariants().unwrap();
}

#[test]
fn idempotent_replay_reuse_and_in_flight() {
    let h = Harness::new();
    h.user("alice");
    h.user("bob");
    let key = IdempotencyKey {
        key: "order-1",
        fingerprint: [1; 16],
    };
    let keyed = ADMIN.with_key(key);
    let first = h
        .engine
        .credit(
            &h.tenant,
            &CreditRequest::new("alice", 10, CreditKind::Grant),
            &keyed,
        )
        .unwrap();
    let again = h
        .engine
        .credit(
            &h.tenant,
            &CreditRequest::new("alice", 10, CreditKind::Grant),
            &keyed,
        )
        .unwrap();
    assert!(!first.replayed && again.replayed);
    assert_eq!((first.lsn, first.outcome), (again.lsn, again.outcome));
    assert_eq!(h.wallet("alice").balance, 10);
    let other = ADMIN.with_key(IdempotencyKey {
        key: "order-1",
        fingerprint: [2; 16],
    });
    assert_eq!(
        h.debit_with("bob", 1, &other),
        Err(EngineError::IdempotencyKeyReused)
    );

    // While a request owns a key, another with the same key is told so.
    let tenant = Arc::clone(&h.tenant);
    let in_flight = IdempotencyKey {
        key: "order-2",
        fingerprint: [3; 16],
    };
    let Ok(idempotency::Begin::Fresh(Some(claim))) = idempotency::begin(
        &tenant,
        Some(&in_flight),
        &h.engine.state.idempotency_entries,
        100,
        42,
    ) else {
        panic!("claim")
    };
    assert_eq!(
        h.debit_with("alice", 1, &ADMIN.with_key(in_flight)),
        Err(EngineError::IdempotencyKeyInFlight)
    );
    drop(claim);
    assert!(h.debit_with("alice", 1, &ADMIN.with_key(in_flight)).is_ok());

    // A refused request leaves no trace under its key: the client may retry after topping up.
    let retry = ADMIN.with_key(IdempotencyKey {
        key: "order-3",
        fingerprint: [4; 16],
    });
    assert!(matches!(
        h.debit_with("bob", 5, &retry),
        Err(EngineError::InsufficientCredits(_))
    ));
    h.credit("bob", 5);
    assert!(matches!(
        h.debit_with("bob", 5, &retry).unwrap().outcome,
        Outcome::Debit { balance: 0, .. }
    ));
    assert_eq!(h.engine.idempotency_entries(), 3);
}

impl Harness {
    fn debit_with(
        &self,
        user: &str,
        amount: i64,
        context: &Context<'_>,
    ) -> Result<Done, EngineError> {
        self.engine.debit(
            &self.tenant,
            &DebitRequest::new(user, Spend::Amount(amount)),
            context,
        )
    }
}

#[test]
fn idempotency_keys_expire_after_the_ttl_and_the_table_is_bounded() {
    let storage = MemStorage::new();
    let clock = Arc::new(ManualClock::new(T0));
    let options = EngineOptions {
        idempotency_max_entries: 2,
        ..options()
    };
    let engine = Engine::open(
        options,
        Arc::new(storage),
        Arc::clone(&clock) as Arc<dyn Clock>,
    )
    .unwrap();
    let (tenant, _, _) = engine.upsert_tenant("acme", None, None, &ADMIN).unwrap();
    engine
        .upsert_user(&tenant, "alice", empty_profile(), &ADMIN)
        .unwrap();
    let credit = CreditRequest::new("alice", 1, CreditKind::Grant);
    for key in ["a", "b"] {
        engine
            .credit(
                &tenant,
                &credit,
                &ADMIN.with_key(IdempotencyKey {
                    key,
                    fingerprint: [0; 16],
                }),
            )
            .unwrap();
    }
    let full = engine.credit(
        &tenant,
        &credit,
        &ADMIN.with_key(IdempotencyKey {
            key: "c",
            fingerprint: [0; 16],
        }),
    );
    assert_eq!(full, Err(EngineError::IdempotencyTableFull));
    clock.advance_ms(24 * 3600 * 1000 + 1);
    assert_eq!(engine.purge_expired(clock.now_ms()).0, 2);
    assert!(engine
        .credit(
            &tenant,
            &credit,
            &ADMIN.with_key(IdempotencyKey {
                key: "c",
                fingerprint: [0; 16]
            })
        )
        .is_ok());
}

#[test]
fn tenants_are_isolated() {
    let h = Harness::new();
    let (other, _, _) = h
        .engine
        .upsert_tenant("globex", None, Some(Currency::new("NGN").unwrap()), &ADMIN)
        .unwrap();
    h.user("shared-id");
    h.engine
        .upsert_user(&other, "shared-id", empty_profile(), &ADMIN)
        .unwrap();
    h.credit("shared-id", 10);
    assert_eq!(other.wallet("shared-id", None).unwrap().balance, 0);
    assert_eq!(other.default_currency().as_str(), "NGN");
    let Outcome::Reserve { reservation_id, .. } = h
        .engine
        .reserve(
            &h.tenant,
            &ReserveRequest::new("shared-id", Spend::Amount(3)),
            &ADMIN,
        )
        .unwrap()
        .outcome
    else {
        panic!()
    };
    assert_eq!(
        h.engine.release(&other, reservation_id, &ADMIN),
        Err(EngineError::NotFound(Missing::Reservation))
    );
    assert_eq!(
        other.reservation(reservation_id),
        Err(EngineError::NotFound(Missing::Reservation))
    );
    assert!(matches!(
        h.engine
            .upsert_tenant("globex", None, Some(Currency::CREDITS), &ADMIN),
        Err(EngineError::Conflict(_))
    ));
}

fn busy_history(h: &Harness) {
    h.engine
        .put_action(&h.tenant, "search", 2, None, None, &ADMIN)
        .unwrap();
    let terms = PackageSpec {
        name: "Starter",
        credits: 500,
        currency: Currency::CREDITS,
        price_minor: 200_000,
        price_currency: Currency::new("NGN").unwrap(),
        active: true,
        position: 0,
    };
    h.engine
        .put_package(&h.tenant, "starter", &terms, &ADMIN)
        .unwrap();
    for i in 0..40 {
        let user = format!("user-{}", i % 7);
        h.engine
            .upsert_user(
                &h.tenant,
                &user,
                ProfileUpdate {
                    email: Some("a@b.c"),
                    name: None,
                    metadata: None,
                },
                &ADMIN,
            )
            .unwrap();
        h.credit(&user, 10 + i);
        let key = format!("k-{i}");
        let keyed = ADMIN.with_key(IdempotencyKey {
            key: &key,
            fingerprint: [i as u8; 16],
        });
        let _ = h.engine.debit(
            &h.tenant,
            &DebitRequest::new(
                &user,
                Spend::Action {
                    name: "search",
                    quantity: 2,
                },
            ),
            &keyed,
        );
        if let Ok(done) = h.engine.reserve(
            &h.tenant,
            &ReserveRequest::new(&user, Spend::Amount(3)),
            &ADMIN,
        ) {
            let Outcome::Reserve { reservation_id, .. } = done.outcome else {
                panic!()
            };
            if i % 3 == 0 {
                let capture = CaptureRequest {
                    reservation_id,
                    amount: Some(1),
                    description: None,
                    metadata: None,
                };
                h.engine.capture(&h.tenant, &capture, &ADMIN).unwrap();
            } else if i % 3 == 1 {
                h.engine.release(&h.tenant, reservation_id, &ADMIN).unwrap();
            }
        }
    }
    h.engine.wal().flush().unwrap();
}

#[test]
fn recovery_from_the_log_alone_rebuilds_the_same_state() {
    let mut h = Harness::new();
    busy_history(&h);
    let before = h.engine.state_image();
    assert!(
        h.engine.wal().stats().rotations > 0,
        "the test should span several segments"
    );
    h.crash_and_reopen();
    assert_eq!(h.engine.state_image(), before);
    assert_eq!(h.engine.recovery_report().snapshot, None);
    h.engine.check_invariants().unwrap();
}

#[test]
fn recovery_from_snapshot_plus_log_rebuilds_the_same_state() {
    let mut h = Harness::new();
    busy_history(&h);
    h.engine.snapshot().unwrap();
    busy_history(&h);
    h.engine.snapshot().unwrap();
    busy_history(&h);
    let before = h.engine.state_image();
    h.crash_and_reopen();
    assert_eq!(h.engine.state_image(), before);
    let report = h.engine.recovery_report().clone();
    assert!(report.snapshot.is_some());
    assert!(report.records_replayed > 0);
    // Old segments went once two snapshots covered them.
    let segments = h
        .storage
        .paths()
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .count();
    assert!(segments < 20, "{segments} segments kept");
    // And again, to recover from a snapshot taken by a recovered engine.
    h.engine.snapshot().unwrap();
    h.crash_and_reopen();
    assert_eq!(h.engine.state_image(), before);
}

#[test]
fn clean_shutdown_leaves_a_snapshot_that_needs_no_replay() {
    let mut h = Harness::new();
    busy_history(&h);
    let before = h.engine.state_image();
    h.engine.shutdown().unwrap().expect("final snapshot");
    assert!(matches!(
        h.credit_result("user-1", 1),
        Err(EngineError::Log(AppendError::Closed))
    ));
    h.crash_and_reopen();
    assert_eq!(h.engine.state_image(), before);
    assert_eq!(h.engine.recovery_report().records_replayed, 0);
}

impl Harness {
    fn credit_result(&self, user: &str, amount: i64) -> Result<Done, EngineError> {
        self.engine.credit(
            &self.tenant,
            &CreditRequest::new(user, amount, CreditKind::Grant),
            &ADMIN,
        )
    }
}

#[test]
fn torn_tail_is_cut_and_reported() {
    let mut h = Harness::new();
    h.user("alice");
    h.credit("alice", 10);
    h.engine.wal().flush().unwrap();
    let before = h.engine.state_image();
    // Junk after the last record, as an unfinished write leaves it.
    let segment = h
        .storage
        .paths()
        .into_iter()
        .rfind(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    // Right after the last batch (which ends in non-zero magic), in the zeroed space if any.
    // Written into what survives the crash, not before it: the log's zeroing thread, still
    // running until then, writes zeros past the last record and could cover the junk.
    let image = h.storage.crash_image(|_, _| 0);
    let written = image.read_all(&segment).unwrap();
    let end = written.iter().rposition(|&b| b != 0).unwrap() + 1;
    image.corrupt(&segment, end, &[0x37; 23]).unwrap();
    h.storage = image;
    h.crash_and_reopen();
    assert_eq!(h.engine.state_image(), before);
    let torn = h
        .engine
        .recovery_report()
        .torn_tail
        .clone()
        .expect("reported");
    assert_eq!(torn.discarded_bytes, 23);
    h.credit("alice", 1);
    h.crash_and_reopen();
    assert_eq!(h.wallet("alice").balance, 11);
    assert!(h.engine.recovery_report().torn_tail.is_none());
}

#[test]
fn the_log_writes_into_zeroed_space_and_recovery_trims_what_is_left() {
    let mut h = Harness::new();
    h.user("alice");
    for _ in 0..200 {
        h.credit("alice", 1);
    }
    h.engine.wal().flush().unwrap();
    let before = h.engine.state_image();
    let logs: Vec<_> = h
        .storage
        .paths()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    assert!(logs.len() >= 3, "{logs:?}");
    // Finished segments end at their last batch (non-zero magic): the zeros were trimmed.
    for finished in &logs[..logs.len() - 1] {
        let bytes = h.storage.read_all(finished).unwrap();
        assert_ne!(bytes.last(), Some(&0), "{} kept zeros", finished.display());
    }
    // The active one is zeroed ahead up to the segment size (4096 bytes here).
    let active = logs.last().unwrap().clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while h.storage.len(&active).unwrap() < 4096 {
        assert!(std::time::Instant::now() < deadline, "never zeroed ahead");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(h.storage.read_all(&active).unwrap().last(), Some(&0));
    h.crash_and_reopen();
    assert_eq!(h.engine.state_image(), before);
    assert!(h.engine.recovery_report().torn_tail.is_none());
    let trimmed = h.storage.read_all(&active).unwrap();
    assert_ne!(trimmed.last(), Some(&0), "recovery left the zeros");
    assert!(trimmed.len() < 4096);
}

#[test]
fn damage_before_the_tail_refuses_to_start() {
    let h = Harness::new();
    busy_history(&h);
    let image = h.storage.crash_image(|_, _| 0);
    let first = image
        .paths()
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    image.corrupt(&first, 100, &[0xff]).unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let error = Engine::open(options(), Arc::new(image), clock).unwrap_err();
    let message = error.to_string();
    assert!(message.contains(&first.display().to_string()), "{message}");
    assert!(matches!(error, OpenError::Damage { .. }), "{error:?}");
}

#[test]
fn unreadable_newest_snapshot_falls_back_to_the_older_one() {
    let mut h = Harness::new();
    busy_history(&h);
    h.engine.snapshot().unwrap();
    busy_history(&h);
    let newest = h.engine.snapshot().unwrap();
    busy_history(&h);
    let before = h.engine.state_image();
    h.storage.corrupt(&newest.path, 60, &[0xAA, 0xBB]).unwrap();
    h.crash_and_reopen();
    assert_eq!(h.engine.state_image(), before);
    assert_eq!(h.engine.recovery_report().snapshots_skipped.len(), 1);
}

#[test]
fn failed_sync_poisons_the_log_and_nothing_more_is_acknowledged() {
    let memory = MemStorage::new();
    let faulty = FaultyStorage::new(Arc::new(memory.clone()));
    let clock = Arc::new(ManualClock::new(T0));
    let engine = Engine::open(options(), Arc::new(faulty.clone()), clock).unwrap();
    let (tenant, _, _) = engine.upsert_tenant("acme", None, None, &ADMIN).unwrap();
    engine
        .upsert_user(&tenant, "alice", empty_profile(), &ADMIN)
        .unwrap();
    let ok = engine
        .credit(
            &tenant,
            &CreditRequest::new("alice", 10, CreditKind::Grant),
            &ADMIN,
        )
        .unwrap();
    engine.wait_durable(ok.lsn).unwrap();
    faulty.fail_from(FaultPoint::Sync, 1);
    let doomed = engine
        .debit(
            &tenant,
            &DebitRequest::new("alice", Spend::Amount(3)),
            &ADMIN,
        )
        .unwrap();
    assert_eq!(
        engine.wait_durable(doomed.lsn),
        Err(DurabilityError::Poisoned)
    );
    assert!(!engine.is_writable());
    assert!(engine.wal().poison_reason().unwrap().contains("injected"));
    faulty.heal();
    let refused = engine.debit(
        &tenant,
        &DebitRequest::new("alice", Spend::Amount(1)),
        &ADMIN,
    );
    assert_eq!(refused, Err(EngineError::Log(AppendError::Poisoned)));
    assert!(
        engine.snapshot().is_err(),
        "no snapshot may capture effects the log lost"
    );
    // After a restart, only what was durable is there.
    drop(engine);
    let reopened = Engine::open(
        options(),
        Arc::new(memory.crash_image(|_, _| 0)),
        Arc::new(ManualClock::new(T0)),
    )
    .unwrap();
    assert_eq!(
        reopened
            .tenant("acme")
            .unwrap()
            .wallet("alice", None)
            .unwrap()
            .balance,
        10
    );
}

#[test]
fn many_threads_on_one_wallet_spend_exactly_the_balance() {
    let h = Harness::new();
    h.user("hot");
    h.credit("hot", 1000);
    let successes = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..200 {
                    match h.debit("hot", 1) {
                        Ok(done) => {
                            h.engine.wait_durable(done.lsn).unwrap();
                            successes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(EngineError::InsufficientCredits(_)) => {}
                        Err(other) => panic!("{other}"),
                    }
                }
            });
        }
    });
    assert_eq!(successes.into_inner(), 1000);
    assert_eq!(h.wallet("hot").balance, 0);
    h.engine.check_invariants().unwrap();
}

#[test]
fn a_record_forged_inside_a_description_cannot_turn_a_torn_write_into_damage() {
    // A client puts the bytes of a complete record (with the next LSN, an unsalted CRC: all a
    // client can compute) into a description. The write holding it is torn after those bytes.
    let mut h = Harness::new();
    h.user("mallory");
    h.credit("mallory", 5);
    let next_lsn = h.engine.wal().next_lsn();
    // Any byte can reach a description (JSON escapes); pick a payload whose frame is valid UTF-8.
    let (forged, description) = (0u32..)
        .find_map(|tweak| {
            let mut forged = Vec::new();
            let payload = format!("forged payload {tweak}");
            crate::wal::record::encode_into(&mut forged, next_lsn + 1, payload.as_bytes());
            String::from_utf8(forged.clone())
                .ok()
                .map(|text| (forged, format!("{text} and more after it")))
        })
        .unwrap();
    let mut request = CreditRequest::new("mallory", 7, CreditKind::Grant);
    request.description = Some(&description);
    let done = h.engine.credit(&h.tenant, &request, &ADMIN).unwrap();
    h.engine.wait_durable(done.lsn).unwrap();
    let segment = h
        .storage
        .paths()
        .into_iter()
        .rfind(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    let bytes = h.storage.read_all(&segment).unwrap();
    let embedded_at = bytes
        .windows(forged.len())
        .rposition(|w| w == forged.as_slice())
        .expect("the forged bytes are in the log");
    // Keep the forged record whole, lose the rest of the real one: an unfinished write.
    let cut = embedded_at + forged.len() + 3;
    assert!(cut < bytes.len());
    h.storage.truncate(&segment, cut as u64).unwrap();
    h.crash_and_reopen();
    let torn = h
        .engine
        .recovery_report()
        .torn_tail
        .clone()
        .expect("read as a torn tail, not damage");
    assert!(torn.offset < embedded_at as u64);
    assert_eq!(
        h.wallet("mallory").balance,
        5,
        "the torn credit was never acknowledged"
    );
}

/// The WAL benchmark writes these bytes as its typical debit record (the event schema is
/// crate-private): they must stay what the engine encodes, and the encoding must not drift.
#[test]
fn a_debit_encodes_as_the_wal_bench_payload() {
    use super::event::{Event, Meta, WalletRef};
    let event = Event::Debited {
        wallet: WalletRef {
            tenant: "acme",
            user: "u-0000421337",
            currency: Currency::CREDITS,
        },
        kind: DebitKind::Usage,
        amount: 3,
        balance_after: 999_999_999_997,
        available_after: 999_999_999_997,
        action: None,
        meta: Meta {
            time_ms: 1_760_000_000_000,
            actor: "gateway-key",
            description: None,
            reference: None,
            metadata: None,
            idempotency: None,
        },
        pool: None,
    };
    let mut payload = Vec::new();
    crate::codec::encode_into(&event, &mut payload).expect("encode a debit");
    let expected: [u8; 74] = [
        4, 4, 97, 99, 109, 101, 12, 117, 45, 48, 48, 48, 48, 52, 50, 49, 51, 51, 55, 7, 99, 114,
        101, 100, 105, 116, 115, 0, 6, 253, 250, 31, 74, 169, 209, 1, 0, 0, 253, 250, 31, 74, 169,
        209, 1, 0, 0, 0, 0, 253, 0, 128, 89, 144, 51, 3, 0, 0, 11, 103, 97, 116, 101, 119, 97, 121,
        45, 107, 101, 121, 0, 0, 0, 0,
    ];
    assert_eq!(payload, expected);
}
