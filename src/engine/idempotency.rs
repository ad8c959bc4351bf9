//! Idempotency keys: (tenant, key) → the request's fingerprint and its stored outcome.
//!
//! A keyed request first claims its key (an in-flight entry, under the key's shard lock alone).
//! It then takes its user's lock, and when its record is queued it turns the claim into a finished
//! entry under that same user lock, so a snapshot that has copied the user has also seen the key.
//! The finished entry travels in the same log record as the effect, is kept in snapshots and is
//! dropped after the TTL. A claim that ends without an effect (a 402, an error) is removed, so the
//! client may retry with the same key.

use std::hash::BuildHasher as _;
use std::sync::atomic::{AtomicU64, Ordering};

use compact_str::CompactString;

use super::state::{IdempotencyEntry, IdempotencyState, ShardedMap, Tenant};
use super::types::{check_idempotency_key, EngineError, Fingerprint, Lsn, Outcome};

/// An idempotency key and the fingerprint of the request it came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyKey<'a> {
    /// The client's key.
    pub key: &'a str,
    /// A digest of the request (method, route, body) computed by the caller.
    pub fingerprint: Fingerprint,
}

/// What an operation answered: its outcome and the LSN whose durability the answer must wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    /// The record to wait for (0 for a dry run, which writes nothing).
    pub lsn: Lsn,
    /// The answer.
    pub outcome: Outcome,
    /// True when this is the stored answer of an earlier request with the same key.
    pub replayed: bool,
}

/// A claim on a key: held by one request until it completes or is dropped.
pub(crate) struct Claim<'t> {
    tenant: &'t Tenant,
    key: &'t str,
    token: u64,
    entries: &'t AtomicU64,
    completed: bool,
}

/// The result of claiming a key.
pub(crate) enum Begin<'t> {
    /// The key is new (or none was given): go ahead.
    Fresh(Option<Claim<'t>>),
    /// The key was used before with the same request: answer this again.
    Replay(Done),
}

/// Claims `key` in `tenant`, or finds its earlier outcome.
pub(crate) fn begin<'t>(
    tenant: &'t Tenant,
    key: Option<&IdempotencyKey<'t>>,
    entries: &'t AtomicU64,
    max_entries: u64,
    token: u64,
) -> Result<Begin<'t>, EngineError> {
    let Some(key) = key else {
        return Ok(Begin::Fresh(None));
    };
    check_idempotency_key(key.key)?;
    match tenant.idempotency.entry(CompactString::new(key.key)) {
        dashmap::Entry::Occupied(entry) => {
            let existing = entry.get();
            if existing.fingerprint != key.fingerprint {
                return Err(EngineError::IdempotencyKeyReused);
            }
            match existing.state {
                IdempotencyState::InFlight { .. } => Err(EngineError::IdempotencyKeyInFlight),
                IdempotencyState::Done { lsn, outcome, .. } => Ok(Begin::Replay(Done {
                    lsn,
                    outcome,
                    replayed: true,
                })),
            }
        }
        dashmap::Entry::Vacant(entry) => {
            if entries.load(Ordering::Relaxed) >= max_entries {
                return Err(EngineError::IdempotencyTableFull);
            }
            entries.fetch_add(1, Ordering::Relaxed);
            entry.insert(IdempotencyEntry {
                fingerprint: key.fingerprint,
                state: IdempotencyState::InFlight { token },
            });
            Ok(Begin::Fresh(Some(Claim {
                tenant,
                key: key.key,
                token,
                entries,
                completed: false,
            })))
        }
    }
}

