//! The `/metrics` endpoint over real sockets on 127.0.0.1: the exposition, the routes, the
//! connection cap, and every time bound (silent, trickling, kept-alive and busy clients), with
//! short limits so that nothing waits the server's 5 s.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sealmail_metrics::{Limits, MAX_CONNECTIONS, serve_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// Longer than any test should ever wait for the endpoint.
const PATIENCE: Duration = Duration::from_secs(20);

const GET_METRICS: &str = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";

/// An endpoint served on a free loopback port, shut down when dropped.
struct Endpoint {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(limits: Limits) -> TestResult<Endpoint> {
    let socket = sealmail_metrics::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = socket.local_addr()?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve_with(socket, limits, shutdown.clone()));
    Ok(Endpoint { addr, shutdown, task })
}

/// Limits whose times no test reaches unless it means to.
fn patient() -> Limits {
    Limits {
        max_connections: MAX_CONNECTIONS,
        header_timeout: PATIENCE,
        connection_timeout: PATIENCE * 2,
    }
}

/// One response: its status line, its header lines (names lower-cased) and its body.
#[derive(Debug)]
struct Response {
    status: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response (a head, then a body of its Content-Length; none after `HEAD`), or
/// `None` when the server closes first.
async fn read_response(tcp: &mut TcpStream, head_only: bool) -> TestResult<Option<Response>> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let parse = |buffer: &[u8]| -> TestResult<Option<Response>> {
        let text = String::from_utf8_lossy(buffer);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return Ok(None);
        };
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default().to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let length: usize = match headers.iter().find(|(n, _)| n == "content-length") {
            Some((_, v)) if !head_only => v.parse()?,
            _ => 0,
        };
        if body.len() < length {
            return Ok(None);
        }
        Ok(Some(Response {
            status,
            headers,
            body: body.to_string(),
        }))
    };
    loop {
        if let Some(response) = parse(&buffer)? {
            return Ok(Some(response));
        }
        let n = tokio::time::timeout(PATIENCE, tcp.read(&mut chunk)).await??;
        if n == 0 {
            return if buffer.is_empty() {
                Ok(None)
            } else {
                Err(format!("cut mid-response: {:?}", String::from_utf8_lossy(&buffer)).into())
            };
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// Waits for the server to close `tcp` (a reset counts), and says how long that took.
async fn closed_after(tcp: &mut TcpStream, since: Instant) -> TestResult<Duration> {
    let mut chunk = [0u8; 1024];
    match tokio::time::timeout(PATIENCE, tcp.read(&mut chunk)).await? {
        Ok(0) | Err(_) => Ok(since.elapsed()),
        Ok(n) => Err(format!("unexpected bytes: {:?}", &chunk[..n]).into()),
    }
}

/// Sends `request` on a new connection and reads the one response.
async fn exchange(addr: SocketAddr, request: &str) -> TestResult<Response> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(request.as_bytes()).await?;
    let head_only = request.starts_with("HEAD ");
    read_response(&mut tcp, head_only)
        .await?
        .ok_or_else(|| "closed without an answer".into())
}

fn counter(exposition: &str, name: &str) -> Option<u64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn the_counters_appear_under_their_names_with_their_values() -> TestResult {
    let endpoint = start(patient()).await?;
    // Only this test counts in this binary.
    let before = sealmail_metrics::MESSAGES_REFUSED.get();
    for _ in 0..3 {
        sealmail_metrics::MESSAGES_REFUSED.inc();
    }
    sealmail_metrics::BANS.inc();

    let response = exchange(endpoint.addr, GET_METRICS).await?;
    assert_eq!(response.status, "HTTP/1.1 200 OK", "{response:?}");
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(
        counter(&response.body, "sealmail_messages_refused_total"),
        Some(before + 3),
        "{}",
        response.body
    );
    assert!(counter(&response.body, "sealmail_bans_total").is_some_and(|n| n >= 1));
    for name in [
        "sealmail_connections_accepted_total",
        "sealmail_connections_refused_total",
        "sealmail_tls_handshake_failures_total",
        "sealmail_auth_successes_total",
        "sealmail_auth_failures_total",
        "sealmail_bans_total",
        "sealmail_abuse_events_total",
        "sealmail_rate_limited_total",
        "sealmail_security_events_dropped_total",
        "sealmail_certificate_expiry_warnings_total",
        "sealmail_messages_accepted_total",
        "sealmail_messages_refused_total",
        "sealmail_messages_delivered_total",
        "sealmail_messages_bounced_total",
    ] {
        assert!(
            response.body.contains(&format!("# TYPE {name} counter\n")),
            "{name} missing: {}",
            response.body
        );
        assert!(counter(&response.body, name).is_some(), "{name} has no value");
    }
    assert!(response.body.contains("# HELP sealmail_bans_total Bans added.\n"));
    Ok(())
}

#[tokio::test]
async fn only_get_and_head_of_metrics_are_answered() -> TestResult {
    let endpoint = start(patient()).await?;
    for request in [
        "GET /other HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /metrics/x HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let response = exchange(endpoint.addr, request).await?;
        assert_eq!(response.status, "HTTP/1.1 404 Not Found", "{request:?}");
        assert_eq!(response.body, "");
    }
    let head = exchange(endpoint.addr, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    assert_eq!(head.status, "HTTP/1.1 200 OK");
    // A scraper may add parameters.
    let query = exchange(endpoint.addr, "GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    assert!(query.body.contains("sealmail_bans_total"));
    // Not HTTP at all: closed (hyper answers 400 first).
    let garbage = exchange(endpoint.addr, "HELO example.test\r\n\r\n").await?;
    assert!(garbage.status.starts_with("HTTP/1.1 400"), "{garbage:?}");
    Ok(())
}

#[tokio::test]
async fn past_the_cap_connections_get_503_then_a_close_and_the_endpoint_serves_again() -> TestResult {
    let endpoint = start(patient()).await?;
    // Clients that connect and say nothing take every slot...
    let mut silent = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        silent.push(TcpStream::connect(endpoint.addr).await?);
    }
    // ...so the next is told 503 (and closed)...
    let busy = exchange(endpoint.addr, GET_METRICS).await?;
    assert_eq!(busy.status, "HTTP/1.1 503 Service Unavailable", "{busy:?}");
    let mut tcp = TcpStream::connect(endpoint.addr).await?;
    tcp.write_all(GET_METRICS.as_bytes()).await?;
    let busy = read_response(&mut tcp, false).await?;
    assert!(busy.is_some_and(|r| r.status.starts_with("HTTP/1.1 503")));
    closed_after(&mut tcp, Instant::now()).await?;
    // ...as many more silent ones take every refusal (once the refused above are gone), and
    // the next is closed unanswered.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut refused = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        refused.push(TcpStream::connect(endpoint.addr).await?);
    }
    let mut dropped = TcpStream::connect(endpoint.addr).await?;
    let started = Instant::now();
    // Written before the close or after (then a reset): either way, no answer.
    let _ = dropped.write_all(GET_METRICS.as_bytes()).await;
    assert!(closed_after(&mut dropped, started).await? < PATIENCE / 2);
    // Once they go, it serves again.
    drop(silent);
    drop(refused);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let response = exchange(endpoint.addr, GET_METRICS).await;
        match response {
            Ok(r) if r.status == "HTTP/1.1 200 OK" => break,
            other if Instant::now() > deadline => {
                return Err(format!("not served again: {other:?}").into());
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_silent_or_trickling_client_is_cut_after_the_header_timeout() -> TestResult {
    let limits = Limits {
        header_timeout: Duration::from_millis(300),
        ..patient()
    };
    let endpoint = start(limits).await?;

    let started = Instant::now();
    let mut silent = TcpStream::connect(endpoint.addr).await?;
    let took = closed_after(&mut silent, started).await?;
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "silent client cut after {took:?}"
    );

    // Bytes that never finish a header do not restart the clock.
    let started = Instant::now();
    let (mut reader, mut writer) = TcpStream::connect(endpoint.addr).await?.into_split();
    writer.write_all(b"GET /metrics HTTP/1.1\r\n").await?;
    let trickling = tokio::spawn(async move {
        while writer.write_all(b"X-A: b\r\n").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut rest = Vec::new();
    // The end, or a reset: either way, cut.
    let _ = tokio::time::timeout(PATIENCE, reader.read_to_end(&mut rest)).await?;
    let cut = started.elapsed();
    trickling.abort();
    assert!(
        !String::from_utf8_lossy(&rest).contains(" 200 "),
        "a header that never ended was answered"
    );
    assert!(
        cut >= Duration::from_millis(250) && cut < Duration::from_secs(3),
        "trickling client cut after {cut:?}"
    );

    // The slots they held are free again: all of them serve.
    let mut served = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        let mut tcp = TcpStream::connect(endpoint.addr).await?;
        tcp.write_all(GET_METRICS.as_bytes()).await?;
        served.push(tcp);
    }
    for tcp in &mut served {
        let response = read_response(tcp, false).await?;
        assert!(response.is_some_and(|r| r.status == "HTTP/1.1 200 OK"));
    }
    Ok(())
}

#[tokio::test]
async fn keep_alive_is_bounded_by_the_header_and_connection_timeouts() -> TestResult {
    // An idle kept-alive connection is closed when its next header is late.
    let quick = start(Limits {
        header_timeout: Duration::from_millis(300),
        ..patient()
    })
    .await?;
    let mut idle = TcpStream::connect(quick.addr).await?;
    idle.write_all(GET_METRICS.as_bytes()).await?;
    assert!(read_response(&mut idle, false).await?.is_some());
    let took = closed_after(&mut idle, Instant::now()).await?;
    assert!(took < Duration::from_secs(3), "idle connection kept {took:?}");

    let endpoint = start(Limits {
        header_timeout: Duration::from_millis(400),
        connection_timeout: Duration::from_millis(1500),
        ..patient()
    })
    .await?;
    // A client that keeps asking is served, until the connection's time is up.
    let started = Instant::now();
    let mut chatty = TcpStream::connect(endpoint.addr).await?;
    let mut answers = 0;
    loop {
        if chatty.write_all(GET_METRICS.as_bytes()).await.is_err() {
            break;
        }
        match read_response(&mut chatty, false).await {
            Ok(Some(response)) => {
                assert_eq!(response.status, "HTTP/1.1 200 OK");
                answers += 1;
            }
            Ok(None) | Err(_) => break,
        }
        if started.elapsed() > PATIENCE {
            return Err("a chatty connection was never closed".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    assert!(answers >= 3, "only {answers} answers on one connection");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(5),
        "chatty connection closed after {took:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_request_body_is_never_read_the_connection_is_closed_instead() -> TestResult {
    let endpoint = start(patient()).await?;
    let mut tcp = TcpStream::connect(endpoint.addr).await?;
    // Announces far more than it sends: reading it would wait for the rest.
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nsome")
        .await?;
    let started = Instant::now();
    let response = read_response(&mut tcp, false)
        .await?
        .ok_or("closed without an answer")?;
    assert_eq!(response.status, "HTTP/1.1 200 OK");
    assert_eq!(response.header("connection"), Some("close"));
    let took = closed_after(&mut tcp, started).await?;
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    Ok(())
}

#[tokio::test]
async fn shutdown_stops_accepting_and_closes_idle_connections() -> TestResult {
    let mut endpoint = start(patient()).await?;
    let mut idle = TcpStream::connect(endpoint.addr).await?;
    idle.write_all(GET_METRICS.as_bytes()).await?;
    assert!(read_response(&mut idle, false).await?.is_some());

    let started = Instant::now();
    endpoint.shutdown.cancel();
    tokio::time::timeout(PATIENCE, &mut endpoint.task).await??;
    let took = closed_after(&mut idle, started).await?;
    assert!(took < Duration::from_secs(3), "idle connection kept {took:?}");
    assert!(TcpStream::connect(endpoint.addr).await.is_err());
    Ok(())
}

#[tokio::test]
async fn bind_names_the_setting_when_the_address_is_taken() -> TestResult {
    let taken = sealmail_metrics::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let error = sealmail_metrics::bind(taken.local_addr()?)
        .await
        .err()
        .ok_or("bound twice")?;
    assert!(error.contains("metrics.bind"), "{error}");
    Ok(())
}
