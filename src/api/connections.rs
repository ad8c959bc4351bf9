//! The listener's connections: which get a slot, the slots kept for health probes, closing idle
//! connections to make room, and closing them all at shutdown.
//!
//! Guarantees (the reasons are in `docs/design.md`, "Connections under a hostile client"):
//! - At most `server.max_connections` regular and `server.reserved_connections` reserved
//!   connections are served at once, besides those already told to close.
//! - A new connection never waits in the kernel's backlog behind idle ones. When every regular
//!   slot is taken, the connections that have waited longest for their next request (or their
//!   first) are closed to make room. A connection with a request in progress is never closed this
//!   way, and one whose last answer is still being written is closed once it is written.
//! - When every regular connection has a request in progress, a new connection takes a reserved
//!   slot, where only `/livez`, `/readyz`, `/healthz` and `/metrics` are served (anything else gets
//!   503 and the connection is closed; see [`super::handle`]). So probes and scrapes are answered
//!   however loaded or attacked the API is.
//! - A new connection cannot be chosen to close before its task has run once, so a request
//!   already in its socket begins first; and the accept loop waits for each connection's task to
//!   have run once (up to [`START_WAIT`]) before it accepts the next, so a flood of new
//!   connections cannot keep their tasks from running, on the shared workers or on a core thread
//!   (which runs beside the accept loop, not between its turns).
//! - Only when no slot, reserved ones included, can be had for [`ADMIT_WAIT`] (every connection
//!   has a request in progress, or has not started yet) is a new connection closed unanswered.
//!
//! The registry is locked when a connection opens or closes, never per request: a request only
//! stores into its own connection's [`Slot`]. Each refusal is counted in
//! `creditd_http_connections_refused_total`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::server::graceful::GracefulConnection;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::config::ServerConfig;
use crate::metrics::{ConnectionMetrics, Refusal};

/// The `idle_since` of a connection with a request in progress.
const BUSY: u64 = u64::MAX;

/// The longest a new connection waits for a slot before it is closed unanswered. Meanwhile no
/// other connection is accepted (they wait in the kernel's backlog).
pub const ADMIT_WAIT: Duration = Duration::from_millis(250);

/// How long the accept loop waits for a connection's task to run once before it accepts the
/// next: long enough for a busy thread to get to it, short enough that a thread stuck in a sync
/// (see `cores.rs`) delays new connections by at most this.
pub const START_WAIT: Duration = Duration::from_millis(10);

/// Which kind of slot a connection holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    /// Serves the whole API.
    Regular = 0,
    /// Serves health probes and metrics only.
    Reserved = 1,
}

/// One open connection, shared by its task, its requests and the registry.
#[derive(Debug)]
pub struct Slot {
    kind: SlotKind,
    origin: Instant,
    /// Milliseconds after `origin` since which the connection has waited for a request (its
    /// task started, or its last request ended), or [`BUSY`] while a request is in progress and
    /// until the connection's task first runs: a request already in the socket then begins
    /// before the connection can be chosen to close.
    idle_since: AtomicU64,
    /// Whether an answer is being streamed (a live balance stream): the connection does not wait
    /// for a request head meanwhile, however long the stream lasts.
    streaming: AtomicBool,
    /// Whether a request ever began: a connection that never had one has no answer to finish,
    /// and is dropped at once when it must close.
    used: AtomicBool,
    /// Told when the connection must close: to make room, or at shutdown.
    close: Notify,
}

impl Slot {
    /// The kind of slot.
    pub fn kind(&self) -> SlotKind {
        self.kind
    }

    /// The connection's task runs: the connection waits for its first request from now on.
    fn start(&self) {
        self.end_request();
    }

    /// A request has begun: the connection is not idle until [`Slot::end_request`].
    pub fn begin_request(&self) {
        self.used.store(true, Ordering::Relaxed);
        self.idle_since.store(BUSY, Ordering::Relaxed);
    }

