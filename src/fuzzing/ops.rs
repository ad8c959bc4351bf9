//! The operation fuzzer, [`engine_ops`]: reads a sequence of operations from arbitrary bytes (the
//! encoding is in [`op`]), runs them on an engine over the crash-model storage with crashes, torn
//! tails and restarts among them, and checks every answer and the whole state against the reference
//! model in [`super::model`] after every step.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use crate::engine::types::{
    CreditKind, Currency, CurrencySpec, EngineError, Fingerprint, Limits, Lsn, Missing,
};
use crate::engine::{
    check_snapshot_chunks, CaptureRequest, Clock, Context, CreditRequest, DebitRequest, Done,
    Engine, EngineOptions, IdempotencyKey, ManualClock, PoolCreditRequest, ReservationState,
    ReservationView, ReserveRequest, RevokeRequest, Spend, Tenant, TenantSpec, WalletView,
};
use crate::engine::{PackageSpec, ProfileUpdate};
use crate::wal::batch;
use crate::wal::memory::MemStorage;
use crate::wal::segment::{self};
use crate::wal::{SharedStorage, Storage};

use super::decode::{check_engine_loads, le_u32, read_snapshot};
use super::model::{
    day_of, same_error, History, Key, Known, MReservation, MTenant, MWallet, Model, Overdraft,
    Profile, Stop,
};
use super::T0;

/// Operations one [`engine_ops`] run performs at most.
const MAX_OPS: usize = 200;
/// Input bytes one [`engine_ops`] run reads at most.
const MAX_OPS_INPUT_BYTES: usize = 4096;

/// Operation codes of [`engine_ops`] input: each operation is one byte (code modulo
/// [`op::COUNT`], high bit set to wait until the change is durable) followed by its arguments,
/// one byte each, read as indexes into small tables of values (modulo their length). Missing
/// bytes read as zero.
pub mod op {
    /// `tenant, name, currency, currencies` (none, or one of three lists, one of them invalid).
    pub const UPSERT_TENANT: u8 = 0;
    /// `tenant, user, email, name, metadata`.
    pub const UPSERT_USER: u8 = 1;
    /// `tenant, user, amount, kind, currency, description, reference, metadata, key`.
    pub const CREDIT: u8 = 2;
    /// `tenant, user, amount, currency, description, dry_run, key`.
    pub const DEBIT: u8 = 3;
    /// `tenant, user, action, quantity, currency, dry_run, key`.
    pub const DEBIT_ACTION: u8 = 4;
    /// `tenant, user, amount, reason, currency, allow_negative, key`.
    pub const REVOKE: u8 = 5;
    /// `tenant, user, by_action, (amount | action, quantity), currency, ttl, description, dry_run,
    /// key`.
    pub const RESERVE: u8 = 6;
    /// `tenant, reservation, amount (0 = everything held, else the amount table at byte − 1),
    /// description, key`.
    pub const CAPTURE: u8 = 7;
    /// `tenant, reservation, ttl, key`.
    pub const EXTEND: u8 = 8;
    /// `tenant, reservation, key`.
    pub const RELEASE: u8 = 9;
    /// `tenant, user, currency, limit`.
    pub const SET_OVERDRAFT: u8 = 10;
    /// `tenant, action, cost, currency, description`.
    pub const PUT_ACTION: u8 = 11;
    /// `tenant, action`.
    pub const DELETE_ACTION: u8 = 12;
    /// `tenant, package, name, credits, currency, price, active`.
    pub const PUT_PACKAGE: u8 = 13;
    /// `tenant, package`.
    pub const DELETE_PACKAGE: u8 = 14;
    /// `advance`.
    pub const CLOCK: u8 = 15;
    /// `now`.
    pub const EXPIRE: u8 = 16;
    /// No arguments: forget expired keys and closed reservations as of now.
    pub const PURGE: u8 = 17;
    /// No arguments.
    pub const SNAPSHOT: u8 = 18;
    /// `how, tear`: `how % 4` is 0 crash, 1 flush then crash, 2 crash, 3 graceful shutdown;
    /// `how / 4 % 3` keeps 0, all or half of the unsynced bytes; with none kept, `tear / 255` of
    /// what the old log wrote after the crash point is put back as a torn write.
    pub const RESTART: u8 = 19;
    /// No arguments: wait until everything is durable.
    pub const FLUSH: u8 = 20;
    /// No arguments: flush, then check the directory read-only as `creditd wal verify` does.
    pub const VERIFY: u8 = 21;
    /// `tenant, pool, currency`.
    pub const PUT_POOL: u8 = 22;
    /// `tenant, pool, amount, reason, reference, key`.
    pub const CREDIT_POOL: u8 = 23;
    /// `tenant, user, pool, cap (0 = none, else the amount table at byte − 1)`.
    pub const SET_MEMBER: u8 = 24;
    /// `tenant, user`.
    pub const REMOVE_MEMBER: u8 = 25;
    /// How many operation codes there are.
    pub const COUNT: u8 = 26;
    /// Set on an operation byte to wait until the operation's change is durable.
    pub const WAIT: u8 = 0x80;
}

const TENANT_IDS: [&str; 3] = ["t0", "t1", "bad tenant"];
const USER_IDS: [&str; 4] = ["u0", "u1", "u2", "bad/user"];
const ACTION_IDS: [&str; 3] = ["a0", "a1", "bad action"];
const PACKAGE_IDS: [&str; 3] = ["p0", "p1", "bad/package"];
const KEYS: [&str; 4] = ["k0", "k1", "k2", "bad key"];
const POOL_IDS: [&str; 3] = ["g0", "g1", "bad/pool"];
/// Clock advances in milliseconds; `i64::MAX` jumps to near the end of time.
const ADVANCES_MS: [i64; 16] = [
    0,
    1,
    999,
    1_000,
    4_999,
    5_000,
    10_001,
    30_001,
    60_000,
    300_000,
    300_001,
    3_600_001,
    86_400_000,
    86_400_001,
    7 * 86_400_000,
    i64::MAX,
];

