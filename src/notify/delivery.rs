//! Delivery: one thread takes notifications in (first those a clean stop kept, then those the
//! engine sends) and starts a task per notification on the runtime, which waits until the record
//! it follows from is durable, then POSTs it, signed, to the tenant's endpoint, retrying with
//! doubling delays. The queue in front is bounded, and a full queue drops notifications (counted)
//! rather than slowing a debit.
//!
//! One tenant's dead endpoint cannot hold up the others: a delivery holds a sending slot only while
//! its request is out (not while it waits to retry), a tenant has at most [`SENDS_PER_TENANT`] of
//! the [`CONCURRENT_SENDS`] slots and [`PENDING_PER_TENANT`] deliveries pending, and its
//! notifications beyond that are dropped (counted) instead of queueing behind it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use metrics::Counter;
use tokio::sync::Semaphore;

use super::outbox::Outbox;
use super::payload::Notification;
use super::signing::{sign, SIGNATURE_HEADER};
use crate::config::EventsConfig;
use crate::engine::notify::TenantNotification;
use crate::engine::Engine;
use crate::metrics::names;

/// Requests to tenants' endpoints out at once.
pub const CONCURRENT_SENDS: usize = 32;
/// Of which one tenant may hold.
pub const SENDS_PER_TENANT: usize = 8;
/// Deliveries pending at once (sending or waiting to retry), all tenants together.
const PENDING: usize = 1024;
/// Of which one tenant may have.
pub const PENDING_PER_TENANT: usize = 128;

/// What delivery sends with, and the outcomes it counts.
pub struct Notifier {
    engine: Arc<Engine>,
    http: reqwest::Client,
    config: EventsConfig,
    outcomes: Vec<(&'static str, Counter)>,
}

impl Notifier {
    /// Delivery of `engine`'s notifications over `http`, with the attempts and delays of `config`.
    /// Every outcome's series is registered at zero, so dashboards see it before the first one.
    pub fn new(engine: Arc<Engine>, http: reqwest::Client, config: &EventsConfig) -> Notifier {
        let outcomes = ["delivered", "failed", "dropped", "no_endpoint"]
            .into_iter()
            .map(|outcome| {
                let counter =
                    metrics::counter!(names::EVENTS_DELIVERED_TOTAL, "outcome" => outcome);
                counter.increment(0);
                (outcome, counter)
            })
            .collect();
        Notifier {
            engine,
            http,
            config: config.clone(),
            outcomes,
        }
    }

    fn count(&self, outcome: &str) {
        if let Some((_, counter)) = self.outcomes.iter().find(|(name, _)| *name == outcome) {
            counter.increment(1);
        }
    }
}

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
    fn new() -> Lanes {
        Lanes {
            pending: Arc::new(Semaphore::new(PENDING)),
            sends: Semaphore::new(CONCURRENT_SENDS),
            tenants: DashMap::new(),
        }
    }

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

/// Runs delivery on the current runtime: first the `restored` notifications, then those the
/// engine sends on `events`. The outbox it returns stops delivery and keeps what is left.
pub fn spawn(
    notifier: Notifier,
    events: crossbeam_channel::Receiver<TenantNotification>,
    restored: Vec<Notification>,
) -> Arc<Outbox> {
    let (stopper, stop) = crossbeam_channel::bounded::<()>(0);
    let outbox = Arc::new(Outbox::new(events.clone(), Some(stopper)));
    // The restored notifications are in the outbox from the start: a stop before the thread
    // reaches them keeps them again.
    let restored: Vec<(u64, Notification)> = restored
        .into_iter()
        .filter_map(|notification| Some((outbox.admit(notification.clone())?, notification)))
        .collect();
    let dispatcher = Dispatcher {
        runtime: tokio::runtime::Handle::current(),
        notifier: Arc::new(notifier),
        lanes: Arc::new(Lanes::new()),
        outbox: Arc::clone(&outbox),
    };
    let spawned = std::thread::Builder::new()
        .name("creditd-events".into())
        .spawn(move || dispatcher.run(restored, &events, &stop));
    if let Err(error) = spawned {
        tracing::error!(%error, "could not start event delivery");
    }
    outbox
}

/// The thread that takes notifications in and starts their deliveries.
struct Dispatcher {
    runtime: tokio::runtime::Handle,
    notifier: Arc<Notifier>,
    lanes: Arc<Lanes>,
    outbox: Arc<Outbox>,
}

impl Dispatcher {
    /// Takes the `restored` notifications (already admitted), then the engine's, until the engine
    /// goes away or the outbox stops (which drops the other end of `stop`); the thread then ends
    /// and lets go of the engine.
    fn run(
        self,
        restored: Vec<(u64, Notification)>,
        events: &crossbeam_channel::Receiver<TenantNotification>,
        stop: &crossbeam_channel::Receiver<()>,
    ) {
        let mut restored = restored.into_iter();
        loop {
            let (admitted, notification) = match restored.next() {
                Some((id, notification)) => (Some(id), notification),
                None => crossbeam_channel::select! {
                    recv(events) -> event => match event {
                        Ok(event) => (None, Notification::new(&event)),
                        Err(_) => return,
                    },
                    recv(stop) -> _ => return,
                },
            };
            if !self.dispatch(admitted, notification) {
                return;
            }
        }
    }