    /// The request's answer is ready; the connection waits for the next one from now on.
    pub fn end_request(&self) {
        self.idle_since
            .store(millis_since(self.origin), Ordering::Relaxed);
    }

    fn idle_since(&self) -> Option<u64> {
        Some(self.idle_since.load(Ordering::Relaxed)).filter(|&since| since != BUSY)
    }

    /// The answer just made is streamed: until the returned guard is dropped (the stream ends),
    /// the connection is not waiting for a request head, and the header read timeout leaves it
    /// open however long the stream lasts.
    pub fn begin_stream(self: &Arc<Self>) -> Streaming {
        self.streaming.store(true, Ordering::Relaxed);
        Streaming(Arc::clone(self))
    }

    /// Since when, in milliseconds after `origin`, the connection has waited for a request head:
    /// none while a request is in progress or an answer is streamed.
    fn waits_for_head_since(&self) -> Option<u64> {
        if self.streaming.load(Ordering::Relaxed) {
            return None;
        }
        self.idle_since()
    }

    /// Whether the connection's task has run (it is idle or has had a request).
    fn started(&self) -> bool {
        self.used.load(Ordering::Relaxed) || self.idle_since().is_some()
    }
}

/// Held by a streamed answer's body (see [`Slot::begin_stream`]); dropped when the stream ends,
/// from when the connection waits for its next request head.
#[derive(Debug)]
pub struct Streaming(Arc<Slot>);

impl Drop for Streaming {
    fn drop(&mut self) {
        self.0.end_request();
        self.0.streaming.store(false, Ordering::Relaxed);
    }
}

fn millis_since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_millis()).unwrap_or(BUSY - 1)
}

/// The open connections of one listener, and their limits.
#[derive(Debug)]
pub struct Connections {
    limits: [u32; 2],
    /// How many idle connections one search closes: a search reads every slot, so under a flood
    /// of new connections it runs once per batch rather than once per connection.
    shed_batch: usize,
    origin: Instant,
    registry: Mutex<Registry>,
    /// Told when the last connection has closed.
    emptied: Notify,
    /// Told when a connection closes or its task starts (it may then be closed to make room).
    changed: Notify,
    metrics: ConnectionMetrics,
}

#[derive(Debug, Default)]
struct Registry {
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
    /// Connections holding a slot, by [`SlotKind`]; those told to close no longer hold one.
    open: [u32; 2],
    /// Entries, those told to close included.
    live: usize,
    /// Reused by each search for idle connections.
    candidates: Vec<(u64, usize)>,
}

#[derive(Debug)]
struct Entry {
    slot: Arc<Slot>,
    closing: bool,
}

impl Registry {
    /// Tells up to `count` of the longest-idle connections of `kind` to close and frees their
    /// slots. Returns how many.
    fn shed_idle(&mut self, kind: SlotKind, count: usize) -> usize {
        let Registry {
            entries,
            open,
            candidates,
            ..
        } = self;
        candidates.clear();
        for (index, entry) in entries.iter().enumerate() {
            let Some(entry) = entry else { continue };
            if entry.closing || entry.slot.kind != kind {
                continue;
            }
            if let Some(since) = entry.slot.idle_since() {
                candidates.push((since, index));
            }
        }
        let count = count.min(candidates.len());
        if count == 0 {
            return 0;
        }
        if count < candidates.len() {
            candidates.select_nth_unstable(count - 1);
        }
        for &(_, index) in &candidates[..count] {
            if let Some(entry) = entries.get_mut(index).and_then(Option::as_mut) {
                entry.closing = true;
                entry.slot.close.notify_one();
                open[kind as usize] -= 1;
            }
        }
        count
    }

