//! The seed inputs committed under `fuzz/corpus/`, built from real records, snapshots and
//! operation sequences, and the reproducers of bugs the fuzzers found.

use std::path::PathBuf;
use std::sync::Arc;

use crate::codec::{self, FORMAT_VERSION};
use crate::engine::event::{Event, MethodRecord, PackageRecord, ProfileRecord};
use crate::engine::payments::{AutoTopupRequest, CheckoutRequest, MethodDetails, Verdict};
use crate::engine::types::{
    CreditKind, Currency, CurrencySpec, DebitKind, Decline, PaymentPurpose,
};
use crate::engine::{
    CaptureRequest, Context, CreditRequest, DebitRequest, Engine, EngineOptions, IdempotencyKey,
    ManualClock, PoolCreditRequest, ReserveRequest, RevokeRequest, Spend, TenantSpec,
};
use crate::engine::{PackageSpec, ProfileUpdate};
use crate::wal::batch;
use crate::wal::memory::MemStorage;
use crate::wal::record::{self};
use crate::wal::segment::{self};
use crate::wal::snapshot::{SnapshotHeader, SNAPSHOT_HEADER_BYTES};
use crate::wal::Storage;

use super::decode::{
    check_engine_loads, read_snapshot, write_snapshot, CHUNK_SEPARATOR, RECORD_LIMIT,
};
use super::ops::op;
use super::T0;

/// One generated input of a fuzz target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// For an input that reproduces a bug the fuzzers found: what it shows (it names the file).
    pub finding: Option<&'static str>,
    /// The input.
    pub bytes: Vec<u8>,
}

impl Seed {
    fn plain(bytes: Vec<u8>) -> Seed {
        Seed {
            finding: None,
            bytes,
        }
    }

    fn finding(finding: &'static str, bytes: Vec<u8>) -> Seed {
        Seed {
            finding: Some(finding),
            bytes,
        }
    }
}

/// The generated inputs committed under `fuzz/corpus/<target>/`: seeds built from real records,
/// snapshots and operation sequences, and the reproducers of bugs the fuzzers found, built with
/// the current formats so that a format change cannot turn them into inputs that test nothing.
/// `tests/fuzz_corpora.rs` runs them, and writes them when `CREDITD_WRITE_CORPUS=1`.
pub mod seeds {
    use super::Seed;

    /// Inputs of [`crate::fuzzing::record_decode`].
    pub fn record_decode() -> Vec<Seed> {
        super::seed_record_decode()
    }

    /// Inputs of [`crate::fuzzing::snapshot_decode`].
    pub fn snapshot_decode() -> Vec<Seed> {
        super::seed_snapshot_decode()
    }

    /// Inputs of [`crate::fuzzing::engine_ops`].
    pub fn engine_ops() -> Vec<Seed> {
        super::seed_engine_ops()
    }
}