impl Claim<'_> {
    /// Stores the outcome; called under the user's lock right after the record is queued.
    pub(crate) fn complete(mut self, lsn: Lsn, created_ms: i64, outcome: Outcome) {
        if let Some(mut entry) = self.tenant.idempotency.get_mut(self.key) {
            entry.state = IdempotencyState::Done {
                lsn,
                created_ms,
                outcome,
            };
            self.completed = true;
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.completed {
            return;
        }
        let token = self.token;
        let removed = self.tenant.idempotency.remove_if(self.key, |_, entry| {
            matches!(entry.state, IdempotencyState::InFlight { token: owner } if owner == token)
        });
        if removed.is_some() {
            self.entries.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Drops finished entries created before `cutoff_ms`; returns how many went.
pub(crate) fn purge(tenant: &Tenant, entries: &AtomicU64, cutoff_ms: i64) -> u64 {
    let removed = purge_map(&tenant.idempotency, cutoff_ms);
    entries.fetch_sub(removed, Ordering::Relaxed);
    removed
}

/// Drops the finished entries of `map` created before `cutoff_ms`, and rebuilds each shard that
/// the removals left with many tombstones; returns how many went.
///
/// A removal leaves a tombstone in the shard's table where the slot's neighbours are full, which
/// takes room until the table is rebuilt, and a table that runs out of room with more than half
/// of it live doubles instead of rebuilding in place. Keys arriving at a steady rate and purged
/// every minute do that: at 12.6 k keys/s kept 60 s each shard's table doubled from 4 096 to
/// 8 192 buckets after about six minutes, RSS went from 381 to 662 MiB, and never came back
/// (`benches/soak.sh`, README). A shard rebuilt here, at the size it had before the purge, holds
/// that peak again without doubling. A rebuild moves every kept entry (about 1 ms under the
/// shard's lock at 10 k entries in a release build), so it is done only where tombstones take
/// more than an eighth of the table's room.
pub(crate) fn purge_map(map: &ShardedMap<CompactString, IdempotencyEntry>, cutoff_ms: i64) -> u64 {
    let held: Vec<usize> = map
        .shards()
        .iter()
        .map(|shard| shard.read().len())
        .collect();
    let mut removed = 0u64;
    map.retain(|_, entry| match entry.state {
        IdempotencyState::Done { created_ms, .. } if created_ms < cutoff_ms => {
            removed += 1;
            false
        }
        _ => true,
    });
    // The hash dashmap files an entry under in its shard (`hash_u64`: the map's hasher over the key).
    let hash = |(key, _): &(CompactString, _)| map.hasher().hash_one(key);
    for (shard, held) in map.shards().iter().zip(held) {
        let mut table = shard.write();
        let buckets = table.buckets();
        let room = if buckets < 8 {
            buckets - 1
        } else {
            buckets / 8 * 7
        };
        let tombstones = room.saturating_sub(table.capacity());
        if tombstones * 8 <= room {
            continue;
        }
        let old = std::mem::take(&mut *table);
        table.reserve(held.max(old.len()), hash);
        for item in old {
            table.insert(hash(&item), item, hash);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::state::sharded_map;
    use crate::engine::types::Outcome;

    fn done(created_ms: i64) -> IdempotencyEntry {
        IdempotencyEntry {
            fingerprint: [created_ms as u8; 16],
            state: IdempotencyState::Done {
                lsn: created_ms as u64 + 1,
                created_ms,
                outcome: Outcome::Credit {
                    entry_id: 1,
                    amount: 1,
                    balance: 1,
                    available: 1,
                },
            },
        }
    }

    fn buckets(map: &ShardedMap<CompactString, IdempotencyEntry>) -> usize {
        map.shards()
            .iter()
            .map(|shard| shard.read().buckets())
            .sum()
    }

    /// The purge forgets exactly the finished entries created before the cutoff, keeps claims in
    /// flight whatever their age, and every kept key is found again in its rebuilt shard.
    #[test]
    fn a_purge_forgets_exactly_the_expired_and_finds_every_kept_key() {
        let map = sharded_map(8);
        for index in 0..5_000i64 {
            map.insert(CompactString::new(format!("done-{index}")), done(index));
        }
        for index in 0..100u64 {
            let entry = IdempotencyEntry {
                fingerprint: [0; 16],
                state: IdempotencyState::InFlight { token: index },
            };
            map.insert(CompactString::new(format!("claim-{index}")), entry);
        }
        assert_eq!(purge_map(&map, 3_000), 3_000);
        assert_eq!(map.len(), 2_000 + 100);
        for index in 0..5_000i64 {
            let found = map
                .get(format!("done-{index}").as_str())
                .map(|entry| entry.clone());
            if index < 3_000 {
                assert_eq!(found, None, "done-{index} expired");
            } else {
                assert_eq!(found, Some(done(index)), "done-{index} kept");
            }
        }
        for index in 0..100 {
            assert!(map.contains_key(format!("claim-{index}").as_str()));
        }
        // Removals and inserts after a rebuild work as before.
        assert!(map.remove("done-4999").is_some());
        map.insert(CompactString::new("new"), done(9_000));
        assert_eq!(purge_map(&map, 10_000), 2_000 - 1 + 1);
        assert_eq!(map.len(), 100);
    }

    /// Keys at a steady rate, each purge forgetting those older than the last round: each shard
    /// holds 2 000 to 3 000 keys, which a table of 4 096 buckets (room for 3 584) takes, and the
    /// tables stay at that. Purged in place, the tombstones made every one double to 8 192
    /// within 30 rounds.
    #[test]
    fn a_steady_rate_of_keys_purged_every_round_keeps_the_tables_their_size() {
        let shards = 4;
        let map = sharded_map(shards);
        let per_round = 1_000 * shards;
        let mut next = 0usize;
        for round in 0..120i64 {
            for _ in 0..per_round {
                map.insert(CompactString::new(format!("key-{next}")), done(round));
                next += 1;
            }
            purge_map(&map, round - 1);
            if round >= 10 {
                assert_eq!(
                    buckets(&map),
                    shards * 4_096,
                    "round {round}: the tables grew past the room their keys need"
                );
            }
        }
        assert_eq!(map.len(), 2 * per_round);
    }
}