    /// Tells every connection that has waited `timeout_ms` or more for a request head (at
    /// `now`, both in milliseconds after the origin) to close, and frees their slots. Returns
    /// how many.
    fn close_overdue(&mut self, now: u64, timeout_ms: u64) -> usize {
        let Registry { entries, open, .. } = self;
        let mut closed = 0;
        for entry in entries.iter_mut().flatten() {
            if entry.closing {
                continue;
            }
            let Some(since) = entry.slot.waits_for_head_since() else {
                continue;
            };
            if now.saturating_sub(since) < timeout_ms {
                continue;
            }
            entry.closing = true;
            entry.slot.close.notify_one();
            open[entry.slot.kind as usize] -= 1;
            closed += 1;
        }
        closed
    }
}

/// A connection's hold on its slot, released when dropped (when the connection's task ends).
#[derive(Debug)]
pub struct Lease {
    connections: Arc<Connections>,
    index: usize,
    slot: Arc<Slot>,
}

impl Lease {
    /// The connection's slot.
    pub fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut registry = self.connections.registry.lock();
        if let Some(entry) = registry.entries.get_mut(self.index).and_then(Option::take) {
            if !entry.closing {
                registry.open[entry.slot.kind as usize] -= 1;
            }
            registry.free.push(self.index);
            registry.live -= 1;
        }
        if registry.live == 0 {
            self.connections.emptied.notify_waiters();
        }
        drop(registry);
        self.connections.changed.notify_waiters();
    }
}

impl Connections {
    /// No connections yet, limits from `server`.
    pub fn new(server: &ServerConfig, metrics: ConnectionMetrics) -> Arc<Connections> {
        Arc::new(Connections {
            limits: [server.max_connections, server.reserved_connections],
            shed_batch: (server.max_connections as usize / 64).clamp(1, 64),
            origin: Instant::now(),
            registry: Mutex::new(Registry::default()),
            emptied: Notify::new(),
            changed: Notify::new(),
            metrics,
        })
    }

    /// The connection metrics.
    pub fn metrics(&self) -> &ConnectionMetrics {
        &self.metrics
    }

    /// Open connections holding a regular and a reserved slot.
    pub fn open(&self) -> (u32, u32) {
        let registry = self.registry.lock();
        (registry.open[0], registry.open[1])
    }

    /// A slot for a new connection, closing idle ones to make room if need be (see the module
    /// doc). If no slot can be had at once (every connection has a request in progress, or was
    /// accepted so recently that its task has not run yet), waits up to [`ADMIT_WAIT`] for one
    /// before giving up: a burst of new connections must not get a probe refused.
    pub async fn admit(self: &Arc<Self>) -> Option<Lease> {
        let deadline = tokio::time::Instant::now() + ADMIT_WAIT;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the attempt, so a change in between is not missed.
            changed.as_mut().enable();
            if let Some(lease) = self.try_admit() {
                return Some(lease);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                self.metrics.refused(Refusal::Full, 1);
                return None;
            }
            // A request that ends does not tell (that would cost every request a shared
            // write), so look again every few milliseconds as well.
            let wake = deadline.min(now + Duration::from_millis(5));
            let _ = tokio::time::timeout_at(wake, changed).await;
        }
    }

    /// A slot for a new connection if one can be had now, closing idle ones to make room.
    fn try_admit(self: &Arc<Self>) -> Option<Lease> {
        let mut registry = self.registry.lock();
        let mut shed = 0;
        let kind = if registry.open[0] < self.limits[0] {
            SlotKind::Regular
        } else {
            shed = registry.shed_idle(SlotKind::Regular, self.shed_batch);
            if shed > 0 {
                SlotKind::Regular
            } else if registry.open[1] < self.limits[1] {
                SlotKind::Reserved
            } else {
                shed = registry.shed_idle(SlotKind::Reserved, 1);
                if shed == 0 {
                    return None;
                }
                SlotKind::Reserved
            }
        };
        let slot = Arc::new(Slot {
            kind,
            origin: self.origin,
            idle_since: AtomicU64::new(BUSY),
            streaming: AtomicBool::new(false),
            used: AtomicBool::new(false),
            close: Notify::new(),
        });
        let entry = Some(Entry {
            slot: Arc::clone(&slot),
            closing: false,
        });
        let index = match registry.free.pop() {
            Some(index) => {
                registry.entries[index] = entry;
                index
            }
            None => {
                registry.entries.push(entry);
                registry.entries.len() - 1
            }
        };
        registry.open[kind as usize] += 1;
        registry.live += 1;
        drop(registry);
        if shed > 0 {
            self.metrics.refused(Refusal::ShedIdle, shed as u64);
        }
        Some(Lease {
            connections: Arc::clone(self),
            index,
            slot,
        })
    }

    /// Tells every connection to close: at once if it never had a request, after its answer if
    /// it has a request in progress.
    pub fn close_all(&self) {
        let mut registry = self.registry.lock();
        let Registry { entries, open, .. } = &mut *registry;
        for entry in entries.iter_mut().flatten() {
            if !entry.closing {
                entry.closing = true;
                open[entry.slot.kind as usize] -= 1;
            }
            entry.slot.close.notify_one();
        }
    }

    /// Resolves once no connection is open.
    pub async fn all_closed(&self) {
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            // Registered before the check, so a close in between is not missed.
            emptied.as_mut().enable();
            if self.registry.lock().live == 0 {
                return;
            }
            emptied.await;
        }
    }
}

