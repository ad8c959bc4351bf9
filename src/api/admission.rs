//! Admission of keyed API requests under overload: at most `server.max_in_flight_requests` are
//! in progress at once (off by default); one more is answered 503 `server-busy` with
//! `Retry-After: 1` at once.
//!
//! Why a count of requests in progress: a request holds its place from routing until its answer
//! is ready, and most of that time it waits for the log to sync its record. When the server
//! takes in more than it can sync and answer, the waits grow and so does the count; past the
//! limit every further request is refused before its key is checked or its body parsed, which
//! costs a small part of what a debit costs, so the time saved goes to the requests admitted
//! and their latency stays bounded (about the limit divided by the throughput). The connection
//! stays open (hyper drains a small body that was sent), so a client that retries later pays
//! no new handshake. Probes, `/metrics` and open routes are never refused here.
//!
//! Cost: with a limit, one atomic add and one subtract per keyed request, nothing locked;
//! without one (the default), nothing.

use std::sync::atomic::{AtomicU32, Ordering};

/// The keyed requests in progress and their limit.
#[derive(Debug)]
pub struct InFlight {
    count: AtomicU32,
    /// 0: no limit.
    limit: u32,
}

/// A request's place among those in progress; given back when dropped.
#[derive(Debug)]
pub struct Admitted<'a> {
    /// `None` when there is no limit: nothing was counted.
    in_flight: Option<&'a InFlight>,
}

impl InFlight {
    /// No request in progress; `limit` of them at once (0: no limit).
    pub fn new(limit: u32) -> InFlight {
        InFlight {
            count: AtomicU32::new(0),
            limit,
        }
    }

    /// A place for one more request, or `None` if `limit` are in progress.
    pub fn admit(&self) -> Option<Admitted<'_>> {
        // Without a limit nothing is counted: no shared counter for every request to bounce
        // between cores.
        if self.limit == 0 {
            return Some(Admitted { in_flight: None });
        }
        let before = self.count.fetch_add(1, Ordering::Relaxed);
        if before >= self.limit {
            // An add and an undo rather than a compare-and-swap loop: while requests race for
            // the last place, one more may be refused than needed, never one more admitted.
            self.count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Admitted {
            in_flight: Some(self),
        })
    }

    /// Requests in progress now.
    pub fn in_progress(&self) -> u32 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Some(in_flight) = self.in_flight {
            in_flight.count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_limit_requests_are_refused_until_one_ends() {
        let in_flight = InFlight::new(2);
        let first = in_flight.admit().expect("first");
        let second = in_flight.admit().expect("second");
        assert!(in_flight.admit().is_none(), "a third is refused");
        assert_eq!(in_flight.in_progress(), 2, "a refusal holds no place");
        drop(first);
        let third = in_flight.admit().expect("a place came free");
        drop((second, third));
        assert_eq!(in_flight.in_progress(), 0);
    }

    #[test]
    fn no_limit_admits_everything_and_counts_nothing() {
        let in_flight = InFlight::new(0);
        let held: Vec<_> = (0..10_000).map(|_| in_flight.admit().unwrap()).collect();
        assert_eq!(held.len(), 10_000);
        assert_eq!(
            in_flight.in_progress(),
            0,
            "no shared counter without a limit"
        );
        drop(held);
        assert_eq!(in_flight.in_progress(), 0);
    }

    #[test]
    fn racing_threads_never_pass_the_limit() {
        let in_flight = InFlight::new(3);
        let peak = AtomicU32::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..20_000 {
                        if let Some(place) = in_flight.admit() {
                            peak.fetch_max(in_flight.in_progress(), Ordering::Relaxed);
                            drop(place);
                        }
                    }
                });
            }
        });
        assert!(
            peak.load(Ordering::Relaxed) <= 3 + 4,
            "only racing adds overshoot, briefly"
        );
        assert_eq!(in_flight.in_progress(), 0);
    }
}
