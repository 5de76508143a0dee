//! When to renew: pure functions of the certificate's validity, the ARI window and the failure
//! count, so the renewal loop's timing is tested without a clock or a server.

use std::time::Duration;

/// A certificate this close to its end that renewal has not replaced raises the alarm.
pub const EXPIRY_ALARM_SECS: i64 = 14 * 86_400;
/// The first retry after a failed renewal; each further failure doubles it.
pub const BACKOFF_START: Duration = Duration::from_secs(60);
/// Retries never wait longer than this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(6 * 3600);
/// After a successful order the loop waits at least this long before the next.
pub const MIN_RENEWAL_GAP: Duration = Duration::from_secs(60);
/// The loop wakes at least this often to look again (ARI windows may move, RFC 9773 4.3).
pub const RECHECK: Duration = Duration::from_secs(6 * 3600);

/// A suggested renewal window (RFC 9773 section 4.2), in seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AriWindow {
    pub start: i64,
    pub end: i64,
}

/// The point two thirds of the way from notBefore to notAfter.
pub fn two_thirds(not_before: i64, not_after: i64) -> i64 {
    let lifetime = not_after.saturating_sub(not_before).max(0);
    not_before.saturating_add(lifetime / 3 * 2 + (lifetime % 3) * 2 / 3)
}

/// When to renew: a point in the ARI window chosen by `jitter` (0.0 = its start, 1.0 = its
/// end; RFC 9773 section 4.2 asks for a uniformly random point), else two thirds of the
/// lifetime. A window whose end precedes its start is ignored.
pub fn renewal_due(not_before: i64, not_after: i64, ari: Option<AriWindow>, jitter: f64) -> i64 {
    match ari {
        Some(w) if w.end >= w.start => {
            let span = w.end.saturating_sub(w.start) as f64;
            w.start.saturating_add((span * jitter.clamp(0.0, 1.0)) as i64)
        }
        _ => two_thirds(not_before, not_after),
    }
}

/// How long to wait before the next try after `failures` failures in a row (1 = the first).
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    let secs = BACKOFF_START.as_secs().saturating_mul(1u64 << doublings);
    Duration::from_secs(secs).min(BACKOFF_MAX)
}

/// How long the loop waits after a successful order, `in_a_row` being the successful orders
/// since a due time last lay in the future (1 = this one; the loop resets the count whenever
/// the next due time lies ahead). A certificate that is due again at once (an ARI
/// window in the past, a CA issuing short certificates) is renewed ever less often: one
/// minute, doubling to six hours, instead of every minute forever.
pub fn gap_after_renewal(in_a_row: u32) -> Duration {
    backoff(in_a_row).max(MIN_RENEWAL_GAP)
}

/// Whether a certificate ending at `not_after` is close enough to its end to raise the alarm.
pub fn expiry_alarm(now: i64, not_after: i64) -> bool {
    not_after.saturating_sub(now) <= EXPIRY_ALARM_SECS
}

/// How long to sleep until `due`, waking at least every [`RECHECK`].
pub fn sleep_until(now: i64, due: i64) -> Duration {
    let secs = u64::try_from(due.saturating_sub(now)).unwrap_or(0);
    Duration::from_secs(secs).min(RECHECK)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    #[test]
    fn without_ari_renewal_is_at_two_thirds_of_the_lifetime() {
        assert_eq!(two_thirds(0, 90 * DAY), 60 * DAY);
        assert_eq!(renewal_due(1000, 1000 + 90 * DAY, None, 0.5), 1000 + 60 * DAY);
        // A six-day certificate: day four.
        assert_eq!(renewal_due(0, 6 * DAY, None, 0.0), 4 * DAY);
        assert_eq!(two_thirds(10, 5), 10, "a backwards validity renews at once");
        assert_eq!(two_thirds(0, 3), 2);
    }

    #[test]
    fn ari_windows_pick_a_point_inside_them() {
        let w = AriWindow {
            start: 50 * DAY,
            end: 52 * DAY,
        };
        assert_eq!(renewal_due(0, 90 * DAY, Some(w), 0.0), 50 * DAY);
        assert_eq!(renewal_due(0, 90 * DAY, Some(w), 1.0), 52 * DAY);
        assert_eq!(renewal_due(0, 90 * DAY, Some(w), 0.5), 51 * DAY);
        assert_eq!(renewal_due(0, 90 * DAY, Some(w), 7.0), 52 * DAY, "jitter clamps");
        let backwards = AriWindow {
            start: 52 * DAY,
            end: 50 * DAY,
        };
        assert_eq!(renewal_due(0, 90 * DAY, Some(backwards), 0.5), 60 * DAY);
    }

    #[test]
    fn backoff_doubles_from_a_minute_to_six_hours() {
        let steps: Vec<u64> = (1..=11).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(
            steps,
            vec![60, 120, 240, 480, 960, 1920, 3840, 7680, 15360, 21600, 21600]
        );
        assert_eq!(backoff(0).as_secs(), 60);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn renewals_due_again_at_once_back_off() {
        // Due again at once after every order: the gaps grow to six hours.
        let gaps: Vec<u64> = (1..=12).map(|n| gap_after_renewal(n).as_secs()).collect();
        assert_eq!(
            gaps,
            vec![
                60, 120, 240, 480, 960, 1920, 3840, 7680, 15360, 21600, 21600, 21600
            ]
        );
        // The first order after a due time in the future (count reset) waits the minimum.
        assert_eq!(gap_after_renewal(1), MIN_RENEWAL_GAP);
        assert_eq!(gap_after_renewal(0), MIN_RENEWAL_GAP);
        assert_eq!(gap_after_renewal(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn the_alarm_rings_within_fourteen_days() {
        assert!(!expiry_alarm(0, 15 * DAY));
        assert!(expiry_alarm(0, 14 * DAY));
        assert!(expiry_alarm(0, DAY));
        assert!(expiry_alarm(10 * DAY, DAY), "expired");
    }

    #[test]
    fn extreme_values_from_the_network_do_not_panic() {
        let w = AriWindow {
            start: i64::MIN,
            end: i64::MAX,
        };
        for jitter in [0.0, 0.5, 1.0, f64::NAN, f64::INFINITY] {
            let _ = renewal_due(i64::MIN, i64::MAX, Some(w), jitter);
        }
        assert!(two_thirds(i64::MIN, i64::MAX) < 0, "saturated lifetime");
        assert_eq!(two_thirds(i64::MAX, i64::MIN), i64::MAX);
        assert_eq!(sleep_until(i64::MIN, i64::MAX), RECHECK);
        assert_eq!(sleep_until(i64::MAX, i64::MIN), Duration::ZERO);
        assert!(expiry_alarm(i64::MAX, i64::MIN));
        assert!(!expiry_alarm(i64::MIN, i64::MAX));
    }

    #[test]
    fn sleeps_are_capped() {
        assert_eq!(sleep_until(100, 50), Duration::ZERO);
        assert_eq!(sleep_until(0, 60), Duration::from_secs(60));
        assert_eq!(sleep_until(0, 30 * DAY), RECHECK);
    }
}