/// Accepts on `listener` until `stop` resolves, and returns its output. Each connection that gets
/// a slot is handed to `serve` with its [`Lease`]; the others are closed at once. Meanwhile the
/// connections that have waited `head_timeout` (`server.header_read_timeout_seconds`) for a
/// request head are told to close ([`close_overdue_ones`]).
pub async fn accept_until<T>(
    listener: &TcpListener,
    connections: &Arc<Connections>,
    head_timeout: Duration,
    stop: impl Future<Output = T>,
    serve: impl FnMut(TcpStream, Lease),
) -> T {
    let accepting = accept(listener, connections, stop, serve);
    let sweeping = close_overdue_ones(connections, head_timeout);
    tokio::pin!(accepting, sweeping);
    tokio::select! {
        output = accepting => output,
        never = sweeping => match never {},
    }
}

/// How often [`accept_until`] looks for connections that have waited too long for a request
/// head: a connection is closed between `server.header_read_timeout_seconds` (at least 1 s) and
/// this much later.
pub const OVERDUE_SWEEP: Duration = Duration::from_millis(250);

/// Closes, every [`OVERDUE_SWEEP`], the connections that have waited `timeout` for a request head,
/// their first or their next, whether no byte of it came or only part.
///
/// hyper's own header read timer did this by arming a timer for every request and disarming it
/// once the head was read: a boxed sleep made and dropped, and the runtime's timer wheel locked
/// twice, per request (2–3 % of a core thread's samples at 64 connections). A timer per
/// connection, set again when it fired early, still cost a poll on every wake of the
/// connection's task (0.9 %). This reads each slot's `idle_since` four times a second under the
/// registry's lock, on the accept loop's runtime: nothing per request.
async fn close_overdue_ones(
    connections: &Connections,
    timeout: Duration,
) -> std::convert::Infallible {
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let mut every = tokio::time::interval(OVERDUE_SWEEP);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let now = millis_since(connections.origin);
        if connections.registry.lock().close_overdue(now, timeout_ms) > 0 {
            connections.changed.notify_waiters();
        }
    }
}

/// The accept loop of [`accept_until`].
async fn accept<T>(
    listener: &TcpListener,
    connections: &Arc<Connections>,
    stop: impl Future<Output = T>,
    mut serve: impl FnMut(TcpStream, Lease),
) -> T {
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            output = &mut stop => return output,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match connections.admit().await {
            Some(lease) => {
                let slot = Arc::clone(lease.slot());
                serve(stream, lease);
                slot
            }
            // Every slot has a request in progress: closing frees the descriptor, and the client
            // sees the refusal instead of waiting in the backlog.
            None => {
                drop(stream);
                continue;
            }
        };
        // Let the connection just handed over run (and read the request it may have sent)
        // before the next is accepted: a flood of new connections must not starve them, and a
        // connection counts as closable only once its task has run.
        tokio::task::yield_now().await;
        connections.started(&slot).await;
    }
}

