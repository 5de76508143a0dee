//! Intrusion prevention end to end: brute force from one loopback address gets it banned at
//! accept time while another address logs in; the ban is explained, survives a restart, can be
//! lifted while the server runs, and expires on time.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use nix::sys::signal::Signal;
use rustls::version::TLS13;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{Instance, credentials};
use sealmail_testkit::{LineClient, TestResult, ctx, tcp_from, tls_upgrade};

const NAME: &str = "mail.example.test";

/// One AUTH PLAIN attempt on submission over implicit TLS from `source`; returns the replies
/// after the AUTH line (the 235/535 and, when the session is ended, a 421).
async fn try_login(
    source: [u8; 4],
    addr: SocketAddr,
    instance_cert: &std::path::Path,
    user: &str,
    password: &str,
) -> TestResult<Vec<String>> {
    let client = sealmail_testkit::client_config(&[instance_cert], &[&TLS13], &[])?;
    let tcp = tcp_from(source, addr).await?;
    let mut c = LineClient::new(tls_upgrade(tcp, client, NAME).await?);
    c.smtp_reply().await?;
    c.send("EHLO attacker.test\r\n").await?;
    c.smtp_reply().await?;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    c.send(&format!("AUTH PLAIN {token}\r\n")).await?;
    let mut replies = vec![c.smtp_reply().await?];
    if let Ok(Ok(line)) = tokio::time::timeout(Duration::from_millis(300), c.line()).await {
        replies.push(line);
    }
    Ok(replies)
}

/// What a client from `source` gets on the STARTTLS MX port: the first line, or "" when closed.
async fn greeting_from(source: [u8; 4], addr: SocketAddr) -> TestResult<String> {
    let mut c = LineClient::new(tcp_from(source, addr).await?);
    Ok(c.line().await.unwrap_or_default())
}

#[tokio::test]
async fn brute_force_bans_the_address_not_its_neighbours_and_the_ban_outlives_a_restart() -> TestResult {
    let mut instance = Instance::quickstart().await?;
    let submission = instance.addr(2465);
    let mx = instance.addr(2525);
    let alice = credentials(&instance)?["alice@example.test"].clone();
    let attacker = [127, 0, 0, 2];
    let bystander = [127, 0, 0, 3];

    let mut banned_after = None;
    for attempt in 1..=20 {
        match try_login(
            attacker,
            submission,
            &instance.cert(),
            "alice@example.test",
            "guess-{attempt}",
        )
        .await
        {
            Ok(replies) => {
                assert!(
                    replies[0].starts_with("535 5.7.8"),
                    "attempt {attempt}: {replies:?}"
                );
                if replies.iter().any(|r| r.starts_with("421 4.7.0")) {
                    banned_after = Some(attempt);
                    break;
                }
            }
            Err(e) => panic!("attempt {attempt} failed before AUTH: {e}"),
        }
    }
    assert_eq!(banned_after, Some(5), "the default threshold is 5 failures");

    // Refused at accept time, within a second: SMTP says 421 in plaintext, implicit TLS just closes.
    let started = Instant::now();
    let refusal = greeting_from(attacker, mx).await?;
    assert!(refusal.starts_with("421 4.7.0"), "{refusal:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    let mut imap = LineClient::new(tcp_from(attacker, instance.addr(2143)).await?);
    assert!(
        imap.line().await?.starts_with("* BYE"),
        "IMAP did not refuse the banned address"
    );
    let mut implicit = tcp_from(attacker, submission).await?;
    let hello = sealmail_testkit::client_hello(sealmail_testkit::TLS1_2, &[0xc02b], NAME);
    let answer = sealmail_testkit::send_client_hello(&mut implicit, &hello).await?;
    assert_eq!(
        answer,
        sealmail_testkit::HelloAnswer::Closed,
        "a banned client got a TLS handshake"
    );
    // The https listener refuses it the same way.
    let mut https = tcp_from(attacker, instance.addr(2443)).await?;
    let answer = sealmail_testkit::send_client_hello(&mut https, &hello).await?;
    assert_eq!(
        answer,
        sealmail_testkit::HelloAnswer::Closed,
        "a banned client got a TLS handshake on https"
    );

    // The bystander is unaffected.
    let ok = try_login(
        bystander,
        submission,
        &instance.cert(),
        "alice@example.test",
        &alice,
    )
    .await?;
    assert!(ok[0].starts_with("235"), "{ok:?}");

    // The ban is explained by the events that caused it.
    let config = instance
        .data_dir()
        .join("sealmail.toml")
        .to_string_lossy()
        .into_owned();
    let (code, out, err) = common::run(
        instance.root.path(),
        &["--config", &config, "security", "bans", "list"],
        None,
    )?;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("127.0.0.2 banned until"), "{out}");
    assert_eq!(out.matches("\"kind\":\"auth_failure\"").count(), 5, "{out}");
    assert!(
        !out.contains("guess-"),
        "a password appeared in the event log: {out}"
    );
    let (_, events, _) = common::run(
        instance.root.path(),
        &["--config", &config, "security", "events", "--since", "1h"],
        None,
    )?;
    assert!(
        events.contains("\"kind\":\"ban_added\"") && events.contains("\"kind\":\"auth_success\""),
        "{events}"
    );

    // The same events are in the JSON lines event log in the data folder, which only sealmail reads.
    let log_path = instance.data_dir().join("security-events.jsonl");
    let log = ctx(std::fs::read_to_string(&log_path), "event log")?;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        ctx(std::fs::metadata(&log_path), "stat")?.permissions().mode() & 0o777,
        0o600
    );
    for line in log.lines() {
        assert!(
            line.starts_with("{\"") && line.ends_with('}') && line.contains("\"kind\":"),
            "{line}"
        );
    }
    let failures = log
        .lines()
        .filter(|l| l.contains("\"auth_failure\"") && l.contains("\"127.0.0.2\""))
        .count();
    assert_eq!(failures, 5, "{log}");
    assert!(!log.contains("guess-"), "a password reached the event log");

    // A restart keeps the ban.
    instance.process.signal(Signal::SIGTERM)?;
    instance.process.wait_exit(Duration::from_secs(30)).await?;
    let offset = instance.offset.to_string();
    let restarted = sealmail_testkit::Sealmail::spawn(
        common::bin(),
        &["quickstart", "--port-offset", &offset],
        instance.root.path(),
        instance.root.path(),
    )?;
    restarted
        .wait_for_log("sealmail ready", Duration::from_secs(60))
        .await?;
    assert!(
        greeting_from(attacker, mx).await?.starts_with("421 4.7.0"),
        "ban lost in a restart"
    );

    // Lifting the ban takes effect in the running server.
    let (code, out, _) = common::run(
        instance.root.path(),
        &["--config", &config, "security", "unban", "127.0.0.2"],
        None,
    )?;
    assert_eq!(code, 0);
    assert!(out.contains("lifted 1 ban(s) of 127.0.0.2"), "{out}");
    let deadline = Instant::now() + sealmail_guard::REFRESH + Duration::from_secs(3);
    loop {
        if greeting_from(attacker, mx).await?.starts_with("220 ") {
            break;
        }
        assert!(Instant::now() < deadline, "unban not seen by the running server");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test]
