//! Live balance streams: who watches which wallet, and the thread that tells them when it changed.
//!
//! A stream (see `api::routes::stream`) registers a [`Watch`] for its (tenant, user) with the
//! [`Hub`]. The hub's thread follows the durable log ([`crate::wal::follow`]) beside the writer,
//! maps each record to the users whose wallet view it changed ([`touched`]), and wakes only the
//! watches of those users, with the record's LSN. A stream then reads the wallet view through the
//! engine's read path and sends it. So:
//!
//! - The request path pays nothing for streams: no lock, no check, no allocation. The hub reads
//!   the log's files and its durable watermark (an atomic), like the history's feeder.
//! - A wake comes only for a durable record, in LSN order. Wakes coalesce: a watch keeps the
//!   highest LSN it was woken for, and a stream that is busy sends one view for many records (a
//!   view is a state, not a delta, so nothing is lost by skipping the ones in between).
//! - When no stream is open the thread does not read the log at all: it moves its follower to the
//!   durable watermark and sleeps.
//! - For a resume (`Last-Event-ID`), the hub remembers the LSN of each user's last change while it
//!   follows ([`Hub::changed_since`]); from before it started following it cannot tell, and says
//!   so, and the stream sends the current view.
//!
//! The hub never writes and never takes an engine lock.

pub mod token;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use crate::codec;
use crate::engine::event::Event;
use crate::engine::Engine;
use crate::wal::follow::{FollowError, Follower};

/// The pause between two looks at the log while streams are open.
const POLL: Duration = Duration::from_millis(5);
/// The pause between two looks at the open-stream count while none is open.
const IDLE: Duration = Duration::from_millis(20);
/// The pause after a failed read of the log.
const RETRY: Duration = Duration::from_millis(500);
/// Records read per look at most.
const STEP_RECORDS: u64 = 50_000;
/// Users whose last change the hub remembers at most; past it, it forgets them all and says it
/// cannot tell for changes before.
const TRACKED_USERS_MAX: usize = 1 << 20;

/// One open stream's mailbox: the highest LSN it was woken for, and the wake-up.
#[derive(Debug, Default)]
pub struct Watch {
    lsn: AtomicU64,
    /// Set when the stream must end (the server is shutting down).
    closed: AtomicBool,
    wake: tokio::sync::Notify,
}

impl Watch {
    /// The highest LSN this watch was woken for (0: none).
    pub fn lsn(&self) -> u64 {
        self.lsn.load(Ordering::Acquire)
    }

    /// Whether the stream must end.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Waits for the next wake-up (one that came since the last wait counts).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    fn wake(&self, lsn: u64) {
        self.lsn.fetch_max(lsn, Ordering::AcqRel);
        self.wake.notify_one();
    }
}

/// Who a record changed the wallet view of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touched<'a> {
    /// Nobody's.
    Nobody,
    /// One user's.
    User(&'a str, &'a str),
    /// One user's, and the members of its tenant's pools (a pool's balance moved).
    UserAndPool(&'a str, &'a str),
    /// Perhaps every user's of a tenant (a pool's balance or a tenant setting).
    Tenant(&'a str),
}

/// Whose wallet view `event` changes: the wallet's user for a wallet event (balance, holds,
/// payments, the auto top-up rule), the member for a pool membership, and a whole tenant when a
/// pool's balance moved (its members' `pool.available_to_user`) or its settings changed.
pub(crate) fn touched<'a>(event: &Event<'a>) -> Touched<'a> {
    let pooled = |pool: &Option<crate::engine::event::PoolShare<'_>>| pool.is_some();
    match event {
        Event::Debited { wallet, pool, .. }
        | Event::ReservationPlaced { wallet, pool, .. }
        | Event::ReservationCaptured { wallet, pool, .. }
        | Event::ReservationReleased { wallet, pool, .. }
            if pooled(pool) =>
        {
            Touched::UserAndPool(wallet.tenant, wallet.user)
        }
        Event::PoolMemberSet { tenant, user, .. }
        | Event::PoolMemberRemoved { tenant, user, .. } => Touched::User(tenant, user),
        Event::PoolCredited { tenant, .. }
        | Event::PoolPaymentSucceeded { tenant, .. }
        | Event::TenantUpserted { tenant, .. } => Touched::Tenant(tenant),
        _ => match event.wallet() {
            Some(wallet) => Touched::User(wallet.tenant, wallet.user),
            None => Touched::Nobody,
        },
    }
}

/// The watches of one tenant's users, by user.
type UserWatches = HashMap<Box<str>, Vec<Arc<Watch>>>;

/// The open streams, and what the following thread learnt of changes.
#[derive(Debug)]
pub struct Hub {
    max_open: usize,
    open: AtomicUsize,
    closing: AtomicBool,
    /// tenant → user → the watches of that user's streams.
    watches: Mutex<HashMap<Box<str>, UserWatches>>,
    changes: Mutex<Changes>,
}

