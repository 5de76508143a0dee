//! Counters for the Prometheus `/metrics` endpoint (text format 0.0.4), and the endpoint.
//!
//! The counters are process-wide statics: every part of the server counts into them without
//! threading a handle through each constructor, and a process serves one metrics endpoint.
//! The endpoint is off unless `[metrics] bind` is set (on loopback unless `allow_remote`); it
//! answers `GET /metrics` and nothing else, reads at most one bounded request per connection,
//! serves at most `MAX_CONNECTIONS` at once (as many more get `503`, the rest a close), gives each
//! `TIMEOUT` to send its request and as long again to take the answer, and never blocks the mail path.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Connections served at once; a scraper needs one, a few more cover retries and curious admins.
pub const MAX_CONNECTIONS: usize = 8;
/// Time a client has to send its request, and again to read the answer.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A monotonically increasing counter.
pub struct Counter {
    name: &'static str,
    help: &'static str,
    value: AtomicU64,
}

impl Counter {
    const fn new(name: &'static str, help: &'static str) -> Counter {
        Counter {
            name,
            help,
            value: AtomicU64::new(0),
        }
    }

    pub fn inc(&self) {
        self.value.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

pub static CONNECTIONS_ACCEPTED: Counter = Counter::new(
    "sealmail_connections_accepted_total",
    "Connections accepted and served.",
);
pub static CONNECTIONS_REFUSED: Counter = Counter::new(
    "sealmail_connections_refused_total",
    "Connections refused at accept time (banned, not allowed, or over a cap).",
);
pub static TLS_HANDSHAKE_FAILURES: Counter = Counter::new(
    "sealmail_tls_handshake_failures_total",
    "TLS handshakes that failed or timed out.",
);
pub static AUTH_SUCCESSES: Counter = Counter::new("sealmail_auth_successes_total", "Successful logins.");
pub static AUTH_FAILURES: Counter = Counter::new("sealmail_auth_failures_total", "Failed logins.");
pub static BANS: Counter = Counter::new("sealmail_bans_total", "Bans added.");
pub static ABUSE_EVENTS: Counter = Counter::new(
    "sealmail_abuse_events_total",
    "Relay attempts, unknown recipients and sessions closed for errors.",
);
pub static RATE_LIMITED: Counter =
    Counter::new("sealmail_rate_limited_total", "Requests refused by a rate limit.");
pub static SECURITY_EVENTS_DROPPED: Counter = Counter::new(
    "sealmail_security_events_dropped_total",
    "Security events dropped because the writer's queue was full (a flood).",
);
pub static MESSAGES_ACCEPTED: Counter = Counter::new(
    "sealmail_messages_accepted_total",
    "Messages accepted (250 after DATA or BDAT LAST).",
);
pub static MESSAGES_REFUSED: Counter = Counter::new(
    "sealmail_messages_refused_total",
    "Messages refused at the end of DATA or BDAT.",
);

const ALL: &[&Counter] = &[
    &CONNECTIONS_ACCEPTED,
    &CONNECTIONS_REFUSED,
    &TLS_HANDSHAKE_FAILURES,
    &AUTH_SUCCESSES,
    &AUTH_FAILURES,
    &BANS,
    &ABUSE_EVENTS,
    &RATE_LIMITED,
    &SECURITY_EVENTS_DROPPED,
    &MESSAGES_ACCEPTED,
    &MESSAGES_REFUSED,
];

/// The exposition text.
pub fn render() -> String {
    let mut out = String::new();
    for counter in ALL {
        let _ = writeln!(out, "# HELP {} {}", counter.name, counter.help);
        let _ = writeln!(out, "# TYPE {} counter", counter.name);
        let _ = writeln!(out, "{} {}", counter.name, counter.get());
    }
    out
}

/// Serves `GET /metrics` on `socket` until `shutdown`.
pub async fn serve(socket: TcpListener, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let refusals = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = socket.accept() => accepted,
            _ = shutdown.cancelled() => return,
        };
        let Ok((mut tcp, peer)) = accepted else {
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics connection refused: too many at once");
            // Told so when a refusal slot is free (its request is read first, so that closing
            // does not reset the connection before the answer is read); past that, just closed.
            if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(TIMEOUT, refuse(&mut tcp)).await;
                    drop(refusal);
                });
            }
            continue;
        };
        tokio::spawn(async move {
            // The whole exchange is bounded, so a silent or slow client frees its slot.
            if tokio::time::timeout(TIMEOUT * 2, answer(&mut tcp)).await.is_err() {
                tracing::debug!(%peer, "metrics client too slow");
            }
            drop(slot);
        });
    }
}

/// Reads (up to 2 KiB of) the request and answers `503`.
async fn refuse(tcp: &mut TcpStream) {
    let mut request = [0u8; 2048];
    let _ = tcp.read(&mut request).await;
    let busy = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let _ = tcp.write_all(busy).await;
    let _ = tcp.shutdown().await;
}

/// Reads one request (one read, at most 2 KiB, within `TIMEOUT`) and answers it.
async fn answer(tcp: &mut TcpStream) {
    let mut request = [0u8; 2048];
    let read = tokio::time::timeout(TIMEOUT, tcp.read(&mut request)).await;
    let Ok(Ok(n)) = read else { return };
    let response = if request[..n].starts_with(b"GET /metrics ") {
        let body = render();
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
    };
    if tcp.write_all(response.as_bytes()).await.is_err() {
        tracing::debug!("metrics client went away");
    }
    let _ = tcp.shutdown().await;
}

/// Binds the metrics endpoint.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(address).await.map_err(|e| {
        format!("cannot listen on metrics.bind {address}: {e}; change metrics.bind or remove it")
    })
}
