//! Engine-level tests of payments and automatic top-up, on the crash-model storage with a
//! hand-driven clock.

use std::sync::Arc;

use crate::engine::notify::*;
use crate::engine::payments::*;
use crate::engine::types::{
    CreditKind, Currency, Decline, EngineError, Limits, Missing, PaymentPurpose,
};
use crate::engine::*;
use crate::wal::memory::MemStorage;

const T0: i64 = 1_700_000_000_000;
const ADMIN: Context<'static> = Context {
    actor: "admin",
    idempotency: None,
};
const NGN: &str = "NGN";

struct Setup {
    storage: MemStorage,
    clock: Arc<ManualClock>,
    engine: Arc<Engine>,
    tenant: Arc<Tenant>,
    topups: crossbeam_channel::Receiver<TopupTrigger>,
    notifications: crossbeam_channel::Receiver<TenantNotification>,
}

fn options() -> EngineOptions {
    EngineOptions {
        data_dir: "/data".into(),
        background: false,
        shards: 8,
        segment_bytes: 8192,
        ..EngineOptions::default()
    }
}

impl Setup {
    fn new() -> Setup {
        let storage = MemStorage::new();
        let clock = Arc::new(ManualClock::new(T0));
        let (engine, topups, notifications) = Setup::open(&storage, &clock);
        let (tenant, _, _) = engine.upsert_tenant("acme", None, None, &ADMIN).unwrap();
        let terms = PackageSpec {
            name: "Starter",
            credits: 500,
            currency: Currency::CREDITS,
            price_minor: 200_000,
            price_currency: Currency::new(NGN).unwrap(),
            active: true,
            position: 0,
        };
        engine
            .put_package(&tenant, "starter", &terms, &ADMIN)
            .unwrap();
        let profile = ProfileUpdate {
            email: Some("ada@example.com"),
            name: None,
            metadata: None,
        };
        engine.upsert_user(&tenant, "ada", profile, &ADMIN).unwrap();
        Setup {
            storage,
            clock,
            engine,
            tenant,
            topups,
            notifications,
        }
    }

    fn open(
        storage: &MemStorage,
        clock: &Arc<ManualClock>,
    ) -> (
        Arc<Engine>,
        crossbeam_channel::Receiver<TopupTrigger>,
        crossbeam_channel::Receiver<TenantNotification>,
    ) {
        let engine = Engine::open(
            options(),
            Arc::new(storage.clone()),
            Arc::clone(clock) as Arc<dyn Clock>,
        )
        .unwrap();
        let (topup_sender, topups) = crossbeam_channel::bounded(64);
        let (notification_sender, notifications) = crossbeam_channel::bounded(64);
        engine
            .connect_hooks(Hooks {
                topups: topup_sender,
                notifications: notification_sender,
            })
            .unwrap();
        (engine, topups, notifications)
    }

    fn crash_and_reopen(&mut self) {
        self.engine.wal().flush().unwrap();
        self.storage = self.storage.crash_image(|_, _| 0);
        let (engine, topups, notifications) = Setup::open(&self.storage, &self.clock);
        self.engine = engine;
        self.topups = topups;
        self.notifications = notifications;
        self.tenant = self.engine.tenant("acme").unwrap();
    }

    fn checkout(&self, reference: &str) -> PaymentView {
        let request = CheckoutRequest {
            user: "ada",
            package: "starter",
            reference,
            gateway: "sandbox",
            metadata: None,
        };
        self.engine
            .start_checkout(&self.tenant, &request, &ADMIN)
            .unwrap()
            .0
    }

    fn balance(&self) -> i64 {
        self.tenant.wallet("ada", None).unwrap().balance
    }

    fn notification_names(&self) -> Vec<&'static str> {
        self.notifications
            .try_iter()
            .map(|notification| notification.kind.name())
            .collect()
    }
}

fn paid(minor: i64, currency: &str) -> Verdict<'static> {
    Verdict::Paid {
        paid_minor: minor,
        paid_currency: Currency::new(currency).unwrap(),
        method: None,
    }
}

#[test]
fn a_payment_credits_the_package_exactly_once() {
    let s = Setup::new();
    let payment = s.checkout("cd_0001");
    assert_eq!(
        (payment.credits, payment.amount_minor, payment.status),
        (500, 200_000, PaymentStatus::Pending)
    );
    let first = s
        .engine
        .settle_payment("cd_0001", "sandbox", &paid(200_000, NGN), "")
        .unwrap();
    assert!(
        matches!(first, Settlement::Credited { balance: 500, .. }),
        "{first:?}"
    );
    for _ in 0..3 {
        let again = s
            .engine
            .settle_payment("cd_0001", "sandbox", &paid(200_000, NGN), "")
            .unwrap();
        assert!(
            matches!(again, Settlement::AlreadySettled { .. }),
            "{again:?}"
        );
    }
    let declined_late = s.engine.settle_payment(
        "cd_0001",
        "sandbox",
        &Verdict::Declined {
            decline: Decline::Soft,
            reason: "x",
        },
        "",
    );
    assert!(matches!(
        declined_late,
        Ok(Settlement::AlreadySettled { .. })
    ));
    assert_eq!(s.balance(), 500);
    assert_eq!(s.notification_names(), vec!["topup.succeeded"]);
    s.engine.check_invariants().unwrap();
}