    /// Starts the delivery of one notification (`admitted`: its place in the outbox, if it has
    /// one), or drops it if its tenant has too many pending. `false` once the outbox is stopped.
    fn dispatch(&self, admitted: Option<u64>, notification: Notification) -> bool {
        let lane = self.lanes.tenant(&notification.tenant);
        if lane.pending.fetch_add(1, Ordering::AcqRel) >= PENDING_PER_TENANT {
            lane.pending.fetch_sub(1, Ordering::AcqRel);
            if let Some(id) = admitted {
                self.outbox.finish(id);
            }
            self.notifier.count("dropped");
            return true;
        }
        let Some(id) = admitted.or_else(|| self.outbox.admit(notification.clone())) else {
            return false;
        };
        // Take a slot before taking the next notification: while every slot is busy,
        // notifications wait in the bounded channel, and once it is full the engine drops (and
        // counts) new ones instead of this thread piling up tasks.
        let slot = self.runtime.block_on(async {
            tokio::select! {
                slot = Arc::clone(&self.lanes.pending).acquire_owned() => slot.ok(),
                () = self.outbox.stopped() => None,
            }
        });
        let Some(slot) = slot else {
            return false;
        };
        let (notifier, lanes, outbox) = (
            Arc::clone(&self.notifier),
            Arc::clone(&self.lanes),
            Arc::clone(&self.outbox),
        );
        self.runtime.spawn(async move {
            tokio::select! {
                () = deliver(&notifier, &notification, &lanes, &lane) => outbox.finish(id),
                // Stopping: the notification stays in the outbox, to be kept.
                () = outbox.stopped() => {}
            }
            lane.pending.fetch_sub(1, Ordering::AcqRel);
            drop(slot);
        });
        true
    }
}

/// Delivers one notification, retrying with doubling delays; holds a sending slot only while a
/// request is out.
async fn deliver(
    notifier: &Notifier,
    notification: &Notification,
    lanes: &Lanes,
    lane: &TenantLane,
) {
    let engine = &notifier.engine;
    if engine.durable(notification.lsn).await.is_err() {
        notifier.count("dropped");
        return;
    }
    let Some(tenant) = engine.tenant(&notification.tenant) else {
        return;
    };
    let Some((url, secret)) = engine.tenant_webhook(&tenant) else {
        notifier.count("no_endpoint");
        return;
    };
    let body = serde_json::to_vec(&notification.body).unwrap_or_default();
    let config = &notifier.config;
    let mut delay = Duration::from_secs(config.retry.0.max(1));
    for attempt in 1..=config.attempts.max(1) {
        let sent = {
            let (Ok(_own), Ok(_shared)) = (lane.sends.acquire().await, lanes.sends.acquire().await)
            else {
                return;
            };
            let signature = sign(secret.as_bytes(), engine.now_ms() / 1000, &body);
            notifier
                .http
                .post(&url)
                .header("Content-Type", "application/json")
                .header(SIGNATURE_HEADER, signature)
                .body(body.clone())
                .send()
                .await
        };
        match sent {
            Ok(response) if response.status().is_success() => {
                notifier.count("delivered");
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
    tracing::warn!(%url, event = %notification.kind, "event dropped after every attempt failed");
    notifier.count("failed");
}