async fn bans_expire_on_time_and_trusted_networks_are_never_banned() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let (mx, submission) = (common::free_addr()?, common::free_addr()?);
    let extra = "[security]\nauth_failures = 2\nban_secs = 2\ntrusted = [\"127.0.0.4/32\"]\n";
    let listeners = [("mx", mx, "starttls"), ("submission", submission, "implicit")];
    let config = common::config_with_users(dir.path(), "example.test", &["alice"], &listeners, extra)?;
    let _server = common::serve(dir.path(), &config).await?;
    let cert = dir.path().join("tls/0.pem");

    for _ in 0..2 {
        try_login(
            [127, 0, 0, 5],
            submission,
            &cert,
            "alice@example.test",
            "wrong password",
        )
        .await?;
    }
    assert!(
        greeting_from([127, 0, 0, 5], mx).await?.starts_with("421"),
        "not banned"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        greeting_from([127, 0, 0, 5], mx).await?.starts_with("220 "),
        "ban did not expire"
    );

    for _ in 0..6 {
        let replies = try_login(
            [127, 0, 0, 4],
            submission,
            &cert,
            "alice@example.test",
            "wrong password",
        )
        .await?;
        assert!(
            !replies.iter().any(|r| r.starts_with("421")),
            "trusted address banned: {replies:?}"
        );
    }
    assert!(greeting_from([127, 0, 0, 4], mx).await?.starts_with("220 "));
    Ok(())
}

#[tokio::test]
async fn an_account_over_its_hourly_message_limit_gets_451_and_an_event() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let submission = common::free_addr()?;
    let extra = "[smtp]\nmessages_per_hour = 3\nrecipients_per_hour = 4\n";
    let listeners = [("submission", submission, "implicit")];
    let config = common::config_with_users(dir.path(), "example.test", &["alice", "bob"], &listeners, extra)?;
    let _server = common::serve(dir.path(), &config).await?;
    let client = sealmail_testkit::client_config(&[&dir.path().join("tls/0.pem")], &[&TLS13], &[])?;
    let login = |user: &'static str| {
        let client = client.clone();
        async move {
            let tcp = ctx(TcpStream::connect(submission).await, "connect")?;
            let mut c = LineClient::new(tls_upgrade(tcp, client, NAME).await?);
            c.smtp_reply().await?;
            c.send("EHLO c.test\r\n").await?;
            c.smtp_reply().await?;
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0a long enough password"));
            c.send(&format!("AUTH PLAIN {token}\r\n")).await?;
            let reply = c.smtp_reply().await?;
            if !reply.starts_with("235") {
                return Err(format!("login failed: {reply}"));
            }
            Ok::<_, String>(c)
        }
    };
    let mut alice = login("alice@example.test").await?;
    let mail = async |c: &mut LineClient<_>, from: &str| -> TestResult<String> {
        c.send(&format!("MAIL FROM:<{from}>\r\n")).await?;
        let reply = c.smtp_reply().await?;
        if !reply.starts_with("250") {
            return Ok(reply);
        }
        c.send("RCPT TO:<bob@example.test>\r\n").await?;
        let rcpt = c.smtp_reply().await?;
        c.send("RSET\r\n").await?;
        c.smtp_reply().await?;
        Ok(rcpt)
    };
    for n in 1..=3 {
        let reply = mail(&mut alice, "alice@example.test").await?;
        assert!(reply.starts_with("250"), "message {n}: {reply}");
    }
    let over = mail(&mut alice, "alice@example.test").await?;
    assert!(over.starts_with("451 4.7.1"), "{over}");
    let mut bob = login("bob@example.test").await?;
    assert!(
        mail(&mut bob, "bob@example.test").await?.starts_with("250"),
        "another account was limited"
    );

    let (_, events, _) = common::admin(dir.path(), &config, &["security", "events"])?;
    assert!(
        events
            .lines()
            .any(|l| l.contains("\"kind\":\"rate_limited\"") && l.contains("alice@example.test")),
        "{events}"
    );
    Ok(())
}