fn long_text() -> &'static str {
    static LONG: OnceLock<String> = OnceLock::new();
    LONG.get_or_init(|| "x".repeat(16 * 1024 + 1))
}

/// The amount table: `index` modulo its length picks one.
fn amount_at(index: u8, max: i64) -> i64 {
    let amounts = [
        1,
        2,
        3,
        10,
        100,
        1_000,
        0,
        -1,
        i64::MIN,
        i64::MAX,
        max,
        max - 1,
        max.saturating_add(1),
        max / 2 + 1,
        999_999,
        7,
    ];
    amounts[index as usize % amounts.len()]
}

struct Input<'a> {
    data: &'a [u8],
    at: usize,
}

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.at >= self.data.len()
    }

    fn byte(&mut self) -> u8 {
        let byte = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        byte
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.byte() as usize % items.len()]
    }

    fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    fn amount(&mut self, max: i64) -> i64 {
        let byte = self.byte();
        amount_at(byte, max)
    }

    fn quantity(&mut self, max: u64) -> u64 {
        self.pick(&[
            1,
            2,
            3,
            10,
            0,
            max,
            max.saturating_add(1),
            u64::MAX,
            1 << 63,
        ])
    }

    fn ttl(&mut self, max: u64) -> Option<u64> {
        self.pick(&[
            None,
            Some(1),
            Some(5),
            Some(60),
            Some(300),
            Some(0),
            Some(max),
            Some(max.saturating_add(1)),
            Some(u64::MAX),
        ])
    }

    fn text(&mut self) -> Option<&'static str> {
        let long = long_text();
        self.pick(&[
            None,
            None,
            Some("note"),
            Some(&long[..9]),
            Some(&long[..1025]),
            Some(long),
        ])
    }

    fn key(&mut self) -> Option<(&'static str, Fingerprint)> {
        let byte = self.byte();
        if byte & 1 == 0 {
            return None;
        }
        let key = KEYS[(byte >> 1) as usize % KEYS.len()];
        Some((key, [(byte >> 3) & 1; 16]))
    }
}
// ---------------------------------------------------------------------------------------------
// Engine operations: the run
// ---------------------------------------------------------------------------------------------

fn expect_same<T: PartialEq + std::fmt::Debug>(
    what: &str,
    got: &Result<T, EngineError>,
    want: &Result<T, EngineError>,
) {
    let same = match (got, want) {
        (Ok(got), Ok(want)) => got == want,
        (Err(got), Err(want)) => same_error(got, want),
        _ => false,
    };
    assert!(
        same,
        "{what}: creditd answered {got:?}, the reference model expects {want:?}"
    );
}

fn spec(code: Currency, decimals: u8) -> CurrencySpec {
    CurrencySpec { code, decimals }
}

fn context(key: Key) -> Context<'static> {
    Context {
        actor: "fuzz",
        idempotency: key.map(|(key, fingerprint)| IdempotencyKey { key, fingerprint }),
    }
}

fn limits_profile(choice: u8) -> (Limits, u64) {
    match choice % 3 {
        0 => (Limits::default(), 24 * 3600),
        1 => {
            let tight = Limits {
                max_amount: 1_000,
                max_quantity: 10,
                max_reservations_per_user: 3,
                default_reservation_ttl_seconds: 5,
                max_reservation_ttl_seconds: 60,
                closed_reservation_retention_seconds: 10,
                max_text_bytes: 8,
                max_metadata_bytes: 16,
                max_metadata_depth: 2,
                low_balance: 0,
                service_key_grants_per_day: 0,
            };
            (tight, 30)
        }
        _ => {
            // The widest limits the configuration accepts.
            let wide = Limits {
                max_amount: i64::MAX,
                max_quantity: u64::MAX,
                ..Limits::default()
            };
            (wide, 24 * 3600)
        }
    }
}

struct Run {
    options: EngineOptions,
    idempotency_ttl_seconds: u64,
    clock: Arc<ManualClock>,
    storage: MemStorage,
    engine: Arc<Engine>,
    model: Model,
    history: History,
    /// Every record at or below this LSN was acknowledged as durable.
    acked: Lsn,
    currencies: [Option<Currency>; 4],
    /// What `currencies` a tenant's settings may give: none, every one, the default alone, and
    /// one without `credits` (invalid for a tenant whose default it is).
    currency_lists: [Option<Vec<CurrencySpec>>; 4],
}

/// Runs a sequence of operations, read from `data` as described in [`op`], on an engine over the
/// crash-model storage, and checks every answer and the whole state against a reference model.
/// The first byte picks the limits: the defaults, tight ones, or the widest the config allows.
pub fn engine_ops(data: &[u8]) {
    let data = &data[..data.len().min(MAX_OPS_INPUT_BYTES)];
    let mut input = Input { data, at: 0 };
    let mut run = Run::start(input.byte());
    let mut ops = 0;
    while !input.is_empty() && ops < MAX_OPS {
        run.step(&mut input);
        ops += 1;
    }
    // A last power cut: whatever was acknowledged must come back.
    run.restart(0, 0);
    if let Err(violation) = run.engine.check_invariants() {
        panic!("invariant broken at the end of the run: {violation}");
    }
}