fn sample_events() -> Vec<Vec<u8>> {
    use crate::engine::event::{
        ActionUse, IdempotencyTag, Meta, PaymentTerms, PoolShare, TenantSettingsRecord, WalletRef,
    };
    use crate::engine::types::ReleaseReason;
    let ngn = Currency::new("NGN").expect("currency");
    let wallet = WalletRef {
        tenant: "acme",
        user: "alice",
        currency: Currency::CREDITS,
    };
    let meta = Meta {
        time_ms: T0,
        actor: "admin-key",
        description: Some("a description"),
        reference: Some("ref-1"),
        metadata: Some("{\"k\":1}"),
        idempotency: Some(IdempotencyTag {
            key: "9b2f-1",
            fingerprint: [7; 16],
        }),
    };
    let action = Some(ActionUse {
        name: "gpt-call",
        quantity: 3,
        unit_cost: 5,
    });
    let events = [
        Event::TenantUpserted {
            tenant: "acme",
            settings: TenantSettingsRecord {
                name: Some("Acme"),
                default_currency: Currency::CREDITS,
                currencies: Vec::new(),
            },
            meta: Meta::system(T0),
        },
        Event::TenantUpserted {
            tenant: "acme",
            settings: TenantSettingsRecord {
                name: None,
                default_currency: Currency::CREDITS,
                currencies: vec![
                    CurrencySpec {
                        code: Currency::CREDITS,
                        decimals: 0,
                    },
                    CurrencySpec {
                        code: ngn,
                        decimals: 2,
                    },
                ],
            },
            meta,
        },
        Event::UserUpserted {
            tenant: "acme",
            user: "alice",
            profile: ProfileRecord {
                email: Some("a@example.com"),
                name: Some("Alice"),
                metadata: None,
            },
            default_currency: Currency::CREDITS,
            meta,
        },
        Event::OverdraftSet {
            wallet,
            limit: 100,
            meta: Meta::system(T0),
        },
        Event::Credited {
            wallet,
            kind: CreditKind::Topup,
            amount: 1_000,
            balance_after: 1_000,
            available_after: 1_000,
            meta,
        },
        Event::Debited {
            wallet,
            kind: DebitKind::Usage,
            amount: 15,
            balance_after: 985,
            available_after: 985,
            action,
            pool: None,
            meta,
        },
        Event::Debited {
            wallet,
            kind: DebitKind::Chargeback,
            amount: 1_500,
            balance_after: -515,
            available_after: -515,
            action: None,
            pool: None,
            meta,
        },
        Event::ReservationPlaced {
            wallet,
            amount: i64::MAX,
            expires_at_ms: i64::MAX,
            reserved_after: i64::MAX,
            available_after: i64::MIN,
            action: None,
            pool: None,
            meta: Meta::system(i64::MIN),
        },
        Event::ReservationCaptured {
            wallet,
            reservation_id: 4,
            held: 10,
            charged: 12,
            balance_after: 973,
            reserved_after: 0,
            available_after: 973,
            action,
            pool: None,
            meta,
        },
        Event::ReservationExtended {
            wallet,
            reservation_id: 4,
            expires_at_ms: T0 + 300_000,
            meta,
        },
        Event::ReservationReleased {
            wallet: WalletRef {
                currency: ngn,
                ..wallet
            },
            reservation_id: u64::MAX,
            amount: 1,
            reason: ReleaseReason::Expired,
            reserved_after: 0,
            available_after: 0,
            pool: None,
            meta: Meta::system(T0),
        },
        Event::ActionPut {
            tenant: "acme",
            action: "gpt-call",
            cost: 5,
            currency: ngn,
            description: Some("one call"),
            meta,
        },
        Event::ActionDeleted {
            tenant: "acme",
            action: "gpt-call",
            meta,
        },
        Event::PackagePut {
            tenant: "acme",
            package: "starter",
            terms: PackageRecord {
                name: "Starter",
                credits: 500,
                currency: Currency::CREDITS,
                price_minor: 250_000,
                price_currency: ngn,
                active: true,
                position: 2,
            },
            meta,
        },
        Event::PackageDeleted {
            tenant: "acme",
            package: "starter",
            meta,
        },
        Event::PaymentInitialized {
            wallet,
            reference: "cd_01HZX",
            terms: PaymentTerms {
                package: "starter",
                credits: 500,
                amount_minor: 250_000,
                price_currency: ngn,
            },
            gateway: "paystack",
            purpose: PaymentPurpose::Checkout,
            meta,
        },
        Event::PaymentCheckoutOpened {
            wallet,
            reference: "cd_01HZX",
            checkout_url: "https://checkout.paystack.com/0peioxfhpn",
            meta: Meta::system(T0),
        },
        Event::PaymentSucceeded {
            wallet,
            reference: "cd_01HZX",
            credits: 500,
            paid_minor: 250_000,
            paid_currency: ngn,
            balance_after: 1_473,
            available_after: 1_473,
            method: Some(MethodRecord {
                gateway: "paystack",
                token: "AUTH_72btv547",
                customer: Some("a@example.com"),
                label: Some("visa 4081"),
            }),
            meta: Meta::system(T0),
        },
        Event::PaymentFailed {
            wallet,
            reference: "at_acme_alice_CREDITS_2",
            decline: Decline::Hard,
            reason: "Expired Card",
            meta: Meta::system(T0),
        },
        Event::PaymentUnmatched {
            gateway: "stripe",
            reference: "cd_unknown",
            detail: "checkout.session.completed evt_1",
            meta: Meta::system(T0),
        },
        Event::PaymentMethodSaved {
            wallet,
            method: MethodRecord {
                gateway: "stripe",
                token: "pm_card_visa",
                customer: Some("cus_1"),
                label: None,
            },
            meta: Meta::system(T0),
        },
        Event::AutoTopupSet {
            wallet,
            threshold: 100,
            package: "starter",
            payment_method: None,
            max_per_day: 3,
            meta,
        },
        Event::AutoTopupDisabled {
            wallet,
            reason: "Expired Card",
            meta: Meta::system(T0),
        },
        Event::AutoTopupDeleted { wallet, meta },
        Event::TenantWebhookSet {
            tenant: "acme",
            url: Some("https://app.example.com/hooks"),
            secret: Some(crate::engine::event::Secret("0123456789abcdef")),
            meta,
        },
        Event::PoolPut {
            tenant: "acme",
            pool: "acme-org",
            name: Some("Acme engineering"),
            currency: Currency::CREDITS,
            meta,
        },
        Event::PoolCredited {
            tenant: "acme",
            pool: "acme-org",
            currency: Currency::CREDITS,
            kind: CreditKind::Grant,
            amount: 10_000,
            balance_after: 10_000,
            available_after: 10_000,
            meta,
        },
        Event::PoolMemberSet {
            tenant: "acme",
            user: "alice",
            pool: "acme-org",
            daily_cap: Some(500),
            meta,
        },
        Event::Debited {
            wallet,
            kind: DebitKind::Usage,
            amount: 40,
            balance_after: 0,
            available_after: 0,
            action,
            pool: Some(PoolShare {
                pool: "acme-org",
                released: 0,
                held: 0,
                charged: 25,
                balance_after: 9_975,
                reserved_after: 0,
                counted: 25,
                drawn_after: 25,
            }),
            meta,
        },
        Event::ReservationCaptured {
            wallet,
            reservation_id: 9,
            held: 30,
            charged: 12,
            balance_after: 0,
            reserved_after: 0,
            available_after: 0,
            action: None,
            pool: Some(PoolShare {
                pool: "acme-org",
                released: 30,
                held: 0,
                charged: 12,
                balance_after: 9_963,
                reserved_after: 0,
                counted: -18,
                drawn_after: 37,
            }),
            meta,
        },
        Event::PoolMemberRemoved {
            tenant: "acme",
            user: "alice",
            pool: "acme-org",
            meta,
        },
        Event::PoolPaymentInitialized {
            tenant: "acme",
            pool: "acme-org",
            currency: Currency::CREDITS,
            reference: "cd_pool01",
            terms: PaymentTerms {
                package: "starter",
                credits: 500,
                amount_minor: 250_000,
                price_currency: ngn,
            },
            gateway: "sandbox",
            meta,
        },
        Event::PoolPaymentCheckoutOpened {
            tenant: "acme",
            pool: "acme-org",
            reference: "cd_pool01",
            checkout_url: "http://localhost:8080/sandbox/checkout/cd_pool01",
            meta: Meta::system(T0),
        },
        Event::PoolPaymentSucceeded {
            tenant: "acme",
            pool: "acme-org",
            currency: Currency::CREDITS,
            reference: "cd_pool01",
            credits: 500,
            paid_minor: 250_000,
            paid_currency: ngn,
            balance_after: 10_463,
            available_after: 10_463,
            meta: Meta::system(T0),
        },
        Event::PoolPaymentFailed {
            tenant: "acme",
            pool: "acme-org",
            reference: "cd_pool02",
            decline: Decline::Mismatch,
            reason: "paid 100 NGN, the package costs 250000 NGN",
            meta: Meta::system(T0),
        },
        Event::TenantPortalOriginsSet {
            tenant: "acme",
            origins: vec!["https://app.example.com", "http://localhost:3000"],
            meta,
        },
    ];
    events
        .iter()
        .map(|event| {
            let mut payload = Vec::new();
            codec::encode_into(event, &mut payload).expect("sample events encode");
            payload
        })
        .collect()
}

