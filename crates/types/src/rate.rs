//! The one rate limiter of the server: at most N events per key within a sliding window (the
//! per-client connection rate, the per-account hourly message and recipient allowances). It
//! keeps each key's event times, exact rather than approximate, so that "500 per hour" means
//! no more than 500 in any hour; keys quiet for a whole window are forgotten once too many
//! are tracked, which bounds the table.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct SlidingWindow<K> {
    window: Duration,
    /// Keys tracked before quiet ones are forgotten.
    most_keys: usize,
    events: Mutex<HashMap<K, VecDeque<Instant>>>,
}

impl<K: Hash + Eq> SlidingWindow<K> {
    pub fn new(window: Duration, most_keys: usize) -> SlidingWindow<K> {
        SlidingWindow {
            window,
            most_keys,
            events: Mutex::new(HashMap::new()),
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
        if events.len() >= self.most_keys && !events.contains_key(&key) {
            events.retain(|_, times| times.back().is_some_and(recent_enough));
        }
        let times = events.entry(key).or_default();
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
        self.events.lock().unwrap_or_else(|p| p.into_inner()).len()
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
        // Within the window nothing is quiet yet: every key is kept and keeps its count.
        assert!(rate.take_at(10, 1, 1, start + Duration::from_secs(1)));
        assert!(!rate.take_at(3, 1, 1, start + Duration::from_secs(2)));
        // A window later the old keys are quiet and go when a new one comes.
        assert!(rate.take_at(11, 1, 1, start + Duration::from_millis(60_500)));
        assert_eq!(rate.keys(), 2);
        assert!(rate.take_at(3, 1, 1, start + Duration::from_millis(60_500)));
    }
}