#[test]
fn a_payment_recorded_failed_is_still_credited_once_when_reported_paid() {
    let mut s = Setup::new();
    for (reference, decline) in [("cd_gone", Decline::Abandoned), ("cd_soft", Decline::Soft)] {
        s.checkout(reference);
        let verdict = Verdict::Declined {
            decline,
            reason: "no answer",
        };
        let failed = s
            .engine
            .settle_payment(reference, "sandbox", &verdict, "")
            .unwrap();
        assert!(matches!(failed, Settlement::Failed { .. }), "{failed:?}");
    }
    let before = s.balance();
    // The gateway's report that the money was taken after all.
    let late = s
        .engine
        .settle_payment("cd_gone", "sandbox", &paid(200_000, NGN), "")
        .unwrap();
    assert!(matches!(late, Settlement::Credited { .. }), "{late:?}");
    assert_eq!(s.balance(), before + 500);
    let again = s
        .engine
        .settle_payment("cd_gone", "sandbox", &paid(200_000, NGN), "")
        .unwrap();
    assert!(
        matches!(again, Settlement::AlreadySettled { .. }),
        "{again:?}"
    );
    s.crash_and_reopen();
    assert_eq!(s.balance(), before + 500, "replay takes the same turn");
    assert!(matches!(
        s.engine.payment("cd_gone").unwrap().status,
        PaymentStatus::Succeeded { .. }
    ));
    let soft = s
        .engine
        .settle_payment("cd_soft", "sandbox", &paid(200_000, NGN), "")
        .unwrap();
    assert!(matches!(soft, Settlement::Credited { .. }), "{soft:?}");
    for reference in ["cd_gone", "cd_soft"] {
        let after = s
            .engine
            .settle_payment(reference, "sandbox", &paid(200_000, NGN), "")
            .unwrap();
        assert!(matches!(after, Settlement::AlreadySettled { .. }));
    }
    assert_eq!(s.balance(), before + 1000);
    s.engine.check_invariants().unwrap();
}

#[test]
fn a_late_report_of_an_old_payment_does_not_bring_back_a_replaced_card() {
    let s = Setup::new();
    let paid_with = |token: &'static str| Verdict::Paid {
        paid_minor: 200_000,
        paid_currency: Currency::new(NGN).unwrap(),
        method: Some(MethodDetails {
            gateway: "sandbox",
            token,
            customer: None,
            label: None,
        }),
    };
    let token = |s: &Setup| {
        let account = s.tenant.users.get("ada").unwrap();
        account
            .payment_method()
            .map(|method| method.token.to_string())
    };
    s.checkout("cd_old");
    s.engine
        .settle_payment("cd_old", "sandbox", &paid(200_000, NGN), "")
        .unwrap();
    // The old payment's card arrives on a later event of its own: saved.
    s.clock.advance_ms(1_000);
    s.engine
        .settle_payment("cd_old", "sandbox", &paid_with("card_1"), "")
        .unwrap();
    assert_eq!(token(&s).as_deref(), Some("card_1"));
    s.clock.advance_ms(1_000);
    s.checkout("cd_new");
    s.engine
        .settle_payment("cd_new", "sandbox", &paid_with("card_2"), "")
        .unwrap();
    assert_eq!(token(&s).as_deref(), Some("card_2"));
    // The old report again, much later: the newer card stays.
    s.clock.advance_ms(86_400_000);
    let replayed = s
        .engine
        .settle_payment("cd_old", "sandbox", &paid_with("card_1"), "")
        .unwrap();
    assert!(matches!(replayed, Settlement::AlreadySettled { .. }));
    assert_eq!(token(&s).as_deref(), Some("card_2"));
    // A payment that failed, begun before card_2 was saved, reported paid with card_1 later:
    // credited, and card_2 stays.
    s.checkout("cd_failed");
    s.clock.advance_ms(1_000);
    let verdict = Verdict::Declined {
        decline: Decline::Abandoned,
        reason: "no record",
    };
    s.engine
        .settle_payment("cd_failed", "sandbox", &verdict, "")
        .unwrap();
    s.clock.advance_ms(1_000);
    s.checkout("cd_newest");
    s.engine
        .settle_payment("cd_newest", "sandbox", &paid_with("card_3"), "")
        .unwrap();
    s.clock.advance_ms(1_000);
    let late = s
        .engine
        .settle_payment("cd_failed", "sandbox", &paid_with("card_1"), "")
        .unwrap();
    assert!(matches!(late, Settlement::Credited { .. }), "{late:?}");
    assert_eq!(token(&s).as_deref(), Some("card_3"));
}

#[test]
fn the_wrong_amount_or_currency_credits_nothing() {
    let s = Setup::new();
    s.checkout("cd_short");
    s.checkout("cd_usd");
    let short = s
        .engine
        .settle_payment("cd_short", "sandbox", &paid(100, NGN), "")
        .unwrap();
    assert!(
        matches!(
            short,
            Settlement::Failed {
                decline: Decline::Mismatch,
                ..
            }
        ),
        "{short:?}"
    );
    let usd = s
        .engine
        .settle_payment("cd_usd", "sandbox", &paid(200_000, "USD"), "")
        .unwrap();
    assert!(matches!(
        usd,
        Settlement::Failed {
            decline: Decline::Mismatch,
            ..
        }
    ));
    // A correct delivery afterwards cannot resurrect a settled payment.
    let after = s
        .engine
        .settle_payment("cd_short", "sandbox", &paid(200_000, NGN), "")
        .unwrap();
    assert!(matches!(after, Settlement::AlreadySettled { .. }));
    assert_eq!(s.balance(), 0);
}

#[test]
fn unknown_references_and_other_gateways_are_recorded_not_credited() {
    let s = Setup::new();
    s.checkout("cd_mine");
    let unknown = s
        .engine
        .settle_payment(
            "cd_nobody",
            "paystack",
            &paid(200_000, NGN),
            "charge.success",
        )
        .unwrap();
    assert!(matches!(unknown, Settlement::Unmatched { .. }));
    let wrong_gateway = s
        .engine
        .settle_payment("cd_mine", "stripe", &paid(200_000, NGN), "")
        .unwrap();
    assert!(matches!(wrong_gateway, Settlement::Unmatched { .. }));
    assert_eq!(s.balance(), 0);
    assert_eq!(
        s.engine.payment("cd_mine").unwrap().status,
        PaymentStatus::Pending
    );
}

