//! The last seven days of the counters, hour by hour, and the TLS versions and cipher suites
//! that inbound connections negotiated: what the admin console draws its charts from.
//!
//! The counters only grow, so a chart needs their growth per hour: a sampler ([`run_sampler`])
//! folds, once a minute, each counter's growth since its previous look into the current hour's
//! slot of a ring of 168 hourly slots. Memory stays the same however long the process runs.
//! This is what this process has seen: the history starts empty when the process starts (and
//! an hour the process was down for reads as zeros). Bans and logins are also kept, for longer,
//! in the store's security events, for views beyond this process's life.

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use crate::Counter;

/// Hourly slots kept: seven days.
pub const HOURS: usize = 168;

/// Distinct (version, cipher suite) pairs counted by name; any further pair counts under
/// ("other", "other"). rustls knows a handful of each, so this is reached only by a rustls
/// upgrade that adds many, and it keeps the table bounded whatever happens.
pub const MAX_TLS_PAIRS: usize = 64;

/// How often [`run_sampler`] samples: often enough that an hour's growth lands in its hour
/// (but for up to this much at its end), rarely enough to cost nothing.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(60);

/// The series kept, by the name [`History::series`] takes, and the counter each one follows.
pub const SERIES: [&str; 6] = [
    "messages_in",
    "messages_out",
    "refusals",
    "logins",
    "login_failures",
    "bans",
];

/// The counters behind [`SERIES`], in its order.
fn counters() -> [&'static Counter; SERIES.len()] {
    [
        &crate::MESSAGES_ACCEPTED,
        &crate::MESSAGES_DELIVERED,
        &crate::MESSAGES_REFUSED,
        &crate::AUTH_SUCCESSES,
        &crate::AUTH_FAILURES,
        &crate::BANS,
    ]
}

/// A (TLS version, cipher suite) pair, as rustls names them (`TLSv1_3`,
/// `TLS13_AES_256_GCM_SHA384`).
type Pair = (String, String);

/// Counts per (version, suite) pair, at most [`MAX_TLS_PAIRS`] of them by name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TlsTable(BTreeMap<Pair, u64>);

impl TlsTable {
    /// Adds `n` to a pair, or to ("other", "other") once the table is full.
    fn add(&mut self, version: &str, cipher: &str, n: u64) {
        if let Some(count) = self.0.get_mut(&(version.to_string(), cipher.to_string())) {
            *count = count.saturating_add(n);
            return;
        }
        let named = self.0.keys().filter(|(v, c)| !is_other(v, c)).count();
        let key = if named < MAX_TLS_PAIRS {
            (version.to_string(), cipher.to_string())
        } else {
            ("other".to_string(), "other".to_string())
        };
        let count = self.0.entry(key).or_default();
        *count = count.saturating_add(n);
    }

    /// The pairs and their counts.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str, u64)> {
        self.0.iter().map(|((v, c), n)| (v.as_str(), c.as_str(), *n))
    }
}

fn is_other(version: &str, cipher: &str) -> bool {
    version == "other" && cipher == "other"
}

/// Every pair inbound TLS handshakes negotiated since the process started.
static TLS_SEEN: LazyLock<Mutex<TlsTable>> = LazyLock::new(Mutex::default);

/// A lock that outlives a panic elsewhere: the tables hold counts, which a panic mid-update
/// cannot leave inconsistent in any way that matters to a chart.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts one completed inbound TLS handshake by its version and cipher suite.
pub fn tls_seen(version: &str, cipher: &str) {
    lock(&TLS_SEEN).add(version, cipher, 1);
}

/// The counters' values at one moment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// In [`SERIES`] order.
    pub counters: [u64; SERIES.len()],
    /// The TLS pairs seen so far.
    pub tls: TlsTable,
}

impl Snapshot {
    /// The process-wide counters and TLS table as they are now.
    pub fn current() -> Snapshot {
        Snapshot {
            counters: counters().map(Counter::get),
            tls: lock(&TLS_SEEN).clone(),
        }
    }
}

/// One hour's growth.
#[derive(Debug, Default, Clone)]
struct Slot {
    /// The unix hour (seconds / 3600) this slot holds; slots not yet used hold hour 0, which
    /// no window asked for by a running server reaches back to.
    hour: i64,
    counts: [u64; SERIES.len()],
    tls: TlsTable,
}

