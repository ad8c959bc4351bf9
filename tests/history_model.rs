//! The history's model test: random operations (credits and top-ups by hand, debits by amount and
//! by catalogue action, reservations captured or released, revokes and chargebacks (which may
//! leave a balance below zero, repaid by later credits), top-ups bought through a
//! payment, the clock moving by minutes and hours, partial feeding steps, and restarts of the
//! engine and of the history, clean or after a crash) run against the engine, with a reference
//! that computes, in the most obvious way, every entry the history must list and every usage and
//! revenue report it must give. After each case the history is caught up and compared:
//!
//! - each user's entries (newest first, every page) equal the reference's, LSN by LSN: kind,
//!   amount, balance after, action and quantity; no gap, no duplicate;
//! - every usage report (by action, user, day, hour; tenant-wide and for each user) and every
//!   revenue report (by package, currency, day) over several whole-hour windows equals the sum
//!   the reference computes from its own entries.
//!
//! Every write is waited on until durable before the reference counts it, as an API client would
//! see it, so a crash of the engine loses nothing the reference holds. A crash of the history is a
//! feeder dropped between steps (whatever it had not committed is applied again by the next one).
//!
//! `PROPTEST_CASES` sets the number of cases (default 24).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use creditd::engine::payments::{CheckoutRequest, Verdict};
use creditd::engine::types::{CreditKind, Currency, EngineError};
use creditd::engine::{
    CaptureRequest, Clock, Context, CreditRequest, DebitRequest, Engine, EngineOptions,
    ManualClock, PackageSpec, ProfileUpdate, ReserveRequest, RevokeRequest, Spend, Tenant,
};
use creditd::history::reader::{Filter, Reader};
use creditd::history::reports::{
    Key, RevenueGrouping, RevenueQuery, UsageGrouping, UsageQuery, Window,
};
use creditd::history::Feeder;
use creditd::wal::memory::MemStorage;
use proptest::prelude::*;

const TENANT: &str = "acme";
const USERS: [&str; 3] = ["ada", "bob", "cy"];
/// Catalogue actions and their cost per unit.
const ACTIONS: [(&str, i64); 2] = [("gpt", 3), ("embed", 1)];
/// The package bought by a top-up: credits, price in kobo.
const PACKAGE: (&str, i64, i64) = ("starter", 50, 20_000);
/// The clock's start: a whole hour.
const START_MS: i64 = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000;
const HOUR_MS: i64 = 3_600_000;
const CALLER: Context<'static> = Context {
    actor: "app",
    idempotency: None,
};