#[test]
fn checkout_needs_an_active_package_a_user_and_a_fresh_reference() {
    let s = Setup::new();
    let request = |user, package, reference| CheckoutRequest {
        user,
        package,
        reference,
        gateway: "sandbox",
        metadata: None,
    };
    assert_eq!(
        s.engine
            .start_checkout(&s.tenant, &request("ghost", "starter", "cd_1"), &ADMIN)
            .unwrap_err(),
        EngineError::NotFound(Missing::User)
    );
    assert_eq!(
        s.engine
            .start_checkout(&s.tenant, &request("ada", "gold", "cd_1"), &ADMIN)
            .unwrap_err(),
        EngineError::NotFound(Missing::Package)
    );
    assert!(matches!(
        s.engine
            .start_checkout(&s.tenant, &request("ada", "starter", "bad ref"), &ADMIN),
        Err(EngineError::Invalid(_))
    ));
    s.engine
        .start_checkout(&s.tenant, &request("ada", "starter", "cd_1"), &ADMIN)
        .unwrap();
    assert!(matches!(
        s.engine
            .start_checkout(&s.tenant, &request("ada", "starter", "cd_1"), &ADMIN),
        Err(EngineError::Conflict(_))
    ));
}

/// A checkout of `starter` for ada under `reference`, with `metadata`.
fn checkout_with(s: &Setup, reference: &str, metadata: &str) -> PaymentView {
    let request = CheckoutRequest {
        user: "ada",
        package: "starter",
        reference,
        gateway: "sandbox",
        metadata: Some(metadata),
    };
    s.engine
        .start_checkout(&s.tenant, &request, &ADMIN)
        .unwrap()
        .0
}

#[test]
fn a_payments_metadata_is_kept_through_snapshots_and_replay_and_carried_in_its_notifications() {
    const PAID: &str = r#"{"order":"A-17","lines":[{"sku":"x","qty":2}]}"#;
    const DECLINED: &str = r#"{"order":"A-18"}"#;
    const LATER: &str = r#"{ "order": "A-19", "note": "after the snapshot" }"#;
    let mut s = Setup::new();
    let started = checkout_with(&s, "cd_paid", PAID);
    assert_eq!(started.metadata.as_deref(), Some(PAID));
    checkout_with(&s, "cd_declined", DECLINED);
    s.checkout("cd_plain");
    // Two in the snapshot's image, one only in the log after it.
    s.engine.snapshot().unwrap();
    checkout_with(&s, "cd_later", LATER);
    let before = s.engine.state_image();
    s.crash_and_reopen();
    assert_eq!(s.engine.state_image(), before);
    let metadata = |s: &Setup, reference| s.engine.payment(reference).unwrap().metadata;
    assert_eq!(metadata(&s, "cd_paid").as_deref(), Some(PAID));
    assert_eq!(metadata(&s, "cd_declined").as_deref(), Some(DECLINED));
    assert_eq!(metadata(&s, "cd_later").as_deref(), Some(LATER));
    assert_eq!(metadata(&s, "cd_plain"), None);

    let credited = s
        .engine
        .settle_payment("cd_paid", "sandbox", &paid(200_000, NGN), "")
        .unwrap();
    let Settlement::Credited { payment, .. } = credited else {
        panic!("{credited:?}");
    };
    assert_eq!(payment.metadata.as_deref(), Some(PAID));
    let declined = Verdict::Declined {
        decline: Decline::Soft,
        reason: "insufficient funds",
    };
    s.engine
        .settle_payment("cd_declined", "sandbox", &declined, "")
        .unwrap();
    s.engine
        .settle_payment("cd_plain", "sandbox", &paid(200_000, NGN), "")
        .unwrap();
    let kinds: Vec<NotificationKind> = s.notifications.try_iter().map(|n| n.kind).collect();
    assert_eq!(
        kinds,
        [
            NotificationKind::TopupSucceeded {
                reference: "cd_paid".into(),
                purpose: PaymentPurpose::Checkout,
                credits: 500,
                balance: 500,
                metadata: Some(PAID.into()),
            },
            NotificationKind::TopupFailed {
                reference: "cd_declined".into(),
                purpose: PaymentPurpose::Checkout,
                decline: Decline::Soft,
                metadata: Some(DECLINED.into()),
            },
            NotificationKind::TopupSucceeded {
                reference: "cd_plain".into(),
                purpose: PaymentPurpose::Checkout,
                credits: 500,
                balance: 1000,
                metadata: None,
            },
        ]
    );
    // Settled payments keep it too, through a snapshot and through replay.
    s.engine.snapshot().unwrap();
    let before = s.engine.state_image();
    s.crash_and_reopen();
    assert_eq!(s.engine.state_image(), before);
    assert_eq!(metadata(&s, "cd_paid").as_deref(), Some(PAID));
    assert_eq!(metadata(&s, "cd_declined").as_deref(), Some(DECLINED));
    s.engine.check_invariants().unwrap();
}