fn frame(lsn: u64, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    record::encode_into(&mut bytes, lsn, payload);
    bytes
}

/// Seeds for [`record_decode`]: real event records, a run of consecutive records, a whole
/// segment, and damaged variants (truncations, bit flips, zero tails, absurd lengths).
fn seed_record_decode() -> Vec<Seed> {
    let events = sample_events();
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for (index, payload) in events.iter().enumerate() {
        seeds.push(frame(index as u64 + 1, payload));
    }
    let payloads: Vec<&[u8]> = events.iter().take(5).map(Vec::as_slice).collect();
    let mut run = batch::encode(100, &payloads[..3], 0);
    run.extend_from_slice(&batch::encode(103, &payloads[3..], 0));
    seeds.push(run.clone());
    let mut whole_segment = segment::encode_header(100, FORMAT_VERSION).to_vec();
    whole_segment.extend_from_slice(&run);
    seeds.push(whole_segment.clone());
    let sample = frame(42, &events[4]);
    for cut in [0, 1, 15, 16, 17, sample.len() / 2, sample.len() - 1] {
        seeds.push(sample[..cut].to_vec());
    }
    seeds.push(run[..run.len() - 7].to_vec());
    seeds.push(whole_segment[..whole_segment.len() - 3].to_vec());
    for bit in [0, 37, 70, 130, sample.len() * 8 - 1] {
        let mut flipped = sample.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        seeds.push(flipped);
    }
    let mut damaged_middle = run.clone();
    damaged_middle[sample.len() + 20] ^= 0x10;
    seeds.push(damaged_middle);
    let mut zero_tail = sample.clone();
    zero_tail.extend_from_slice(&[0u8; 64]);
    seeds.push(zero_tail);
    seeds.push(vec![0u8; 48]);
    for len in [u32::MAX, RECORD_LIMIT + 1, 65] {
        let mut absurd = sample.clone();
        absurd[..4].copy_from_slice(&len.to_le_bytes());
        seeds.push(absurd);
    }
    let mut out_of_sequence = batch::encode(7, &[&events[0]], 0);
    out_of_sequence.extend_from_slice(&batch::encode(9, &[&events[1]], 0));
    seeds.push(out_of_sequence);
    seeds.extend(events.iter().take(3).cloned());
    let mut seeds: Vec<Seed> = seeds.into_iter().map(Seed::plain).collect();
    // Recovery's scan adds one to the LSN of each record it reads, unchecked.
    seeds.push(Seed::finding(
        "segment-scan-lsn-overflow",
        frame(u64::MAX, b"x"),
    ));
    seeds.push(Seed::plain(frame(crate::wal::MAX_LSN + 1, b"x")));
    seeds.push(Seed::plain(batch::encode(u64::MAX, &[b"x"], 0)));
    seeds.push(Seed::plain(batch::encode(
        crate::wal::MAX_LSN + 1,
        &[b"x"],
        0,
    )));
    seeds.push(Seed::finding(
        "torn-record-with-embedded-frame-reads-as-damage",
        record_with_embedded_frame(),
    ));
    seeds
}