/// Sends RCPT after RCPT on the MX from `source` until the session ends; returns how many
/// RCPTs were answered before the 421.
async fn probe_recipients(source: [u8; 4], mx: SocketAddr, domain: &str) -> TestResult<usize> {
    let mut c = LineClient::new(tcp_from(source, mx).await?);
    c.smtp_reply().await?;
    c.send("EHLO prober.test\r\n").await?;
    c.smtp_reply().await?;
    c.send("MAIL FROM:<x@prober.test>\r\n").await?;
    c.smtp_reply().await?;
    for n in 0..40 {
        c.send(&format!("RCPT TO:<user{n}@{domain}>\r\n")).await?;
        let reply = c.smtp_reply().await?;
        if reply.contains("421 4.7.0") {
            return Ok(n + 1);
        }
        if !reply.starts_with("550") {
            return Err(format!("unexpected {reply}"));
        }
        // A ban ends the session with a 421 right after the reply that caused it.
        if let Ok(Ok(next)) = tokio::time::timeout(Duration::from_millis(200), c.line()).await {
            if next.starts_with("421 4.7.0") {
                return Ok(n + 1);
            }
            return Err(format!("unexpected {next}"));
        }
    }
    Err("never banned".into())
}

#[tokio::test]
async fn directory_harvesting_and_relay_probing_lead_to_a_ban() -> TestResult {
    let instance = Instance::quickstart().await?;
    let mx = instance.addr(2525);
    // Unknown recipients count half as much as a failed login: 10 of them ban.
    assert_eq!(probe_recipients([127, 0, 0, 6], mx, "example.test").await?, 10);
    assert!(greeting_from([127, 0, 0, 6], mx).await?.starts_with("421 4.7.0"));
    // Relay attempts count like failed logins: 5 ban.
    assert_eq!(probe_recipients([127, 0, 0, 7], mx, "elsewhere.test").await?, 5);
    assert!(greeting_from([127, 0, 0, 7], mx).await?.starts_with("421 4.7.0"));
    // TLS handshake garbage after our key share on an implicit-TLS port counts a quarter of a
    // failed login: 20 ban.
    let submission = instance.addr(2465);
    let hello = sealmail_testkit::client_hello(sealmail_testkit::TLS1_2, &[0xc02b], NAME);
    for _ in 0..20 {
        let mut tcp = tcp_from([127, 0, 0, 11], submission).await?;
        let answer = sealmail_testkit::send_client_hello(&mut tcp, &hello).await?;
        assert_eq!(answer, sealmail_testkit::HelloAnswer::ServerHello);
        // Application data in the middle of the handshake.
        ctx(tcp.write_all(b"\x17\x03\x03\x00\x05hello").await, "garbage")?;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while !greeting_from([127, 0, 0, 11], mx).await?.starts_with("421 4.7.0") {
        assert!(Instant::now() < deadline, "TLS garbage did not lead to a ban");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Others still get mail through.
    assert!(greeting_from([127, 0, 0, 8], mx).await?.starts_with("220 "));
    let config = instance
        .data_dir()
        .join("sealmail.toml")
        .to_string_lossy()
        .into_owned();
    let (_, events, _) = common::run(
        instance.root.path(),
        &["--config", &config, "security", "events"],
        None,
    )?;
    assert!(
        events.contains("\"kind\":\"unknown_recipient\"") && events.contains("\"kind\":\"relay_denied\""),
        "{events}"
    );
    Ok(())
}

/// Health checks and TLS scanners fail handshakes by design: a TCP connect and close, a hello
/// with only old versions or suites, something that is not TLS, a hello whose ServerHello is
/// read and then the connection dropped. None of it costs more than one key exchange, so none
/// of it counts toward a ban (the connection rate limit stops floods).
#[tokio::test]
async fn failed_handshakes_of_scanners_and_health_checks_do_not_ban() -> TestResult {
    use sealmail_testkit::{HelloAnswer, TLS1_0, TLS1_2, client_hello, send_client_hello};
    let instance = Instance::quickstart().await?;
    let source = [127, 0, 0, 12];
    let old_version = client_hello(TLS1_0, &[0xc009], NAME);
    let no_common_suite = client_hello(TLS1_2, &[0x009c, 0x002f], NAME);
    let good = client_hello(TLS1_2, &[0xc02b], NAME);
    let mut failures = 0;
    for port in [2465, 2993] {
        let addr = instance.addr(port);
        for _ in 0..4 {
            for hello in [&old_version, &no_common_suite] {
                let mut tcp = tcp_from(source, addr).await?;
                let answer = send_client_hello(&mut tcp, hello).await?;
                assert!(
                    matches!(answer, HelloAnswer::Alert(_) | HelloAnswer::Closed),
                    "{answer:?}"
                );
                failures += 1;
            }
            // Not TLS at all.
            let mut tcp = tcp_from(source, addr).await?;
            ctx(tcp.write_all(b"GET / HTTP/1.0\r\n\r\n").await, "http")?;
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
            failures += 1;
            // A TCP health check: connect, close.
            drop(tcp_from(source, addr).await?);
            failures += 1;
            // A scanner: reads our ServerHello, hangs up.
            let mut tcp = tcp_from(source, addr).await?;
            assert_eq!(
                send_client_hello(&mut tcp, &good).await?,
                HelloAnswer::ServerHello
            );
            drop(tcp);
            failures += 1;
        }
    }
    assert_eq!(failures, 40);
    // Twice more of the cheap kinds, to reach 60 and more.
    for _ in 0..10 {
        for hello in [&old_version, &no_common_suite] {
            let mut tcp = tcp_from(source, instance.addr(2465)).await?;
            send_client_hello(&mut tcp, hello).await?;
            failures += 1;
        }
    }
    assert_eq!(failures, 60);
    // Give the guard time to act on any of it, then log in from the same address.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        greeting_from(source, instance.addr(2525))
            .await?
            .starts_with("220 ")
    );
    let passwords = credentials(&instance)?;
    let replies = try_login(
        source,
        instance.addr(2465),
        &instance.cert(),
        "alice@example.test",
        &passwords["alice@example.test"],
    )
    .await?;
    assert!(replies[0].starts_with("235 "), "{replies:?}");

    // Each abandoned handshake cost us a key exchange: they count in tens, and 200 within the
    // window ban (testssl.sh abandons about 40 a run).
    let hammer = [127, 0, 0, 13];
    for _ in 0..199 {
        let mut tcp = tcp_from(hammer, instance.addr(2465)).await?;
        assert_eq!(
            send_client_hello(&mut tcp, &good).await?,
            HelloAnswer::ServerHello
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        greeting_from(hammer, instance.addr(2525))
            .await?
            .starts_with("220 "),
        "199 do not ban"
    );
    let mut tcp = tcp_from(hammer, instance.addr(2465)).await?;
    assert_eq!(
        send_client_hello(&mut tcp, &good).await?,
        HelloAnswer::ServerHello
    );
    drop(tcp);
    let deadline = Instant::now() + Duration::from_secs(3);
    while !greeting_from(hammer, instance.addr(2525))
        .await?
        .starts_with("421 4.7.0")
    {
        assert!(Instant::now() < deadline, "200 abandoned handshakes did not ban");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// A PROXY protocol v2 header for a TCP/IPv4 client.
fn proxy_v2(client: [u8; 4], port: u16) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0, 12]);
    header.extend_from_slice(&client);
    header.extend_from_slice(&[127, 0, 0, 1]);
    header.extend_from_slice(&port.to_be_bytes());
    header.extend_from_slice(&25u16.to_be_bytes());
    header
}

/// Connects from the proxy address with `header` first; returns the first line it gets.
async fn via_proxy(mx: SocketAddr, header: &[u8]) -> TestResult<LineClient<TcpStream>> {
    let mut c = LineClient::new(tcp_from([127, 0, 0, 1], mx).await?);
    c.send_bytes(header).await?;
    Ok(c)
}

#[tokio::test]
async fn proxy_protocol_gives_the_real_address_which_alone_gets_banned() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let mx = common::free_addr()?;
    let config = common::write_config(
        dir.path(),
        &["mail.example.test"],
        &[("mx", mx, "starttls")],
        "[security]\nproxies = [\"127.0.0.1\"]\n",
    )?;
    let text = ctx(std::fs::read_to_string(&config), "read")?
        .replace("tls = \"starttls\"", "tls = \"starttls\"\nproxy_protocol = true");
    ctx(std::fs::write(&config, text), "write")?;
    assert_eq!(
        common::admin(dir.path(), &config, &["domain", "add", "example.test"])?.0,
        0
    );
    assert_eq!(
        common::admin(
            dir.path(),
            &config,
            &["user", "add", "alice@example.test", "--password-stdin"]
        )?
        .0,
        0
    );
    let _server = common::serve(dir.path(), &config).await?;

    // Version 1 and version 2 headers: the stored Received line names the real client.
    for (header, client) in [
        (
            b"PROXY TCP4 192.0.2.9 127.0.0.1 5000 25\r\n".to_vec(),
            "[192.0.2.9]",
        ),
        (proxy_v2([198, 51, 100, 7], 5000), "[198.51.100.7]"),
    ] {
        let mut c = via_proxy(mx, &header).await?;
        assert!(c.smtp_reply().await?.starts_with("220 "));
        c.dialog(&[
            ("EHLO client.test", "250"),
            ("MAIL FROM:<x@remote.test>", "250"),
            ("RCPT TO:<alice@example.test>", "250"),
            ("DATA", "354"),
        ])
        .await?;
        c.send("Subject: via proxy\r\n\r\nhi\r\n.\r\n").await?;
        assert!(c.smtp_reply().await?.starts_with("250"));
        let stored =
            common::mailbox_contents(&dir.path().join("data"), "alice@example.test", "INBOX").await?;
        let last = String::from_utf8_lossy(stored.last().ok_or("nothing stored")?).into_owned();
        assert!(last.contains(&format!("from client.test ({client})")), "{last}");
    }

    // Relay probing from one real client bans that client, not the proxy.
    let mut c = via_proxy(mx, b"PROXY TCP4 192.0.2.66 127.0.0.1 5000 25\r\n").await?;
    c.smtp_reply().await?;
    c.send("EHLO p.test\r\nMAIL FROM:<x@p.test>\r\n").await?;
    c.smtp_reply().await?;
    c.smtp_reply().await?;
    for n in 0..5 {
        c.send(&format!("RCPT TO:<v{n}@elsewhere.test>\r\n")).await?;
        c.smtp_reply().await?;
    }
    let mut banned = via_proxy(mx, b"PROXY TCP4 192.0.2.66 127.0.0.1 5001 25\r\n").await?;
    assert!(
        banned.line().await?.starts_with("421 4.7.0"),
        "the real client was not banned"
    );
    let mut other = via_proxy(mx, b"PROXY TCP4 192.0.2.67 127.0.0.1 5002 25\r\n").await?;
    assert!(
        other.line().await?.starts_with("220 "),
        "the proxy itself was banned"
    );

    // A PROXY header from an address that is not a configured proxy is not believed.
    let mut direct = LineClient::new(tcp_from([127, 0, 0, 2], mx).await?);
    direct.send("PROXY TCP4 192.0.2.9 127.0.0.1 5000 25\r\n").await?;
    assert!(direct.smtp_reply().await?.starts_with("220 "));
    assert!(
        direct.smtp_reply().await?.starts_with("500"),
        "a spoofed PROXY header was accepted"
    );
    Ok(())
}