#[test]
fn an_automatic_top_up_has_no_metadata() {
    let s = Setup::new();
    saved_card(&s);
    rule(&s, 3);
    spend_to(&s, 0);
    let policy = TopupPolicy::default();
    let TopupDecision::Charge(charge) = s
        .engine
        .plan_auto_topup(&s.tenant, "ada", Currency::CREDITS, "sandbox", &policy)
        .unwrap()
    else {
        panic!("no charge planned")
    };
    assert_eq!(charge.payment.metadata, None);
    s.notifications.try_iter().for_each(drop);
    s.engine
        .settle_payment(&charge.reference, "sandbox", &paid(200_000, NGN), "")
        .unwrap();
    let kinds: Vec<NotificationKind> = s.notifications.try_iter().map(|n| n.kind).collect();
    assert!(
        matches!(
            kinds.as_slice(),
            [NotificationKind::TopupSucceeded {
                purpose: PaymentPurpose::AutoTopup,
                metadata: None,
                ..
            }]
        ),
        "{kinds:?}"
    );
}

#[test]
fn payment_metadata_must_be_a_json_object_within_the_limits() {
    let s = Setup::new();
    let limits = Limits::default();
    let deep = format!("{{\"a\":{}1{}}}", "[".repeat(40), "]".repeat(40));
    let long = format!(
        "{{\"a\":\"{}\"}}",
        "x".repeat(limits.max_metadata_bytes as usize)
    );
    for refused in [
        "[1,2]",
        "\"text\"",
        "42",
        "null",
        "{\"a\":",
        "{} {}",
        deep.as_str(),
        long.as_str(),
    ] {
        let request = CheckoutRequest {
            user: "ada",
            package: "starter",
            reference: "cd_refused",
            gateway: "sandbox",
            metadata: Some(refused),
        };
        let error = s
            .engine
            .start_checkout(&s.tenant, &request, &ADMIN)
            .unwrap_err();
        assert!(
            matches!(error, EngineError::Invalid(invalid) if invalid.field == "metadata"),
            "{refused}: {error:?}"
        );
    }
    assert!(s.engine.payment("cd_refused").is_none(), "nothing recorded");
    let empty = checkout_with(&s, "cd_empty", " {}");
    assert_eq!(empty.metadata.as_deref(), Some(" {}"));
}

fn saved_card(s: &Setup) {
    s.checkout("cd_card");
    let method = MethodDetails {
        gateway: "sandbox",
        token: "card_ok",
        customer: Some("ada@example.com"),
        label: Some("visa 4081"),
    };
    let verdict = Verdict::Paid {
        paid_minor: 200_000,
        paid_currency: Currency::new(NGN).unwrap(),
        method: Some(method),
    };
    s.engine
        .settle_payment("cd_card", "sandbox", &verdict, "")
        .unwrap();
}

fn rule(s: &Setup, max_per_day: u32) {
    let request = AutoTopupRequest {
        user: "ada",
        currency: None,
        threshold: 100,
        package: "starter",
        payment_method: None,
        max_per_day,
    };
    s.engine
        .set_auto_topup(&s.tenant, &request, &ADMIN)
        .unwrap();
}

fn spend_to(s: &Setup, target: i64) {
    let balance = s.balance();
    let request = DebitRequest::new("ada", Spend::Amount(balance - target));
    s.engine.debit(&s.tenant, &request, &ADMIN).unwrap();
}

#[test]
fn crossing_the_threshold_triggers_one_top_up_that_credits_once() {
    let s = Setup::new();
    saved_card(&s);
    rule(&s, 3);
    s.notification_names();
    spend_to(&s, 150);
    assert!(s.topups.try_recv().is_err(), "still above the threshold");
    spend_to(&s, 50);
    let trigger = s.topups.try_recv().expect("a trigger");
    assert_eq!(
        (trigger.user.as_str(), trigger.currency),
        ("ada", Currency::CREDITS)
    );
    spend_to(&s, 40);
    assert!(
        s.topups.try_recv().is_err(),
        "one trigger in flight per wallet"
    );
    assert_eq!(s.notification_names(), vec!["wallet.low_balance"]);

    let policy = TopupPolicy::default();
    let TopupDecision::Charge(charge) = s
        .engine
        .plan_auto_topup(&s.tenant, "ada", Currency::CREDITS, "sandbox", &policy)
        .unwrap()
    else {
        panic!("expected a charge")
    };
    assert_eq!(charge.token, "card_ok");
    assert_eq!(charge.customer.as_deref(), Some("ada@example.com"));
    assert_eq!(
        charge.reference,
        topup_reference("acme", "ada", Currency::CREDITS, 1),
        "deterministic reference"
    );
    assert_eq!(charge.payment.purpose, PaymentPurpose::AutoTopup);
    // While it is in flight nothing else is charged.
    let again = s
        .engine
        .plan_auto_topup(&s.tenant, "ada", Currency::CREDITS, "sandbox", &policy)
        .unwrap();
    assert_eq!(again, TopupDecision::Skip(TopupSkip::InFlight));
    s.engine
        .settle_payment(&charge.reference, "sandbox", &paid(200_000, NGN), "")
        .unwrap();
    s.engine
        .clear_topup_trigger(&s.tenant, "ada", Currency::CREDITS);
    assert_eq!(s.balance(), 540);
    let rule = s
        .engine
        .auto_topup(&s.tenant, "ada", None, "sandbox")
        .unwrap()
        .unwrap();
    assert_eq!(
        (rule.pending, rule.attempts_today, rule.consecutive_failures),
        (None, 1, 0)
    );
    s.engine.check_invariants().unwrap();
}

