//! Events to tenants' applications: `wallet.low_balance`, `wallet.depleted`, `topup.succeeded`,
//! `topup.failed`, `autotopup.disabled`. Each is sent once the record it follows from is durable,
//! as a JSON POST to the tenant's endpoint, signed like Stripe's webhooks:
//! `Creditd-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body" under the tenant's secret>`.
//! Failures are retried with doubling delays; the queue is bounded and a full queue drops events
//! (counted) rather than slowing a debit. Delivery is at least once: the events still queued or
//! being retried at a clean stop are written to [`PENDING_FILE`] in the data directory and sent
//! again by the next start (a crash loses them).
//!
//! One tenant's dead endpoint cannot hold up the others: a delivery holds a sending slot only while
//! its request is out (not while it waits to retry), a tenant has at most
//! [`SENDS_PER_TENANT`] of the [`CONCURRENT_SENDS`] slots and [`PENDING_PER_TENANT`] deliveries
//! pending, and its events beyond that are dropped (counted) instead of queueing behind it.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::signature::sign_timestamped;
use super::Payments;
use crate::engine::notify::{NotificationKind, TenantNotification};
use crate::engine::types::{Lsn, PaymentPurpose};
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
pub fn body(event: &TenantNotification) -> Value {
    let purpose = |purpose: PaymentPurpose| match purpose {
        PaymentPurpose::Checkout => "checkout",
        PaymentPurpose::AutoTopup => "auto_topup",
    };
    let mut data = json!({ "user_id": event.user, "currency": event.currency.as_str() });
    let extra = match &event.kind {
        NotificationKind::LowBalance {
            available,
            threshold,
        } => json!({ "available": available, "threshold": threshold }),
        NotificationKind::Depleted { available } => json!({ "available": available }),
        NotificationKind::TopupSucceeded {
            reference,
            purpose: p,
            credits,
            balance,
        } => {
            json!({ "reference": reference, "purpose": purpose(*p), "credits": credits, "balance": balance })
        }
        NotificationKind::TopupFailed {
            reference,
            purpose: p,
            decline,
        } => {
            json!({ "reference": reference, "purpose": purpose(*p), "reason": decline.as_str() })
        }
        NotificationKind::AutoTopupDisabled { reason } => json!({ "reason": reason }),
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

/// The file in the data directory that holds, between a clean stop and the next start, the events
/// not yet delivered.
pub const PENDING_FILE: &str = "events-pending.json";

/// An event on its way to a tenant's endpoint: what delivery needs, and what a clean stop writes
/// down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outgoing {
    /// The tenant.
    pub tenant: String,
    /// The record the event follows from: it is sent only once that record is durable.
    pub lsn: Lsn,
    /// The event type, such as `wallet.depleted`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The JSON body, as sent.
    pub body: Value,
}

impl Outgoing {
    fn new(event: &TenantNotification) -> Outgoing {
        Outgoing {
            tenant: event.tenant.clone(),
            lsn: event.lsn,
            kind: event.kind.name().to_owned(),
            body: body(event),
        }
    }
}

/// The layout of [`PENDING_FILE`].
#[derive(Serialize, Deserialize)]
struct PendingFile {
    format: u32,
    events: Vec<Outgoing>,
}

const PENDING_FORMAT: u32 = 1;

/// The events accepted for delivery and not yet delivered nor given up on.
pub struct Outbox {
    pending: Mutex<Pending>,
    /// Another end of the channel, to take what delivery has not picked up yet at a stop.
    queue: crossbeam_channel::Receiver<TenantNotification>,
    stopping: tokio::sync::watch::Sender<bool>,
    /// Dropped at the stop, which ends the thread that takes events in.
    stopper: Mutex<Option<crossbeam_channel::Sender<()>>>,
}

#[derive(Default)]
struct Pending {
    next_id: u64,
    events: BTreeMap<u64, Outgoing>,
    stopped: bool,
}

impl Outbox {
    /// Takes an event for delivery; `None` once stopped.
    fn admit(&self, event: Outgoing) -> Option<u64> {
        let mut pending = self.pending.lock();
        if pending.stopped {
            return None;
        }
        let id = pending.next_id;
        pending.next_id += 1;
        pending.events.insert(id, event);
        Some(id)
    }

    /// An event is done with: delivered, given up on, or never to be sent.
    fn finish(&self, id: u64) {
        self.pending.lock().events.remove(&id);
    }

    async fn stopped(&self) {
        let mut stopping = self.stopping.subscribe();
        let _ = stopping.wait_for(|stopping| *stopping).await;
    }

    /// Stops delivery and writes the events not delivered yet to `path` (atomically: a temporary
    /// file, synced, renamed, the directory synced), for the next start to send. Only events whose
    /// record is durable (LSN ≤ `durable_lsn`) are kept: one whose record a failed log never wrote
    /// must not be announced, and its LSN may be reused after a restart. Returns how many it kept.
    pub fn stop_and_save(&self, path: &Path, durable_lsn: Lsn) -> std::io::Result<usize> {
        let events: Vec<Outgoing> = {
            let mut pending = self.pending.lock();
            pending.stopped = true;
            self.stopping.send_replace(true);
            self.stopper.lock().take();
            let queued: Vec<Outgoing> = self.queue.try_iter().map(|e| Outgoing::new(&e)).collect();
            std::mem::take(&mut pending.events)
                .into_values()
                .chain(queued)
                .filter(|event| event.lsn <= durable_lsn)
                .collect()
        };
        if events.is_empty() {
            return Ok(0);
        }
        let file = PendingFile {
            format: PENDING_FORMAT,
            events,
        };
        let bytes = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
        let temporary = path.with_extension("json.tmp");
        {
            let mut out = std::fs::File::create(&temporary)?;
            out.write_all(&bytes)?;
            out.sync_all()?;
        }
        std::fs::rename(&temporary, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(file.events.len())
    }
}

/// Reads and removes the events a clean stop left at `path`. A file that cannot be read is kept
/// aside as `<path>.bad`, logged, and sends nothing.
pub fn restore(path: &Path) -> Vec<Outgoing> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(error) => {
            let path = path.display();
            tracing::error!(%error, %path, "pending events not readable; not sent");
            return Vec::new();
        }
    };
    let events = match serde_json::from_slice::<PendingFile>(&bytes) {
        Ok(file) if file.format == PENDING_FORMAT => {
            if let Err(error) = std::fs::remove_file(path) {
                let path = path.display();
                tracing::error!(%error, %path, "pending events not removed; not sent twice");
                return Vec::new();
            }
            file.events
        }
        Ok(file) => {
            set_aside(path, &format!("unknown format {}", file.format));
            return Vec::new();
        }
        Err(error) => {
            set_aside(path, &error.to_string());
            return Vec::new();
        }
    };
    if !events.is_empty() {
        tracing::info!(
            events = events.len(),
            "sending the events left undelivered at the last stop"
        );
    }
    events
}

