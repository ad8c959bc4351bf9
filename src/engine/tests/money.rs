//! The money semantics a tenant's users meet: the currencies a tenant defines, what a 402 says can
//! be spent, chargebacks below the floor, the daily cap on a service key's grants, profiles
//! changed field by field, and what a closed reservation still shows. Each across restarts: from
//! a snapshot, from the log alone, and after a power cut.

use super::*;
use crate::engine::types::{CurrencySpec, GrantCap};

pub(super) fn usd() -> Currency {
    Currency::new("usd").unwrap()
}

fn currencies() -> [CurrencySpec; 2] {
    [
        CurrencySpec {
            code: Currency::CREDITS,
            decimals: 0,
        },
        CurrencySpec {
            code: usd(),
            decimals: 2,
        },
    ]
}

pub(super) fn define_usd(h: &Harness) {
    let spec = TenantSpec {
        name: Some("Acme"),
        default_currency: None,
        currencies: Some(&currencies()),
    };
    h.engine.put_tenant("acme", &spec, &ADMIN).unwrap();
}

fn credit_in(
    h: &Harness,
    user: &str,
    amount: i64,
    currency: Currency,
) -> Result<Done, EngineError> {
    let mut request = CreditRequest::new(user, amount, CreditKind::Grant);
    request.currency = Some(currency);
    h.engine.credit(&h.tenant, &request, &ADMIN)
}

#[test]
fn a_tenant_that_never_defined_currencies_has_its_default_one_alone() {
    let h = Harness::new();
    h.user("ada");
    let next = h.engine.wal().next_lsn();
    let unknown = EngineError::UnknownCurrency(usd());
    assert_eq!(credit_in(&h, "ada", 5, usd()), Err(unknown));
    let mut debit = DebitRequest::new("ada", Spend::Amount(1));
    debit.currency = Some(usd());
    assert_eq!(h.engine.debit(&h.tenant, &debit, &ADMIN), Err(unknown));
    let mut reserve = ReserveRequest::new("ada", Spend::Amount(1));
    reserve.currency = Some(usd());
    assert_eq!(h.engine.reserve(&h.tenant, &reserve, &ADMIN), Err(unknown));
    let revoke = RevokeRequest {
        user: "ada",
        amount: 1,
        currency: Some(usd()),
        reason: "mistake",
        allow_negative: true,
    };
    assert_eq!(h.engine.revoke(&h.tenant, &revoke, &ADMIN), Err(unknown));
    assert_eq!(
        h.engine
            .set_overdraft(&h.tenant, "ada", Some(usd()), 5, &ADMIN),
        Err(unknown)
    );
    assert_eq!(
        h.engine
            .put_action(&h.tenant, "gpt", 3, Some(usd()), None, &ADMIN),
        Err(unknown)
    );
    let package = PackageSpec {
        name: "Dollars",
        credits: 500,
        currency: usd(),
        price_minor: 500,
        price_currency: usd(),
        active: true,
        position: 0,
    };
    assert_eq!(
        h.engine.put_package(&h.tenant, "usd", &package, &ADMIN),
        Err(unknown)
    );
    assert_eq!(h.engine.wal().next_lsn(), next, "nothing was written");
    assert_eq!(h.tenant.user("ada").unwrap().wallets.len(), 1);
    // The default currency works as it always did.
    h.credit("ada", 5);
    assert_eq!(
        h.tenant.currencies(),
        [CurrencySpec {
            code: Currency::CREDITS,
            decimals: 0
        }]
    );
}

#[test]
fn defined_currencies_only_grow_and_survive_every_restart() {
    let mut h = Harness::new();
    h.user("ada");
    define_usd(&h);
    credit_in(&h, "ada", 150, usd()).unwrap();
    assert_eq!(h.tenant.decimals(usd()), 2);
    assert_eq!(h.tenant.view().name.as_deref(), Some("Acme"));
    // Removing a currency, or changing its decimals, is refused; so is a list without the
    // default currency, or naming one twice.
    let only_credits = [currencies()[0]];
    let rescaled = [
        currencies()[0],
        CurrencySpec {
            code: usd(),
            decimals: 3,
        },
    ];
    let without_default = [currencies()[1]];
    let twice = [currencies()[0], currencies()[1], currencies()[1]];
    for (list, conflict) in [
        (&only_credits[..], true),
        (&rescaled[..], true),
        (&without_default[..], false),
        (&twice[..], false),
    ] {
        let spec = TenantSpec {
            name: Some("Acme"),
            default_currency: None,
            currencies: Some(list),
        };
        let refused = h.engine.put_tenant("acme", &spec, &ADMIN);
        if conflict {
            assert!(matches!(refused, Err(EngineError::Conflict(_))), "{list:?}");
        } else {
            assert!(
                matches!(refused, Err(EngineError::Invalid(invalid)) if invalid.field == "currencies"),
                "{list:?}"
            );
        }
    }
    // The same list again writes nothing; a name change carries the currencies along.
    let next = h.engine.wal().next_lsn();
    define_usd(&h);
    assert_eq!(h.engine.wal().next_lsn(), next);
    h.engine
        .upsert_tenant("acme", Some("Acme Inc"), None, &ADMIN)
        .unwrap();
    assert_eq!(h.tenant.currencies(), currencies());
    let image = h.engine.state_image();
    // From the log alone, from a snapshot, after a power cut.
    h.engine.wal().flush().unwrap();
    h.crash_and_reopen();
    assert_eq!(h.engine.state_image(), image);
    assert_eq!(h.tenant.currencies(), currencies());
    h.engine.snapshot().unwrap();
    h.crash_and_reopen();
    assert_eq!(h.engine.state_image(), image);
    assert!(h.tenant.view().currencies_defined);
    credit_in(&h, "ada", 1, usd()).unwrap();
}