#[test]
fn a_gateway_that_always_declines_is_tried_at_most_the_allowed_number_of_times() {
    let s = Setup::new();
    saved_card(&s);
    rule(&s, 4);
    spend_to(&s, 0);
    let policy = TopupPolicy {
        max_per_hour: 2,
        backoff_base_ms: 60_000,
        backoff_max_ms: 3_600_000,
    };
    let mut attempts_per_day = std::collections::BTreeMap::<i64, u32>::new();
    let mut attempt_times = Vec::new();
    // Ten simulated days, the worker looking every minute.
    for _ in 0..(10 * 24 * 60) {
        s.clock.advance_ms(60_000);
        match s
            .engine
            .plan_auto_topup(&s.tenant, "ada", Currency::CREDITS, "sandbox", &policy)
            .unwrap()
        {
            TopupDecision::Charge(charge) => {
                let now = s.clock.now_ms();
                *attempts_per_day.entry(now / 86_400_000).or_default() += 1;
                attempt_times.push(now);
                let verdict = Verdict::Declined {
                    decline: Decline::Soft,
                    reason: "Insufficient Funds",
                };
                s.engine
                    .settle_payment(&charge.reference, "sandbox", &verdict, "")
                    .unwrap();
            }
            TopupDecision::Skip(skip) => assert!(
                matches!(
                    skip,
                    TopupSkip::DailyCap | TopupSkip::BurstCap | TopupSkip::Backoff { .. }
                ),
                "{skip:?}"
            ),
        }
    }
    assert!(
        attempts_per_day.values().all(|&n| n <= 4),
        "{attempts_per_day:?}"
    );
    for window in attempt_times.windows(3) {
        assert!(
            window[2] - window[0] >= 3_600_000,
            "more than two attempts within an hour: {window:?}"
        );
    }
    let total: u32 = attempts_per_day.values().sum();
    assert!(
        total as usize <= 4 * attempts_per_day.len() && total >= 10,
        "{total} attempts over ten days"
    );
    assert_eq!(s.balance(), 0, "declines credit nothing");
    s.engine.check_invariants().unwrap();
}

#[test]
fn a_hard_decline_switches_the_rule_off_and_says_so() {
    let s = Setup::new();
    saved_card(&s);
    rule(&s, 3);
    spend_to(&s, 10);
    s.topups
        .try_recv()
        .expect("the trigger of the first crossing");
    s.notification_names();
    let policy = TopupPolicy::default();
    let TopupDecision::Charge(charge) = s
        .engine
        .plan_auto_topup(&s.tenant, "ada", Currency::CREDITS, "sandbox", &policy)
        .unwrap()
    else {
        panic!()
    };
    let verdict = Verdict::Declined {
        decline: Decline::Hard,
        reason: "Card expired",
    };
    s.engine
        .settle_payment(&charge.reference, "sandbox", &verdict, "")
        .unwrap();
    let rule = s
        .engine
        .auto_topup(&s.tenant, "ada", None, "sandbox")
        .unwrap()
        .unwrap();
    assert!(!rule.enabled);
    assert_eq!(rule.disabled_reason.as_deref(), Some("Card expired"));
    assert_eq!(
        s.notification_names(),
        vec!["topup.failed", "autotopup.disabled"]
    );
    s.clock.advance_ms(86_400_000);
    let next = s
        .engine
        .plan_auto_topup(&s.tenant, "ada", Currency::CREDITS, "sandbox", &policy)
        .unwrap();
    assert_eq!(next, TopupDecision::Skip(TopupSkip::Disabled));
    spend_to(&s, 5);
    assert!(
        s.topups.try_recv().is_err(),
        "a disabled rule triggers nothing"
    );
}

#[test]
fn rules_without_a_method_or_package_do_not_charge() {
    let s = Setup::new();
    rule(&s, 3);
    let policy = TopupPolicy::default();
    assert_eq!(
        s.engine
            .plan_auto_topup(&s.tenant, "ada", Currency::CREDITS, "sandbox", &policy)
            .unwrap(),
        TopupDecision::Skip(TopupSkip::NoMethod)
    );
    saved_card(&s);
    s.engine
        .delete_package(&s.tenant, "starter", &ADMIN)
        .unwrap();
    spend_to(&s, 0);
    assert_eq!(
        s.engine
            .plan_auto_topup(&s.tenant, "ada", Currency::CREDITS, "sandbox", &policy)
            .unwrap(),
        TopupDecision::Skip(TopupSkip::PackageUnavailable)
    );
    assert_eq!(
        s.engine
            .plan_auto_topup(&s.tenant, "ada", Currency::CREDITS, "stripe", &policy)
            .unwrap(),
        TopupDecision::Skip(TopupSkip::PackageUnavailable)
    );
}

#[test]
fn an_intent_survives_a_crash_and_settles_once_afterwards() {
    let mut s = Setup::new();
    saved_card(&s);
    rule(&s, 3);
    spend_to(&s, 0);
    let policy = TopupPolicy::default();
    let TopupDecision::Charge(charge) = s
        .engine
        .plan_auto_topup(&s.tenant, "ada", Currency::CREDITS, "sandbox", &policy)
        .unwrap()
    else {
        panic!()
    };
    s.engine.snapshot().unwrap();
    let before = s.engine.state_image();
    s.crash_and_reopen();
    assert_eq!(s.engine.state_image(), before);
    let unfinished = s.engine.unfinished_topups();
    assert_eq!(unfinished.len(), 1);
    assert_eq!(unfinished[0].reference, charge.reference);
    // Reconciliation reports the charge that went through before the crash: credited once.
    assert!(matches!(
        s.engine
            .settle_payment(&charge.reference, "sandbox", &paid(200_000, NGN), "")
            .unwrap(),
        Settlement::Credited { .. }
    ));
    assert!(matches!(
        s.engine
            .settle_payment(&charge.reference, "sandbox", &paid(200_000, NGN), "")
            .unwrap(),
        Settlement::AlreadySettled { .. }
    ));
    assert_eq!(s.balance(), 500);
    assert!(s.engine.unfinished_topups().is_empty());
    s.crash_and_reopen();
    assert_eq!(s.balance(), 500);
    s.engine.check_invariants().unwrap();
}