async fn http_get(addr: SocketAddr, path: &str) -> TestResult<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = ctx(TcpStream::connect(addr).await, "connect")?;
    ctx(
        // One request, read to the end: the endpoint keeps a connection alive unless told not to.
        tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await,
        "send",
    )?;
    let mut response = String::new();
    ctx(tcp.read_to_string(&mut response).await, "read")?;
    Ok(response)
}

fn counter(metrics: &str, name: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn the_metrics_endpoint_counts_logins_abuse_and_messages() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let (submission, metrics) = (common::free_addr()?, common::free_addr()?);
    let extra = format!("[metrics]\nbind = \"{metrics}\"\n");
    let listeners = [("submission", submission, "implicit")];
    let config = common::config_with_users(dir.path(), "example.test", &["alice"], &listeners, &extra)?;
    let _server = common::serve(dir.path(), &config).await?;
    let cert = dir.path().join("tls/0.pem");

    let failed = try_login(
        [127, 0, 0, 1],
        submission,
        &cert,
        "alice@example.test",
        "wrong password",
    )
    .await?;
    assert!(failed[0].starts_with("535"));
    let client = sealmail_testkit::client_config(&[&cert], &[&TLS13], &[])?;
    let mut c = LineClient::new(
        tls_upgrade(
            ctx(TcpStream::connect(submission).await, "connect")?,
            client,
            NAME,
        )
        .await?,
    );
    c.smtp_reply().await?;
    let token = base64::engine::general_purpose::STANDARD
        .encode(format!("\0alice@example.test\0{}", common::TEST_PASSWORD));
    c.dialog(&[
        ("EHLO c.test".to_string(), "250"),
        (format!("AUTH PLAIN {token}"), "235"),
        ("MAIL FROM:<alice@example.test>".to_string(), "250"),
        ("RCPT TO:<alice@example.test>".to_string(), "250"),
        ("DATA".to_string(), "354"),
        ("From: alice@example.test\r\n\r\nhi\r\n.".to_string(), "250"),
    ])
    .await?;

    // A hello we refuse is counted (no event: scanners would flood the log); garbage after
    // our key share is counted and logged.
    let mut legacy_client = ctx(TcpStream::connect(submission).await, "connect")?;
    let legacy = sealmail_testkit::client_hello(sealmail_testkit::TLS1_0, &[0xc009], NAME);
    sealmail_testkit::send_client_hello(&mut legacy_client, &legacy).await?;
    drop(legacy_client);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = ctx(
        std::fs::read_to_string(dir.path().join("data/security-events.jsonl")),
        "log",
    )?;
    assert!(!log.contains("\"kind\":\"tls_failure\""), "{log}");
    let mut garbage = ctx(TcpStream::connect(submission).await, "connect")?;
    let hello = sealmail_testkit::client_hello(sealmail_testkit::TLS1_2, &[0xc02b], NAME);
    sealmail_testkit::send_client_hello(&mut garbage, &hello).await?;
    ctx(garbage.write_all(b"\x17\x03\x03\x00\x05hello").await, "garbage")?;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), garbage.read_to_end(&mut rest)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = ctx(
        std::fs::read_to_string(dir.path().join("data/security-events.jsonl")),
        "log",
    )?;
    assert!(log.contains("\"kind\":\"tls_failure\""), "{log}");

    let response = http_get(metrics, "/metrics").await?;
    assert_eq!(
        counter(&response, "sealmail_tls_handshake_failures_total"),
        Some(2),
        "{response}"
    );
    assert!(
        response.starts_with("HTTP/1.1 200 OK") && response.contains("text/plain; version=0.0.4"),
        "{response}"
    );
    assert_eq!(
        counter(&response, "sealmail_auth_failures_total"),
        Some(1),
        "{response}"
    );
    assert_eq!(
        counter(&response, "sealmail_auth_successes_total"),
        Some(1),
        "{response}"
    );
    assert_eq!(
        counter(&response, "sealmail_messages_accepted_total"),
        Some(1),
        "{response}"
    );
    // Two logins, the refused hello and the TLS garbage.
    assert_eq!(
        counter(&response, "sealmail_connections_accepted_total"),
        Some(4),
        "{response}"
    );
    assert!(response.contains("# TYPE sealmail_bans_total counter"));
    assert!(http_get(metrics, "/other").await?.starts_with("HTTP/1.1 404"));
    Ok(())
}

