//! Credit pools: a member's spends draw on the wallet first, then on the pool within the daily
//! cap, in one record; holds, captures and releases; membership; recovery; many threads.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::*;
use crate::engine::types::Lsn;

const DAY: i64 = 86_400_000;

impl Harness {
    fn pool(&self, id: &str) -> PoolView {
        self.engine.pool(&self.tenant, id).unwrap()
    }

    fn put_pool(&self, id: &str) {
        self.engine
            .put_pool(&self.tenant, id, Some("Org"), None, &ADMIN)
            .unwrap();
    }

    fn fund(&self, id: &str, amount: i64) -> Done {
        let request = PoolCreditRequest {
            pool: id,
            amount,
            kind: CreditKind::Grant,
            reason: Some("prepaid"),
            reference: None,
        };
        let done = self
            .engine
            .credit_pool(&self.tenant, &request, &ADMIN)
            .unwrap();
        self.engine.wait_durable(done.lsn).unwrap();
        done
    }

    fn join(&self, user: &str, pool: &str, daily_cap: Option<i64>) -> Result<Lsn, EngineError> {
        self.engine
            .set_pool_member(&self.tenant, user, pool, daily_cap, &ADMIN)
    }

    fn reserve(&self, user: &str, amount: i64) -> Result<Done, EngineError> {
        self.engine.reserve(
            &self.tenant,
            &ReserveRequest::new(user, Spend::Amount(amount)),
            &ADMIN,
        )
    }

    fn capture(&self, id: Lsn, amount: Option<i64>) -> Result<Done, EngineError> {
        let request = CaptureRequest {
            reservation_id: id,
            amount,
            description: None,
            metadata: None,
        };
        self.engine.capture(&self.tenant, &request, &ADMIN)
    }

    fn membership(&self, user: &str) -> MembershipView {
        self.engine
            .membership(&self.tenant, user)
            .unwrap()
            .expect("a member")
    }
}

fn from_pool(done: &Done) -> i64 {
    match done.outcome {
        Outcome::Debit { from_pool, .. }
        | Outcome::Reserve { from_pool, .. }
        | Outcome::Capture { from_pool, .. } => from_pool,
        other => panic!("{other:?}"),
    }
}

fn shortfall(result: Result<Done, EngineError>) -> Shortfall {
    match result {
        Err(EngineError::InsufficientCredits(shortfall)) => shortfall,
        other => panic!("expected a 402, got {other:?}"),
    }
}

/// ada has 30 of her own; the org pool has 1000; ada may draw 100 a day.
fn org() -> Harness {
    let h = Harness::new();
    h.user("ada");
    h.credit("ada", 30);
    h.put_pool("org");
    h.fund("org", 1000);
    h.join("ada", "org", Some(100)).unwrap();
    h
}

#[test]
fn a_debit_takes_the_wallet_first_then_the_pool_within_the_daily_cap() {
    let h = org();
    // The wallet covers it alone: the pool is not touched.
    let own = h.debit("ada", 10).unwrap();
    assert_eq!(from_pool(&own), 0);
    assert_eq!(h.pool("org").balance, 1000);
    // 20 left in the wallet: 20 from it, 30 from the pool, in one record.
    let next = h.engine.wal().next_lsn();
    let shared = h.debit("ada", 50).unwrap();
    assert_eq!(h.engine.wal().next_lsn(), next + 1, "one record");
    assert_eq!(
        shared.outcome,
        Outcome::Debit {
            entry_id: shared.lsn,
            kind: DebitKind::Usage,
            charged: 50,
            from_pool: 30,
            balance: 0,
            available: 0,
        }
    );
    assert_eq!(h.pool("org").balance, 970);
    assert_eq!(h.membership("ada").drawn_today, 30);
    assert_eq!(h.membership("ada").available_to_user, 70);
    // Above the cap: refused, with what the pool could still give, and nothing written.
    let next = h.engine.wal().next_lsn();
    let refused = shortfall(h.debit("ada", 71));
    assert_eq!(
        refused,
        Shortfall {
            currency: Currency::CREDITS,
            balance: 0,
            available: 0,
            overdraft_limit: 0,
            spendable: 70,
            required: 71,
            pool_available: Some(70),
        }
    );
    assert_eq!(h.engine.wal().next_lsn(), next);
    assert_eq!(from_pool(&h.debit("ada", 70).unwrap()), 70);
    assert_eq!(shortfall(h.debit("ada", 1)).pool_available, Some(0));
    // The next UTC day, the allowance is whole again.
    h.clock.advance_ms(DAY);
    assert_eq!(h.membership("ada").drawn_today, 0);
    assert_eq!(from_pool(&h.debit("ada", 100).unwrap()), 100);
    let pool = h.pool("org");
    assert_eq!((pool.balance, pool.credited, pool.paid), (800, 1000, 200));
    assert_eq!(pool.drawn_today, 100);
    h.engine.check_invariants().unwrap();
}