impl Connections {
    /// Resolves once `slot`'s task has run, or after [`START_WAIT`].
    async fn started(&self, slot: &Slot) {
        let deadline = tokio::time::Instant::now() + START_WAIT;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a start in between is not missed.
            changed.as_mut().enable();
            if slot.started() || tokio::time::Instant::now() >= deadline {
                return;
            }
            let _ = tokio::time::timeout_at(deadline, changed).await;
        }
    }
}

/// Runs one connection until it ends or its slot is told to close: to make room, at shutdown, or
/// when it has waited too long for a request head ([`accept_until`]). `linger` bounds the wait
/// for an answer still being written when an idle connection is closed.
pub async fn drive<C>(connection: C, lease: Lease, linger: Duration)
where
    C: GracefulConnection<Error = hyper::Error>,
{
    let slot = Arc::clone(lease.slot());
    let mut connection = std::pin::pin!(connection);
    slot.start();
    lease.connections.changed.notify_waiters();
    let ended = tokio::select! {
        // The connection first: a request already in the socket begins before a close is heeded.
        biased;
        result = connection.as_mut() => Some(result),
        () = slot.close.notified() => None,
    };
    match ended {
        Some(Err(error)) if error.is_parse_too_large() => {
            // hyper has answered 431 itself; the request never reached the API.
            lease
                .connections
                .metrics
                .refused(Refusal::HeaderTooLarge, 1);
        }
        Some(_) => {}
        None => close(connection, &slot, linger).await,
    }
    drop(lease);
}