/// The LSN of the last change of each user (and of each tenant as a whole) seen since `since`.
#[derive(Debug, Default)]
struct Changes {
    /// The first LSN from which every change is known.
    since: u64,
    users: HashMap<(Box<str>, Box<str>), u64>,
    tenants: HashMap<Box<str>, u64>,
}

/// Refused: every stream slot is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} streams are open, the most this server allows")]
pub struct Full(pub usize);

/// An open stream's registration; dropping it unregisters.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<Hub>,
    tenant: Box<str>,
    user: Box<str>,
    watch: Arc<Watch>,
}

impl Subscription {
    /// The stream's mailbox.
    pub fn watch(&self) -> &Arc<Watch> {
        &self.watch
    }

    /// The hub it is registered with.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut watches = self.hub.watches.lock();
        if let Some(users) = watches.get_mut(&self.tenant) {
            if let Some(list) = users.get_mut(&self.user) {
                list.retain(|watch| !Arc::ptr_eq(watch, &self.watch));
                if list.is_empty() {
                    users.remove(&self.user);
                }
            }
            if users.is_empty() {
                watches.remove(&self.tenant);
            }
        }
        drop(watches);
        self.hub.open.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(crate::metrics::names::STREAMS_OPEN).decrement(1.0);
    }
}

impl Hub {
    /// A hub that lets at most `max_open` streams be open.
    pub fn new(max_open: usize) -> Arc<Hub> {
        Arc::new(Hub {
            max_open,
            open: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            watches: Mutex::new(HashMap::new()),
            changes: Mutex::new(Changes::default()),
        })
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Registers a stream of `user` in `tenant`, or refuses when `max_open` are open (or the
    /// server is shutting down).
    pub fn subscribe(self: &Arc<Self>, tenant: &str, user: &str) -> Result<Subscription, Full> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max_open).then_some(open + 1)
            });
        if taken.is_err() || self.closing.load(Ordering::Acquire) {
            if taken.is_ok() {
                self.open.fetch_sub(1, Ordering::AcqRel);
            }
            return Err(Full(self.max_open));
        }
        metrics::gauge!(crate::metrics::names::STREAMS_OPEN).increment(1.0);
        let watch = Arc::new(Watch::default());
        self.watches
            .lock()
            .entry(tenant.into())
            .or_default()
            .entry(user.into())
            .or_default()
            .push(Arc::clone(&watch));
        Ok(Subscription {
            hub: Arc::clone(self),
            tenant: tenant.into(),
            user: user.into(),
            watch,
        })
    }

    /// Whether `user`'s wallet view may have changed after `lsn`: false only when the hub has
    /// followed the log since at or before `lsn` and saw no change of the user's (or its
    /// tenant's) since.
    pub fn changed_since(&self, tenant: &str, user: &str, lsn: u64) -> bool {
        let changes = self.changes.lock();
        if changes.since == 0 || lsn.saturating_add(1) < changes.since {
            return true;
        }
        let key = (Box::<str>::from(tenant), Box::<str>::from(user));
        let user_change = changes.users.get(&key).copied().unwrap_or(0);
        let tenant_change = changes.tenants.get(tenant).copied().unwrap_or(0);
        user_change.max(tenant_change) > lsn
    }

    /// Ends every stream: the server is shutting down.
    pub fn close_all(&self) {
        self.closing.store(true, Ordering::Release);
        for users in self.watches.lock().values() {
            for watch in users.values().flatten() {
                watch.closed.store(true, Ordering::Release);
                watch.wake.notify_one();
            }
        }
    }

    /// Wakes the streams `touched` names for the record at `lsn`, and remembers the change.
    fn record(&self, touched: Touched<'_>, lsn: u64) {
        let (tenant, user, tenant_wide) = match touched {
            Touched::Nobody => return,
            Touched::User(tenant, user) => (tenant, Some(user), false),
            Touched::UserAndPool(tenant, user) => (tenant, Some(user), true),
            Touched::Tenant(tenant) => (tenant, None, true),
        };
        {
            let mut changes = self.changes.lock();
            if changes.users.len() >= TRACKED_USERS_MAX {
                changes.users.clear();
                changes.tenants.clear();
                changes.since = lsn;
            }
            if let Some(user) = user {
                changes.users.insert((tenant.into(), user.into()), lsn);
            }
            if tenant_wide {
                changes.tenants.insert(tenant.into(), lsn);
            }
        }
        let watches = self.watches.lock();
        let Some(users) = watches.get(tenant) else {
            return;
        };
        if tenant_wide {
            users.values().flatten().for_each(|watch| watch.wake(lsn));
        } else if let Some(list) = user.and_then(|user| users.get(user)) {
            list.iter().for_each(|watch| watch.wake(lsn));
        }
    }

    /// Forgets what it knew: it follows again from `lsn` (nothing was watched, or the log it
    /// needed is gone).
    fn restart_at(&self, lsn: u64) {
        let mut changes = self.changes.lock();
        changes.users.clear();
        changes.tenants.clear();
        changes.since = lsn;
    }

    /// Wakes every stream with `lsn`: the hub lost track (part of the log was gone), so each
    /// reads its view again.
    fn wake_all(&self, lsn: u64) {
        for users in self.watches.lock().values() {
            users.values().flatten().for_each(|watch| watch.wake(lsn));
        }
    }
}