impl Run {
    fn start(profile: u8) -> Run {
        let (limits, idempotency_ttl_seconds) = limits_profile(profile);
        let options = EngineOptions {
            data_dir: PathBuf::from("/data"),
            background: false,
            shards: 4,
            segment_bytes: 4096,
            idempotency_ttl_seconds,
            limits,
            ..EngineOptions::default()
        };
        let storage = MemStorage::new();
        let clock = Arc::new(ManualClock::new(T0));
        let engine = Engine::open(
            options.clone(),
            Arc::new(storage.clone()),
            Arc::clone(&clock) as Arc<dyn Clock>,
        )
        .expect("an empty engine opens");
        let currency = |code| Currency::new(code).expect("valid currency");
        let model = Model::new();
        let mut run = Run {
            options,
            idempotency_ttl_seconds,
            clock,
            storage,
            engine,
            history: vec![(0, model.clone())],
            model,
            acked: 0,
            currencies: [
                None,
                Some(Currency::CREDITS),
                Some(currency("NGN")),
                Some(currency("USD")),
            ],
            currency_lists: [
                None,
                Some(vec![
                    spec(Currency::CREDITS, 0),
                    spec(currency("NGN"), 2),
                    spec(currency("USD"), 2),
                ]),
                Some(vec![spec(Currency::CREDITS, 0)]),
                Some(vec![spec(currency("USD"), 2), spec(currency("NGN"), 19)]),
            ],
        };
        // `t0` has credits and NGN (USD is unknown to it); tenants the operations create have
        // what their settings say.
        let t0 = [spec(Currency::CREDITS, 0), spec(currency("NGN"), 2)];
        run.put_tenant("t0", None, None, Some(&t0), true);
        run.upsert_user("t0", "u0", (None, None, None), true);
        run.upsert_user("t0", "u1", (None, None, None), true);
        run
    }

