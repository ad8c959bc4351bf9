//! Events to tenants' applications: `wallet.low_balance`, `wallet.depleted`, `topup.succeeded`,
//! `topup.failed`, `autotopup.disabled`. Each is sent once the record it follows from is durable,
//! as a JSON POST to the tenant's endpoint, signed like Stripe's webhooks:
//! `Creditd-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body" under the tenant's secret>`.
//! Failures are retried with doubling delays; the queue is bounded and a full queue drops events
//! (counted) rather than slowing a debit. Delivery is at least once while the process runs; events
//! queued when it stops are not kept.
//!
//! One tenant's dead endpoint cannot hold up the others: a delivery holds a sending slot only while
//! its request is out (not while it waits to retry), a tenant has at most
//! [`SENDS_PER_TENANT`] of the [`CONCURRENT_SENDS`] slots and [`PENDING_PER_TENANT`] deliveries
//! pending, and its events beyond that are dropped (counted) instead of queueing behind it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::signature::sign_timestamped;
use super::Payments;
use crate::engine::event::PaymentPurpose;
use crate::engine::payments::{TenantEvent, TenantEventKind};
use crate::time::format_rfc3339_ms;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "Creditd-Signature";
/// Requests to tenants' endpoints out at once.
pub const CONCURRENT_SENDS: usize = 32;
/// Of which one tenant may hold.
pub const SENDS_PER_TENANT: usize = 8;
/// Deliveries pending at once (sending or waiting to retry), all tenants together.
const PENDING: usize = 1024;
/// Of which one tenant may have.
pub const PENDING_PER_TENANT: usize = 128;

/// Delivery slots: shared, and per tenant.
struct Lanes {
    pending: Arc<Semaphore>,
    sends: Semaphore,
    tenants: DashMap<String, Arc<TenantLane>>,
}

struct TenantLane {
    sends: Semaphore,
    pending: AtomicUsize,
}

impl Lanes {
    fn tenant(&self, tenant: &str) -> Arc<TenantLane> {
        if let Some(lane) = self.tenants.get(tenant) {
            return Arc::clone(&lane);
        }
        let lane = self.tenants.entry(tenant.to_owned()).or_insert_with(|| {
            Arc::new(TenantLane {
                sends: Semaphore::new(SENDS_PER_TENANT),
                pending: AtomicUsize::new(0),
            })
        });
        Arc::clone(&lane)
    }
}

/// The JSON body of an event.
pub fn body(event: &TenantEvent) -> Value {
    let purpose = |purpose: PaymentPurpose| match purpose {
        PaymentPurpose::Checkout => "checkout",
        PaymentPurpose::AutoTopup => "auto_topup",
    };
    let mut data = json!({ "user_id": event.user, "currency": event.currency.as_str() });
    let extra = match &event.kind {
        TenantEventKind::LowBalance {
            available,
            threshold,
        } => json!({ "available": available, "threshold": threshold }),
        TenantEventKind::Depleted { available } => json!({ "available": available }),
        TenantEventKind::TopupSucceeded {
            reference,
            purpose: p,
            credits,
            balance,
        } => {
            json!({ "reference": reference, "purpose": purpose(*p), "credits": credits, "balance": balance })
        }
        TenantEventKind::TopupFailed {
            reference,
            purpose: p,
            decline,
        } => {
            json!({ "reference": reference, "purpose": purpose(*p), "reason": decline.as_str() })
        }
        TenantEventKind::AutoTopupDisabled { reason } => json!({ "reason": reason }),
    };
    if let (Some(data), Value::Object(extra)) = (data.as_object_mut(), extra) {
        data.extend(extra);
    }
    json!({
        "id": format!("evt_{}_{}", event.lsn, event.kind.name().replace('.', "_")),
        "type": event.kind.name(),
        "created_at": format_rfc3339_ms(event.time_ms),
        "tenant_id": event.tenant,
        "data": data,
    })
}

/// Runs delivery on the current runtime.
pub fn spawn(payments: Arc<Payments>, events: crossbeam_channel::Receiver<TenantEvent>) {
    let runtime = tokio::runtime::Handle::current();
    let lanes = Arc::new(Lanes {
        pending: Arc::new(Semaphore::new(PENDING)),
        sends: Semaphore::new(CONCURRENT_SENDS),
        tenants: DashMap::new(),
    });
    let spawned = std::thread::Builder::new()
        .name("creditd-events".into())
        .spawn(move || {
            for event in events.iter() {
                let lane = lanes.tenant(&event.tenant);
                if lane.pending.fetch_add(1, Ordering::AcqRel) >= PENDING_PER_TENANT {
                    lane.pending.fetch_sub(1, Ordering::AcqRel);
                    payments.count_event("dropped");
                    continue;
                }
                // Take a slot before taking the next event: while every slot is busy, events wait
                // in the bounded channel, and once it is full the engine drops (and counts) new
                // ones instead of this thread piling up tasks.
                let Ok(pending) = runtime.block_on(Arc::clone(&lanes.pending).acquire_owned())
                else {
                    return;
                };
                let (payments, lanes) = (Arc::clone(&payments), Arc::clone(&lanes));
                runtime.spawn(async move {
                    deliver(&payments, &event, &lanes, &lane).await;
                    lane.pending.fetch_sub(1, Ordering::AcqRel);
                    drop(pending);
                });
            }
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "could not start event delivery");
    }
}

/// Delivers one event, retrying with doubling delays; holds a sending slot only while a request
/// is out.
async fn deliver(payments: &Payments, event: &TenantEvent, lanes: &Lanes, lane: &TenantLane) {
    let engine = payments.engine();
    if engine.durable(event.lsn).await.is_err() {
        payments.count_event("dropped");
        return;
    }
    let Some(tenant) = engine.tenant(&event.tenant) else {
        return;
    };
    let Some((url, secret)) = engine.tenant_webhook(&tenant) else {
        payments.count_event("no_endpoint");
        return;
    };
    let body = serde_json::to_vec(&body(event)).unwrap_or_default();
    let config = &payments.config().events;
    let mut delay = Duration::from_secs(config.retry.0.max(1));
    for attempt in 1..=config.attempts.max(1) {
        let sent = {
            let (Ok(_own), Ok(_shared)) = (lane.sends.acquire().await, lanes.sends.acquire().await)
            else {
                return;
            };
            let signature = sign_timestamped(secret.as_bytes(), engine.now_ms() / 1000, &body);
            payments
                .http()
                .post(&url)
                .header("Content-Type", "application/json")
                .header(SIGNATURE_HEADER, signature)
                .body(body.clone())
                .send()
                .await
        };
        match sent {
            Ok(response) if response.status().is_success() => {
                payments.count_event("delivered");
                return;
            }
            Ok(response) => {
                tracing::debug!(status = %response.status(), attempt, %url, "event refused")
            }
            Err(error) => tracing::debug!(%error, attempt, %url, "event not delivered"),
        }
        if attempt < config.attempts {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(3600));
        }
    }
    tracing::warn!(%url, event = event.kind.name(), "event dropped after every attempt failed");
    payments.count_event("failed");
}