/// A credit whose description holds the bytes of a complete, valid record claiming a later LSN,
/// as any client may send (JSON escapes give any byte). Cut by a power cut after the embedded
/// record, the segment's tail reads as damage rather than as a torn write.
fn record_with_embedded_frame() -> Vec<u8> {
    use crate::engine::event::{Meta, WalletRef};
    let embedded = (0u32..)
        .find_map(|tweak| String::from_utf8(frame(0x41, format!("p{tweak}").as_bytes())).ok())
        .expect("some payload makes the embedded record valid UTF-8");
    let description = format!("{embedded} and some text after it");
    let event = Event::Credited {
        wallet: WalletRef {
            tenant: "acme",
            user: "mallory",
            currency: Currency::CREDITS,
        },
        kind: CreditKind::Grant,
        amount: 1,
        balance_after: 1,
        available_after: 1,
        meta: Meta {
            description: Some(&description),
            ..Meta::system(T0)
        },
    };
    let mut payload = Vec::new();
    codec::encode_into(&event, &mut payload).expect("the event encodes");
    frame(0x3c, &payload)
}

/// An empty engine on the crash-model storage.
fn open_engine() -> (MemStorage, Arc<Engine>) {
    let storage = MemStorage::new();
    let options = EngineOptions {
        data_dir: PathBuf::from("/data"),
        background: false,
        shards: 4,
        ..EngineOptions::default()
    };
    let clock = Arc::new(ManualClock::new(T0));
    let engine = Engine::open(options, Arc::new(storage.clone()), clock).expect("engine opens");
    (storage, engine)
}