fn set_aside(path: &Path, reason: &str) {
    let aside = path.with_extension("json.bad");
    let renamed = std::fs::rename(path, &aside);
    let (path, aside, renamed) = (path.display(), aside.display(), renamed.is_ok());
    tracing::error!(%reason, %path, %aside, renamed, "pending events unreadable; set aside, not sent");
}

/// Runs delivery on the current runtime: first the `restored` events, then those the engine
/// sends. The outbox it returns stops delivery and keeps what is left.
pub fn spawn(
    payments: Arc<Payments>,
    events: crossbeam_channel::Receiver<TenantNotification>,
    restored: Vec<Outgoing>,
) -> Arc<Outbox> {
    let runtime = tokio::runtime::Handle::current();
    let lanes = Arc::new(Lanes {
        pending: Arc::new(Semaphore::new(PENDING)),
        sends: Semaphore::new(CONCURRENT_SENDS),
        tenants: DashMap::new(),
    });
    let (stopper, stop) = crossbeam_channel::bounded::<()>(0);
    let outbox = Arc::new(Outbox {
        pending: Mutex::default(),
        queue: events.clone(),
        stopping: tokio::sync::watch::Sender::new(false),
        stopper: Mutex::new(Some(stopper)),
    });
    // The restored events are in the outbox from the start: a stop before the thread reaches them
    // keeps them again.
    let restored: Vec<(u64, Outgoing)> = restored
        .into_iter()
        .filter_map(|event| Some((outbox.admit(event.clone())?, event)))
        .collect();
    let deliveries = Arc::clone(&outbox);
    let spawned = std::thread::Builder::new()
        .name("creditd-events".into())
        .spawn(move || {
            let outbox = deliveries;
            let mut restored = restored.into_iter();
            loop {
                let (admitted, event) = match restored.next() {
                    Some((id, event)) => (Some(id), event),
                    None => crossbeam_channel::select! {
                        recv(events) -> event => match event {
                            Ok(event) => (None, Outgoing::new(&event)),
                            Err(_) => return,
                        },
                        // Dropped at the stop: the thread ends and lets go of the engine.
                        recv(stop) -> _ => return,
                    },
                };
                let lane = lanes.tenant(&event.tenant);
                if lane.pending.fetch_add(1, Ordering::AcqRel) >= PENDING_PER_TENANT {
                    lane.pending.fetch_sub(1, Ordering::AcqRel);
                    if let Some(id) = admitted {
                        outbox.finish(id);
                    }
                    payments.count_event("dropped");
                    continue;
                }
                let Some(id) = admitted.or_else(|| outbox.admit(event.clone())) else {
                    return;
                };
                // Take a slot before taking the next event: while every slot is busy, events wait
                // in the bounded channel, and once it is full the engine drops (and counts) new
                // ones instead of this thread piling up tasks.
                let slot = runtime.block_on(async {
                    tokio::select! {
                        slot = Arc::clone(&lanes.pending).acquire_owned() => slot.ok(),
                        () = outbox.stopped() => None,
                    }
                });
                let Some(slot) = slot else {
                    return;
                };
                let (payments, lanes, outbox) = (
                    Arc::clone(&payments),
                    Arc::clone(&lanes),
                    Arc::clone(&outbox),
                );
                runtime.spawn(async move {
                    tokio::select! {
                        () = deliver(&payments, &event, &lanes, &lane) => outbox.finish(id),
                        // Stopping: the event stays in the outbox, to be kept.
                        () = outbox.stopped() => {}
                    }
                    lane.pending.fetch_sub(1, Ordering::AcqRel);
                    drop(slot);
                });
            }
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "could not start event delivery");
    }
    outbox
}