#[test]
fn a_shortfall_says_what_can_be_spent_with_the_overdraft() {
    let h = Harness::new();
    h.user("ada");
    h.credit("ada", 10);
    h.engine
        .set_overdraft(&h.tenant, "ada", None, 20, &ADMIN)
        .unwrap();
    h.debit("ada", 21).unwrap();
    let wallet = h.wallet("ada");
    assert_eq!((wallet.available, wallet.spendable), (-11, 9));
    let Err(EngineError::InsufficientCredits(shortfall)) = h.debit("ada", 50) else {
        panic!("a debit past the overdraft must be refused")
    };
    assert_eq!(
        shortfall,
        Shortfall {
            currency: Currency::CREDITS,
            balance: -11,
            available: -11,
            overdraft_limit: 20,
            spendable: 9,
            required: 50,
            pool_available: None,
        }
    );
    h.debit("ada", 9).unwrap();
    assert_eq!(h.wallet("ada").spendable, 0);
}

#[test]
fn a_chargeback_goes_below_the_floor_and_credits_repay_it_first() {
    let mut h = Harness::new();
    h.user("ada");
    h.credit("ada", 100);
    let hold = h
        .engine
        .reserve(
            &h.tenant,
            &ReserveRequest::new("ada", Spend::Amount(20)),
            &ADMIN,
        )
        .unwrap();
    let revoke = |amount, allow_negative| RevokeRequest {
        user: "ada",
        amount,
        currency: None,
        reason: "charged back by the bank",
        allow_negative,
    };
    // A plain revoke keeps to the floor.
    assert!(matches!(
        h.engine.revoke(&h.tenant, &revoke(200, false), &ADMIN),
        Err(EngineError::InsufficientCredits(_))
    ));
    let chargeback = h
        .engine
        .revoke(&h.tenant, &revoke(200, true), &ADMIN)
        .unwrap();
    assert!(matches!(
        chargeback.outcome,
        Outcome::Debit {
            kind: DebitKind::Chargeback,
            charged: 200,
            balance: -100,
            available: -120,
            ..
        }
    ));
    let wallet = h.wallet("ada");
    assert_eq!(
        (wallet.balance, wallet.available, wallet.spendable),
        (-100, -120, 0)
    );
    h.engine.check_invariants().unwrap();
    // Below the floor nothing lowers `available`: no debit, no reservation, no capture above
    // its hold; a capture within its hold is allowed (it gives back the rest).
    assert!(matches!(
        h.debit("ada", 1),
        Err(EngineError::InsufficientCredits(Shortfall {
            available: -120,
            spendable: 0,
            ..
        }))
    ));
    let over = CaptureRequest {
        reservation_id: hold.lsn,
        amount: Some(21),
        description: None,
        metadata: None,
    };
    assert!(matches!(
        h.engine.capture(&h.tenant, &over, &ADMIN),
        Err(EngineError::InsufficientCredits(_))
    ));
    let within = CaptureRequest {
        amount: Some(15),
        ..over
    };
    let captured = h.engine.capture(&h.tenant, &within, &ADMIN).unwrap();
    h.engine.wait_durable(captured.lsn).unwrap();
    assert_eq!(h.wallet("ada").available, -115);
    h.engine.check_invariants().unwrap();
    // A restart from the log alone, then from a snapshot, rebuilds the debt and its mark.
    let image = h.engine.state_image();
    h.crash_and_reopen();
    assert_eq!(h.engine.state_image(), image);
    h.engine.check_invariants().unwrap();
    // Credits repay the debt first: 100 leaves 15 to repay, 500 more leaves 485 to spend.
    h.credit("ada", 100);
    assert_eq!(h.wallet("ada").spendable, 0);
    h.engine.check_invariants().unwrap();
    h.engine.snapshot().unwrap();
    h.crash_and_reopen();
    h.engine.check_invariants().unwrap();
    h.credit("ada", 500);
    let wallet = h.wallet("ada");
    assert_eq!(
        (wallet.balance, wallet.available, wallet.spendable),
        (485, 485, 485)
    );
    h.engine.check_invariants().unwrap();
    h.debit("ada", 485).unwrap();
    h.crash_and_reopen();
    h.engine.check_invariants().unwrap();
    assert_eq!(h.wallet("ada").balance, 0);
}