#[test]
fn the_pool_gives_no_more_than_it_has_and_a_wallet_still_pays_down_to_its_floor() {
    let h = Harness::new();
    h.user("ada");
    h.put_pool("org");
    h.fund("org", 40);
    h.join("ada", "org", None).unwrap();
    h.engine
        .set_overdraft(&h.tenant, "ada", None, 15, &ADMIN)
        .unwrap();
    // No wallet credit: the wallet gives its overdraft (15), the pool the rest.
    let done = h.debit("ada", 50).unwrap();
    assert_eq!(from_pool(&done), 35);
    assert_eq!(h.wallet("ada").available, -15);
    assert_eq!(
        shortfall(h.debit("ada", 6)),
        Shortfall {
            currency: Currency::CREDITS,
            balance: -15,
            available: -15,
            overdraft_limit: 15,
            spendable: 5,
            required: 6,
            pool_available: Some(5),
        }
    );
    assert_eq!(from_pool(&h.debit("ada", 5).unwrap()), 5);
    assert_eq!(h.pool("org").balance, 0);
    h.engine.check_invariants().unwrap();
}

#[test]
fn a_revoke_and_a_spend_in_another_currency_never_touch_the_pool() {
    let h = org();
    let revoke = RevokeRequest {
        user: "ada",
        amount: 31,
        currency: None,
        allow_negative: false,
        reason: "granted by mistake",
    };
    assert_eq!(
        shortfall(h.engine.revoke(&h.tenant, &revoke, &ADMIN)).pool_available,
        None
    );
    // A currency the tenant has, which the pool (in credits) does not pay.
    super::money::define_usd(&h);
    let usd = DebitRequest {
        currency: Some(super::money::usd()),
        ..DebitRequest::new("ada", Spend::Amount(5))
    };
    assert_eq!(
        shortfall(h.engine.debit(&h.tenant, &usd, &ADMIN)).pool_available,
        None
    );
    assert_eq!(h.pool("org").balance, 1000);
}

#[test]
fn a_dry_run_answers_what_the_pool_would_give_and_writes_nothing() {
    let h = org();
    let next = h.engine.wal().next_lsn();
    let dry = DebitRequest {
        dry_run: true,
        ..DebitRequest::new("ada", Spend::Amount(80))
    };
    let done = h.engine.debit(&h.tenant, &dry, &ADMIN).unwrap();
    assert_eq!((done.lsn, from_pool(&done)), (0, 50));
    let too_much = DebitRequest {
        dry_run: true,
        ..DebitRequest::new("ada", Spend::Amount(131))
    };
    assert_eq!(
        shortfall(h.engine.debit(&h.tenant, &too_much, &ADMIN)).pool_available,
        Some(100)
    );
    assert_eq!(h.engine.wal().next_lsn(), next);
    assert_eq!(h.pool("org").balance, 1000);
    assert_eq!(h.membership("ada").drawn_today, 0);
}

#[test]
fn a_reservation_holds_on_the_pool_and_its_capture_pays_from_the_wallet_first() {
    let h = org();
    // 30 in the wallet: the wallet holds 30, the pool 50 (counted against today's cap).
    let hold = h.reserve("ada", 80).unwrap();
    let Outcome::Reserve {
        reservation_id,
        amount,
        from_pool,
        available,
        ..
    } = hold.outcome
    else {
        panic!("{:?}", hold.outcome)
    };
    assert_eq!((amount, from_pool, available), (80, 50, 0));
    let pool = h.pool("org");
    assert_eq!(
        (pool.balance, pool.reserved, pool.available),
        (1000, 50, 950)
    );
    assert_eq!(h.membership("ada").drawn_today, 50);
    assert_eq!(h.membership("ada").available_to_user, 50);
    // Charged 40: the wallet pays its 30, the pool 10; the pool's unused 40 comes back to the
    // pool and, the same day, to ada's allowance.
    let capture = h.capture(reservation_id, Some(40)).unwrap();
    assert_eq!(
        capture.outcome,
        Outcome::Capture {
            entry_id: capture.lsn,
            charged: 40,
            from_pool: 10,
            released: 40,
            balance: 0,
            available: 0,
        }
    );
    let pool = h.pool("org");
    assert_eq!((pool.balance, pool.reserved), (990, 0));
    assert_eq!(h.membership("ada").drawn_today, 10);
    h.engine.check_invariants().unwrap();
}