/// The hub's following thread.
#[derive(Debug)]
pub struct Follow {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Follow {
    /// Stops the thread and waits for it.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.thread.join();
    }
}

/// Starts the thread that follows `engine`'s log for `hub`.
pub fn spawn(hub: Arc<Hub>, engine: Arc<Engine>) -> std::io::Result<Follow> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("creditd-streams".into())
        .spawn(move || run(&hub, &engine, &stopping))?;
    Ok(Follow { stop, thread })
}

fn run(hub: &Hub, engine: &Engine, stop: &AtomicBool) {
    let start = engine.wal().durable_lsn() + 1;
    let mut follower = Follower::new(
        &engine.options().wal_dir(),
        start,
        codec::FORMAT_VERSION,
        crate::wal::record::MAX_RECORD_BYTES_LIMIT,
    );
    hub.restart_at(start);
    let errors = metrics::counter!(crate::metrics::names::STREAMS_ERRORS_TOTAL);
    while !stop.load(Ordering::Acquire) {
        let durable = engine.wal().durable_lsn();
        if hub.open() == 0 {
            // Nobody watches: skip what was written, without reading it.
            if follower.next_lsn() <= durable {
                follower.rewind(durable + 1);
                hub.restart_at(durable + 1);
            }
            std::thread::sleep(IDLE);
            continue;
        }
        let polled = follower.poll(&**engine.storage(), durable, STEP_RECORDS, |frame| {
            // A record this build cannot read changes nothing it can show; the history's feeder
            // reports it.
            if let Ok(event) = codec::decode::<Event<'_>>(frame.payload) {
                hub.record(touched(&event), frame.lsn);
            }
            Ok::<(), std::convert::Infallible>(())
        });
        match polled {
            Ok(handed) if handed >= STEP_RECORDS => {}
            Ok(_) => std::thread::sleep(POLL),
            Err(FollowError::Missing { oldest, .. }) => {
                // Snapshots pruned the log before the hub read it: every stream reads its view
                // again, and the hub knows changes only from where the log starts.
                let resume = oldest.max(follower.next_lsn());
                follower.rewind(resume);
                hub.restart_at(resume);
                hub.wake_all(durable);
            }
            Err(error) => {
                errors.increment(1);
                tracing::error!(%error, next_lsn = follower.next_lsn(), "streams: the log could not be followed; retrying");
                std::thread::sleep(RETRY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_wakes_only_the_streams_of_the_users_it_changed() {
        let hub = Hub::new(8);
        let ada = hub.subscribe("acme", "ada").unwrap();
        let bob = hub.subscribe("acme", "bob").unwrap();
        let other = hub.subscribe("globex", "ada").unwrap();
        hub.record(Touched::User("acme", "ada"), 7);
        assert_eq!(
            (ada.watch().lsn(), bob.watch().lsn(), other.watch().lsn()),
            (7, 0, 0)
        );
        hub.record(Touched::Tenant("acme"), 9);
        assert_eq!(
            (ada.watch().lsn(), bob.watch().lsn(), other.watch().lsn()),
            (9, 9, 0)
        );
        // Wakes only rise.
        hub.record(Touched::User("acme", "ada"), 8);
        assert_eq!(ada.watch().lsn(), 9);
    }

    #[test]
    fn the_cap_refuses_one_stream_too_many_and_a_closed_one_frees_its_slot() {
        let hub = Hub::new(2);
        let first = hub.subscribe("acme", "ada").unwrap();
        let _second = hub.subscribe("acme", "ada").unwrap();
        assert_eq!(hub.subscribe("acme", "bob").unwrap_err(), Full(2));
        drop(first);
        assert_eq!(hub.open(), 1);
        let _third = hub.subscribe("acme", "bob").unwrap();
        assert!(hub.watches.lock()["acme"].contains_key("bob"));
    }

    #[test]
    fn changes_are_known_only_from_where_the_hub_started_following() {
        let hub = Hub::new(2);
        assert!(
            hub.changed_since("acme", "ada", 100),
            "nothing followed yet"
        );
        hub.restart_at(10);
        assert!(
            hub.changed_since("acme", "ada", 5),
            "before the hub followed"
        );
        assert!(!hub.changed_since("acme", "ada", 9));
        hub.record(Touched::User("acme", "ada"), 12);
        assert!(hub.changed_since("acme", "ada", 11));
        assert!(!hub.changed_since("acme", "ada", 12));
        assert!(!hub.changed_since("acme", "bob", 11));
        hub.record(Touched::Tenant("acme"), 14);
        assert!(hub.changed_since("acme", "bob", 13));
        assert!(!hub.changed_since("globex", "bob", 13));
    }

    #[test]
    fn closing_wakes_every_stream_and_refuses_new_ones() {
        let hub = Hub::new(4);
        let ada = hub.subscribe("acme", "ada").unwrap();
        hub.close_all();
        assert!(ada.watch().is_closed());
        assert!(hub.subscribe("acme", "bob").is_err());
    }
}