#[tokio::test]
async fn the_metrics_endpoint_serves_a_few_connections_at_once_and_drops_silent_ones() -> TestResult {
    use tokio::io::AsyncReadExt;
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let (mx, metrics) = (common::free_addr()?, common::free_addr()?);
    let extra = format!("[metrics]\nbind = \"{metrics}\"\n");
    let config = common::write_config(dir.path(), &[NAME], &[("mx", mx, "starttls")], &extra)?;
    let _server = common::serve(dir.path(), &config).await?;

    // Clients that connect and say nothing take every slot...
    let mut silent = Vec::new();
    for _ in 0..sealmail_metrics::MAX_CONNECTIONS {
        silent.push(ctx(TcpStream::connect(metrics).await, "connect")?);
    }
    let busy = http_get(metrics, "/metrics").await?;
    assert!(
        busy.starts_with("HTTP/1.1 503"),
        "a connection past the cap was served: {busy}"
    );
    // ...until the timeout closes them.
    let mut first = silent.remove(0);
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(30), first.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "a silent client was not dropped: {read:?}"
    );
    drop(silent);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ok = http_get(metrics, "/metrics").await?;
    assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
    Ok(())
}

#[tokio::test]
async fn started_as_root_it_refuses_to_stay_root_or_drops_to_the_configured_user() -> TestResult {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("this test needs root to show the privilege drop (CI runs as root)".into());
    }
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    // The unprivileged user must be able to reach the data folder inside.
    use std::os::unix::fs::PermissionsExt;
    ctx(
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)),
        "chmod",
    )?;
    let mx = common::free_addr()?;
    let listeners = [("mx", mx, "starttls")];

    let root_config =
        common::config_with_users(dir.path(), "example.test", &["alice"], &listeners, "[server]\n")?;
    let (code, _, err) = common::admin(dir.path(), &root_config, &["serve"])?;
    assert_ne!(code, 0);
    assert!(
        err.contains("sealmail is running as root") && err.contains("[server] user"),
        "{err}"
    );

    let nobody = ctx(nix::unistd::User::from_name("nobody"), "lookup")?.ok_or("no user nobody")?;
    let text = ctx(std::fs::read_to_string(&root_config), "read")?
        .replace("[server]\n", "[server]\nuser = \"nobody\"\n");
    ctx(std::fs::write(&root_config, text), "write")?;
    let server = common::serve(dir.path(), &root_config).await?;
    let status = ctx(
        std::fs::read_to_string(format!("/proc/{}/status", server.pid())),
        "status",
    )?;
    let uid_line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .ok_or("no Uid line")?;
    let uids: Vec<&str> = uid_line.split_whitespace().skip(1).collect();
    assert!(
        uids.iter().all(|u| *u == nobody.uid.to_string()),
        "still privileged: {uid_line}"
    );

    // Still able to store mail after the switch.
    let mut c = LineClient::new(ctx(TcpStream::connect(mx).await, "connect")?);
    c.smtp_reply().await?;
    c.dialog(&[
        ("EHLO s.test", "250"),
        ("MAIL FROM:<x@s.test>", "250"),
        ("RCPT TO:<alice@example.test>", "250"),
        ("DATA", "354"),
        ("Subject: x\r\n\r\nafter the switch\r\n.", "250"),
    ])
    .await?;
    use std::os::unix::fs::MetadataExt;
    let owner = ctx(std::fs::metadata(dir.path().join("data/sealmail.db")), "stat")?.uid();
    assert_eq!(
        owner,
        nobody.uid.as_raw(),
        "the store was not handed to the server user"
    );
    Ok(())
}