#[test]
fn a_chargeback_of_a_wallet_never_credited_opens_it_in_debt() {
    let mut h = Harness::new();
    h.user("ada");
    define_usd(&h);
    let chargeback = RevokeRequest {
        user: "ada",
        amount: 30,
        currency: Some(usd()),
        reason: "charged back",
        allow_negative: true,
    };
    let done = h.engine.revoke(&h.tenant, &chargeback, &ADMIN).unwrap();
    h.engine.wait_durable(done.lsn).unwrap();
    assert_eq!(h.tenant.wallet("ada", Some(usd())).unwrap().balance, -30);
    h.engine.check_invariants().unwrap();
    h.crash_and_reopen();
    h.engine.check_invariants().unwrap();
    assert_eq!(h.tenant.wallet("ada", Some(usd())).unwrap().balance, -30);
}

/// A grant by `actor` with a daily cap of `cap`.
fn capped_grant(h: &Harness, actor: &str, amount: i64, cap: i64) -> Result<Done, EngineError> {
    let request = CreditRequest {
        grant_cap_per_day: Some(cap),
        ..CreditRequest::new("ada", amount, CreditKind::Grant)
    };
    let done = h
        .engine
        .credit(&h.tenant, &request, &Context::actor(actor))?;
    h.engine.wait_durable(done.lsn).unwrap();
    Ok(done)
}

#[test]
fn a_grant_cap_counts_each_key_s_day_from_the_log_and_snapshots() {
    let mut h = Harness::new();
    h.user("ada");
    capped_grant(&h, "svc", 60, 100).unwrap();
    // Other kinds and other keys do not count against it.
    let refund = CreditRequest::new("ada", 1_000, CreditKind::Refund);
    h.engine
        .credit(&h.tenant, &refund, &Context::actor("svc"))
        .unwrap();
    capped_grant(&h, "other", 100, 100).unwrap();
    let refused = EngineError::GrantCapReached(GrantCap {
        currency: Currency::CREDITS,
        cap: 100,
        granted_today: 60,
        requested: 41,
    });
    let next = h.engine.wal().next_lsn();
    assert_eq!(capped_grant(&h, "svc", 41, 100), Err(refused));
    assert_eq!(
        h.engine.wal().next_lsn(),
        next,
        "a refused grant writes nothing"
    );
    // From the log alone.
    h.crash_and_reopen();
    assert_eq!(capped_grant(&h, "svc", 41, 100), Err(refused));
    capped_grant(&h, "svc", 30, 100).unwrap();
    // From a snapshot, then the log after it.
    h.engine.snapshot().unwrap();
    capped_grant(&h, "svc", 5, 100).unwrap();
    h.crash_and_reopen();
    let at_95 = EngineError::GrantCapReached(GrantCap {
        granted_today: 95,
        requested: 6,
        ..match refused {
            EngineError::GrantCapReached(cap) => cap,
            _ => unreachable!(),
        }
    });
    assert_eq!(capped_grant(&h, "svc", 6, 100), Err(at_95));
    // A clean stop's final snapshot.
    h.engine.shutdown().unwrap();
    h.engine.release_directory();
    h.engine = open(&h.storage, &h.clock);
    h.tenant = h.engine.tenant("acme").unwrap();
    assert_eq!(capped_grant(&h, "svc", 6, 100), Err(at_95));
    capped_grant(&h, "svc", 5, 100).unwrap();
    // The next UTC day starts from nothing.
    let next_day = (T0 / 86_400_000 + 1) * 86_400_000;
    h.clock.set_ms(next_day);
    capped_grant(&h, "svc", 100, 100).unwrap();
    h.crash_and_reopen();
    assert!(matches!(
        capped_grant(&h, "svc", 1, 100),
        Err(EngineError::GrantCapReached(GrantCap {
            granted_today: 100,
            ..
        }))
    ));
}

#[test]
fn a_snapshot_taken_between_grants_counts_each_once() {
    let mut h = Harness::new();
    h.user("ada");
    for _ in 0..10 {
        capped_grant(&h, "svc", 3, 1_000).unwrap();
        h.engine.snapshot().unwrap();
        capped_grant(&h, "svc", 4, 1_000).unwrap();
    }
    h.crash_and_reopen();
    let state = h.engine.state.grants.lock().clone();
    assert_eq!(state.granted_on("acme", "svc", Currency::CREDITS, T0), 70);
}