#[derive(Debug, Clone)]
enum Op {
    Credit {
        user: usize,
        amount: i64,
        topup: bool,
    },
    Debit {
        user: usize,
        amount: i64,
    },
    DebitAction {
        user: usize,
        action: usize,
        quantity: u64,
    },
    Hold {
        user: usize,
        amount: i64,
        capture: Option<i64>,
    },
    Revoke {
        user: usize,
        amount: i64,
        /// A chargeback: taken even below zero, and repaid by later credits.
        allow_negative: bool,
    },
    Buy {
        user: usize,
        paid: bool,
    },
    Advance {
        minutes: i64,
    },
    Feed {
        records: u64,
    },
    RestartHistory,
    RestartEngine {
        crash: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let user = 0..USERS.len();
    prop_oneof![
        3 => (user.clone(), 1..200i64, any::<bool>())
            .prop_map(|(user, amount, topup)| Op::Credit { user, amount, topup }),
        4 => (user.clone(), 1..40i64).prop_map(|(user, amount)| Op::Debit { user, amount }),
        4 => (user.clone(), 0..ACTIONS.len(), 1..5u64)
            .prop_map(|(user, action, quantity)| Op::DebitAction { user, action, quantity }),
        2 => (user.clone(), 1..30i64, proptest::option::of(1..40i64))
            .prop_map(|(user, amount, capture)| Op::Hold { user, amount, capture }),
        2 => (user.clone(), 1..30i64, any::<bool>()).prop_map(|(user, amount, allow_negative)| {
            Op::Revoke { user, amount, allow_negative }
        }),
        1 => (user, any::<bool>()).prop_map(|(user, paid)| Op::Buy { user, paid }),
        2 => prop_oneof![1..90i64, 60..3000i64].prop_map(|minutes| Op::Advance { minutes }),
        2 => (1..40u64).prop_map(|records| Op::Feed { records }),
        1 => Just(Op::RestartHistory),
        1 => any::<bool>().prop_map(|crash| Op::RestartEngine { crash }),
    ]
}

/// One entry as the reference expects it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    lsn: u64,
    kind: &'static str,
    amount: i64,
    balance_after: Option<i64>,
    action: Option<(&'static str, i64)>,
    time_ms: i64,
}

/// A payment the reference saw settle as paid.
#[derive(Debug, Clone)]
struct Sale {
    time_ms: i64,
}

struct Harness {
    storage: MemStorage,
    clock: Arc<ManualClock>,
    engine: Arc<Engine>,
    tenant: Arc<Tenant>,
    path: std::path::PathBuf,
    feeder: Option<Feeder>,
    balances: [i64; 3],
    entries: [Vec<Expected>; 3],
    sales: Vec<Sale>,
    references: u64,
}

fn options() -> EngineOptions {
    EngineOptions {
        data_dir: "/data".into(),
        background: false,
        shards: 4,
        segment_bytes: 4096,
        ..EngineOptions::default()
    }
}

impl Harness {
    fn new(dir: &Path) -> Harness {
        let storage = MemStorage::new();
        let clock = Arc::new(ManualClock::new(START_MS));
        let engine = Engine::open(
            options(),
            Arc::new(storage.clone()),
            Arc::clone(&clock) as Arc<dyn Clock>,
        )
        .unwrap();
        let (tenant, _, _) = engine.upsert_tenant(TENANT, None, None, &CALLER).unwrap();
        for user in USERS {
            let profile = ProfileUpdate {
                email: None,
                name: None,
                metadata: None,
            };
            engine.upsert_user(&tenant, user, profile, &CALLER).unwrap();
        }
        for (name, cost) in ACTIONS {
            engine
                .put_action(&tenant, name, cost, None, None, &CALLER)
                .unwrap();
        }
        let package = PackageSpec {
            name: "Starter",
            credits: PACKAGE.1,
            currency: Currency::CREDITS,
            price_minor: PACKAGE.2,
            price_currency: Currency::new("NGN").unwrap(),
            active: true,
            position: 0,
        };
        let lsn = engine
            .put_package(&tenant, PACKAGE.0, &package, &CALLER)
            .unwrap();
        engine.wait_durable(lsn).unwrap();
        let path = dir.join("history.sqlite3");
        let mut harness = Harness {
            storage,
            clock,
            engine,
            tenant,
            path,
            feeder: None,
            balances: [0; 3],
            entries: Default::default(),
            sales: Vec::new(),
            references: 0,
        };
        harness.open_history();
        harness
    }

