//! Background threads: one takes snapshots when due, one releases expired reservations and
//! forgets expired idempotency keys. Both hold only a weak reference to the engine and stop when
//! told to or when the engine is gone.

use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use std::sync::atomic::Ordering;

use super::idempotency;
use super::state::ReservationPhase;
use super::Engine;

const SNAPSHOT_CHECK_INTERVAL: Duration = Duration::from_millis(250);
const PURGE_INTERVAL: Duration = Duration::from_secs(60);

struct Stop {
    stopped: Mutex<bool>,
    wakeup: Condvar,
}

impl Stop {
    /// Sleeps up to `timeout`; true once stopping.
    fn wait(&self, timeout: Duration) -> bool {
        let mut stopped = self.stopped.lock();
        if !*stopped {
            self.wakeup.wait_for(&mut stopped, timeout);
        }
        *stopped
    }
}

pub(crate) struct Background {
    stop: Arc<Stop>,
    threads: Vec<JoinHandle<()>>,
}

impl Background {
    pub fn start(engine: &Arc<Engine>) -> Background {
        let stop = Arc::new(Stop {
            stopped: Mutex::new(false),
            wakeup: Condvar::new(),
        });
        let mut threads = Vec::new();
        let spawn = |name: &str, body: fn(&Engine, &mut State)| {
            let weak: Weak<Engine> = Arc::downgrade(engine);
            let stop = Arc::clone(&stop);
            let interval = if name == "creditd-snapshot" {
                SNAPSHOT_CHECK_INTERVAL
            } else {
                Duration::from_millis(engine.options.maintenance_interval_ms.max(10))
            };
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    let mut state = State {
                        last_purge: Instant::now(),
                    };
                    while !stop.wait(interval) {
                        let Some(engine) = weak.upgrade() else { break };
                        body(&engine, &mut state);
                    }
                })
                .map_err(|error| tracing::error!(%error, "could not start a background thread"))
                .ok()
        };
        threads.extend(spawn("creditd-snapshot", snapshot_if_due));
        threads.extend(spawn("creditd-maintenance", maintain));
        Background { stop, threads }
    }

    pub fn stop(self) {
        *self.stop.stopped.lock() = true;
        self.stop.wakeup.notify_all();
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

struct State {
    last_purge: Instant,
}

fn snapshot_if_due(engine: &Engine, _: &mut State) {
    if engine.is_writable() && engine.snapshot_due() {
        if let Err(error) = engine.snapshot() {
            tracing::error!(%error, "snapshot failed");
        }
    } else if engine.is_writable() {
        engine.prune_if_holds_moved();
    }
}

fn maintain(engine: &Engine, state: &mut State) {
    if !engine.is_writable() {
        return;
    }
    let now_ms = engine.now_ms();
    match engine.expire_reservations(now_ms) {
        Ok(0) => {}
        Ok(expired) => tracing::debug!(expired, "released expired reservations"),
        Err(error) => tracing::warn!(%error, "releasing expired reservations failed"),
    }
    if state.last_purge.elapsed() >= PURGE_INTERVAL {
        state.last_purge = Instant::now();
        let (keys, reservations) = engine.purge_expired(now_ms);
        if keys + reservations > 0 {
            tracing::debug!(
                keys,
                reservations,
                "forgot expired idempotency keys and closed reservations"
            );
        }
    }
}

impl Engine {
    /// Forgets idempotency keys past their TTL and closed reservations past their retention.
    pub fn purge_expired(&self, now_ms: i64) -> (u64, u64) {
        let ttl_ms = i64::try_from(self.options.idempotency_ttl_seconds.saturating_mul(1000))
            .unwrap_or(i64::MAX);
        let retention_ms = i64::try_from(
            self.options
                .limits
                .closed_reservation_retention_seconds
                .saturating_mul(1000),
        )
        .unwrap_or(i64::MAX);
        let mut keys = 0;
        let mut reservations = 0;
        for tenant in self.state.tenant_list() {
            keys += idempotency::purge(
                &tenant,
                &self.state.idempotency_entries,
                now_ms.saturating_sub(ttl_ms),
            );
            let before = tenant.reservations.len();
            tenant.reservations.retain(|_, entry| {
                !matches!(entry.state, ReservationPhase::Closed { at_ms, .. } if at_ms < now_ms.saturating_sub(retention_ms))
            });
            reservations += before.saturating_sub(tenant.reservations.len()) as u64;
        }
        self.purge_payments(now_ms);
        (keys, reservations)
    }

    /// How many idempotency keys are held, all tenants together.
    pub fn idempotency_entries(&self) -> u64 {
        self.state.idempotency_entries.load(Ordering::Relaxed)
    }
}