#[test]
fn a_capture_above_its_reservation_takes_the_excess_from_the_pool_within_the_cap() {
    let h = org();
    let hold = h.reserve("ada", 20).unwrap();
    assert_eq!(from_pool(&hold), 0, "the wallet holds it all");
    // Charged 120: 20 held + the wallet's last 10 + 90 from the pool (cap 100).
    let capture = h.capture(hold.lsn, Some(120)).unwrap();
    assert_eq!(from_pool(&capture), 90);
    assert_eq!(h.membership("ada").drawn_today, 90);
    // Another hold of 10 from the pool leaves no allowance for an excess.
    h.credit("ada", 5);
    let hold = h.reserve("ada", 15).unwrap();
    assert_eq!(from_pool(&hold), 10);
    let refused = shortfall(h.capture(hold.lsn, Some(16)));
    assert_eq!((refused.required, refused.pool_available), (1, Some(0)));
    // Still open; the exact charge goes through.
    assert_eq!(from_pool(&h.capture(hold.lsn, None).unwrap()), 10);
    assert_eq!(h.membership("ada").drawn_today, 100);
    assert_eq!(h.pool("org").balance, 900);
    h.engine.check_invariants().unwrap();
}

#[test]
fn a_release_or_an_expiry_gives_the_hold_back_and_the_allowance_only_the_same_day() {
    let h = org();
    let today = h.reserve("ada", 60).unwrap();
    assert_eq!(from_pool(&today), 30);
    h.engine.release(&h.tenant, today.lsn, &ADMIN).unwrap();
    assert_eq!(h.pool("org").reserved, 0);
    assert_eq!(h.membership("ada").drawn_today, 0);
    // A hold placed today and released tomorrow counted today; tomorrow's allowance is whole.
    let two_days = ReserveRequest {
        ttl_seconds: Some(2 * 86_400),
        ..ReserveRequest::new("ada", Spend::Amount(100))
    };
    let held = h.engine.reserve(&h.tenant, &two_days, &ADMIN).unwrap();
    assert_eq!(from_pool(&held), 70);
    h.clock.advance_ms(DAY);
    h.engine.release(&h.tenant, held.lsn, &ADMIN).unwrap();
    assert_eq!(h.membership("ada").drawn_today, 0);
    assert_eq!(h.pool("org").reserved, 0);
    // An expiry gives the pool's part back through the log, like a release.
    let short = ReserveRequest {
        ttl_seconds: Some(1),
        ..ReserveRequest::new("ada", Spend::Amount(50))
    };
    let expiring = h.engine.reserve(&h.tenant, &short, &ADMIN).unwrap();
    assert_eq!(from_pool(&expiring), 20);
    assert_eq!(h.pool("org").reserved, 20);
    h.clock.advance_ms(1000);
    assert_eq!(h.engine.expire_reservations(h.engine.now_ms()).unwrap(), 1);
    assert_eq!(h.pool("org").reserved, 0);
    assert_eq!(h.membership("ada").drawn_today, 0);
    assert_eq!(h.pool("org").balance, 1000);
    h.engine.check_invariants().unwrap();
}