#[tokio::test]
async fn guessing_slows_an_account_but_not_its_owner_logging_in_with_the_right_password() -> TestResult {
    let instance = Instance::quickstart().await?;
    let submission = instance.addr(2465);
    let cert = instance.cert();
    let alice = credentials(&instance)?["alice@example.test"].clone();
    let timed = |source: [u8; 4], password: String| {
        let cert = cert.clone();
        async move {
            let started = Instant::now();
            let replies = try_login(source, submission, &cert, "alice@example.test", &password).await?;
            Ok::<_, String>((replies[0].clone(), started.elapsed()))
        }
    };
    let (first, _) = timed([127, 0, 0, 30], alice.clone()).await?;
    assert!(first.starts_with("235"), "{first}");
    // Four guesses from four addresses: no address is banned, the account is now throttled.
    for n in 0..4u8 {
        let (reply, _) = timed([127, 0, 0, 31 + n], format!("guess {n}")).await?;
        assert!(reply.starts_with("535"), "{reply}");
    }
    let (guess, waited) = timed([127, 0, 0, 40], "guess 5".to_string()).await?;
    assert!(guess.starts_with("535"));
    assert!(
        waited >= Duration::from_millis(1900),
        "a guess was not slowed: {waited:?}"
    );
    // The owner, with the password that worked before, is not made to wait.
    let (owner, waited) = timed([127, 0, 0, 41], alice).await?;
    assert!(owner.starts_with("235"), "{owner}");
    assert!(
        waited < Duration::from_millis(1000),
        "the owner was throttled: {waited:?}"
    );
    Ok(())
}