    /// The feeder on the history file, with the engine's log: as the server opens it.
    fn open_history(&mut self) {
        let feeder = Feeder::open(
            &self.path,
            Path::new("/data/wal"),
            creditd::codec::FORMAT_VERSION,
            1 << 20,
        )
        .unwrap();
        self.engine
            .retention()
            .hold(creditd::history::RETENTION_HOLD, feeder.next_lsn());
        self.feeder = Some(feeder);
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Records an entry the engine answered with, once durable.
    fn expect(&mut self, user: usize, lsn: u64, entry: Expected) {
        self.engine.wait_durable(lsn).unwrap();
        assert_eq!(entry.lsn, lsn);
        self.entries[user].push(entry);
    }

    fn run(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let now = self.now();
        match *op {
            Op::Credit {
                user,
                amount,
                topup,
            } => {
                let kind = if topup {
                    CreditKind::Topup
                } else {
                    CreditKind::Grant
                };
                let request = CreditRequest::new(USERS[user], amount, kind);
                let done = self.engine.credit(&self.tenant, &request, &CALLER).unwrap();
                self.balances[user] += amount;
                let entry = Expected {
                    lsn: done.lsn,
                    kind: if topup { "topup" } else { "grant" },
                    amount,
                    balance_after: Some(self.balances[user]),
                    action: None,
                    time_ms: now,
                };
                self.expect(user, done.lsn, entry);
            }
            Op::Debit { user, amount } => {
                let request = DebitRequest::new(USERS[user], Spend::Amount(amount));
                self.spend(
                    user,
                    amount,
                    None,
                    self.engine.debit(&self.tenant, &request, &CALLER),
                )?;
            }
            Op::DebitAction {
                user,
                action,
                quantity,
            } => {
                let (name, cost) = ACTIONS[action];
                let spend = Spend::Action { name, quantity };
                let request = DebitRequest::new(USERS[user], spend);
                let charged = cost * quantity as i64;
                let result = self.engine.debit(&self.tenant, &request, &CALLER);
                self.spend(user, charged, Some((name, quantity as i64)), result)?;
            }
            Op::Hold {
                user,
                amount,
                capture,
            } => self.hold(user, amount, capture)?,
            Op::Revoke {
                user,
                amount,
                allow_negative,
            } => {
                let request = RevokeRequest {
                    user: USERS[user],
                    amount,
                    currency: None,
                    reason: "chargeback",
                    allow_negative,
                };
                match self.engine.revoke(&self.tenant, &request, &CALLER) {
                    Ok(done) => {
                        prop_assert!(
                            allow_negative || amount <= self.balances[user],
                            "revoked past the balance"
                        );
                        self.balances[user] -= amount;
                        let entry = Expected {
                            lsn: done.lsn,
                            kind: if allow_negative {
                                "chargeback"
                            } else {
                                "revoke"
                            },
                            amount: -amount,
                            balance_after: Some(self.balances[user]),
                            action: None,
                            time_ms: now,
                        };
                        self.expect(user, done.lsn, entry);
                    }
                    Err(EngineError::InsufficientCredits(_)) => {
                        prop_assert!(amount > self.balances[user], "a revoke refused");
                    }
                    Err(error) => return Err(TestCaseError::fail(format!("revoke: {error}"))),
                }
            }
            Op::Buy { user, paid } => self.buy(user, paid),
            Op::Advance { minutes } => self.clock.advance_ms(minutes * 60_000),
            Op::Feed { records } => {
                let durable = self.engine.wal().durable_lsn();
                let feeder = self.feeder.as_mut().unwrap();
                feeder.step(&self.storage, durable, records).unwrap();
                self.engine
                    .retention()
                    .hold(creditd::history::RETENTION_HOLD, feeder.next_lsn());
            }
            Op::RestartHistory => {
                self.feeder = None;
                self.open_history();
            }
            Op::RestartEngine { crash } => self.restart_engine(crash),
        }
        Ok(())
    }

    /// A debit's answer against the reference: done if the balance allowed it, else 402.
    fn spend(
        &mut self,
        user: usize,
        charged: i64,
        action: Option<(&'static str, i64)>,
        result: Result<creditd::engine::Done, EngineError>,
    ) -> Result<(), TestCaseError> {
        match result {
            Ok(done) => {
                prop_assert!(charged <= self.balances[user], "debited past the balance");
                self.balances[user] -= charged;
                let entry = Expected {
                    lsn: done.lsn,
                    kind: "debit",
                    amount: -charged,
                    balance_after: Some(self.balances[user]),
                    action,
                    time_ms: self.now(),
                };
                self.expect(user, done.lsn, entry);
            }
            Err(EngineError::InsufficientCredits(_)) => {
                prop_assert!(charged > self.balances[user], "a debit refused");
            }
            Err(error) => return Err(TestCaseError::fail(format!("debit: {error}"))),
        }
        Ok(())
    }

    /// A reservation of `amount`, then its capture (of at most what is available with it) or
    /// its release.
    fn hold(
        &mut self,
        user: usize,
        amount: i64,
        capture: Option<i64>,
    ) -> Result<(), TestCaseError> {
        let request = ReserveRequest::new(USERS[user], Spend::Amount(amount));
        let held = match self.engine.reserve(&self.tenant, &request, &CALLER) {
            Ok(done) => done,
            Err(EngineError::InsufficientCredits(_)) => {
                prop_assert!(amount > self.balances[user], "a reservation refused");
                return Ok(());
            }
            Err(error) => return Err(TestCaseError::fail(format!("reserve: {error}"))),
        };
        prop_assert!(amount <= self.balances[user]);
        self.engine.wait_durable(held.lsn).unwrap();
        match capture {
            Some(charge) if charge <= self.balances[user] => {
                let request = CaptureRequest {
                    reservation_id: held.lsn,
                    amount: Some(charge),
                    description: None,
                    metadata: None,
                };
                let done = self
                    .engine
                    .capture(&self.tenant, &request, &CALLER)
                    .unwrap();
                self.balances[user] -= charge;
                let entry = Expected {
                    lsn: done.lsn,
                    kind: "capture",
                    amount: -charge,
                    balance_after: Some(self.balances[user]),
                    action: None,
                    time_ms: self.now(),
                };
                self.expect(user, done.lsn, entry);
            }
            _ => {
                let done = self
                    .engine
                    .release(&self.tenant, held.lsn, &CALLER)
                    .unwrap();
                let entry = Expected {
                    lsn: done.lsn,
                    kind: "release",
                    amount,
                    balance_after: None,
                    action: None,
                    time_ms: self.now(),
                };
                self.expect(user, done.lsn, entry);
            }
        }
        Ok(())
    }

    /// A checkout for the package, then the gateway's verdict.
    fn buy(&mut self, user: usize, paid: bool) {
        self.references += 1;
        let reference = format!("cd_model_{}", self.references);
        let request = CheckoutRequest {
            user: USERS[user],
            package: PACKAGE.0,
            reference: &reference,
            gateway: "sandbox",
            metadata: None,
        };
        let (_, lsn) = self
            .engine
            .start_checkout(&self.tenant, &request, &CALLER)
            .unwrap();
        self.engine.wait_durable(lsn).unwrap();
        let verdict = if paid {
            Verdict::Paid {
                paid_minor: PACKAGE.2,
                paid_currency: Currency::new("NGN").unwrap(),
                method: None,
            }
        } else {
            Verdict::Declined {
                decline: creditd::engine::types::Decline::Hard,
                reason: "insufficient funds",
            }
        };
        let settled = self
            .engine
            .settle_payment(&reference, "sandbox", &verdict, "model")
            .unwrap();
        match settled {
            creditd::engine::payments::Settlement::Credited { lsn, balance, .. } => {
                self.balances[user] += PACKAGE.1;
                assert_eq!(balance, self.balances[user]);
                let entry = Expected {
                    lsn,
                    kind: "topup",
                    amount: PACKAGE.1,
                    balance_after: Some(balance),
                    action: None,
                    time_ms: self.now(),
                };
                self.expect(user, lsn, entry);
                self.sales.push(Sale {
                    time_ms: self.now(),
                });
            }
            creditd::engine::payments::Settlement::Failed { lsn, .. } => {
                assert!(!paid);
                self.engine.wait_durable(lsn).unwrap();
            }
            other => panic!("settlement: {other:?}"),
        }
    }

    /// Stops the engine (cleanly, or by a power cut that keeps only what was synced) and opens
    /// it again from its storage, the history's hold in place first, as the server does.
    fn restart_engine(&mut self, crash: bool) {
        let storage = if crash {
            self.storage.crash_image(|_, _| 0)
        } else {
            self.engine.shutdown().unwrap();
            self.storage.clone()
        };
        self.feeder = None;
        let next_lsn = creditd::history::Store::open(&self.path)
            .unwrap()
            .next_lsn()
            .unwrap();
        let mut options = options();
        options
            .retention_holds
            .push((creditd::history::RETENTION_HOLD.into(), next_lsn));
        self.storage = storage;
        self.engine = Engine::open(
            options,
            Arc::new(self.storage.clone()),
            Arc::clone(&self.clock) as Arc<dyn Clock>,
        )
        .unwrap();
        self.tenant = self.engine.tenant(TENANT).unwrap();
        self.open_history();
    }

    /// Catches the history up with everything durable.
    fn catch_up(&mut self) -> Reader {
        let durable = self.engine.wal().durable_lsn();
        let feeder = self.feeder.as_mut().unwrap();
        while feeder.next_lsn() <= durable {
            feeder.step(&self.storage, durable, 1000).unwrap();
        }
        Reader::new(&self.path, Arc::new(AtomicU64::new(durable + 1)))
    }
}

/// A user's entries, every page of `limit`, newest first.
fn listed(reader: &Reader, user: &str, limit: u32) -> Vec<Expected> {
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let page = reader
            .entries(TENANT, user, &Filter::default(), before, limit)
            .unwrap();
        let Some(last) = page.last() else {
            return all;
        };
        before = Some(last.lsn);
        let full = page.len() == limit as usize;
        for entry in page {
            let action = ACTIONS
                .iter()
                .find(|(name, _)| Some(*name) == entry.action.as_deref())
                .map(|(name, _)| (*name, entry.quantity.unwrap_or(0)));
            all.push(Expected {
                lsn: entry.lsn,
                kind: match entry.kind.as_str() {
                    "grant" => "grant",
                    "topup" => "topup",
                    "debit" => "debit",
                    "capture" => "capture",
                    "release" => "release",
                    "revoke" => "revoke",
                    "chargeback" => "chargeback",
                    other => panic!("unexpected kind {other}"),
                },
                amount: entry.amount,
                balance_after: entry.balance_after,
                action,
                time_ms: entry.created_ms,
            });
        }
        if !full {
            return all;
        }
    }
}

/// The usage rows the reference computes for `window`, grouped as asked, `user` only if given.
fn expected_usage(
    harness: &Harness,
    window: Window,
    group_by: UsageGrouping,
    user: Option<usize>,
) -> BTreeMap<Key, (i64, i64, i64)> {
    let mut rows: BTreeMap<Key, (i64, i64, i64)> = BTreeMap::new();
    for (index, entries) in harness.entries.iter().enumerate() {
        if user.is_some_and(|only| only != index) {
            continue;
        }
        for entry in entries {
            if !matches!(entry.kind, "debit" | "capture") {
                continue;
            }
            let hour = entry.time_ms.div_euclid(HOUR_MS);
            if hour < window.from_hour || hour >= window.to_hour {
                continue;
            }
            let key = match group_by {
                UsageGrouping::Action => entry
                    .action
                    .map_or(Key::Unnamed, |(name, _)| Key::Name(name.into())),
                UsageGrouping::User => Key::Name(USERS[index].into()),
                UsageGrouping::Day => Key::Hour(hour - hour.rem_euclid(24)),
                UsageGrouping::Hour => Key::Hour(hour),
            };
            let row = rows.entry(key).or_default();
            row.0 += 1;
            row.1 += entry.action.map_or(0, |(_, quantity)| quantity);
            row.2 += -entry.amount;
        }
    }
    rows
}

fn check_reports(harness: &Harness, reader: &Reader) -> Result<(), TestCaseError> {
    let first = START_MS / HOUR_MS;
    let last = harness.now() / HOUR_MS + 1;
    let mut windows = vec![
        Window {
            from_hour: first,
            to_hour: last,
        },
        Window {
            from_hour: first - 24,
            to_hour: last + 48,
        },
    ];
    let middle = first + (last - first) / 2;
    windows.push(Window {
        from_hour: first,
        to_hour: middle.max(first + 1),
    });
    windows.push(Window {
        from_hour: middle,
        to_hour: last,
    });
    for window in windows {
        for group_by in [
            UsageGrouping::Action,
            UsageGrouping::User,
            UsageGrouping::Day,
            UsageGrouping::Hour,
        ] {
            let users: Vec<Option<usize>> = std::iter::once(None)
                .chain((0..USERS.len()).map(Some))
                .collect();
            for user in users {
                let query = UsageQuery {
                    tenant: TENANT,
                    currency: "credits",
                    window,
                    group_by,
                    user: user.map(|index| USERS[index]),
                };
                let got: BTreeMap<Key, (i64, i64, i64)> = reader
                    .usage(&query)
                    .unwrap()
                    .into_iter()
                    .map(|row| {
                        let totals = row.totals;
                        (row.key, (totals.count, totals.quantity, totals.credits))
                    })
                    .collect();
                let expected = expected_usage(harness, window, group_by, user);
                prop_assert_eq!(
                    got,
                    expected,
                    "usage {:?} by {:?} for {:?}",
                    window,
                    group_by,
                    user
                );
            }
        }
        for group_by in [
            RevenueGrouping::Package,
            RevenueGrouping::Currency,
            RevenueGrouping::Day,
        ] {
            let query = RevenueQuery {
                tenant: TENANT,
                window,
                group_by,
            };
            let got: BTreeMap<(Key, String), (i64, i64, i64)> = reader
                .revenue(&query)
                .unwrap()
                .into_iter()
                .map(|row| {
                    let sales = row.sales;
                    (
                        (row.key, row.currency),
                        (sales.count, sales.amount_minor, sales.credits_sold),
                    )
                })
                .collect();
            let mut expected: BTreeMap<(Key, String), (i64, i64, i64)> = BTreeMap::new();
            for sale in &harness.sales {
                let hour = sale.time_ms.div_euclid(HOUR_MS);
                if hour < window.from_hour || hour >= window.to_hour {
                    continue;
                }
                let key = match group_by {
                    RevenueGrouping::Package => Key::Name(PACKAGE.0.into()),
                    RevenueGrouping::Currency => Key::Name("NGN".into()),
                    RevenueGrouping::Day => Key::Hour(hour - hour.rem_euclid(24)),
                };
                let row = expected.entry((key, "NGN".into())).or_default();
                row.0 += 1;
                row.1 += PACKAGE.2;
                row.2 += PACKAGE.1;
            }
            prop_assert_eq!(got, expected, "revenue {:?} by {:?}", window, group_by);
        }
    }
    Ok(())
}

fn check(ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = Harness::new(dir.path());
    for op in ops {
        harness.run(op)?;
    }
    let reader = harness.catch_up();
    for (index, user) in USERS.iter().enumerate() {
        let mut expected = harness.entries[index].clone();
        expected.reverse();
        for limit in [1000, 3] {
            let got = listed(&reader, user, limit);
            prop_assert_eq!(&got, &expected, "{}'s entries, pages of {}", user, limit);
        }
    }
    check_reports(&harness, &reader)
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn the_history_lists_every_movement_and_reports_what_the_reference_computes(
        ops in proptest::collection::vec(op(), 1..120)
    ) {
        check(&ops)?;
    }
}
