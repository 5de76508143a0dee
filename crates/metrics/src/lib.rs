//! The process-wide counters and the Prometheus `/metrics` endpoint that shows them.
//!
//! The counters are process-wide statics (prometheus-client counters, one atomic each): every
//! part of the server counts into them with one line, `sealmail_metrics::BANS.inc()`, without
//! threading a handle through each constructor, and a process serves one metrics endpoint.
//! They are registered once, in registration order, in a `prometheus_client` registry that
//! [`render`] encodes in the Prometheus text format (version 0.0.4): the names, help texts and
//! types that scrapers and dashboards have always read. The endpoint itself is [`endpoint`].

#![forbid(unsafe_code)]

pub mod endpoint;
pub mod history;

use std::sync::LazyLock;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;

pub use endpoint::{Limits, MAX_CONNECTIONS, TIMEOUT, bind, serve, serve_with};
pub use history::{History, MAX_TLS_PAIRS, spawn_sampler, tls_seen};

/// The `Content-Type` of what [`render`] returns.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// A monotonically increasing counter: a prometheus-client counter (one shared atomic) whose
/// `inc` returns nothing, so that counting stays one statement anywhere, closures included.
#[derive(Debug, Default)]
pub struct Counter(prometheus_client::metrics::counter::Counter);

impl Counter {
    /// Counts one.
    pub fn inc(&self) {
        self.0.inc();
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// Declares each counter as a static and registers them all, in this order, in [`REGISTRY`].
/// A name is given without its `_total` and a help text without its final period: the encoder
/// adds both.
macro_rules! counters {
    ($($(#[$doc:meta])* $counter:ident = $name:literal, $help:literal;)*) => {
        $(
            $(#[$doc])*
            pub static $counter: LazyLock<Counter> = LazyLock::new(Counter::default);
        )*

        /// Every counter, under its exposition name.
        static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
            let mut registry = Registry::default();
            $(registry.register($name, $help, $counter.0.clone());)*
            registry
        });
    };
}

counters! {
    /// `sealmail_connections_accepted_total`
    CONNECTIONS_ACCEPTED = "sealmail_connections_accepted", "Connections accepted and served";
    /// `sealmail_connections_refused_total`
    CONNECTIONS_REFUSED = "sealmail_connections_refused",
        "Connections refused at accept time (banned, not allowed, or over a cap)";
    /// `sealmail_tls_handshake_failures_total`
    TLS_HANDSHAKE_FAILURES = "sealmail_tls_handshake_failures", "TLS handshakes that failed or timed out";
    /// `sealmail_auth_successes_total`
    AUTH_SUCCESSES = "sealmail_auth_successes", "Successful logins";
    /// `sealmail_auth_failures_total`
    AUTH_FAILURES = "sealmail_auth_failures", "Failed logins";
    /// `sealmail_bans_total`
    BANS = "sealmail_bans", "Bans added";
    /// `sealmail_abuse_events_total`
    ABUSE_EVENTS = "sealmail_abuse_events",
        "Relay attempts, unknown recipients and sessions closed for errors";
    /// `sealmail_rate_limited_total`
    RATE_LIMITED = "sealmail_rate_limited", "Requests refused by a rate limit";
    /// `sealmail_security_events_dropped_total`
    SECURITY_EVENTS_DROPPED = "sealmail_security_events_dropped",
        "Security events dropped because the writer's queue was full (a flood)";
    /// `sealmail_messages_accepted_total`
    MESSAGES_ACCEPTED = "sealmail_messages_accepted", "Messages accepted (250 after DATA or BDAT LAST)";
    /// `sealmail_messages_refused_total`
    MESSAGES_REFUSED = "sealmail_messages_refused", "Messages refused at the end of DATA or BDAT";
    /// `sealmail_certificate_expiry_warnings_total`
    CERTIFICATE_EXPIRY_WARNINGS = "sealmail_certificate_expiry_warnings",
        "Checks that found a served certificate expiring within 14 days";
    /// `sealmail_messages_delivered_total`
    MESSAGES_DELIVERED = "sealmail_messages_delivered", "Recipients delivered to a remote server";
    /// `sealmail_messages_bounced_total`
    MESSAGES_BOUNCED = "sealmail_messages_bounced", "Recipients that failed permanently";
}

/// `server.node_name`, set once at start-up: every scrape says which node it came from.
static NODE_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Names this node in the exposition (`sealmail_node_info{node="NAME"} 1`); later calls are
/// ignored, as a process is one node.
pub fn set_node_name(name: &str) {
    let _ = NODE_NAME.set(name.to_string());
}

/// The info gauge naming the node; node names are checked words, but quotes and backslashes
/// are escaped all the same, as the text format asks.
fn node_info(name: &str) -> String {
    let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "# HELP sealmail_node_info The node that serves this endpoint (server.node_name).\n\
         # TYPE sealmail_node_info gauge\n\
         sealmail_node_info{{node=\"{escaped}\"}} 1\n"
    )
}

/// The last daily check of each served domain: its score (0-100) and grade (A = 4 down to
/// F = 0), by domain. Gauges by domain are written here rather than as a prometheus-client
/// family, which would print its help text before any domain was checked, and so change the
/// exposition that the counters' test holds fixed.
static CHECK_RESULTS: std::sync::Mutex<std::collections::BTreeMap<String, (u32, u32)>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Sets `sealmail_check_score{domain="DOMAIN"}` and `sealmail_check_grade{domain="DOMAIN"}`.
pub fn set_check_result(domain: &str, score: u32, grade: u32) {
    let mut results = CHECK_RESULTS.lock().unwrap_or_else(|p| p.into_inner());
    results.insert(domain.to_string(), (score, grade));
}

/// Forgets the domains not in `served` (removed since their last check).
pub fn keep_check_results(served: &[String]) {
    let mut results = CHECK_RESULTS.lock().unwrap_or_else(|p| p.into_inner());
    results.retain(|domain, _| served.contains(domain));
}

/// The two check gauges of `results`, nothing before the first check.
fn check_gauges(results: &std::collections::BTreeMap<String, (u32, u32)>) -> String {
    if results.is_empty() {
        return String::new();
    }
    let mut score = String::from(
        "# HELP sealmail_check_score Score (0-100) of the last daily check of the domain.\n\
         # TYPE sealmail_check_score gauge\n",
    );
    let mut grade = String::from(
        "# HELP sealmail_check_grade Grade of the last daily check of the domain: A 4, B 3, C 2, D 1, F 0.\n\
         # TYPE sealmail_check_grade gauge\n",
    );
    for (domain, (points, letter)) in results.iter() {
        let domain = domain.replace('\\', "\\\\").replace('"', "\\\"");
        score.push_str(&format!("sealmail_check_score{{domain=\"{domain}\"}} {points}\n"));
        grade.push_str(&format!("sealmail_check_grade{{domain=\"{domain}\"}} {letter}\n"));
    }
    score + &grade
}

/// The exposition text, in the Prometheus text format ([`CONTENT_TYPE`]).
pub fn render() -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_text::encode(&mut out, &REGISTRY)?;
    out.push_str(&check_gauges(
        &CHECK_RESULTS.lock().unwrap_or_else(|p| p.into_inner()),
    ));
    if let Some(name) = NODE_NAME.get() {
        out.push_str(&node_info(name));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exposition as the hand-written encoder wrote it before prometheus-client: scrapers
    /// and dashboards read these names and help texts, so they may not change.
    const BEFORE: &[(&str, &str, &LazyLock<Counter>)] = &[
        (
            "sealmail_connections_accepted_total",
            "Connections accepted and served.",
            &CONNECTIONS_ACCEPTED,
        ),
        (
            "sealmail_connections_refused_total",
            "Connections refused at accept time (banned, not allowed, or over a cap).",
            &CONNECTIONS_REFUSED,
        ),
        (
            "sealmail_tls_handshake_failures_total",
            "TLS handshakes that failed or timed out.",
            &TLS_HANDSHAKE_FAILURES,
        ),
        (
            "sealmail_auth_successes_total",
            "Successful logins.",
            &AUTH_SUCCESSES,
        ),
        ("sealmail_auth_failures_total", "Failed logins.", &AUTH_FAILURES),
        ("sealmail_bans_total", "Bans added.", &BANS),
        (
            "sealmail_abuse_events_total",
            "Relay attempts, unknown recipients and sessions closed for errors.",
            &ABUSE_EVENTS,
        ),
        (
            "sealmail_rate_limited_total",
            "Requests refused by a rate limit.",
            &RATE_LIMITED,
        ),
        (
            "sealmail_security_events_dropped_total",
            "Security events dropped because the writer's queue was full (a flood).",
            &SECURITY_EVENTS_DROPPED,
        ),
        (
            "sealmail_messages_accepted_total",
            "Messages accepted (250 after DATA or BDAT LAST).",
            &MESSAGES_ACCEPTED,
        ),
        (
            "sealmail_messages_refused_total",
            "Messages refused at the end of DATA or BDAT.",
            &MESSAGES_REFUSED,
        ),
        // Counters added later come after these, so the order above never changes.
        (
            "sealmail_certificate_expiry_warnings_total",
            "Checks that found a served certificate expiring within 14 days.",
            &CERTIFICATE_EXPIRY_WARNINGS,
        ),
        (
            "sealmail_messages_delivered_total",
            "Recipients delivered to a remote server.",
            &MESSAGES_DELIVERED,
        ),
        (
            "sealmail_messages_bounced_total",
            "Recipients that failed permanently.",
            &MESSAGES_BOUNCED,
        ),
    ];

    #[test]
    fn the_exposition_keeps_every_name_help_text_and_type() -> Result<(), std::fmt::Error> {
        // Only this test counts in this binary, so the values are known.
        for (n, (_, _, counter)) in BEFORE.iter().enumerate() {
            for _ in 0..=n {
                counter.inc();
            }
        }
        let mut expected = String::new();
        for (n, (name, help, _)) in BEFORE.iter().enumerate() {
            expected.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                n + 1
            ));
        }
        assert_eq!(render()?, expected);
        assert_eq!(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
        Ok(())
    }

    #[test]
    fn the_check_gauges_show_each_domain_checked() {
        // Not through the process-wide results: the exposition test beside this one
        // expects none.
        assert_eq!(check_gauges(&Default::default()), "");
        let results: std::collections::BTreeMap<String, (u32, u32)> =
            [("b.example", (70, 2)), ("a.example", (100, 4))]
                .into_iter()
                .map(|(domain, result)| (domain.to_string(), result))
                .collect();
        let text = check_gauges(&results);
        assert!(text.contains("# TYPE sealmail_check_score gauge\nsealmail_check_score{domain=\"a.example\"} 100\nsealmail_check_score{domain=\"b.example\"} 70\n"), "{text}");
        assert!(
            text.contains(
                "sealmail_check_grade{domain=\"a.example\"} 4\nsealmail_check_grade{domain=\"b.example\"} 2\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_node_info_gauge_names_the_node() {
        assert_eq!(
            node_info("mail1"),
            "# HELP sealmail_node_info The node that serves this endpoint (server.node_name).\n\
             # TYPE sealmail_node_info gauge\nsealmail_node_info{node=\"mail1\"} 1\n"
        );
        assert!(node_info("a\"b").contains("node=\"a\\\"b\""));
    }
}
