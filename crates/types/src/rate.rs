//! The one rate limiter of the server: at most N events per key within a sliding window (the
//! per-client connection rate, the per-account hourly message and recipient allowances). It
//! keeps each key's event times, exact rather than approximate, so that "500 per hour" means
//! no more than 500 in any hour. Keys quiet for a whole window are forgotten once too many are
//! tracked: the table holds at most the keys active within one window (or `most_keys`), and
//! sweeping it waits until it has doubled since the last sweep, so a flood of new keys costs
//! amortised constant time each, not a scan each.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct SlidingWindow<K> {
    window: Duration,
    /// Keys tracked before quiet ones are forgotten.
    most_keys: usize,
    events: Mutex<Events<K>>,
}

struct Events<K> {
    times: HashMap<K, VecDeque<Instant>>,
    /// The table size at which the next sweep runs.
    sweep_at: usize,
}

impl<K: Hash + Eq> SlidingWindow<K> {
    pub fn new(window: Duration, most_keys: usize) -> SlidingWindow<K> {
        SlidingWindow {
            window,
            most_keys,
            events: Mutex::new(Events {
                times: HashMap::new(),
                sweep_at: most_keys,
            }),
        }
    }

    /// Records `count` events for `key` now, unless that would put more than `limit` within
    /// the window: then records nothing and returns false.
    pub fn take(&self, key: K, count: u32, limit: u32) -> bool {
        self.take_at(key, count, limit, Instant::now())
    }

    fn take_at(&self, key: K, count: u32, limit: u32, now: Instant) -> bool {
        let window = self.window;
        let recent_enough = |t: &Instant| now.saturating_duration_since(*t) < window;
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let events = &mut *events;
        if events.times.len() >= events.sweep_at && !events.times.contains_key(&key) {
            events
                .times
                .retain(|_, times| times.back().is_some_and(recent_enough));
            events.sweep_at = self.most_keys.max(events.times.len().saturating_mul(2));
        }
        let times = events.times.entry(key).or_default();
        while times.front().is_some_and(|t| !recent_enough(t)) {
            times.pop_front();
        }
        let fits = times.len().saturating_add(count as usize) <= limit as usize;
        if fits {
            times.extend(std::iter::repeat_n(now, count as usize));
        }
        fits
    }

    /// Keys tracked now.
    pub fn keys(&self) -> usize {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).times.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn no_more_than_the_limit_within_any_window() {
        let rate = SlidingWindow::new(MINUTE, 100);
        let start = Instant::now();
        assert!(rate.take_at("a", 2, 3, start));
        assert!(rate.take_at("a", 1, 3, start + Duration::from_secs(30)));
        assert!(!rate.take_at("a", 1, 3, start + Duration::from_secs(59)));
        // A refused take records nothing; another key has its own allowance.
        assert!(rate.take_at("b", 3, 3, start + Duration::from_secs(59)));
        // The first two leave the window at 60 s, the third at 90 s.
        assert!(rate.take_at("a", 2, 3, start + Duration::from_secs(60)));
        assert!(!rate.take_at("a", 1, 3, start + Duration::from_secs(89)));
        assert!(rate.take_at("a", 1, 3, start + Duration::from_secs(90)));
    }

    #[test]
    fn a_take_larger_than_the_limit_never_fits() {
        let rate = SlidingWindow::new(MINUTE, 100);
        assert!(!rate.take("a", 4, 3));
        assert!(rate.take("a", 3, 3));
    }

    #[test]
    fn quiet_keys_are_forgotten_once_too_many_are_tracked() {
        let rate = SlidingWindow::new(MINUTE, 10);
        let start = Instant::now();
        for key in 0..10 {
            assert!(rate.take_at(key, 1, 1, start));
        }
        assert_eq!(rate.keys(), 10);
        // Within the window a key keeps its count.
        assert!(!rate.take_at(3, 1, 1, start + Duration::from_secs(2)));
        // A window later the old keys are quiet and go when a new one comes.
        assert!(rate.take_at(10, 1, 1, start + Duration::from_millis(60_500)));
        assert_eq!(rate.keys(), 1);
        assert!(rate.take_at(3, 1, 1, start + Duration::from_millis(60_500)));
    }

    #[test]
    fn a_flood_of_active_keys_is_swept_only_when_the_table_has_doubled() {
        let rate = SlidingWindow::new(MINUTE, 10);
        let start = Instant::now();
        for key in 0..10 {
            assert!(rate.take_at(key, 1, 1, start));
        }
        // The sweep at 10 keys finds all of them active: the next one is at 20.
        for key in 10..20 {
            assert!(rate.take_at(key, 1, 1, start + Duration::from_secs(30)));
        }
        let sweep_at = |rate: &SlidingWindow<i32>| rate.events.lock().map(|e| e.sweep_at).unwrap_or(0);
        assert_eq!(sweep_at(&rate), 20);
        // A window after the first ten, the sweep at 20 keys forgets them and sets the next
        // sweep at twice what is left (never below most_keys).
        assert!(rate.take_at(20, 1, 1, start + Duration::from_secs(61)));
        assert_eq!(rate.keys(), 11);
        assert_eq!(sweep_at(&rate), 20);
    }
}