/// Delivers one event, retrying with doubling delays; holds a sending slot only while a request
/// is out.
async fn deliver(payments: &Payments, event: &Outgoing, lanes: &Lanes, lane: &TenantLane) {
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
    let body = serde_json::to_vec(&event.body).unwrap_or_default();
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
    tracing::warn!(%url, event = %event.kind, "event dropped after every attempt failed");
    payments.count_event("failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(lsn: Lsn) -> Outgoing {
        Outgoing {
            tenant: "acme".into(),
            lsn,
            kind: "wallet.depleted".into(),
            body: json!({ "id": format!("evt_{lsn}_wallet_depleted") }),
        }
    }

    #[test]
    fn kept_events_are_read_back_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PENDING_FILE);
        assert!(restore(&path).is_empty(), "no file, nothing to send");
        let file = PendingFile {
            format: PENDING_FORMAT,
            events: vec![event(3), event(9)],
        };
        std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
        assert_eq!(restore(&path), vec![event(3), event(9)]);
        assert!(!path.exists());
        assert!(restore(&path).is_empty(), "sent by one start only");
    }

    #[test]
    fn an_unreadable_file_is_set_aside_and_sends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PENDING_FILE);
        for bytes in [
            &b"{\"format\":1,\"events\":[{"[..],
            br#"{"format":2,"events":[]}"#,
        ] {
            std::fs::write(&path, bytes).unwrap();
            assert!(restore(&path).is_empty());
            assert!(!path.exists());
            assert_eq!(
                std::fs::read(path.with_extension("json.bad")).unwrap(),
                bytes
            );
        }
    }

    #[test]
    fn a_stop_keeps_only_events_whose_record_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PENDING_FILE);
        let (_sender, queue) = crossbeam_channel::bounded(4);
        let outbox = Outbox {
            pending: Mutex::default(),
            queue,
            stopping: tokio::sync::watch::Sender::new(false),
            stopper: Mutex::new(None),
        };
        let first = outbox.admit(event(5)).unwrap();
        outbox.admit(event(12)).unwrap();
        outbox.admit(event(7)).unwrap();
        outbox.finish(first);
        assert_eq!(outbox.stop_and_save(&path, 10).unwrap(), 1);
        assert_eq!(
            outbox.admit(event(8)),
            None,
            "nothing is taken after the stop"
        );
        assert_eq!(restore(&path), vec![event(7)]);
    }
}
