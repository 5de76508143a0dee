//! The one expiring cache of the server: login verdicts, parsed DNS TXT records and MTA-STS
//! policies are kept here until their own deadline. It is moka's bounded cache (TinyLFU
//! admission and eviction, std's SipHash for keys that come from clients) with a deadline per
//! entry, so no cache ever grows past its bound or flushes everything when full.

use std::hash::Hash;
use std::time::{Duration, Instant};

use moka::Equivalent;
use moka::sync::Cache;

/// A value and the instant it stops being valid.
#[derive(Clone)]
struct Dated<V> {
    value: V,
    until: Instant,
}

/// Tells moka that each entry lives until its own deadline, whether new or replaced.
struct UntilDeadline;

impl<K, V> moka::Expiry<K, Dated<V>> for UntilDeadline {
    fn expire_after_create(&self, _: &K, entry: &Dated<V>, created_at: Instant) -> Option<Duration> {
        Some(entry.until.saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        _: &K,
        entry: &Dated<V>,
        updated_at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.until.saturating_duration_since(updated_at))
    }
}

/// At most `capacity` entries, each until its deadline.
pub struct ExpiringCache<K, V> {
    entries: Cache<K, Dated<V>>,
}

impl<K, V> ExpiringCache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub fn new(capacity: u64) -> ExpiringCache<K, V> {
        ExpiringCache {
            entries: Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilDeadline)
                .build(),
        }
    }

    /// The value of `key` while its deadline has not passed.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        Q: Equivalent<K> + Hash + ?Sized,
    {
        // moka expires lazily on its own clock; the deadline is the rule, checked here too.
        self.entries
            .get(key)
            .filter(|entry| entry.until > Instant::now())
            .map(|entry| entry.value)
    }

    /// Keeps `value` for `key` until `until` (replacing what was there).
    pub fn insert(&self, key: K, value: V, until: Instant) {
        self.entries.insert(key, Dated { value, until });
    }

    /// Keeps `value` for `key` for `ttl` from now.
    pub fn insert_for(&self, key: K, value: V, ttl: Duration) {
        let until = Instant::now().checked_add(ttl).unwrap_or_else(far_future);
        self.insert(key, value, until);
    }

    /// Forgets `key`, returning its value if it was still valid.
    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        Q: Equivalent<K> + Hash + ?Sized,
    {
        self.entries
            .remove(key)
            .filter(|entry| entry.until > Instant::now())
            .map(|entry| entry.value)
    }

    /// Entries held, expired ones not yet evicted included (after pending maintenance).
    pub fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A deadline no TTL reaches (about thirty years), for a TTL too large to add to now.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(30 * 365 * 24 * 3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_kept_until_its_own_deadline() {
        let cache: ExpiringCache<String, u32> = ExpiringCache::new(100);
        cache.insert_for("long".to_string(), 1, Duration::from_secs(3600));
        cache.insert_for("short".to_string(), 2, Duration::from_millis(50));
        cache.insert("past".to_string(), 3, Instant::now());
        assert_eq!(cache.get("long"), Some(1));
        assert_eq!(cache.get("short"), Some(2));
        assert_eq!(cache.get("past"), None);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(cache.get("short"), None);
        assert_eq!(cache.get("long"), Some(1));
    }

    #[test]
    fn replacing_a_value_takes_the_new_deadline() {
        let cache: ExpiringCache<&'static str, u32> = ExpiringCache::new(100);
        cache.insert_for("key", 1, Duration::from_secs(3600));
        cache.insert_for("key", 2, Duration::from_millis(30));
        assert_eq!(cache.get("key"), Some(2));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.get("key"), None);
        cache.insert_for("key", 3, Duration::from_secs(3600));
        assert_eq!(cache.remove("key"), Some(3));
        assert_eq!(cache.get("key"), None);
    }

    #[test]
    fn the_cache_stays_within_its_capacity_without_flushing_what_is_used() {
        let cache: ExpiringCache<u32, u32> = ExpiringCache::new(100);
        for round in 0..3 {
            for key in 0..10 {
                cache.insert_for(key, round, Duration::from_secs(3600));
                assert_eq!(cache.get(&key), Some(round));
            }
        }
        // A flood of one-time keys from clients.
        for key in 1000..21_000 {
            cache.insert_for(key, 0, Duration::from_secs(3600));
        }
        assert!(cache.len() <= 100, "{} entries", cache.len());
        let kept = (0..10).filter(|key| cache.get(key).is_some()).count();
        assert!(kept >= 5, "only {kept} of the often-used keys survived the flood");
    }

    #[test]
    fn a_huge_ttl_does_not_overflow() {
        let cache: ExpiringCache<u8, u8> = ExpiringCache::new(10);
        cache.insert_for(1, 1, Duration::MAX);
        assert_eq!(cache.get(&1), Some(1));
    }
}