#[derive(Debug)]
struct Inner {
    /// Indexed by hour modulo [`HOURS`].
    slots: Vec<Slot>,
    /// What the previous sample saw: zero at first, as the counters start at zero with the
    /// process.
    last: Snapshot,
    /// The latest hour sampled: a clock set back lands its growth here rather than in a slot
    /// that a newer hour already took.
    latest_hour: i64,
}

/// The hourly history of [`SERIES`] and the TLS pairs over the last [`HOURS`] hours.
#[derive(Debug)]
pub struct History(Mutex<Inner>);

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

static GLOBAL: LazyLock<History> = LazyLock::new(History::new);

impl History {
    /// An empty history, as at process start.
    pub fn new() -> History {
        History(Mutex::new(Inner {
            slots: vec![Slot::default(); HOURS],
            last: Snapshot::default(),
            latest_hour: i64::MIN,
        }))
    }

    /// The process-wide history that [`run_sampler`] fills.
    pub fn global() -> &'static History {
        &GLOBAL
    }

    /// Folds the process-wide counters' growth since the previous sample into the hour of
    /// `now_unix`.
    pub fn sample(&self, now_unix: i64) {
        self.record(now_unix, Snapshot::current());
    }

    /// Folds the growth from the previous snapshot to `now` into the hour of `now_unix`.
    pub fn record(&self, now_unix: i64, now: Snapshot) {
        let mut inner = lock(&self.0);
        let hour = unix_hour(now_unix).max(inner.latest_hour);
        inner.latest_hour = hour;
        let mut deltas = [0u64; SERIES.len()];
        for (delta, (new, old)) in deltas
            .iter_mut()
            .zip(now.counters.iter().zip(inner.last.counters))
        {
            *delta = new.saturating_sub(old);
        }
        let mut tls = Vec::new();
        for (version, cipher, count) in now.tls.pairs() {
            let before = inner.last.tls.0.get(&(version.to_string(), cipher.to_string()));
            let delta = count.saturating_sub(before.copied().unwrap_or(0));
            if delta > 0 {
                tls.push((version.to_string(), cipher.to_string(), delta));
            }
        }
        let slot = &mut inner.slots[slot_index(hour)];
        if slot.hour != hour {
            *slot = Slot {
                hour,
                ..Slot::default()
            };
        }
        for (count, delta) in slot.counts.iter_mut().zip(deltas) {
            *count = count.saturating_add(delta);
        }
        for (version, cipher, delta) in tls {
            slot.tls.add(&version, &cipher, delta);
        }
        inner.last = now;
    }

    /// A series' growth per hour over the last `hours` hours (at most [`HOURS`]) up to and
    /// including the hour of `now_unix`, oldest first, as (start of the hour in unix seconds,
    /// growth); an hour without data is zero. A name not in [`SERIES`] gives nothing.
    pub fn series(&self, name: &str, hours: usize, now_unix: i64) -> Vec<(i64, u64)> {
        let Some(which) = SERIES.iter().position(|s| *s == name) else {
            return Vec::new();
        };
        let inner = lock(&self.0);
        window(hours, now_unix)
            .map(|hour| {
                let slot = &inner.slots[slot_index(hour)];
                let count = if slot.hour == hour { slot.counts[which] } else { 0 };
                (hour.saturating_mul(3600), count)
            })
            .collect()
    }

    /// The (version, suite) pairs negotiated over the last `hours` hours up to the hour of
    /// `now_unix`, with their counts, most seen first.
    pub fn tls_seen(&self, hours: usize, now_unix: i64) -> Vec<(String, String, u64)> {
        let inner = lock(&self.0);
        let mut sum: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for hour in window(hours, now_unix) {
            let slot = &inner.slots[slot_index(hour)];
            if slot.hour != hour {
                continue;
            }
            for (version, cipher, count) in slot.tls.pairs() {
                let total = sum.entry((version, cipher)).or_default();
                *total = total.saturating_add(count);
            }
        }
        let mut pairs: Vec<(String, String, u64)> = sum
            .into_iter()
            .map(|((v, c), n)| (v.to_string(), c.to_string(), n))
            .collect();
        // Stable sort over the map's order: ties stay in name order, so a page does not shuffle.
        pairs.sort_by_key(|(_, _, n)| std::cmp::Reverse(*n));
        pairs
    }
}