#[tokio::test]
async fn guesses_spelled_differently_count_against_the_account_and_a_full_queue_is_refused_at_once()
-> TestResult {
    let instance = Instance::quickstart().await?;
    let submission = instance.addr(2465);
    let cert = instance.cert();
    // Three guesses at alice under other spellings (case, trailing dot), from three addresses:
    // no address is banned, and alice's account is now throttled.
    for (n, spelling) in [
        "ALICE@EXAMPLE.TEST.",
        "Alice@Example.Test.",
        "alice@EXAMPLE.test.",
    ]
    .into_iter()
    .enumerate()
    {
        let replies = try_login([127, 0, 0, 50 + n as u8], submission, &cert, spelling, "guess").await?;
        assert!(replies[0].starts_with("535 5.7.8"), "{spelling}: {replies:?}");
    }
    // Twelve parallel guesses spelled as the account is: they queue at least a second apart, and
    // those that would wait past the bound are refused at once with a temporary failure.
    let mut guesses = tokio::task::JoinSet::new();
    for n in 0..12u8 {
        let cert = cert.clone();
        guesses.spawn(async move {
            let source = [127, 0, 0, 60 + n];
            try_login(
                source,
                submission,
                &cert,
                "alice@example.test",
                &format!("guess {n}"),
            )
            .await
        });
    }
    let mut refused = 0;
    while let Some(joined) = guesses.join_next().await {
        let replies = ctx(joined, "join")??;
        if replies[0].starts_with("454 4.7.0") {
            refused += 1;
        } else {
            assert!(replies[0].starts_with("535 5.7.8"), "{replies:?}");
        }
    }
    assert!(
        refused > 0,
        "the guesses under other spellings did not count against alice, or her queue is unbounded"
    );
    Ok(())
}

#[tokio::test]
async fn a_link_in_place_of_the_security_event_log_is_refused_not_written_through() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let listeners = [("mx", common::free_addr()?, "starttls")];
    let config = common::config_with_users(dir.path(), "example.test", &["alice"], &listeners, "")?;
    // What the service user could leave in the data folder for root to write through.
    let outside = dir.path().join("crontab");
    ctx(std::fs::write(&outside, "untouched\n"), "write")?;
    ctx(
        std::os::unix::fs::symlink(&outside, dir.path().join("data/security-events.jsonl")),
        "symlink",
    )?;
    let config = config.to_string_lossy().into_owned();
    let mut server = sealmail_testkit::Sealmail::spawn(
        common::bin(),
        &["--config", &config, "serve"],
        dir.path(),
        dir.path(),
    )?;
    let exit = server.wait_exit(Duration::from_secs(30)).await;
    assert!(
        matches!(exit, Ok(Some(code)) if code != 0),
        "served with a link as its event log: {exit:?}"
    );
    let errors = server.errors();
    assert!(
        errors.contains("security-events.jsonl") && errors.contains("symbolic link"),
        "{errors}"
    );
    assert_eq!(ctx(std::fs::read_to_string(&outside), "read")?, "untouched\n");
    Ok(())
}

