//! Core threads (`server.core_threads`): API connections served each on a single-threaded runtime
//! of its own, whose thread syncs the log itself when it has nothing left to run.
//!
//! With the shared worker pool, a durable request's path crosses threads: the request's task
//! waits, the log's writer thread syncs the batch and wakes the task, whose worker may be parked
//! and must be woken too. A core thread works as Redis's event loop does: it reads and runs every
//! request that is ready on its connections, each appending its record; when nothing is left to
//! run, its park hook ([`crate::wal::Wal::sync_before_park`]) writes and syncs the queued batch
//! on the spot and wakes the waiting tasks onto its own run queue, which then answer. Measured on
//! the development machine (2 cores, client on the same box): at 64 connections one core
//! thread served 94–95 k debits/s at 11 µs of server CPU and 0.06 context switches per debit,
//! against 69–70 k, 16 µs and 0.45 for the shared pool (`docs/design.md`, "Core threads").
//!
//! The price is the event loop's: while a core thread syncs, or its disk stalls, every
//! connection of that thread waits, probes included. A sync takes a fraction of a millisecond on
//! a healthy disk; one that has run [`STUCK_AFTER`] marks its thread as stuck, and new
//! connections go to the next thread that is not, or, when every one is, to the shared workers
//! (counted in `creditd_http_connections_placed_total{on="workers"}`), which answer probes,
//! reads and refusals (`503 server-busy` under `server.max_in_flight_requests`) while the disk
//! holds the writes. Connections already on a stuck thread wait for its sync, as a Redis
//! client waits for its server's.
//!
//! The accept loop stays on the shared runtime (it counts connections and closes idle ones) and
//! hands each accepted socket to the next core thread in turn. Connections are not moved once
//! placed; background work (snapshots, history, notifications) stays where it was.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use super::connections::{self, Lease};
use super::ApiState;
use crate::metrics::names;

type Handoff = (std::net::TcpStream, Lease);

/// How long a core thread may be in a sync before new connections stop going to it: far above
/// a healthy disk's sync (0.15–0.25 ms on the development machine, a few ms on network disks).
pub(super) const STUCK_AFTER: Duration = Duration::from_millis(10);

/// The core threads and the way to them.
pub(super) struct Cores {
    senders: Vec<mpsc::UnboundedSender<Handoff>>,
    /// Per thread: when its current sync began ([`Clock::now`]), 0 when it is not in one.
    syncing_since: Vec<Arc<AtomicU64>>,
    clock: Clock,
    threads: Vec<JoinHandle<()>>,
    next: usize,
    placed_on_workers: metrics::Counter,
}

/// Nanoseconds since the core threads started, plus one: 0 is "not in a sync".
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }
}

impl Cores {
    /// Starts `count` core threads serving connections with `builder`'s settings.
    pub(super) fn start(
        count: usize,
        state: &Arc<ApiState>,
        builder: &hyper::server::conn::http1::Builder,
        linger: Duration,
    ) -> std::io::Result<Cores> {
        let placed = |on: &'static str| {
            let counter = metrics::counter!(names::HTTP_CONNECTIONS_PLACED_TOTAL, "on" => on);
            counter.increment(0);
            counter
        };
        let mut cores = Cores {
            senders: Vec::with_capacity(count),
            syncing_since: Vec::with_capacity(count),
            clock: Clock(Instant::now()),
            threads: Vec::with_capacity(count),
            next: 0,
            placed_on_workers: placed("workers"),
        };
        let placed_on_cores = placed("core_thread");
        for index in 0..count {
            let (sender, receiver) = mpsc::unbounded_channel::<Handoff>();
            let state = Arc::clone(state);
            let builder = builder.clone();
            let syncing_since = Arc::new(AtomicU64::new(0));
            let core = Core {
                syncing_since: Arc::clone(&syncing_since),
                clock: cores.clock,
                placed: placed_on_cores.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("creditd-core-{index}"))
                .spawn(move || serve_core(&state, &builder, linger, receiver, core))?;
            cores.senders.push(sender);
            cores.syncing_since.push(syncing_since);
            cores.threads.push(thread);
        }
        Ok(cores)
    }

    /// Hands an accepted connection to the next core thread that is not stuck in a sync (one
    /// that has run [`STUCK_AFTER`]), or gives it back when every one is: the caller serves it on
    /// the shared workers. A socket that cannot be handed over is closed (its lease, dropped,
    /// frees its place).
    pub(super) fn dispatch(
        &mut self,
        stream: tokio::net::TcpStream,
        lease: Lease,
    ) -> Option<(tokio::net::TcpStream, Lease)> {
        let now = self.clock.now();
        let stuck_after = u64::try_from(STUCK_AFTER.as_nanos()).unwrap_or(u64::MAX);
        for _ in 0..self.senders.len() {
            self.next = (self.next + 1) % self.senders.len();
            let since = self.syncing_since[self.next].load(Ordering::Relaxed);
            if since != 0 && now.saturating_sub(since) >= stuck_after {
                continue;
            }
            let Ok(stream) = stream.into_std() else {
                return None;
            };
            let _ = self.senders[self.next].send((stream, lease));
            return None;
        }
        self.placed_on_workers.increment(1);
        Some((stream, lease))
    }

    /// Stops the threads once the accept loop is done and the connections had their grace:
    /// each finishes when its channel closes, and its runtime, dropped, ends what is left.
    pub(super) async fn stop(self) {
        drop(self.senders);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

/// What a core thread shares with the accept loop.
struct Core {
    /// Set while its park hook runs (see [`Cores::dispatch`]).
    syncing_since: Arc<AtomicU64>,
    clock: Clock,
    /// Connections it took.
    placed: metrics::Counter,
}

/// One core thread: a single-threaded runtime whose park hook syncs the log.
fn serve_core(
    state: &Arc<ApiState>,
    builder: &hyper::server::conn::http1::Builder,
    linger: Duration,
    mut receiver: mpsc::UnboundedReceiver<Handoff>,
    core: Core,
) {
    crate::wal::writer::mark_syncs_before_park();
    let engine = Arc::clone(&state.engine);
    let Core {
        syncing_since,
        clock,
        placed,
    } = core;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(move || {
            // Stamped around the whole hook: a thread waiting for another's sync is as stuck as
            // the one syncing. Two relaxed stores and a clock read per park; a park comes after
            // every turn of the loop that ran out of work, dozens of requests apart under load.
            syncing_since.store(clock.now(), Ordering::Relaxed);
            engine.wal().sync_before_park();
            syncing_since.store(0, Ordering::Relaxed);
        })
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "a core thread could not start its runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let heartbeat = tokio::spawn(super::keep_a_timer_pending());
        while let Some((stream, lease)) = receiver.recv().await {
            let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
                continue;
            };
            placed.increment(1);
            let service = super::api_service(state, &lease);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::spawn(connections::drive(connection, lease, linger));
        }
        heartbeat.abort();
    });
}