/// The hours of a window of `hours` hours ending with the hour of `now_unix`, oldest first.
fn window(hours: usize, now_unix: i64) -> impl Iterator<Item = i64> {
    let last = unix_hour(now_unix);
    let hours = hours.min(HOURS) as i64;
    (0..hours).rev().map(move |back| last.saturating_sub(back))
}

fn unix_hour(unix: i64) -> i64 {
    unix.div_euclid(3600)
}

fn slot_index(hour: i64) -> usize {
    // rem_euclid of a positive modulus is in 0..HOURS, so the cast loses nothing.
    hour.rem_euclid(HOURS as i64) as usize
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Samples the process-wide counters into [`History::global`] every [`SAMPLE_EVERY`] until
/// `shutdown`.
pub async fn run_sampler(shutdown: CancellationToken) {
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => History::global().sample(now_unix()),
        }
    }
}

/// Spawns [`run_sampler`] on the current tokio runtime.
pub fn spawn_sampler(shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run_sampler(shutdown))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 24 * 3600;
    /// 2024-01-01T00:00:00Z: the fake clock starts on an hour.
    const T0: i64 = 1_704_067_200;

    fn snapshot(counters: [u64; 6]) -> Snapshot {
        Snapshot {
            counters,
            tls: TlsTable::default(),
        }
    }

    fn values(points: &[(i64, u64)]) -> Vec<u64> {
        points.iter().map(|(_, n)| *n).collect()
    }

    #[test]
    fn growth_lands_in_the_hour_it_was_sampled_in() {
        let history = History::new();
        history.record(T0 + 10, snapshot([5, 0, 1, 0, 0, 0]));
        history.record(T0 + 3000, snapshot([7, 0, 1, 0, 0, 0]));
        history.record(T0 + 3600 + 5, snapshot([10, 4, 3, 0, 0, 1]));

        let now = T0 + 3600 + 60;
        let in_ = history.series("messages_in", 24, now);
        assert_eq!(in_.len(), 24);
        assert_eq!(in_[23], (T0 + 3600, 3));
        assert_eq!(in_[22], (T0, 7));
        assert!(in_[..22].iter().all(|(_, n)| *n == 0));
        assert_eq!(in_[0].0, T0 + 3600 - 23 * 3600, "oldest first, on hour starts");
        assert_eq!(values(&history.series("messages_out", 24, now))[22..], [0, 4]);
        assert_eq!(values(&history.series("refusals", 24, now))[22..], [1, 2]);
        assert_eq!(values(&history.series("bans", 24, now))[22..], [0, 1]);
        assert_eq!(values(&history.series("logins", 24, now)), vec![0; 24]);
    }

    #[test]
    fn hours_without_samples_read_zero() {
        let history = History::new();
        history.record(T0, snapshot([1, 0, 0, 0, 0, 0]));
        // Five hours with no sample (the process was busy or the clock jumped).
        history.record(T0 + 6 * 3600, snapshot([3, 0, 0, 0, 0, 0]));
        let series = values(&history.series("messages_in", 24, T0 + 6 * 3600));
        assert_eq!(series[17..], [1, 0, 0, 0, 0, 0, 2]);
    }

    #[test]
    fn hours_older_than_seven_days_are_gone() {
        let history = History::new();
        history.record(T0, snapshot([9, 0, 0, 0, 0, 0]));
        let week = history.series("messages_in", 168, T0 + 167 * 3600);
        assert_eq!(week[0], (T0, 9), "still in the window 167 hours later");
        assert!(
            history
                .series("messages_in", 168, T0 + 168 * 3600)
                .iter()
                .all(|(_, n)| *n == 0)
        );

        // Seven days on, the hour takes T0's slot; the memory is the same 168 slots.
        history.record(T0 + 7 * DAY, snapshot([10, 0, 0, 0, 0, 0]));
        history.record(T0 + 8 * DAY, snapshot([12, 0, 0, 0, 0, 0]));
        let now = T0 + 8 * DAY;
        let week = history.series("messages_in", 168, now);
        assert_eq!(week.iter().map(|(_, n)| n).sum::<u64>(), 3);
        assert_eq!(week[167], (now, 2));
        assert_eq!(week[167 - 24], (T0 + 7 * DAY, 1));
        // A window reaching further back than is kept stops at seven days.
        let all = history.series("messages_in", 1000, now);
        assert_eq!(all.len(), HOURS);
        assert!(all.iter().all(|(h, _)| *h > T0));
        // Even asked for T0's own hour, the slot no longer holds it.
        assert_eq!(history.series("messages_in", 1, T0), vec![(T0, 0)]);
        assert_eq!(lock(&history.0).slots.len(), HOURS);
    }

    #[test]
    fn a_clock_set_back_does_not_overwrite_newer_hours() {
        let history = History::new();
        history.record(T0 + DAY, snapshot([4, 0, 0, 0, 0, 0]));
        history.record(T0 + DAY - 7 * DAY, snapshot([6, 0, 0, 0, 0, 0]));
        assert_eq!(history.series("messages_in", 1, T0 + DAY), vec![(T0 + DAY, 6)]);
    }

    #[test]
    fn series_have_exactly_the_hours_asked_for() {
        let history = History::new();
        for hours in [0, 1, 24, 168] {
            let series = history.series("logins", hours, T0 + 1234);
            assert_eq!(series.len(), hours);
            for pair in series.windows(2) {
                assert_eq!(pair[1].0 - pair[0].0, 3600);
            }
            assert!(series.last().is_none_or(|(h, _)| *h == T0));
        }
        assert_eq!(history.series("logins", 1000, T0).len(), HOURS);
        assert!(history.series("nothing", 24, T0).is_empty());
    }

    #[test]
    fn counters_that_shrink_count_as_no_growth() {
        let history = History::new();
        history.record(T0, snapshot([5, 0, 0, 0, 0, 0]));
        history.record(T0 + 60, snapshot([2, 0, 0, 0, 0, 0]));
        history.record(T0 + 120, snapshot([u64::MAX, 0, 0, 0, 0, 0]));
        let series = history.series("messages_in", 1, T0);
        assert_eq!(
            series,
            vec![(T0, u64::MAX)],
            "5, then nothing, then the rest, saturated"
        );
    }

    #[test]
    fn tls_pairs_are_counted_per_hour_and_summed_over_the_window() {
        let history = History::new();
        let mut table = TlsTable::default();
        table.add("TLSv1_3", "TLS13_AES_256_GCM_SHA384", 3);
        table.add("TLSv1_2", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", 1);
        history.record(
            T0,
            Snapshot {
                counters: [0; 6],
                tls: table.clone(),
            },
        );
        table.add("TLSv1_2", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", 4);
        history.record(
            T0 + 2 * 3600,
            Snapshot {
                counters: [0; 6],
                tls: table,
            },
        );
        let now = T0 + 2 * 3600;
        assert_eq!(
            history.tls_seen(24, now),
            vec![
                (
                    "TLSv1_2".into(),
                    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into(),
                    5
                ),
                ("TLSv1_3".into(), "TLS13_AES_256_GCM_SHA384".into(), 3),
            ]
        );
        assert_eq!(
            history.tls_seen(1, now),
            vec![(
                "TLSv1_2".into(),
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into(),
                4
            )]
        );
        assert!(history.tls_seen(24, now + 9 * DAY).is_empty());
    }

    #[test]
    fn the_tls_table_is_capped() {
        let mut table = TlsTable::default();
        for n in 0..MAX_TLS_PAIRS + 10 {
            table.add("TLSv1_3", &format!("SUITE_{n}"), 1);
        }
        table.add("TLSv1_3", "SUITE_0", 1);
        assert_eq!(table.0.len(), MAX_TLS_PAIRS + 1);
        let other = table.pairs().find(|(v, c, _)| is_other(v, c)).map(|(_, _, n)| n);
        assert_eq!(other, Some(10));
        assert_eq!(
            table.pairs().find(|(_, c, _)| *c == "SUITE_0").map(|p| p.2),
            Some(2)
        );
        // The global table takes the same path.
        tls_seen("TLSv1_3", "TLS13_AES_128_GCM_SHA256");
        assert!(
            Snapshot::current()
                .tls
                .pairs()
                .any(|(v, c, n)| v == "TLSv1_3" && c == "TLS13_AES_128_GCM_SHA256" && n >= 1)
        );
    }
}