    fn limits(&self) -> Limits {
        self.options.limits.clone()
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The tenant's engine handle, if the model says it exists (and the engine agrees).
    fn tenant(&self, id: &str) -> Option<Arc<Tenant>> {
        let handle = self.engine.tenant(id);
        assert_eq!(
            handle.is_some(),
            self.model.tenants.contains_key(id),
            "tenant {id:?} exists in one of engine and model only"
        );
        handle
    }

    /// Waits for `lsn` to be durable if asked to: from then on it is acknowledged.
    fn acknowledge(&mut self, wait: bool, lsn: Option<Lsn>) {
        if let (true, Some(lsn)) = (wait, lsn) {
            if let Err(error) = self.engine.wait_durable(lsn) {
                panic!("waiting for LSN {lsn} failed on a healthy disk: {error}");
            }
            self.acked = self.acked.max(lsn);
        }
    }

    fn reservation(&self, input: &mut Input<'_>, tenant: &str) -> Lsn {
        let byte = input.byte();
        let known: Vec<Lsn> = self.model.tenants[tenant]
            .reservations
            .keys()
            .copied()
            .collect();
        let next = self.model.next_lsn;
        if byte % 4 == 3 || known.is_empty() {
            [0, u64::MAX, next, next - 1][(byte / 4) as usize % 4]
        } else {
            known[(byte / 4) as usize % known.len()]
        }
    }

    fn step(&mut self, input: &mut Input<'_>) {
        let code = input.byte();
        let wait = code & op::WAIT != 0;
        let limits = self.limits();
        match (code & !op::WAIT) % op::COUNT {
            op::UPSERT_TENANT => {
                let id = input.pick(&TENANT_IDS);
                let name =
                    input.pick(&[None, Some("Acme"), Some("Beta"), Some(&long_text()[..1025])]);
                let currency = input.pick(&[None, Some(Currency::CREDITS), self.currencies[3]]);
                let lists = self.currency_lists.clone();
                let currencies = &lists[input.byte() as usize % lists.len()];
                self.put_tenant(id, name, currency, currencies.as_deref(), wait);
            }
            op::UPSERT_USER => {
                let tenant = input.pick(&TENANT_IDS);
                let user = input.pick(&USER_IDS);
                let profile = (input.text(), input.text(), input.text());
                if self.tenant(tenant).is_some() {
                    self.upsert_user(tenant, user, profile, wait);
                }
            }
            op::CREDIT => {
                let tenant = input.pick(&TENANT_IDS);
                let request = CreditRequest {
                    user: input.pick(&USER_IDS),
                    amount: input.amount(limits.max_amount),
                    kind: input.pick(&[
                        CreditKind::Grant,
                        CreditKind::Topup,
                        CreditKind::Refund,
                        CreditKind::Adjustment,
                    ]),
                    currency: input.pick(&self.currencies),
                    description: input.text(),
                    reference: input.text(),
                    metadata: input.text(),
                    grant_cap_per_day: None,
                };
                let key = input.key();
                let Some(handle) = self.tenant(tenant) else {
                    return;
                };
                let now = self.now();
                let got = self.engine.credit(&handle, &request, &context(key));
                let want =
                    self.model
                        .credit(&mut self.history, &limits, tenant, &request, key, now);
                self.settle("credit", wait, &got, want);
            }
            op::DEBIT | op::DEBIT_ACTION => {
                let by_action = (code & !op::WAIT) % op::COUNT == op::DEBIT_ACTION;
                let tenant = input.pick(&TENANT_IDS);
                let user = input.pick(&USER_IDS);
                let spend = if by_action {
                    Spend::Action {
                        name: input.pick(&ACTION_IDS),
                        quantity: input.quantity(limits.max_quantity),
                    }
                } else {
                    Spend::Amount(input.amount(limits.max_amount))
                };
                let currency = input.pick(&self.currencies);
                let description = if by_action { None } else { input.text() };
                let request = DebitRequest {
                    currency,
                    description,
                    dry_run: input.flag(),
                    ..DebitRequest::new(user, spend)
                };
                let key = input.key();
                let Some(handle) = self.tenant(tenant) else {
                    return;
                };
                let now = self.now();
                let got = self.engine.debit(&handle, &request, &context(key));
                let want = self
                    .model
                    .debit(&mut self.history, &limits, tenant, &request, key, now);
                self.settle("debit", wait, &got, want);
            }
            op::REVOKE => {
                let tenant = input.pick(&TENANT_IDS);
                let request = RevokeRequest {
                    user: input.pick(&USER_IDS),
                    amount: input.amount(limits.max_amount),
                    reason: input.pick(&["correction", "", "   ", &long_text()[..1025]]),
                    currency: input.pick(&self.currencies),
                    allow_negative: input.flag(),
                };
                let key = input.key();
                let Some(handle) = self.tenant(tenant) else {
                    return;
                };
                let now = self.now();
                let got = self.engine.revoke(&handle, &request, &context(key));
                let want =
                    self.model
                        .revoke(&mut self.history, &limits, tenant, &request, key, now);
                self.settle("revoke", wait, &got, want);
            }
            op::RESERVE => {
                let tenant = input.pick(&TENANT_IDS);
                let user = input.pick(&USER_IDS);
                let spend = if input.flag() {
                    Spend::Action {
                        name: input.pick(&ACTION_IDS),
                        quantity: input.quantity(limits.max_quantity),
                    }
                } else {
                    Spend::Amount(input.amount(limits.max_amount))
                };
                let request = ReserveRequest {
                    currency: input.pick(&self.currencies),
                    ttl_seconds: input.ttl(limits.max_reservation_ttl_seconds),
                    description: input.text(),
                    dry_run: input.flag(),
                    ..ReserveRequest::new(user, spend)
                };
                let key = input.key();
                let Some(handle) = self.tenant(tenant) else {
                    return;
                };
                let now = self.now();
                let got = self.engine.reserve(&handle, &request, &context(key));
                let want =
                    self.model
                        .reserve(&mut self.history, &limits, tenant, &request, key, now);
                self.settle("reserve", wait, &got, want);
            }
            op::CAPTURE => {
                let tenant = input.pick(&TENANT_IDS);
                if self.tenant(tenant).is_none() {
                    return;
                }
                let reservation_id = self.reservation(input, tenant);
                let byte = input.byte();
                let amount = (byte != 0).then(|| amount_at(byte - 1, limits.max_amount));
                let request = CaptureRequest {
                    reservation_id,
                    amount,
                    description: input.text(),
                    metadata: None,
                };
                let key = input.key();
                let handle = self.tenant(tenant).expect("tenant");
                let now = self.now();
                let got = self.engine.capture(&handle, &request, &context(key));
                let want =
                    self.model
                        .capture(&mut self.history, &limits, tenant, &request, key, now);
                self.settle_reservation("capture", wait, tenant, reservation_id, &got, want);
            }
            op::EXTEND => {
                let tenant = input.pick(&TENANT_IDS);
                if self.tenant(tenant).is_none() {
                    return;
                }
                let id = self.reservation(input, tenant);
                let ttl = input.ttl(limits.max_reservation_ttl_seconds).unwrap_or(0);
                let key = input.key();
                let handle = self.tenant(tenant).expect("tenant");
                let now = self.now();
                let got = self.engine.extend(&handle, id, ttl, &context(key));
                let want =
                    self.model
                        .extend(&mut self.history, &limits, tenant, (id, ttl), key, now);
                self.settle_reservation("extend", wait, tenant, id, &got, want);
            }
            op::RELEASE => {
                let tenant = input.pick(&TENANT_IDS);
                if self.tenant(tenant).is_none() {
                    return;
                }
                let id = self.reservation(input, tenant);
                let key = input.key();
                let handle = self.tenant(tenant).expect("tenant");
                let now = self.now();
                let got = self.engine.release(&handle, id, &context(key));
                let want = self.model.release(&mut self.history, tenant, id, key, now);
                self.settle_reservation("release", wait, tenant, id, &got, want);
            }
            op::SET_OVERDRAFT => {
                let tenant = input.pick(&TENANT_IDS);
                let user = input.pick(&USER_IDS);
                let currency = input.pick(&self.currencies);
                let limit = input.amount(limits.max_amount);
                let Some(handle) = self.tenant(tenant) else {
                    return;
                };
                let now = self.now();
                let got = self
                    .engine
                    .set_overdraft(&handle, user, currency, limit, &context(None));
                let change = Overdraft {
                    user,
                    currency,
                    limit,
                    release_expired: true,
                };
                let want =
                    self.model
                        .set_overdraft(&mut self.history, &limits, tenant, change, now);
                expect_same("set_overdraft", &got, &want);
                self.acknowledge(wait, got.ok());
            }
            op::PUT_ACTION => {
                let tenant = input.pick(&TENANT_IDS);
                let name = input.pick(&ACTION_IDS);
                let cost = input.amount(limits.max_amount);
                let currency = input.pick(&self.currencies);
                let description = input.text();
                let Some(handle) = self.tenant(tenant) else {
                    return;
                };
                let got = self.engine.put_action(
                    &handle,
                    name,
                    cost,
                    currency,
                    description,
                    &context(None),
                );
                let terms = (cost, currency, description);
                let want = self
                    .model
                    .put_action(&mut self.history, &limits, tenant, name, terms);
                expect_same("put_action", &got, &want);
                self.acknowledge(wait, got.ok());
            }
            op::DELETE_ACTION => {
                let tenant = input.pick(&TENANT_IDS);
                let name = input.pick(&ACTION_IDS);
                let Some(handle) = self.tenant(tenant) else {
                    return;
                };
                let got = self.engine.delete_action(&handle, name, &context(None));
                let want = self.model.delete_action(&mut self.history, tenant, name);
                expect_same("delete_action", &got, &want);
                self.acknowledge(wait, got.ok());
            }
            op::PUT_PACKAGE => {
                let tenant = input.pick(&TENANT_IDS);
                let package = input.pick(&PACKAGE_IDS);
                let terms = PackageSpec {
                    name: input.pick(&["Starter", "", " ", &long_text()[..1025]]),
                    credits: input.amount(limits.max_amount),
                    currency: self.currencies[input.byte() as usize % 3 + 1].expect("currency"),
                    price_minor: input.amount(limits.max_amount),
                    price_currency: self.currencies[2].expect("currency"),
                    active: input.flag(),
                    position: 0,
                };
                let Some(handle) = self.tenant(tenant) else {
                    return;
                };
                let got = self
                    .engine
                    .put_package(&handle, package, &terms, &context(None));
                let want =
                    self.model
                        .put_package(&mut self.history, &limits, tenant, package, &terms);
                expect_same("put_package", &got, &want);
                self.acknowledge(wait, got.ok());
            }
            op::DELETE_PACKAGE => {
                let tenant = input.pick(&TENANT_IDS);
                let package = input.pick(&PACKAGE_IDS);
                let Some(handle) = self.tenant(tenant) else {
                    return;
                };
                let got = self.engine.delete_package(&handle, package, &context(None));
                let want = self
                    .model
                    .delete_package(&mut self.history, tenant, package);
                expect_same("delete_package", &got, &want);
                self.acknowledge(wait, got.ok());
            }
            op::CLOCK => {
                let now = self.now();
                match input.pick(&ADVANCES_MS) {
                    i64::MAX => self.clock.set_ms(now.max(i64::MAX - 10_000)),
                    advance => self.clock.set_ms(now.saturating_add(advance)),
                }
            }
            op::EXPIRE => {
                let now = self.now();
                let at = input.pick(&[
                    now,
                    now.saturating_add(5_000),
                    now.saturating_add(300_000),
                    i64::MAX,
                    i64::MIN,
                ]);
                self.expire(at);
            }
            op::PURGE => {
                let now = self.now();
                let (keys, reservations) = self.engine.purge_expired(now);
                let (want_keys, at_least, at_most) =
                    self.model.purge(self.idempotency_ttl_seconds, &limits, now);
                assert_eq!(
                    keys, want_keys,
                    "purge_expired forgot another number of keys"
                );
                assert!(
                    (at_least..=at_most).contains(&reservations),
                    "purge_expired forgot {reservations} reservations, expected {at_least}..={at_most}"
                );
            }
            op::SNAPSHOT => self.snapshot(),
            op::RESTART => {
                let how = input.byte();
                let tear = input.byte();
                self.restart(how, tear);
            }
            op::FLUSH => self.flush(),
            op::VERIFY => {
                self.flush();
                let storage: SharedStorage = Arc::new(self.storage.clone());
                let report =
                    Engine::verify(&self.options, storage, self.now()).unwrap_or_else(|error| {
                        panic!("verify fails on a live, flushed directory: {error}")
                    });
                assert_eq!(
                    report.next_lsn, self.model.next_lsn,
                    "verify sees another log end"
                );
                assert!(
                    report.torn_tail.is_none(),
                    "verify sees a torn tail after a flush"
                );
            }
            op::PUT_POOL => {
                let tenant = input.pick(&TENANT_IDS);
                let pool = input.pick(&POOL_IDS);
                let currency = input.pick(&self.currencies);
                let Some(handle) = self.tenant(tenant) else {
                    return;
                };
                let got = self
                    .engine
                    .put_pool(&handle, pool, None, currency, &context(None));
                let want =
                    self.model
                        .put_pool(&mut self.history, &limits, tenant, pool, (None, currency));
                expect_same("put_pool", &got, &want);
                self.acknowledge(wait, got.ok().map(|(_, lsn)| lsn));
            }
            op::CREDIT_POOL => {
                let tenant = input.pick(&TENANT_IDS);
                let request = PoolCreditRequest {
                    pool: input.pick(&POOL_IDS),
                    amount: input.amount(limits.max_amount),
                    kind: CreditKind::Grant,
                    reason: input.text(),
                    reference: input.text(),
                };
                let key = input.key();
                let Some(handle) = self.tenant(tenant) else {
                    return;
                };
                let now = self.now();
                let got = self.engine.credit_pool(&handle, &request, &context(key));
                let want =
                    self.model
                        .credit_pool(&mut self.history, &limits, tenant, &request, key, now);
                self.settle("credit_pool", wait, &got, want);
            }
            op::SET_MEMBER => {
                let tenant = input.pick(&TENANT_IDS);
                let user = input.pick(&USER_IDS);
                let pool = input.pick(&POOL_IDS);
                let byte = input.byte();
                let cap = (byte != 0).then(|| amount_at(byte - 1, limits.max_amount));
                let Some(handle) = self.tenant(tenant) else {
                    return;
                };
                let now = self.now();
                let got = self
                    .engine
                    .set_pool_member(&handle, user, pool, cap, &context(None));
                let want = self.model.set_pool_member(
                    &mut self.history,
                    &limits,
                    tenant,
                    (user, pool, cap),
                    now,
                );
                expect_same("set_pool_member", &got, &want);
                self.acknowledge(wait, got.ok());
            }
            op::REMOVE_MEMBER => {
                let tenant = input.pick(&TENANT_IDS);
                let user = input.pick(&USER_IDS);
                let Some(handle) = self.tenant(tenant) else {
                    return;
                };
                let now = self.now();
                let got = self
                    .engine
                    .remove_pool_member(&handle, user, &context(None));
                let want = self
                    .model
                    .remove_pool_member(&mut self.history, tenant, user, now);
                expect_same("remove_pool_member", &got, &want);
                self.acknowledge(wait, got.ok());
            }
            _ => unreachable!("operation codes are taken modulo op::COUNT"),
        }
        self.compare();
    }

    fn settle(
        &mut self,
        what: &str,
        wait: bool,
        got: &Result<Done, EngineError>,
        want: Result<Done, Stop>,
    ) {
        let want = match want {
            Ok(done) | Err(Stop::Replay(done)) => Ok(done),
            Err(Stop::Refused(error)) => Err(error),
            Err(Stop::ClosedOrGone(_)) => {
                unreachable!("only reservation operations meet closed reservations")
            }
        };
        expect_same(what, got, &want);
        self.acknowledge(wait, got.as_ref().ok().map(|done| done.lsn));
    }

    /// Like [`Run::settle`], for operations on a reservation that may be past its retention.
    fn settle_reservation(
        &mut self,
        what: &str,
        wait: bool,
        tenant: &str,
        id: Lsn,
        got: &Result<Done, EngineError>,
        want: Result<Done, Stop>,
    ) {
        if let Err(Stop::ClosedOrGone(how)) = want {
            let known = match got {
                Err(EngineError::ReservationClosed(closed)) if *closed == how => Known::Present,
                Err(EngineError::NotFound(Missing::Reservation)) => Known::Purged,
                other => panic!(
                    "{what} on reservation {id} closed as {how:?}: creditd answered {other:?}"
                ),
            };
            self.settle_known(tenant, id, known);
            return;
        }
        self.settle(what, wait, got, want);
    }

    fn settle_known(&mut self, tenant: &str, id: Lsn, seen: Known) {
        if let Some(MReservation::Closed { known, .. }) =
            self.model.tenant_mut(tenant).reservations.get_mut(&id)
        {
            *known = seen;
        }
    }

    fn put_tenant(
        &mut self,
        id: &'static str,
        name: Option<&'static str>,
        currency: Option<Currency>,
        currencies: Option<&[CurrencySpec]>,
        wait: bool,
    ) {
        let limits = self.limits();
        let spec = TenantSpec {
            name,
            default_currency: currency,
            currencies,
        };
        let got = self
            .engine
            .put_tenant(id, &spec, &context(None))
            .map(|(_, created, lsn)| (created, lsn));
        let want =
            self.model
                .put_tenant(&mut self.history, &limits, id, (name, currency), currencies);
        expect_same("put_tenant", &got, &want);
        self.acknowledge(wait, got.ok().map(|(_, lsn)| lsn));
    }

    fn upsert_user(
        &mut self,
        tenant: &'static str,
        user: &'static str,
        profile: Profile,
        wait: bool,
    ) {
        let limits = self.limits();
        let handle = self.tenant(tenant).expect("tenant");
        let record = ProfileUpdate {
            email: profile.0,
            name: profile.1,
            metadata: profile.2,
        };
        let got = self
            .engine
            .upsert_user(&handle, user, record, &context(None));
        let want = self
            .model
            .upsert_user(&mut self.history, &limits, tenant, user, profile);
        expect_same("upsert_user", &got, &want);
        self.acknowledge(wait, got.ok().map(|(_, lsn)| lsn));
    }

    /// `Engine::expire_reservations`. It visits users in hash order, each user's due reservations
    /// one after the other; the users' last LSNs afterwards give that order to the model.
    fn expire(&mut self, at: i64) {
        let got = self.engine.expire_reservations(at);
        let mut expired = 0;
        let tenants: Vec<&'static str> = self.model.tenants.keys().copied().collect();
        for tenant in tenants {
            let handle = self.tenant(tenant).expect("tenant");
            let mut due: Vec<(Lsn, &'static str)> = self.model.tenants[tenant]
                .users
                .iter()
                .filter(|(_, user)| user.open_reservations.iter().any(|h| h.expires_at_ms <= at))
                .map(|(id, _)| {
                    let view = handle.user(id).unwrap_or_else(|e| panic!("user {id}: {e}"));
                    (view.last_lsn, *id)
                })
                .collect();
            due.sort_unstable();
            for (_, user) in due {
                expired += self.model.expire_due(&mut self.history, tenant, user, at);
            }
        }
        expect_same("expire_reservations", &got, &Ok(expired));
    }

    fn flush(&mut self) {
        if let Err(error) = self.engine.wal().flush() {
            panic!("flush failed on a healthy disk: {error}");
        }
        self.acked = self.model.next_lsn - 1;
    }

    fn snapshot(&mut self) {
        let summary = self
            .engine
            .snapshot()
            .unwrap_or_else(|error| panic!("snapshot failed on a healthy disk: {error}"));
        assert_eq!(
            summary.start_lsn, self.model.next_lsn,
            "a quiet snapshot starts elsewhere"
        );
        let bytes = self
            .storage
            .read_all(&summary.path)
            .expect("the snapshot file exists");
        let read = read_snapshot(&bytes).expect("the engine's snapshot reads back");
        if let Err(error) = check_snapshot_chunks(&read.chunks) {
            panic!("the engine's own snapshot fails check_chunks: {error}");
        }
        assert_eq!(read.header.start_lsn, summary.start_lsn);
        check_engine_loads(&bytes, read.header, true);
    }

    /// A crash (or a graceful shutdown) and a restart; see [`op::RESTART`].
    fn restart(&mut self, how: u8, tear: u8) {
        let keep = (how / 4) % 3;
        match how % 4 {
            1 => self.flush(),
            3 => {
                let summary = self
                    .engine
                    .shutdown()
                    .unwrap_or_else(|error| panic!("shutdown failed on a healthy disk: {error}"));
                assert!(summary.is_some(), "a graceful shutdown took no snapshot");
                self.acked = self.model.next_lsn - 1;
            }
            _ => {}
        }
        self.acked = self.acked.max(self.engine.wal().durable_lsn());
        let image = self.storage.crash_image(|_, unsynced| match keep {
            0 => 0,
            1 => unsynced,
            _ => unsynced / 2,
        });
        // Let the old log finish writing: what it wrote after the crash point is a torn write.
        let _ = self.engine.wal().close();
        let torn = (keep == 0).then(|| self.tear(&image, tear));
        let now = self.now();
        let files_before = files(&image);
        let verified = Engine::verify(&self.options, Arc::new(image.clone()), now);
        assert!(
            files(&image) == files_before,
            "verify changed the data directory"
        );
        let engine = Engine::open(
            self.options.clone(),
            Arc::new(image.clone()),
            Arc::clone(&self.clock) as Arc<dyn Clock>,
        )
        .unwrap_or_else(|error| panic!("creditd cannot recover after a crash: {error}"));
        let report = engine.recovery_report().clone();
        match verified {
            Ok(verified) => assert_eq!(
                verified.next_lsn, report.next_lsn,
                "verify and open disagree"
            ),
            Err(error) => panic!("verify refuses a directory that opens: {error}"),
        }
        if let Some(partial) = torn {
            let discarded = report.torn_tail.as_ref().map(|torn| torn.discarded_bytes);
            assert_eq!(
                discarded,
                (partial > 0).then_some(partial),
                "the torn tail was not cut as written"
            );
        }
        let recovered = engine.wal().next_lsn() - 1;
        assert!(
            recovered >= self.acked,
            "acknowledged records were lost: durable through LSN {}, recovered through {recovered}",
            self.acked
        );
        assert!(
            recovered < self.model.next_lsn,
            "recovery found records never written"
        );
        let index = self
            .history
            .iter()
            .rposition(|(lsn, _)| *lsn == recovered)
            .expect("the history holds every LSN since the last restart");
        self.history.truncate(index + 1);
        self.model = self.history[index].1.clone();
        self.model
            .after_restart(self.idempotency_ttl_seconds, &self.options.limits, now);
        self.storage = image;
        self.engine = engine;
        self.acked = recovered;
        if let Err(violation) = self.engine.check_invariants() {
            panic!("invariant broken after recovery: {violation}");
        }
        self.compare();
        self.compare_keys();
    }

    /// Puts back `tear / 255` of what the old log wrote to its last segment after the crash point,
    /// as a write torn by the power cut; returns the bytes of the last, incomplete batch in it.
    fn tear(&self, image: &MemStorage, tear: u8) -> u64 {
        let wal_dir = self.options.wal_dir();
        let names = image.list(&wal_dir).expect("the log directory survives");
        let Some(last) = segment::from_listing(&wal_dir, &names).pop() else {
            return 0;
        };
        let durable = image.read_all(&last.path).expect("listed segment");
        let Ok(written) = self.storage.read_all(&last.path) else {
            return 0;
        };
        // What the old log wrote after the crash point: from the first byte that differs to the
        // last. The log writes past its synced bytes only, into zeroed space or past the end.
        let differs = |at: &usize| durable.get(*at) != written.get(*at);
        let span = durable.len().max(written.len());
        let Some(start) = (0..span).find(differs) else {
            return 0;
        };
        let end = (0..span).rfind(differs).map_or(start, |last| last + 1);
        assert!(
            durable[start.min(durable.len())..].iter().all(|&b| b == 0),
            "the log changed bytes it had synced"
        );
        let after = &written[start..end.min(written.len())];
        let mut keep = after.len() * tear as usize / 255;
        // A tear inside bytes the file already held (zeroed space) falls on a sector boundary.
        if start + keep < durable.len() {
            keep = ((start + keep) - (start + keep) % batch::SECTOR_BYTES).saturating_sub(start);
        }
        let torn = &after[..keep];
        if torn.is_empty() {
            return 0;
        }
        image
            .corrupt(&last.path, start, torn)
            .expect("memory storage");
        let mut at = 0;
        while at + batch::BATCH_HEADER_BYTES <= torn.len() {
            let body_len = le_u32(&torn[at + 4..]) as usize;
            let end = at + batch::BATCH_HEADER_BYTES + body_len + batch::BATCH_TRAILER_BYTES;
            if end > torn.len() {
                break;
            }
            at = end;
        }
        // Recovery counts an unfinished batch up to its last non-zero byte: what follows it may
        // be zeroed space.
        torn[at..]
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |last| last as u64 + 1)
    }

    /// Compares the whole engine state with the model.
    /// Every pool and every membership of a tenant, as the engine shows them and as the model
    /// holds them.
    fn compare_pools(&self, handle: &Tenant, model: &MTenant) {
        let id = handle.id();
        let now = self.now();
        let day = day_of(now);
        for pool in &POOL_IDS {
            let found = self
                .engine
                .pool(handle, pool)
                .map(|p| (p.currency, p.balance, p.reserved, p.members, p.drawn_today));
            let expected = model
                .pools
                .get(pool)
                .map(|p| {
                    let drawn = p.members.values().map(|m| m.drawn_on(day)).sum::<i64>();
                    (p.currency, p.balance, p.reserved, p.members.len(), drawn)
                })
                .ok_or(EngineError::NotFound(Missing::Pool));
            assert_eq!(found, expected, "tenant {id}, pool {pool}");
        }
        for (user, account) in &model.users {
            let found = self
                .engine
                .membership(handle, user)
                .map(|m| m.map(|m| (m.pool_id, m.daily_cap, m.drawn_today, m.available_to_user)));
            let expected = Ok(account.pool.map(|pool| {
                let allowance = self.model.allowance(id, user, pool, now, true);
                let cap = model.pools[pool].members[user].daily_cap;
                (pool.to_owned(), cap, allowance.drawn, allowance.available)
            }));
            assert_eq!(found, expected, "tenant {id}, user {user}: membership");
        }
    }

    fn compare(&mut self) {
        assert_eq!(
            self.engine.wal().next_lsn(),
            self.model.next_lsn,
            "creditd wrote another number of records than the model"
        );
        let ids: Vec<String> = self
            .engine
            .tenants()
            .iter()
            .map(|t| t.id().to_owned())
            .collect();
        let expected: Vec<&str> = self.model.tenants.keys().copied().collect();
        assert_eq!(ids, expected, "tenants differ");
        let mut keys = 0;
        let mut seen = Vec::new();
        for (id, model) in &self.model.tenants {
            let handle = self.engine.tenant(id).expect("tenant");
            compare_tenant(&handle, model);
            self.compare_pools(&handle, model);
            keys += model.keys.len() as u64;
            for (reservation, entry) in &model.reservations {
                if let MReservation::Closed {
                    user,
                    how,
                    known,
                    currency,
                    amount,
                    ..
                } = *entry
                {
                    let closed = ReservationView {
                        reservation_id: *reservation,
                        user_id: user.to_owned(),
                        currency: Some(currency),
                        amount: Some(amount),
                        state: ReservationState::Closed(how),
                    };
                    let got = handle.reservation(*reservation);
                    let now_known = match (&got, known) {
                        (Ok(view), Known::Present | Known::Maybe) if *view == closed => Known::Present,
                        (Err(EngineError::NotFound(Missing::Reservation)), Known::Purged | Known::Maybe) => Known::Purged,
                        _ => panic!("reservation {reservation} should be {known:?} {closed:?}, creditd has {got:?}"),
                    };
                    seen.push((*id, *reservation, now_known));
                }
            }
        }
        for (tenant, reservation, known) in seen {
            self.settle_known(tenant, reservation, known);
        }
        assert_eq!(
            self.engine.idempotency_entries(),
            keys,
            "idempotency key count differs"
        );
    }

    /// Compares the stored idempotency answers with the model, through the state image.
    fn compare_keys(&self) {
        let got: Vec<String> = self
            .engine
            .state_image()
            .lines
            .into_iter()
            .filter(|line| line.starts_with("key "))
            .collect();
        let expected = self.model.key_lines();
        assert_eq!(got, expected, "stored idempotency answers differ");
    }
}

fn files(storage: &MemStorage) -> Vec<(PathBuf, Vec<u8>)> {
    storage
        .paths()
        .into_iter()
        .map(|path| {
            let bytes = storage.read_all(&path).unwrap_or_default();
            (path, bytes)
        })
        .collect()
}

fn compare_tenant(handle: &Tenant, model: &MTenant) {
    let view = handle.view();
    let id = &view.tenant_id;
    assert_eq!(view.name.as_deref(), model.name, "tenant {id}: name");
    assert_eq!(
        view.default_currency, model.default_currency,
        "tenant {id}: currency"
    );
    assert_eq!(view.users, model.users.len(), "tenant {id}: user count");
    assert_eq!(
        (view.currencies_defined, &view.currencies),
        (
            !model.currencies.is_empty(),
            &if model.currencies.is_empty() {
                vec![CurrencySpec {
                    code: model.default_currency,
                    decimals: 0,
                }]
            } else {
                model.currencies.clone()
            }
        ),
        "tenant {id}: currencies"
    );
    let actions: Vec<(String, i64, Currency, Option<String>)> = handle
        .actions()
        .into_iter()
        .map(|a| (a.action, a.cost, a.currency, a.description))
        .collect();
    let expected: Vec<(String, i64, Currency, Option<String>)> = model
        .actions
        .iter()
        .map(|(name, a)| {
            (
                name.to_string(),
                a.cost,
                a.currency,
                a.description.map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(actions, expected, "tenant {id}: actions");
    let packages: Vec<String> = handle
        .packages()
        .into_iter()
        .map(|p| p.package_id)
        .collect();
    let expected: Vec<String> = model.packages.iter().map(|p| p.to_string()).collect();
    assert_eq!(packages, expected, "tenant {id}: packages");
    for (user, account) in &model.users {
        let got = handle
            .user(user)
            .unwrap_or_else(|error| panic!("tenant {id}, user {user}: {error}"));
        let wallets: Vec<WalletView> = account.wallets.iter().map(MWallet::view).collect();
        assert_eq!(got.wallets, wallets, "tenant {id}, user {user}: wallets");
        assert_eq!(
            got.reservations_open,
            account.open_reservations.len(),
            "tenant {id}, user {user}: open reservations"
        );
        assert_eq!(
            got.last_lsn, account.last_lsn,
            "tenant {id}, user {user}: last LSN"
        );
        let profile = (
            got.email.as_deref(),
            got.name.as_deref(),
            got.metadata.as_deref(),
        );
        assert_eq!(
            profile, account.profile,
            "tenant {id}, user {user}: profile"
        );
        for reservation in &account.open_reservations {
            let expected = ReservationView {
                reservation_id: reservation.id,
                user_id: user.to_string(),
                currency: Some(reservation.currency),
                amount: Some(reservation.amount),
                state: ReservationState::Open {
                    expires_at_ms: reservation.expires_at_ms,
                },
            };
            assert_eq!(
                handle.reservation(reservation.id),
                Ok(expected),
                "tenant {id}: reservation {}",
                reservation.id
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