#[test]
fn payments_and_rules_survive_snapshots_and_replay() {
    let mut s = Setup::new();
    saved_card(&s);
    rule(&s, 3);
    s.checkout("cd_pending");
    s.engine.snapshot().unwrap();
    s.engine
        .credit(
            &s.tenant,
            &CreditRequest::new("ada", 5, CreditKind::Grant),
            &ADMIN,
        )
        .unwrap();
    s.engine
        .set_tenant_webhook(
            &s.tenant,
            Some("https://app.example.com/hooks"),
            Some("0123456789abcdef"),
            &ADMIN,
        )
        .unwrap();
    let before = s.engine.state_image();
    s.crash_and_reopen();
    assert_eq!(s.engine.state_image(), before);
    assert_eq!(
        s.engine.payment("cd_pending").unwrap().status,
        PaymentStatus::Pending
    );
    assert!(matches!(
        s.engine.payment("cd_card").unwrap().status,
        PaymentStatus::Succeeded { .. }
    ));
    assert_eq!(
        s.engine.tenant_webhook(&s.tenant).unwrap().0,
        "https://app.example.com/hooks"
    );
    // A settled payment is forgotten after the retention; a late delivery is then unmatched.
    s.clock.advance_ms(8 * 86_400_000);
    s.engine.purge_expired(s.clock.now_ms());
    assert!(s.engine.payment("cd_card").is_none());
    assert!(matches!(
        s.engine
            .settle_payment("cd_card", "sandbox", &paid(200_000, NGN), "")
            .unwrap(),
        Settlement::Unmatched { .. }
    ));
    assert_eq!(s.balance(), 505);
}

#[test]
fn deleting_and_recreating_a_rule_keeps_its_caps_and_never_reuses_a_reference() {
    let mut s = Setup::new();
    saved_card(&s);
    rule(&s, 1);
    spend_to(&s, 0);
    let policy = TopupPolicy::default();
    let plan = |s: &Setup| {
        s.engine
            .plan_auto_topup(&s.tenant, "ada", Currency::CREDITS, "sandbox", &policy)
            .unwrap()
    };
    let TopupDecision::Charge(first) = plan(&s) else {
        panic!("expected a charge")
    };
    let verdict = Verdict::Declined {
        decline: Decline::Soft,
        reason: "Insufficient Funds",
    };
    s.engine
        .settle_payment(&first.reference, "sandbox", &verdict, "")
        .unwrap();

    s.engine
        .delete_auto_topup(&s.tenant, "ada", None, &ADMIN)
        .unwrap();
    assert!(s
        .engine
        .auto_topup(&s.tenant, "ada", None, "sandbox")
        .unwrap()
        .is_none());
    assert!(matches!(
        s.engine.delete_auto_topup(&s.tenant, "ada", None, &ADMIN),
        Err(EngineError::NotFound(Missing::AutoTopup))
    ));
    assert_eq!(plan(&s), TopupDecision::Skip(TopupSkip::NoRule));
    rule(&s, 1);
    // Deleting the rule does not reset today's attempts.
    assert_eq!(plan(&s), TopupDecision::Skip(TopupSkip::DailyCap));
    s.crash_and_reopen();
    assert_eq!(plan(&s), TopupDecision::Skip(TopupSkip::DailyCap));

    s.clock.advance_ms(86_400_000);
    let TopupDecision::Charge(second) = plan(&s) else {
        panic!("expected a charge the next day")
    };
    assert_ne!(second.reference, first.reference);
    assert_eq!(
        second.reference,
        topup_reference("acme", "ada", Currency::CREDITS, 2)
    );
    s.engine
        .settle_payment(&second.reference, "sandbox", &paid(200_000, NGN), "")
        .unwrap();
    assert_eq!(s.balance(), 500);
    s.engine.check_invariants().unwrap();
}