#[test]
fn membership_rules() {
    let h = org();
    h.put_pool("other");
    h.user("bob");
    // One pool per user.
    assert!(matches!(
        h.join("ada", "other", None),
        Err(EngineError::Conflict(_))
    ));
    assert_eq!(
        h.join("bob", "nowhere", None),
        Err(EngineError::NotFound(Missing::Pool))
    );
    assert_eq!(
        h.join("nobody", "org", None),
        Err(EngineError::NotFound(Missing::User))
    );
    assert!(matches!(
        h.join("bob", "org", Some(-1)),
        Err(EngineError::Invalid(_))
    ));
    // A cap below today's draws is refused; at them, accepted.
    h.debit("ada", 70).unwrap();
    assert!(matches!(
        h.join("ada", "org", Some(39)),
        Err(EngineError::Conflict(_))
    ));
    let lsn = h.join("ada", "org", Some(40)).unwrap();
    assert_eq!(h.join("ada", "org", Some(40)).unwrap(), lsn, "unchanged");
    assert_eq!(h.membership("ada").available_to_user, 0);
    // Leaving is refused while the pool holds for an open reservation of the user.
    h.join("ada", "org", Some(100)).unwrap();
    let hold = h.reserve("ada", 10).unwrap();
    assert!(matches!(
        h.engine.remove_pool_member(&h.tenant, "ada", &ADMIN),
        Err(EngineError::Conflict(_))
    ));
    h.engine.release(&h.tenant, hold.lsn, &ADMIN).unwrap();
    h.engine
        .remove_pool_member(&h.tenant, "ada", &ADMIN)
        .unwrap();
    assert_eq!(h.engine.membership(&h.tenant, "ada").unwrap(), None);
    assert_eq!(
        h.engine.remove_pool_member(&h.tenant, "ada", &ADMIN),
        Err(EngineError::NotFound(Missing::PoolMember))
    );
    assert_eq!(shortfall(h.debit("ada", 1)).pool_available, None);
    // Now free to join the other one.
    h.join("ada", "other", None).unwrap();
    assert_eq!(h.pool("org").members, 0);
    assert_eq!(h.pool("other").members, 1);
    // A pool's currency is fixed.
    assert!(matches!(
        h.engine.put_pool(
            &h.tenant,
            "org",
            None,
            Some(Currency::new("usd").unwrap()),
            &ADMIN
        ),
        Err(EngineError::Conflict(_))
    ));
    h.engine.check_invariants().unwrap();
}

#[test]
fn a_pool_credit_is_idempotent_and_needs_an_existing_pool() {
    let h = org();
    let key = ADMIN.with_key(IdempotencyKey {
        key: "fund-1",
        fingerprint: [7; 16],
    });
    let request = PoolCreditRequest {
        pool: "org",
        amount: 5,
        kind: CreditKind::Grant,
        reason: Some("top up"),
        reference: Some("po-17"),
    };
    let first = h.engine.credit_pool(&h.tenant, &request, &key).unwrap();
    let again = h.engine.credit_pool(&h.tenant, &request, &key).unwrap();
    assert!(again.replayed);
    assert_eq!(again.outcome, first.outcome);
    assert_eq!(h.pool("org").balance, 1005);
    let missing = PoolCreditRequest {
        pool: "nope",
        ..request
    };
    assert_eq!(
        h.engine.credit_pool(&h.tenant, &missing, &ADMIN),
        Err(EngineError::NotFound(Missing::Pool))
    );
}

/// Pools, members, draws, holds, captures, releases and expiries over several days.
fn pool_history(h: &Harness, round: i64) {
    h.put_pool("org");
    h.fund("org", 500);
    for i in 0..6 {
        let user = format!("m-{i}");
        h.user(&user);
        if round == 0 {
            h.join(&user, "org", (i % 2 == 0).then_some(40 + i))
                .unwrap();
        }
        h.credit(&user, 3);
    }
    for step in 0..60i64 {
        let user = format!("m-{}", step % 6);
        let _ = h.debit(&user, 1 + step % 9);
        if let Ok(hold) = h.reserve(&user, 2 + step % 7) {
            match step % 3 {
                0 => {
                    let _ = h.capture(hold.lsn, Some(1 + step % 11));
                }
                1 => {
                    h.engine.release(&h.tenant, hold.lsn, &ADMIN).unwrap();
                }
                _ => {}
            }
        }
        h.clock.advance_ms(DAY / 9);
    }
    h.engine.expire_reservations(h.engine.now_ms()).unwrap();
    h.engine.wal().flush().unwrap();
}

#[test]
fn recovery_rebuilds_the_pools_from_the_log_and_from_snapshots() {
    let mut h = Harness::new();
    pool_history(&h, 0);
    let before = h.engine.state_image();
    assert!(before
        .lines
        .iter()
        .any(|line| line.starts_with("pool acme/org")));
    h.crash_and_reopen();
    assert_eq!(h.engine.state_image(), before);
    h.engine.check_invariants().unwrap();
    h.engine.snapshot().unwrap();
    pool_history(&h, 1);
    // Closed reservations past their retention a snapshot leaves out and the log brings back.
    let open_state = |image: StateImage| -> Vec<String> {
        let closed = |line: &String| line.starts_with("reservation ") && line.contains("Closed");
        image
            .lines
            .into_iter()
            .filter(|line| !closed(line))
            .collect()
    };
    let before = open_state(h.engine.state_image());
    h.crash_and_reopen();
    assert_eq!(open_state(h.engine.state_image()), before);
    assert!(h.engine.recovery_report().snapshot.is_some());
    assert_eq!(h.engine.recovery_report().figures.pools, 1);
    h.engine.check_invariants().unwrap();
}

