//! The Prometheus `/metrics` endpoint, served with hyper (HTTP/1.1 only).
//!
//! Off unless `[metrics] bind` is set (on loopback unless `allow_remote`: `sealmail-config`
//! checks that). It answers `GET /metrics` (and `HEAD`) with [`crate::render`], and `404` to
//! anything else. Request bodies are never read: the answer does not wait for one, and hyper
//! closes a connection whose request body was not read to its end. At most
//! [`Limits::max_connections`] connections are served at once; as many more are answered
//! `503`, the rest are closed on accept. Each connection has [`Limits::header_timeout`] to send
//! a request's header (the first one, and each next one on a kept-alive connection, so an idle
//! connection is closed after that long), and [`Limits::connection_timeout`] in all: then it is
//! closed, an answer under way getting `header_timeout` more to finish. So a silent, slow or
//! chatty client frees its slot. A request head may be at most 8 KiB. Nothing here touches the
//! mail path: the counters it reads are atomics, and it runs on its own tasks.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Connections served at once; a scraper needs one, a few more cover retries and curious admins.
pub const MAX_CONNECTIONS: usize = 8;
/// Time a client has to send a request's header; a connection may stay open twice as long.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head read (hyper's smallest read buffer).
const MAX_REQUEST_HEAD: usize = 8192;

/// How much of the process the endpoint may take. [`Limits::default`] is what the server uses;
/// tests shorten the times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; as many more get `503`, the rest are closed.
    pub max_connections: usize,
    /// Time to send a request's header, counted from the connection's start or the previous
    /// answer.
    pub header_timeout: Duration,
    /// The longest a connection stays open, keep-alive included; an answer under way then gets
    /// `header_timeout` more.
    pub connection_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: MAX_CONNECTIONS,
            header_timeout: TIMEOUT,
            connection_timeout: TIMEOUT * 2,
        }
    }
}

/// Binds the metrics endpoint.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(address).await.map_err(|e| {
        format!("cannot listen on metrics.bind {address}: {e}; change metrics.bind or remove it")
    })
}

/// Serves `GET /metrics` on `socket` until `shutdown`, with the default [`Limits`].
pub async fn serve(socket: TcpListener, shutdown: CancellationToken) {
    serve_with(socket, Limits::default(), shutdown).await;
}

/// Serves `GET /metrics` on `socket` until `shutdown`; connections open then are closed as
/// soon as their answer under way (if any) is written, within `limits.header_timeout`.
pub async fn serve_with(socket: TcpListener, limits: Limits, shutdown: CancellationToken) {
    let permits = limits.max_connections.min(Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(permits));
    let refusals = Arc::new(Semaphore::new(permits));
    loop {
        let accepted = tokio::select! {
            accepted = socket.accept() => accepted,
            () = shutdown.cancelled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::debug!(%error, "metrics endpoint cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Ok(slot) = slots.clone().try_acquire_owned() {
            let shutdown = shutdown.clone();
            tokio::spawn(connection(tcp, peer, Answer::Metrics, limits, shutdown, slot));
        } else if let Ok(refusal) = refusals.clone().try_acquire_owned() {
            // Told so: hyper reads the request before answering, so that closing does not
            // reset the connection before the answer is read.
            tracing::debug!(%peer, "metrics connection refused: too many at once");
            let shutdown = shutdown.clone();
            tokio::spawn(connection(tcp, peer, Answer::Busy, limits, shutdown, refusal));
        } else {
            tracing::debug!(%peer, "metrics connection closed: too many at once");
            drop(tcp);
        }
    }
}

/// What a connection is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// The metrics at `/metrics`, `404` elsewhere.
    Metrics,
    /// `503` to one request, then a close: the connection is past the cap.
    Busy,
}

/// Serves one connection within `limits`, holding `_slot` until it is closed.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    answer: Answer,
    limits: Limits,
    shutdown: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_REQUEST_HEAD)
        .keep_alive(answer == Answer::Metrics);
    let service = service_fn(move |request: Request<Incoming>| {
        std::future::ready(Ok::<_, Infallible>(respond(answer, &request)))
    });
    let served = http.serve_connection(TokioIo::new(tcp), service);
    let mut served = std::pin::pin!(served);
    tokio::select! {
        result = served.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "metrics connection ended");
            }
            return;
        }
        () = tokio::time::sleep(limits.connection_timeout) => {
            tracing::debug!(%peer, "metrics connection open too long");
        }
        () = shutdown.cancelled() => {}
    }
    // Closes an idle connection now; an answer under way is finished first, within bounds.
    served.as_mut().graceful_shutdown();
    if tokio::time::timeout(limits.header_timeout, served).await.is_err() {
        tracing::debug!(%peer, "metrics client too slow");
    }
}

/// The answer to one request.
fn respond(answer: Answer, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let wanted =
        matches!(*request.method(), Method::GET | Method::HEAD) && request.uri().path() == "/metrics";
    let (status, body) = match answer {
        Answer::Busy => (StatusCode::SERVICE_UNAVAILABLE, None),
        Answer::Metrics if wanted => match crate::render() {
            Ok(text) => (StatusCode::OK, Some(text)),
            Err(error) => {
                tracing::warn!(%error, "cannot encode the metrics");
                (StatusCode::INTERNAL_SERVER_ERROR, None)
            }
        },
        Answer::Metrics => (StatusCode::NOT_FOUND, None),
    };
    let mut response = Response::new(Full::new(body.map(Bytes::from).unwrap_or_default()));
    *response.status_mut() = status;
    if status == StatusCode::OK {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::CONTENT_TYPE),
        );
    }
    response
}