/// Closes a connection told to close. The connection is not being polled here, so no request can
/// begin while its state is read.
async fn close<C>(mut connection: Pin<&mut C>, slot: &Slot, linger: Duration)
where
    C: GracefulConnection<Error = hyper::Error>,
{
    if !slot.used.load(Ordering::Relaxed) {
        // Never had a request (at most part of a head): nothing to finish, drop it now.
        return;
    }
    // hyper closes an idle connection at once, and one with an answer in progress once the
    // answer is written.
    connection.as_mut().graceful_shutdown();
    if slot.idle_since().is_none() {
        let _ = connection.await;
    } else {
        let _ = tokio::time::timeout(linger, connection).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connections(regular: u32, reserved: u32) -> Arc<Connections> {
        let server = ServerConfig {
            max_connections: regular,
            reserved_connections: reserved,
            ..ServerConfig::default()
        };
        Connections::new(&server, ConnectionMetrics::new())
    }

    fn told_to_close(lease: &Lease) -> bool {
        let registry = lease.connections.registry.lock();
        registry.entries[lease.index]
            .as_ref()
            .is_some_and(|entry| entry.closing)
    }

    #[test]
    fn a_full_server_closes_the_longest_idle_connection_first() {
        let connections = connections(3, 1);
        let leases: Vec<Lease> = (0..3).map(|_| connections.try_admit().unwrap()).collect();
        // Not yet started: none can be closed, so the next one gets a reserved slot.
        let early = connections.try_admit().unwrap();
        assert_eq!(early.slot().kind(), SlotKind::Reserved);
        drop(early);
        // The middle one finished a request long ago, the others are busy or newer.
        leases[0].slot().begin_request();
        leases[1].slot().idle_since.store(0, Ordering::Relaxed);
        leases[2].slot().idle_since.store(5, Ordering::Relaxed);
        let newcomer = connections.try_admit().unwrap();
        assert_eq!(newcomer.slot().kind(), SlotKind::Regular);
        assert!(told_to_close(&leases[1]));
        assert!(!told_to_close(&leases[0]) && !told_to_close(&leases[2]));
        assert_eq!(connections.open(), (3, 0));
        // The closed connection's lease ending does not free a second slot.
        let mut leases = leases;
        drop(leases.remove(1));
        assert_eq!(connections.open(), (3, 0));
    }

    #[test]
    fn busy_connections_are_never_closed_and_probes_get_a_reserved_slot() {
        let connections = connections(2, 1);
        let busy: Vec<Lease> = (0..2).map(|_| connections.try_admit().unwrap()).collect();
        for lease in &busy {
            lease.slot().begin_request();
        }
        let probe = connections.try_admit().unwrap();
        assert_eq!(probe.slot().kind(), SlotKind::Reserved);
        assert!(busy.iter().all(|lease| !told_to_close(lease)));
        probe.slot().start();
        // An idle reserved connection makes room for the next one.
        let next = connections.try_admit().unwrap();
        assert_eq!(next.slot().kind(), SlotKind::Reserved);
        assert!(told_to_close(&probe));
        // Every slot busy: refused.
        next.slot().begin_request();
        assert!(connections.try_admit().is_none());
        // A request ends: its connection can make room again.
        busy[0].slot().end_request();
        assert_eq!(
            connections.try_admit().unwrap().slot().kind(),
            SlotKind::Regular
        );
        assert!(told_to_close(&busy[0]));
    }

    #[test]
    fn connections_that_waited_too_long_for_a_head_are_told_to_close_streams_are_not() {
        let connections = connections(4, 1);
        let leases: Vec<Lease> = (0..4).map(|_| connections.try_admit().unwrap()).collect();
        // 0 has not started (its task has not run), 1 has a request in progress, 2 has waited
        // since 0 ms, 3 since 900 ms.
        leases[1].slot().begin_request();
        leases[2].slot().idle_since.store(0, Ordering::Relaxed);
        leases[3].slot().idle_since.store(900, Ordering::Relaxed);
        let close_overdue = |now| connections.registry.lock().close_overdue(now, 1000);
        assert_eq!(close_overdue(999), 0);
        assert_eq!(close_overdue(1000), 1);
        assert!(told_to_close(&leases[2]));
        assert!(!told_to_close(&leases[0]) && !told_to_close(&leases[1]));
        assert!(!told_to_close(&leases[3]));
        assert_eq!(connections.open(), (3, 0));
        // A streamed answer: however long ago its request ended, the connection waits for no
        // head until the stream ends; then it waits from that moment.
        let stream = leases[3].slot().begin_stream();
        assert_eq!(close_overdue(60_000), 0);
        drop(stream);
        let ended = leases[3].slot().idle_since().unwrap();
        assert!(
            ended < 60_000,
            "the stream's end is the connection's idle start"
        );
        assert_eq!(close_overdue(ended + 999), 0);
        assert_eq!(close_overdue(ended + 1000), 1);
        assert!(told_to_close(&leases[3]));
        // Each is told once, and its slot freed once.
        assert_eq!(close_overdue(120_000), 0);
        assert_eq!(connections.open(), (2, 0));
    }

    #[test]
    fn leases_free_their_slots_and_the_last_one_wakes_the_shutdown() {
        let connections = connections(2, 1);
        let first = connections.try_admit().unwrap();
        let second = connections.try_admit().unwrap();
        assert_eq!(connections.open(), (2, 0));
        drop(first);
        assert_eq!(connections.open(), (1, 0));
        connections.close_all();
        assert_eq!(connections.open(), (0, 0));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let waiting = tokio::spawn({
                let connections = Arc::clone(&connections);
                async move { connections.all_closed().await }
            });
            tokio::task::yield_now().await;
            assert!(!waiting.is_finished());
            drop(second);
            tokio::time::timeout(Duration::from_secs(5), waiting)
                .await
                .unwrap()
                .unwrap();
        });
    }
}