/// The store is opened only after the switch to the service user: a link that user planted in
/// the data folder (here in place of the database, which SQLite follows) cannot make root
/// create or write a file elsewhere.
#[tokio::test]
async fn the_store_is_opened_as_the_service_user_so_its_links_cannot_steer_root() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::Uid::effective().is_root() {
        return Err("this test needs root (CI runs as root)".into());
    }
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    ctx(
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)),
        "chmod",
    )?;
    // A folder only root may write to, outside the data folder.
    let outside = ctx(tempfile::tempdir(), "tempdir")?;
    ctx(
        std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o700)),
        "chmod",
    )?;
    let victim = outside.path().join("created-by-root");
    let mx = common::free_addr()?;
    let listeners = [("mx", mx, "starttls")];
    let config = common::config_with_users(
        dir.path(),
        "example.test",
        &["alice"],
        &listeners,
        "[server]\nuser = \"nobody\"\n",
    )?;
    // The service user swapped the database for a link to a file root could create.
    let database = dir.path().join("data/sealmail.db");
    ctx(std::fs::remove_file(&database), "remove the database")?;
    ctx(std::os::unix::fs::symlink(&victim, &database), "plant the link")?;
    let started = common::serve(dir.path(), &config).await;
    assert!(
        !victim.exists(),
        "root followed the link and created {}",
        victim.display()
    );
    // As the service user the link leads nowhere it may write: the server does not start.
    let error = started.err().ok_or("started on a store it cannot open")?;
    assert!(error.contains("cannot open the store"), "{error}");
    Ok(())
}

/// Guesses that fill a throttled account's login queue cannot keep its owner out: a client
/// that logged in to the account lately skips the queue, and guesses refused because the queue
/// is full count against the guessing address, which is soon banned.
#[tokio::test]
async fn a_flood_of_guesses_cannot_lock_the_owner_out() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let (submission, mx) = (common::free_addr()?, common::free_addr()?);
    let listeners = [("submission", submission, "implicit"), ("mx", mx, "starttls")];
    // No login cache: the owner is not let through by a remembered password.
    let config = common::config_with_users(
        dir.path(),
        "example.test",
        &["alice"],
        &listeners,
        "[auth]\nlogin_cache_ttl_secs = 0\n",
    )?;
    let _server = common::serve(dir.path(), &config).await?;
    let cert = dir.path().join("tls/0.pem");
    let owner = [127, 0, 0, 70];
    let replies = try_login(
        owner,
        submission,
        &cert,
        "alice@example.test",
        common::TEST_PASSWORD,
    )
    .await?;
    assert!(replies[0].starts_with("235"), "{replies:?}");
    for n in 0..3u8 {
        let replies = try_login(
            [127, 0, 0, 71 + n],
            submission,
            &cert,
            "alice@example.test",
            "guess",
        )
        .await?;
        assert!(replies[0].starts_with("535"), "{replies:?}");
    }
    // One address floods the throttled account with parallel guesses.
    let attacker = [127, 0, 0, 74];
    let mut guesses = tokio::task::JoinSet::new();
    for n in 0..12u8 {
        let cert = cert.clone();
        guesses.spawn(async move {
            try_login(
                attacker,
                submission,
                &cert,
                "alice@example.test",
                &format!("guess {n}"),
            )
            .await
        });
    }
    // While the flood fills the queue, the owner logs in at once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let replies = try_login(
        owner,
        submission,
        &cert,
        "alice@example.test",
        common::TEST_PASSWORD,
    )
    .await?;
    assert!(
        replies[0].starts_with("235"),
        "the owner was kept out: {replies:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the owner waited in the attacker's queue: {:?}",
        started.elapsed()
    );
    let mut refused = 0;
    while let Some(joined) = guesses.join_next().await {
        if let Ok(Ok(replies)) = joined
            && replies[0].starts_with("454")
        {
            refused += 1;
        }
    }
    assert!(refused > 0, "the flood never filled the queue");
    // Refused guesses counted: the attacker's address is banned.
    let greeting = greeting_from(attacker, mx).await?;
    assert!(
        greeting.starts_with("421") || greeting.is_empty(),
        "not banned: {greeting}"
    );
    Ok(())
}

/// Root reads certificate files only through links root (or the server's own user) made: a
/// link another user planted (say the service user, in the data folder) to some root-only key
/// is refused at start-up.
#[tokio::test]
async fn a_key_reached_through_another_users_link_is_refused() -> TestResult {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("this test needs root (CI runs as root)".into());
    }
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let listeners = [("mx", common::free_addr()?, "starttls")];
    let config = common::config_with_users(dir.path(), "example.test", &["alice"], &listeners, "")?;
    // The real key moves to a root-only place; the configured path becomes a link to it that
    // belongs to nobody.
    let hidden = ctx(tempfile::tempdir(), "tempdir")?;
    let key = dir.path().join("tls/0.key");
    let moved = hidden.path().join("other-service.key");
    ctx(std::fs::rename(&key, &moved), "move the key")?;
    ctx(std::os::unix::fs::symlink(&moved, &key), "plant the link")?;
    let nobody = ctx(nix::unistd::User::from_name("nobody"), "lookup")?.ok_or("no user nobody")?;
    ctx(
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &key,
            Some(nobody.uid),
            None,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ),
        "chown the link",
    )?;
    let config = config.to_string_lossy().into_owned();
    let mut server = sealmail_testkit::Sealmail::spawn(
        common::bin(),
        &["--config", &config, "serve"],
        dir.path(),
        dir.path(),
    )?;
    let exit = server.wait_exit(Duration::from_secs(30)).await;
    assert!(
        matches!(exit, Ok(Some(code)) if code != 0),
        "served through the link: {exit:?}"
    );
    assert!(
        server.errors().contains("a symbolic link of another user"),
        "{}",
        server.errors()
    );
    Ok(())
}
