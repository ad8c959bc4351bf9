//! What each API key granted today, per tenant and currency: the state behind the daily cap on a
//! service key's grants. It is derived from the log alone (every grant's record names its actor,
//! its amount and its time), so the cap holds across restarts and crashes.
//!
//! Why a snapshot neither loses nor counts twice a grant: a grant is checked against the tally,
//! appended to the log and counted under the one [`State::grants`](super::State) mutex. A snapshot
//! takes that mutex, notes its start LSN `S` and copies the tallies in the same critical section,
//! so the copy holds exactly the grants with LSNs below `S`. Replay starts at `S` and counts every
//! grant it reads, whether or not the user's copy already holds it (users are copied later and
//! fuzzily). Lock order: a user's shard, then this mutex, then the log's append mutex.

use std::collections::HashMap;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use super::super::types::Currency;
use super::billing::utc_day;

/// Whose grants a tally counts: tenant, actor (the API key's name), currency.
type Granter = (CompactString, CompactString, Currency);

/// One actor's grants in one currency on one UTC day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Tally {
    /// Days since 1970-01-01, UTC.
    pub day: i64,
    /// Minor units granted that day.
    pub granted: i64,
}

/// A tally as a snapshot holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TallyImage {
    pub tenant: CompactString,
    pub actor: CompactString,
    pub currency: Currency,
    pub tally: Tally,
}

/// Every actor's grants of its latest day.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct GrantTallies {
    tallies: HashMap<Granter, Tally>,
}

impl GrantTallies {
    /// What `actor` granted in `currency` on the UTC day of `now_ms`.
    pub fn granted_on(&self, tenant: &str, actor: &str, currency: Currency, now_ms: i64) -> i64 {
        let key = (
            CompactString::new(tenant),
            CompactString::new(actor),
            currency,
        );
        self.tallies
            .get(&key)
            .filter(|tally| tally.day == utc_day(now_ms))
            .map_or(0, |tally| tally.granted)
    }

    /// Counts a grant recorded at `time_ms`. A grant dated before the tally's day (a clock that
    /// stepped back) counts for nothing: it no longer bears on any cap.
    pub fn count(
        &mut self,
        tenant: &str,
        actor: &str,
        currency: Currency,
        time_ms: i64,
        amount: i64,
    ) {
        let day = utc_day(time_ms);
        let key = (
            CompactString::new(tenant),
            CompactString::new(actor),
            currency,
        );
        let tally = self.tallies.entry(key).or_insert(Tally { day, granted: 0 });
        if day > tally.day {
            *tally = Tally { day, granted: 0 };
        }
        if day == tally.day {
            tally.granted = tally.granted.saturating_add(amount);
        }
    }

    /// The tallies of `since_day` or later, sorted, for a snapshot: older days bear on no cap.
    pub fn images(&self, since_day: i64) -> Vec<TallyImage> {
        let mut images: Vec<TallyImage> = self
            .tallies
            .iter()
            .filter(|(_, tally)| tally.day >= since_day)
            .map(|((tenant, actor, currency), tally)| TallyImage {
                tenant: tenant.clone(),
                actor: actor.clone(),
                currency: *currency,
                tally: *tally,
            })
            .collect();
        images.sort_by(|a, b| {
            (&a.tenant, &a.actor, a.currency).cmp(&(&b.tenant, &b.actor, b.currency))
        });
        images
    }

    /// Restores a tally from a snapshot.
    pub fn restore(&mut self, image: TallyImage) {
        self.tallies
            .insert((image.tenant, image.actor, image.currency), image.tally);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: i64 = 86_400_000;

    #[test]
    fn a_tally_counts_one_day_and_starts_again_the_next() {
        let mut tallies = GrantTallies::default();
        let credits = Currency::CREDITS;
        tallies.count("t", "svc", credits, 10 * DAY_MS + 5, 30);
        tallies.count("t", "svc", credits, 11 * DAY_MS - 1, 20);
        assert_eq!(tallies.granted_on("t", "svc", credits, 10 * DAY_MS), 50);
        assert_eq!(tallies.granted_on("t", "other", credits, 10 * DAY_MS), 0);
        assert_eq!(tallies.granted_on("u", "svc", credits, 10 * DAY_MS), 0);
        // The next day starts from nothing; a grant dated the day before counts for nothing.
        assert_eq!(tallies.granted_on("t", "svc", credits, 11 * DAY_MS), 0);
        tallies.count("t", "svc", credits, 11 * DAY_MS, 7);
        tallies.count("t", "svc", credits, 10 * DAY_MS + 9, 1000);
        assert_eq!(tallies.granted_on("t", "svc", credits, 11 * DAY_MS + 1), 7);
        assert_eq!(tallies.images(12).len(), 0);
        let images = tallies.images(11);
        let mut restored = GrantTallies::default();
        for image in images {
            restored.restore(image);
        }
        assert_eq!(restored, tallies);
    }
}