#[test]
fn profiles_change_field_by_field() {
    let h = Harness::new();
    let set = |email, name, metadata| ProfileChange {
        email,
        name,
        metadata,
        merge_metadata: false,
    };
    use FieldChange::{Clear, Keep, Set};
    let (created, _) = h
        .engine
        .change_user(
            &h.tenant,
            "ada",
            &set(
                Set("ada@example.com"),
                Set("Ada"),
                Set(r#"{"plan":"free","seats":2}"#),
            ),
            true,
            &ADMIN,
        )
        .unwrap();
    assert!(created);
    // A login sync that sends only the address keeps the rest.
    h.engine
        .change_user(
            &h.tenant,
            "ada",
            &set(Set("ada@new.example"), Keep, Keep),
            true,
            &ADMIN,
        )
        .unwrap();
    let user = h.tenant.user("ada").unwrap();
    assert_eq!(
        (
            user.email.as_deref(),
            user.name.as_deref(),
            user.metadata.as_deref()
        ),
        (
            Some("ada@new.example"),
            Some("Ada"),
            Some(r#"{"plan":"free","seats":2}"#)
        )
    );
    let merge = ProfileChange {
        metadata: Set(r#"{"plan":"pro","seats":null}"#),
        merge_metadata: true,
        ..ProfileChange::default()
    };
    h.engine
        .change_user(&h.tenant, "ada", &merge, false, &ADMIN)
        .unwrap();
    assert_eq!(
        h.tenant.user("ada").unwrap().metadata.as_deref(),
        Some(r#"{"plan":"pro"}"#)
    );
    h.engine
        .change_user(&h.tenant, "ada", &set(Keep, Clear, Keep), false, &ADMIN)
        .unwrap();
    assert_eq!(h.tenant.user("ada").unwrap().name, None);
    // An address that is set is checked; a missing user is not created unless asked.
    let next = h.engine.wal().next_lsn();
    assert!(matches!(
        h.engine
            .change_user(&h.tenant, "ada", &set(Set("no address"), Keep, Keep), false, &ADMIN),
        Err(EngineError::Invalid(invalid)) if invalid.field == "email"
    ));
    assert_eq!(
        h.engine.change_user(
            &h.tenant,
            "bob",
            &set(Keep, Set("Bob"), Keep),
            false,
            &ADMIN
        ),
        Err(EngineError::NotFound(Missing::User))
    );
    assert_eq!(h.engine.wal().next_lsn(), next);
    // Unchanged: nothing written.
    h.engine
        .change_user(&h.tenant, "ada", &set(Keep, Keep, Keep), false, &ADMIN)
        .unwrap();
    assert_eq!(h.engine.wal().next_lsn(), next);
}

#[test]
fn a_closed_reservation_keeps_its_amount_across_a_snapshot() {
    let mut h = Harness::new();
    h.user("ada");
    h.credit("ada", 100);
    let reserve = |amount| {
        h.engine
            .reserve(
                &h.tenant,
                &ReserveRequest::new("ada", Spend::Amount(amount)),
                &ADMIN,
            )
            .unwrap()
            .lsn
    };
    let (captured, released, open) = (reserve(20), reserve(10), reserve(30));
    let capture = CaptureRequest {
        reservation_id: captured,
        amount: Some(5),
        description: None,
        metadata: None,
    };
    h.engine.capture(&h.tenant, &capture, &ADMIN).unwrap();
    let done = h.engine.release(&h.tenant, released, &ADMIN).unwrap();
    h.engine.wait_durable(done.lsn).unwrap();
    let check = |h: &Harness| {
        let view = h.tenant.reservation(captured).unwrap();
        assert_eq!(
            (view.state, view.amount, view.currency),
            (
                ReservationState::Closed(ClosedAs::Captured),
                Some(20),
                Some(Currency::CREDITS)
            )
        );
        assert_eq!(h.tenant.reservation(released).unwrap().amount, Some(10));
        let listed = h.tenant.open_reservations("ada", h.clock.now_ms()).unwrap();
        assert_eq!(
            listed
                .iter()
                .map(|view| (view.reservation_id, view.amount))
                .collect::<Vec<_>>(),
            [(open, Some(30))]
        );
    };
    check(&h);
    h.engine.snapshot().unwrap();
    h.crash_and_reopen();
    check(&h);
    // One whose time ran out is not listed as open.
    h.clock.advance_ms(300_001);
    assert!(h
        .tenant
        .open_reservations("ada", h.clock.now_ms())
        .unwrap()
        .is_empty());
}