/// An engine with some state of every kind on the crash-model storage.
fn busy_engine(users: usize) -> (MemStorage, Arc<Engine>) {
    let (storage, engine) = open_engine();
    let ngn = Currency::new("NGN").expect("currency");
    let admin = Context::actor("admin");
    let currencies = [
        CurrencySpec {
            code: Currency::CREDITS,
            decimals: 0,
        },
        CurrencySpec {
            code: ngn,
            decimals: 2,
        },
    ];
    let settings = TenantSpec {
        name: Some("Acme"),
        default_currency: None,
        currencies: Some(&currencies),
    };
    let (tenant, _, _) = engine
        .put_tenant("acme", &settings, &admin)
        .expect("tenant");
    engine
        .put_action(&tenant, "gpt-call", 5, None, Some("one call"), &admin)
        .expect("action");
    let terms = PackageSpec {
        name: "Starter",
        credits: 500,
        currency: Currency::CREDITS,
        price_minor: 250_000,
        price_currency: ngn,
        active: true,
        position: 1,
    };
    engine
        .put_package(&tenant, "starter", &terms, &admin)
        .expect("package");
    for index in 0..users {
        let user = format!("user-{index}");
        let user = user.as_str();
        let key = format!("credit-{index}");
        let profile = ProfileUpdate {
            email: (index % 2 == 0).then_some("someone@example.com"),
            name: None,
            metadata: None,
        };
        engine
            .upsert_user(&tenant, user, profile, &admin)
            .expect("user");
        let keyed = admin.with_key(IdempotencyKey {
            key: &key,
            fingerprint: [index as u8; 16],
        });
        engine
            .credit(
                &tenant,
                &CreditRequest::new(user, 1_000, CreditKind::Grant),
                &keyed,
            )
            .expect("credit");
        let mut foreign = CreditRequest::new(user, 50, CreditKind::Topup);
        foreign.currency = Some(ngn);
        engine.credit(&tenant, &foreign, &admin).expect("credit");
        let spend = Spend::Action {
            name: "gpt-call",
            quantity: 2,
        };
        engine
            .debit(&tenant, &DebitRequest::new(user, spend), &admin)
            .expect("debit");
        let held = engine
            .reserve(
                &tenant,
                &ReserveRequest::new(user, Spend::Amount(30)),
                &admin,
            )
            .expect("reserve");
        engine
            .reserve(
                &tenant,
                &ReserveRequest::new(user, Spend::Amount(20)),
                &admin,
            )
            .expect("reserve");
        let capture = CaptureRequest {
            reservation_id: held.lsn,
            amount: Some(25),
            description: None,
            metadata: None,
        };
        engine.capture(&tenant, &capture, &admin).expect("capture");
        engine
            .set_overdraft(&tenant, user, None, 10, &admin)
            .expect("overdraft");
        // Payments: one settled with a saved card, one pending, and a rule that uses the card.
        for (suffix, settle) in [("paid", true), ("open", false)] {
            let reference = format!("cd_{index}_{suffix}");
            let request = CheckoutRequest {
                user,
                package: "starter",
                reference: &reference,
                gateway: "sandbox",
                metadata: settle.then_some(r#"{"order":"A-1"}"#),
            };
            engine
                .start_checkout(&tenant, &request, &admin)
                .expect("checkout");
            if settle {
                let verdict = Verdict::Paid {
                    paid_minor: 250_000,
                    paid_currency: ngn,
                    method: Some(MethodDetails {
                        gateway: "sandbox",
                        token: "card_ok",
                        customer: Some("someone@example.com"),
                        label: Some("visa 4081"),
                    }),
                };
                engine
                    .settle_payment(&reference, "sandbox", &verdict, "")
                    .expect("settle");
            }
        }
        let rule = AutoTopupRequest {
            user,
            currency: None,
            threshold: 100,
            package: "starter",
            payment_method: None,
            max_per_day: 3,
        };
        engine.set_auto_topup(&tenant, &rule, &admin).expect("rule");
        // A chargeback of more than the NGN wallet holds: below its floor, marked so.
        let chargeback = RevokeRequest {
            user,
            amount: 80,
            currency: Some(ngn),
            reason: "charged back",
            allow_negative: true,
        };
        engine
            .revoke(&tenant, &chargeback, &admin)
            .expect("chargeback");
    }
    if users > 0 {
        engine
            .set_tenant_webhook(
                &tenant,
                Some("https://app.example.com/hooks"),
                Some("0123456789abcdef"),
                &admin,
            )
            .expect("webhook");
        // A credit pool its members draw on: a debit it pays part of, and a hold it keeps.
        engine
            .put_pool(&tenant, "org", Some("Acme org"), None, &admin)
            .expect("pool");
        let funds = PoolCreditRequest {
            pool: "org",
            amount: 5_000,
            kind: CreditKind::Grant,
            reason: Some("prepaid"),
            reference: None,
        };
        engine.credit_pool(&tenant, &funds, &admin).expect("fund");
        // A package bought for the pool and paid, one still open, and the tenant's own portal
        // return origins: the snapshot's pool payments and settings.
        for (reference, pay) in [("cd_pool_paid", true), ("cd_pool_open", false)] {
            let request = crate::engine::payments::PoolCheckoutRequest {
                pool: "org",
                package: "starter",
                reference,
                gateway: "sandbox",
                metadata: Some(r#"{"po":"PO-1"}"#),
            };
            engine
                .start_pool_checkout(&tenant, &request, &admin)
                .expect("pool checkout");
            if pay {
                let verdict = Verdict::Paid {
                    paid_minor: 250_000,
                    paid_currency: ngn,
                    method: None,
                };
                engine
                    .settle_payment(reference, "sandbox", &verdict, "")
                    .expect("pool payment");
            }
        }
        engine
            .set_tenant_portal_origins(&tenant, &["https://app.example.com"], &admin)
            .expect("portal origins");
        for index in 0..users {
            let user = format!("user-{index}");
            engine
                .set_pool_member(&tenant, &user, "org", Some(1_000), &admin)
                .expect("member");
            let spend = DebitRequest::new(&user, Spend::Amount(1_000));
            engine.debit(&tenant, &spend, &admin).expect("pool debit");
            let hold = ReserveRequest::new(&user, Spend::Amount(40));
            engine.reserve(&tenant, &hold, &admin).expect("pool hold");
        }
    }
    engine
        .upsert_tenant("beta", None, Some(ngn), &admin)
        .expect("tenant");
    engine.wal().flush().expect("flush");
    (storage, engine)
}

/// Seeds for [`snapshot_decode`]: real snapshot files of engines with state, damaged variants of
/// them, and their chunks joined by [`CHUNK_SEPARATOR`].
fn seed_snapshot_decode() -> Vec<Seed> {
    let mut seeds = Vec::new();
    for users in [0, 1, 3] {
        let (storage, engine) = busy_engine(users);
        let summary = engine.snapshot().expect("snapshot");
        let file = storage.read_all(&summary.path).expect("snapshot file");
        let read = read_snapshot(&file).expect("the snapshot reads back");
        check_engine_loads(&file, read.header, true);
        seeds.push(read.chunks.join(CHUNK_SEPARATOR));
        if users == 1 {
            for cut in [
                0,
                39,
                40,
                56,
                file.len() / 2,
                file.len() - 33,
                file.len() - 1,
            ] {
                seeds.push(file[..cut].to_vec());
            }
            for byte in [0, 9, 20, 44, 60, file.len() - 20, file.len() - 1] {
                let mut flipped = file.clone();
                flipped[byte] ^= 0x04;
                seeds.push(flipped);
            }
            let mut trailing = file.clone();
            trailing.extend_from_slice(b"junk");
            seeds.push(trailing);
            let mut absurd = file.clone();
            absurd[SNAPSHOT_HEADER_BYTES..SNAPSHOT_HEADER_BYTES + 4]
                .copy_from_slice(&u32::MAX.to_le_bytes());
            seeds.push(absurd);
            for chunk in &read.chunks {
                seeds.push(chunk.clone());
            }
            let mut reordered = read.chunks.clone();
            reordered.rotate_left(1);
            seeds.push(reordered.join(CHUNK_SEPARATOR));
            let mut short = read.chunks.clone();
            short.pop();
            seeds.push(short.join(CHUNK_SEPARATOR));
        }
        seeds.push(file);
    }
    let mut seeds: Vec<Seed> = seeds.into_iter().map(Seed::plain).collect();
    // An engine with no state, its snapshot rewritten to say replay starts at LSN 0.
    let (storage, engine) = open_engine();
    let summary = engine.snapshot().expect("snapshot");
    let file = storage.read_all(&summary.path).expect("snapshot file");
    let read = read_snapshot(&file).expect("the snapshot reads back");
    let header = SnapshotHeader {
        start_lsn: 0,
        created_at_ms: T0,
    };
    seeds.push(Seed::finding(
        "snapshot-start-lsn-zero",
        write_snapshot(header, &read.chunks),
    ));
    seeds
}

/// Builds [`engine_ops`] inputs: a limits profile byte, then operations.
struct Script(Vec<u8>);

impl Script {
    fn new(profile: u8) -> Script {
        Script(vec![profile])
    }

    fn op(mut self, code: u8, args: &[u8]) -> Script {
        self.0.push(code);
        self.0.extend_from_slice(args);
        self
    }

    fn wait(self, code: u8, args: &[u8]) -> Script {
        self.op(code | op::WAIT, args)
    }
}

/// Seeds for [`engine_ops`]: scenarios that reach each operation under each limits profile, and
/// some longer pseudo-random sequences.
fn seed_engine_ops() -> Vec<Seed> {
    // Argument bytes index the tables in `Input`: amount 4 is 100, 5 is 1000, 9 is i64::MAX,
    // 10 is limits.max_amount; user 0..2 are u0..u2; key byte 1 is k0 with fingerprint 0.
    let mut seeds = Vec::new();
    for profile in 0..3u8 {
        let basics = Script::new(profile)
            .wait(op::CREDIT, &[0, 0, 5, 0, 0, 2, 0, 0, 0])
            .wait(op::DEBIT, &[0, 0, 4, 0, 0, 0, 0])
            .op(op::DEBIT, &[0, 0, 5, 0, 0, 1, 0])
            .op(op::DEBIT, &[0, 1, 4, 0, 0, 0, 0])
            .op(op::CREDIT, &[0, 1, 9, 1, 2, 0, 0, 0, 0])
            .op(op::CREDIT, &[0, 1, 10, 1, 0, 0, 0, 0, 0])
            .op(op::CREDIT, &[0, 1, 10, 1, 0, 0, 0, 0, 0])
            .wait(op::REVOKE, &[0, 0, 2, 0, 0, 0])
            .op(op::REVOKE, &[0, 0, 2, 1, 0, 0]);
        seeds.push(basics.0);
        let reservations = Script::new(profile)
            .wait(op::CREDIT, &[0, 0, 5, 0, 0, 0, 0, 0, 0])
            .wait(op::RESERVE, &[0, 0, 0, 4, 0, 0, 0, 0, 0])
            .op(op::RESERVE, &[0, 0, 0, 3, 0, 1, 0, 0, 0])
            .op(op::RESERVE, &[0, 0, 0, 2, 0, 2, 0, 1, 0])
            .wait(op::CAPTURE, &[0, 0, 3, 0, 0])
            .op(op::EXTEND, &[0, 4, 3, 0])
            .op(op::RELEASE, &[0, 4, 0])
            .op(op::CAPTURE, &[0, 0, 0, 0, 0])
            .op(op::CLOCK, &[10])
            .op(op::DEBIT, &[0, 0, 4, 0, 0, 0, 0])
            .op(op::RESERVE, &[0, 0, 0, 5, 0, 0, 0, 0, 0])
            .op(op::CLOCK, &[13])
            .op(op::EXPIRE, &[0])
            .op(op::CAPTURE, &[0, 8, 0, 0, 0])
            .op(op::PURGE, &[])
            .op(op::RELEASE, &[0, 0, 0]);
        seeds.push(reservations.0);
        let keys = Script::new(profile)
            .wait(op::CREDIT, &[0, 0, 5, 0, 0, 0, 0, 0, 1])
            .op(op::CREDIT, &[0, 0, 5, 0, 0, 0, 0, 0, 1])
            .op(op::CREDIT, &[0, 0, 5, 0, 0, 0, 0, 0, 9])
            .op(op::DEBIT, &[0, 0, 4, 0, 0, 0, 3])
            .op(op::DEBIT, &[0, 0, 4, 0, 0, 0, 3])
            .op(op::DEBIT, &[0, 0, 6, 0, 0, 0, 5])
            .op(op::DEBIT, &[0, 0, 4, 0, 0, 0, 7])
            .op(op::RESTART, &[0, 0])
            .op(op::DEBIT, &[0, 0, 4, 0, 0, 0, 3])
            .op(op::CLOCK, &[13])
            .op(op::PURGE, &[])
            .op(op::RESTART, &[1, 0])
            .op(op::CREDIT, &[0, 0, 5, 0, 0, 0, 0, 0, 1]);
        seeds.push(keys.0);
        let overdraft = Script::new(profile)
            .wait(op::SET_OVERDRAFT, &[0, 0, 0, 4])
            .op(op::DEBIT, &[0, 0, 3, 0, 0, 0, 0])
            .op(op::DEBIT, &[0, 0, 4, 0, 0, 0, 0])
            .op(op::SET_OVERDRAFT, &[0, 0, 0, 0])
            .op(op::SET_OVERDRAFT, &[0, 0, 0, 7])
            .op(op::SET_OVERDRAFT, &[0, 1, 2, 10])
            .op(op::RESERVE, &[0, 1, 0, 4, 2, 0, 0, 0, 0])
            .op(op::SET_OVERDRAFT, &[0, 2, 0, 4]);
        seeds.push(overdraft.0);
        let catalogue = Script::new(profile)
            .wait(op::PUT_ACTION, &[0, 0, 2, 0, 2])
            .op(op::PUT_ACTION, &[0, 1, 10, 2, 0])
            .op(op::PUT_ACTION, &[0, 2, 2, 0, 0])
            .wait(op::CREDIT, &[0, 0, 5, 0, 0, 0, 0, 0, 0])
            .op(op::DEBIT_ACTION, &[0, 0, 0, 2, 0, 0, 0])
            .op(op::DEBIT_ACTION, &[0, 0, 0, 5, 0, 0, 0])
            .op(op::DEBIT_ACTION, &[0, 0, 1, 0, 0, 0, 0])
            .op(op::DEBIT_ACTION, &[0, 0, 0, 7, 0, 1, 0])
            .op(op::RESERVE, &[0, 0, 1, 0, 1, 0, 0, 0, 0, 0])
            .op(op::DELETE_ACTION, &[0, 0])
            .op(op::DELETE_ACTION, &[0, 0])
            .op(op::DEBIT_ACTION, &[0, 0, 0, 0, 0, 0, 0])
            .op(op::PUT_PACKAGE, &[0, 0, 0, 4, 0, 4, 1])
            .op(op::PUT_PACKAGE, &[0, 1, 1, 4, 0, 4, 1])
            .op(op::DELETE_PACKAGE, &[0, 0])
            .op(op::DELETE_PACKAGE, &[0, 0]);
        seeds.push(catalogue.0);
        let tenants = Script::new(profile)
            .wait(op::UPSERT_TENANT, &[1, 1, 2])
            .op(op::UPSERT_TENANT, &[1, 1, 0])
            .op(op::UPSERT_TENANT, &[1, 2, 1])
            .op(op::UPSERT_TENANT, &[0, 3, 0])
            .op(op::UPSERT_TENANT, &[2, 0, 0])
            .wait(op::UPSERT_USER, &[1, 0, 2, 0, 0])
            .op(op::UPSERT_USER, &[1, 0, 2, 0, 0])
            .op(op::UPSERT_USER, &[1, 0, 0, 2, 5])
            .op(op::UPSERT_USER, &[0, 3, 0, 0, 0])
            .op(op::CREDIT, &[1, 0, 4, 0, 0, 0, 0, 0, 0])
            .op(op::CREDIT, &[1, 0, 4, 0, 2, 0, 0, 0, 0])
            .op(op::DEBIT, &[1, 0, 3, 3, 0, 0, 0])
            .op(op::SNAPSHOT, &[])
            .op(op::RESTART, &[2, 0]);
        seeds.push(tenants.0);
        let crashes = Script::new(profile)
            .op(op::CREDIT, &[0, 0, 5, 0, 0, 0, 0, 0, 0])
            .op(op::CREDIT, &[0, 1, 5, 0, 0, 5, 0, 0, 0])
            .op(op::RESERVE, &[0, 0, 0, 4, 0, 0, 0, 0, 0])
            .op(op::RESTART, &[0, 128])
            .op(op::CREDIT, &[0, 0, 5, 0, 0, 5, 0, 0, 0])
            .op(op::DEBIT, &[0, 0, 3, 0, 0, 0, 0])
            .op(op::RESTART, &[0, 255])
            .op(op::CREDIT, &[0, 0, 4, 0, 0, 0, 0, 5, 0])
            .op(op::RESTART, &[4, 0])
            .op(op::CREDIT, &[0, 0, 4, 0, 0, 0, 0, 0, 0])
            .op(op::RESTART, &[8, 0])
            .op(op::SNAPSHOT, &[])
            .op(op::CREDIT, &[0, 1, 4, 0, 0, 0, 0, 0, 0])
            .op(op::RESTART, &[3, 0])
            .op(op::VERIFY, &[])
            .op(op::FLUSH, &[]);
        seeds.push(crashes.0);
        let time = Script::new(profile)
            .wait(op::CREDIT, &[0, 0, 5, 0, 0, 0, 0, 0, 0])
            .op(op::RESERVE, &[0, 0, 0, 4, 0, 6, 0, 0, 1])
            .op(op::CLOCK, &[15])
            .op(op::RESERVE, &[0, 0, 0, 4, 0, 0, 0, 0, 0])
            .op(op::EXTEND, &[0, 0, 6, 0])
            .op(op::EXPIRE, &[3])
            .op(op::PURGE, &[])
            .op(op::RESTART, &[0, 0])
            .op(op::EXPIRE, &[4]);
        seeds.push(time.0);
        // A pool g0 of 1000 credits; u0 a member capped at 100 a day, u1 uncapped: spends paid
        // by the pool, a refusal above the cap, a hold and a capture, a chargeback below the
        // floor and a spend the pool pays whole after it, a member leaving, a restart from a
        // snapshot, and the next UTC day.
        let pools = Script::new(profile)
            .wait(op::PUT_POOL, &[0, 0, 0])
            .wait(op::CREDIT_POOL, &[0, 0, 5, 0, 0, 1])
            .op(op::CREDIT_POOL, &[0, 0, 5, 0, 0, 1])
            .op(op::SET_MEMBER, &[0, 0, 0, 5])
            .op(op::SET_MEMBER, &[0, 1, 0, 0])
            .wait(op::DEBIT, &[0, 0, 4, 0, 0, 0, 0])
            .op(op::DEBIT, &[0, 0, 4, 0, 0, 0, 0])
            .op(op::RESERVE, &[0, 1, 0, 4, 0, 0, 0, 0, 0])
            .op(op::CAPTURE, &[0, 0, 3, 0, 0])
            .op(op::REVOKE, &[0, 0, 2, 0, 0, 1, 0])
            .op(op::DEBIT, &[0, 0, 1, 0, 0, 0, 0])
            .op(op::REMOVE_MEMBER, &[0, 1])
            .op(op::SNAPSHOT, &[])
            .op(op::RESTART, &[0, 0])
            .op(op::CLOCK, &[12])
            .op(op::DEBIT, &[0, 0, 4, 0, 0, 0, 0])
            .op(op::SET_MEMBER, &[0, 2, 1, 0])
            .op(op::PUT_POOL, &[0, 1, 1]);
        seeds.push(pools.0);
    }
    // Longer sequences from a fixed pseudo-random stream, mostly valid arguments.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for length in [200, 400, 800, 1200, 1600, 2400, 3200, 4000] {
        let mut bytes = Vec::with_capacity(length);
        for _ in 0..length {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.push((state >> 24) as u8 & if bytes.len() % 5 == 0 { 0xff } else { 0x07 });
        }
        seeds.push(bytes);
    }
    let mut seeds: Vec<Seed> = seeds.into_iter().map(Seed::plain).collect();
    // The widest limits the config accepts: a balance of i64::MAX with an overdraft of i64::MAX
    // can reserve i64::MAX, then 1 more: `reserved + amount` overflows.
    let overflow = Script::new(2)
        .wait(op::CREDIT, &[0, 0, 9, 0, 0, 0, 0, 0, 0])
        .wait(op::SET_OVERDRAFT, &[0, 0, 0, 9])
        .wait(op::RESERVE, &[0, 0, 0, 9, 0, 0, 0, 0, 0])
        .op(op::RESERVE, &[0, 0, 0, 0, 0, 0, 0, 0, 0]);
    seeds.push(Seed::finding("reserve-reserved-after-overflow", overflow.0));
    seeds
}
