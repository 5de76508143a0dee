//! The served certificates: `sealmail cert status`, and the warning (log, metric, security
//! event) when one expires within 14 days.

mod common;

use std::time::Duration;

use sealmail_testkit::{TestResult, ctx};

/// The `sealmail security events` lines of `kind`.
fn events_of(dir: &std::path::Path, config: &std::path::Path, kind: &str) -> TestResult<Vec<String>> {
    let (code, out, err) = common::admin(dir, config, &["security", "events", "--since", "1h"])?;
    if code != 0 {
        return Err(format!("security events: exit {code}: {out}{err}"));
    }
    Ok(out
        .lines()
        .filter(|l| l.contains(&format!("\"kind\":\"{kind}\"")))
        .map(str::to_string)
        .collect())
}

fn metric(body: &str, name: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_expiring_within_14_days_is_reported_counted_and_recorded() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let (imap, metrics) = (common::free_addr()?, common::free_addr()?);
    let config = common::write_config(
        dir.path(),
        &["mail.example.test", "old.example.test"],
        &[("imap", imap, "implicit")],
        &format!("[metrics]\nbind = \"{metrics}\"\n"),
    )?;
    // The second certificate is replaced by one valid for 5 more days.
    let short = sealmail_config::CertificateFiles {
        cert: dir.path().join("tls/1.pem"),
        key: dir.path().join("tls/1.key"),
    };
    ctx(std::fs::remove_file(&short.cert), "rm")?;
    ctx(std::fs::remove_file(&short.key), "rm")?;
    ctx(
        sealmail_tls::selfsigned::generate(&["old.example.test".to_string()], &short, 5),
        "generate",
    )?;

    let (code, status, err) = common::admin(dir.path(), &config, &["cert", "status"])?;
    assert_eq!(code, 0, "{err}");
    let blocks: Vec<&str> = status.split("certificate ").filter(|b| !b.is_empty()).collect();
    assert_eq!(blocks.len(), 2, "{status}");
    assert!(blocks[0].contains("names: mail.example.test"), "{status}");
    assert!(blocks[0].contains("issuer: CN=mail.example.test"), "{status}");
    assert!(blocks[0].contains("renewal: by hand"), "{status}");
    assert!(!blocks[0].contains("WARNING"), "{status}");
    assert!(blocks[1].contains("names: old.example.test"), "{status}");
    assert!(
        blocks[1].contains("WARNING: expires within 14 days")
            && (blocks[1].contains("(5 days)") || blocks[1].contains("(4 days)")),
        "{status}"
    );

    let process = common::serve(dir.path(), &config).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let events = loop {
        let events = events_of(dir.path(), &config, "certificate_expiring")?;
        if !events.is_empty() || std::time::Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(
        events.len(),
        1,
        "one event, for the short certificate: {events:?}"
    );
    assert!(
        events[0].contains("old.example.test") && events[0].contains("1.pem"),
        "{events:?}"
    );
    assert!(
        process.errors().contains("CERTIFICATE EXPIRES SOON"),
        "{}",
        process.errors()
    );
    let body = ctx(reqwest_get(&format!("http://{metrics}/metrics")).await, "metrics")?;
    assert_eq!(
        metric(&body, "sealmail_certificate_expiry_warnings_total"),
        Some(1),
        "{body}"
    );
    Ok(())
}

/// A plain HTTP GET over a TCP socket (the metrics endpoint speaks HTTP/1.1).
async fn reqwest_get(url: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").ok_or("not http")?;
    let (authority, path) = rest.split_once('/').ok_or("no path")?;
    let mut tcp = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| e.to_string())?;
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut body = String::new();
    tcp.read_to_string(&mut body).await.map_err(|e| e.to_string())?;
    Ok(body)
}