/// Many threads, many members, one pool, with snapshots taken meanwhile: the pool never pays
/// more than it has, no member draws above its cap, no wallet goes below its floor, and after
/// a crash the log and the last snapshot give back exactly what was acknowledged.
#[test]
fn many_members_on_one_pool_across_threads_conserve_every_credit() {
    const MEMBERS: usize = 24;
    const THREADS: usize = 6;
    const CAP: i64 = 150;
    const FUNDS: i64 = 2_000;
    let mut h = Harness::new();
    h.put_pool("org");
    h.fund("org", FUNDS);
    for i in 0..MEMBERS {
        let user = format!("m-{i}");
        h.user(&user);
        h.credit(&user, 20);
        h.join(&user, "org", Some(CAP)).unwrap();
    }
    let paid_by_pool = AtomicI64::new(0);
    let charged_total = AtomicI64::new(0);
    let refusals = AtomicU64::new(0);
    let per_member: Vec<AtomicI64> = (0..MEMBERS).map(|_| AtomicI64::new(0)).collect();
    std::thread::scope(|scope| {
        let h = &h;
        scope.spawn(|| {
            for _ in 0..5 {
                h.engine.snapshot().unwrap();
                std::thread::sleep(std::time::Duration::from_millis(3));
            }
        });
        for thread in 0..THREADS {
            let (paid_by_pool, charged_total, refusals, per_member) =
                (&paid_by_pool, &charged_total, &refusals, &per_member);
            scope.spawn(move || {
                for step in 0..300usize {
                    let member = (thread * 7 + step * 5) % MEMBERS;
                    let user = format!("m-{member}");
                    let amount = 1 + ((thread + step) % 13) as i64;
                    let result = if step % 4 == 3 {
                        h.reserve(&user, amount).and_then(|hold| {
                            let charged = Some((amount + (step % 3) as i64 - 1).max(1));
                            let captured = h.capture(hold.lsn, charged);
                            if captured.is_err() {
                                // A capture above the hold whose excess is refused leaves the
                                // hold open: release it, as a client would.
                                h.engine.release(&h.tenant, hold.lsn, &ADMIN).unwrap();
                            }
                            captured
                        })
                    } else {
                        h.debit(&user, amount)
                    };
                    match result {
                        Ok(done) => {
                            h.engine.wait_durable(done.lsn).unwrap();
                            let (charged, from_pool) = match done.outcome {
                                Outcome::Debit {
                                    charged, from_pool, ..
                                }
                                | Outcome::Capture {
                                    charged, from_pool, ..
                                } => (charged, from_pool),
                                other => panic!("{other:?}"),
                            };
                            paid_by_pool.fetch_add(from_pool, Ordering::Relaxed);
                            charged_total.fetch_add(charged, Ordering::Relaxed);
                            per_member[member].fetch_add(from_pool, Ordering::Relaxed);
                        }
                        Err(EngineError::InsufficientCredits(shortfall)) => {
                            assert!(shortfall.pool_available.is_some(), "{shortfall:?}");
                            refusals.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(other) => panic!("{other}"),
                    }
                }
            });
        }
    });
    let paid = paid_by_pool.into_inner();
    let pool = h.pool("org");
    assert_eq!(
        pool.balance,
        FUNDS - paid,
        "the pool paid what the answers said"
    );
    assert!(pool.balance >= 0 && pool.reserved == 0);
    for (member, drawn) in per_member.iter().enumerate() {
        let drawn = drawn.load(Ordering::Relaxed);
        assert!(drawn <= CAP, "m-{member} drew {drawn}");
    }
    // Every member spent its own 20 before the pool gave it anything, and no wallet went below 0.
    let wallets: i64 = (0..MEMBERS)
        .map(|i| {
            let wallet = h.wallet(&format!("m-{i}"));
            assert!(wallet.available >= 0, "m-{i}: {wallet:?}");
            wallet.balance
        })
        .sum();
    let charged = charged_total.into_inner();
    assert_eq!(
        wallets + pool.balance,
        20 * MEMBERS as i64 + FUNDS - charged
    );
    assert!(
        paid > 0 && refusals.into_inner() > 0,
        "the pool and the caps were reached"
    );
    h.engine.check_invariants().unwrap();
    // Conservation after a crash: the snapshot taken meanwhile and the log give back the same.
    let before = h.engine.state_image();
    h.crash_and_reopen();
    assert_eq!(h.engine.state_image(), before);
    assert_eq!(h.pool("org").balance, FUNDS - paid);
    h.engine.check_invariants().unwrap();
}