#[test]
fn one_reference_raced_by_two_users_is_issued_once_and_the_log_stays_whole() {
    let mut s = Setup::new();
    let profile = ProfileUpdate {
        email: None,
        name: None,
        metadata: None,
    };
    s.engine
        .upsert_user(&s.tenant, "bob", profile, &ADMIN)
        .unwrap();
    for round in 0..300 {
        let reference = format!("cd_race_{round}");
        let outcomes: Vec<Result<(PaymentView, u64), EngineError>> = std::thread::scope(|scope| {
            let racers: Vec<_> = ["ada", "bob"]
                .into_iter()
                .map(|user| {
                    let (engine, tenant, reference) = (&s.engine, &s.tenant, &reference);
                    scope.spawn(move || {
                        let request = CheckoutRequest {
                            user,
                            package: "starter",
                            reference,
                            gateway: "sandbox",
                            metadata: None,
                        };
                        engine.start_checkout(tenant, &request, &ADMIN)
                    })
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let issued = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(issued, 1, "round {round}: {outcomes:?}");
        assert!(outcomes
            .iter()
            .any(|o| matches!(o, Err(EngineError::Conflict(_)))));
    }
    assert!(!s.engine.wal().is_poisoned());
    s.crash_and_reopen();
    s.engine.check_invariants().unwrap();
    assert!(s.engine.payment("cd_race_299").is_some());
}

#[test]
fn a_top_up_paid_in_the_wrong_amount_switches_the_rule_off() {
    let s = Setup::new();
    saved_card(&s);
    rule(&s, 3);
    spend_to(&s, 10);
    s.notification_names();
    let policy = TopupPolicy::default();
    let TopupDecision::Charge(charge) = s
        .engine
        .plan_auto_topup(&s.tenant, "ada", Currency::CREDITS, "sandbox", &policy)
        .unwrap()
    else {
        panic!("expected a charge")
    };
    // The gateway took 2,000.00 in another currency: nothing credited, and no second attempt.
    s.engine
        .settle_payment(&charge.reference, "sandbox", &paid(200_000, "USD"), "")
        .unwrap();
    assert_eq!(s.balance(), 10);
    let rule = s
        .engine
        .auto_topup(&s.tenant, "ada", None, "sandbox")
        .unwrap()
        .unwrap();
    assert!(!rule.enabled);
    assert!(
        rule.disabled_reason
            .as_deref()
            .is_some_and(|reason| reason.contains("USD")),
        "{rule:?}"
    );
    assert_eq!(
        s.notification_names(),
        vec!["topup.failed", "autotopup.disabled"]
    );
}

#[test]
fn the_sweep_claims_each_wallet_it_hands_out() {
    let s = Setup::new();
    saved_card(&s);
    rule(&s, 3);
    spend_to(&s, 10);
    // The debit's own trigger is out: the sweep leaves the wallet to it.
    assert!(s.topups.try_recv().is_ok());
    assert!(s.engine.wallets_wanting_topup("sandbox").is_empty());
    s.engine
        .clear_topup_trigger(&s.tenant, "ada", Currency::CREDITS);
    // Lost trigger: one sweep hands the wallet out once, the next not again until it is handled.
    assert_eq!(s.engine.wallets_wanting_topup("sandbox").len(), 1);
    assert!(s.engine.wallets_wanting_topup("sandbox").is_empty());
    s.engine
        .clear_topup_trigger(&s.tenant, "ada", Currency::CREDITS);
    assert_eq!(s.engine.wallets_wanting_topup("sandbox").len(), 1);
}

#[test]
fn endpoint_urls_are_absolute_http_urls_with_a_host() {
    use crate::engine::is_http_url;
    for good in [
        "https://hooks.example.com/creditd?x=1",
        "http://127.0.0.1:8080/hooks",
        "https://[::1]:9/h",
    ] {
        assert!(is_http_url(good), "{good}");
    }
    let long = format!("https://example.com/{}", "a".repeat(2048));
    for bad in [
        "",
        "https://",
        "http://",
        "https:///path",
        "ftp://example.com/x",
        "hooks.example.com/x",
        "https://example.com/\u{a0}h",
        "https://example.com/ h",
        "https://example.com/\th",
        long.as_str(),
    ] {
        assert!(!is_http_url(bad), "{bad:?}");
    }
}

/// A package bought for a credit pool: recorded under the pool, credited to the pool once
/// whatever the number of reports, refused in the wrong amount, and kept with its target
/// through a snapshot and a crash, replay rebuilding exactly the live state.
#[test]
fn a_package_bought_for_a_pool_credits_the_pool_once_and_survives_snapshot_and_replay() {
    let mut s = Setup::new();
    s.engine
        .put_pool(&s.tenant, "org", Some("Org"), None, &ADMIN)
        .unwrap();
    s.engine
        .set_pool_member(&s.tenant, "ada", "org", None, &ADMIN)
        .unwrap();
    let checkout = |engine: &Engine, tenant: &Tenant, pool: &str, reference: &str| {
        let request = PoolCheckoutRequest {
            pool,
            package: "starter",
            reference,
            gateway: "sandbox",
            metadata: Some(r#"{"po":"PO-7"}"#),
        };
        engine.start_pool_checkout(tenant, &request, &ADMIN)
    };
    let (payment, _) = checkout(&s.engine, &s.tenant, "org", "cd_pool_1").unwrap();
    assert_eq!(
        (payment.pool.as_deref(), payment.user.as_str()),
        (Some("org"), "")
    );
    assert_eq!(
        (payment.credits, payment.status),
        (500, PaymentStatus::Pending)
    );
    s.engine
        .open_checkout("cd_pool_1", "https://pay.example/cd_pool_1")
        .unwrap();

    // Unknown pool, a package in another currency, a reference in use: refused, nothing written.
    let before = s.engine.state_image();
    assert_eq!(
        checkout(&s.engine, &s.tenant, "nope", "cd_pool_x").unwrap_err(),
        EngineError::NotFound(Missing::Pool)
    );
    let usd = PackageSpec {
        name: "Dollars",
        credits: 5,
        currency: Currency::new("usd").unwrap(),
        price_minor: 500,
        price_currency: Currency::new("USD").unwrap(),
        active: true,
        position: 1,
    };
    s.tenant_currencies_with_usd();
    s.engine
        .put_package(&s.tenant, "dollars", &usd, &ADMIN)
        .unwrap();
    let before_usd = s.engine.state_image();
    let request = PoolCheckoutRequest {
        pool: "org",
        package: "dollars",
        reference: "cd_pool_usd",
        gateway: "sandbox",
        metadata: None,
    };
    assert!(matches!(
        s.engine.start_pool_checkout(&s.tenant, &request, &ADMIN),
        Err(EngineError::Invalid(invalid)) if invalid.field == "package_id"
    ));
    assert!(matches!(
        checkout(&s.engine, &s.tenant, "org", "cd_pool_1"),
        Err(EngineError::Conflict(_))
    ));
    assert_eq!(s.engine.state_image(), before_usd);
    drop(before);

    // Paid: the pool gets the credits, once; the member can spend them.
    let settled = s
        .engine
        .settle_payment("cd_pool_1", "sandbox", &paid(200_000, "ngn"), "")
        .unwrap();
    assert!(
        matches!(settled, Settlement::Credited { balance: 500, .. }),
        "{settled:?}"
    );
    for _ in 0..3 {
        let again = s
            .engine
            .settle_payment("cd_pool_1", "sandbox", &paid(200_000, NGN), "")
            .unwrap();
        assert!(
            matches!(again, Settlement::AlreadySettled { .. }),
            "{again:?}"
        );
    }
    assert_eq!(s.engine.pool(&s.tenant, "org").unwrap().balance, 500);
    assert_eq!(s.balance(), 0, "the wallet is not credited");
    let debit = DebitRequest::new("ada", Spend::Amount(120));
    s.engine.debit(&s.tenant, &debit, &ADMIN).unwrap();
    assert_eq!(s.engine.pool(&s.tenant, "org").unwrap().balance, 380);

    // Paid the wrong amount: recorded failed, nothing credited, and final.
    checkout(&s.engine, &s.tenant, "org", "cd_pool_2").unwrap();
    let short = s
        .engine
        .settle_payment("cd_pool_2", "sandbox", &paid(100, NGN), "")
        .unwrap();
    assert!(
        matches!(
            short,
            Settlement::Failed {
                decline: Decline::Mismatch,
                ..
            }
        ),
        "{short:?}"
    );
    let late = s
        .engine
        .settle_payment("cd_pool_2", "sandbox", &paid(200_000, NGN), "")
        .unwrap();
    assert!(
        matches!(late, Settlement::AlreadySettled { .. }),
        "{late:?}"
    );
    assert_eq!(s.engine.pool(&s.tenant, "org").unwrap().balance, 380);

    // One in the snapshot, one only in the log after it; then a crash.
    s.engine.snapshot().unwrap();
    checkout(&s.engine, &s.tenant, "org", "cd_pool_3").unwrap();
    let live = s.engine.state_image();
    s.crash_and_reopen();
    assert_eq!(s.engine.state_image(), live);
    s.engine.check_invariants().unwrap();
    let kept = s.engine.payment("cd_pool_1").unwrap();
    assert_eq!(kept.pool.as_deref(), Some("org"));
    assert_eq!(
        kept.checkout_url.as_deref(),
        Some("https://pay.example/cd_pool_1")
    );
    assert!(matches!(kept.status, PaymentStatus::Succeeded { .. }));
    // The one started after the snapshot settles after the crash, once.
    let settled = s
        .engine
        .settle_payment("cd_pool_3", "sandbox", &paid(200_000, NGN), "")
        .unwrap();
    assert!(
        matches!(settled, Settlement::Credited { balance: 880, .. }),
        "{settled:?}"
    );
    let again = s
        .engine
        .settle_payment("cd_pool_3", "sandbox", &paid(200_000, NGN), "")
        .unwrap();
    assert!(matches!(again, Settlement::AlreadySettled { .. }));
    let live = s.engine.state_image();
    s.crash_and_reopen();
    assert_eq!(s.engine.state_image(), live);
    assert_eq!(s.engine.pool(&s.tenant, "org").unwrap().balance, 880);
    s.engine.check_invariants().unwrap();
}

impl Setup {
    /// Gives the tenant `usd` (2 decimals) beside its default currency.
    fn tenant_currencies_with_usd(&self) {
        let currencies = [
            crate::engine::types::CurrencySpec {
                code: Currency::CREDITS,
                decimals: 0,
            },
            crate::engine::types::CurrencySpec {
                code: Currency::new("usd").unwrap(),
                decimals: 2,
            },
        ];
        let spec = TenantSpec {
            name: None,
            default_currency: None,
            currencies: Some(&currencies),
        };
        self.engine.put_tenant("acme", &spec, &ADMIN).unwrap();
    }
}

/// A tenant's portal return origins: checked, kept in their one form, through a snapshot and
/// replay; an empty list gives the server's default back.
#[test]
fn a_tenants_portal_return_origins_are_checked_and_kept() {
    let mut s = Setup::new();
    for bad in [
        "app.example.com",
        "ftp://app.example.com",
        "https://app.example.com/billing",
        "https://app.example.com?x=1",
        "https://app.example.com#top",
        "https://user@app.example.com",
        "https://",
    ] {
        assert!(
            s.engine
                .set_tenant_portal_origins(&s.tenant, &[bad], &ADMIN)
                .is_err(),
            "{bad}"
        );
    }
    let too_many: Vec<String> = (0..17)
        .map(|i| format!("https://a{i}.example.com"))
        .collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    assert!(s
        .engine
        .set_tenant_portal_origins(&s.tenant, &too_many, &ADMIN)
        .is_err());
    assert!(s.engine.tenant_portal_origins(&s.tenant).is_empty());
    let first = s
        .engine
        .set_tenant_portal_origins(
            &s.tenant,
            &[
                "https://App.Example.com/",
                "http://localhost:3000",
                "https://app.example.com",
            ],
            &ADMIN,
        )
        .unwrap();
    let same = s
        .engine
        .set_tenant_portal_origins(
            &s.tenant,
            &["https://app.example.com", "http://localhost:3000"],
            &ADMIN,
        )
        .unwrap();
    assert_eq!(first, same, "an unchanged list writes nothing");
    assert_eq!(
        s.engine.tenant_portal_origins(&s.tenant),
        ["https://app.example.com", "http://localhost:3000"]
    );
    s.engine.snapshot().unwrap();
    s.crash_and_reopen();
    assert_eq!(
        s.engine.tenant_portal_origins(&s.tenant),
        ["https://app.example.com", "http://localhost:3000"]
    );
    s.engine
        .set_tenant_portal_origins(&s.tenant, &[], &ADMIN)
        .unwrap();
    let live = s.engine.state_image();
    s.crash_and_reopen();
    assert_eq!(s.engine.state_image(), live);
    assert!(s.engine.tenant_portal_origins(&s.tenant).is_empty());
}
