//! IMAP benchmarks, run by the same client against sealmail and Dovecot:
//! - `imap-fetch`: fills a mailbox to N messages (APPEND), then times `FETCH 1:* (BODY.PEEK[])`
//!   and `FETCH 1:* (BODY.PEEK[HEADER])` over one TLS session, with the server's CPU.
//! - `imap-idle`: opens C sessions that SELECT INBOX and IDLE, reports the server's memory
//!   (RSS and PSS, before and after) per session, then submits messages over SMTP and measures,
//!   for each message, the time from the 250 after DATA until every session has seen EXISTS.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

type Stream = BufReader<TlsStream<TcpStream>>;

/// The server under test: where it listens, its TLS name and certificate, whom to log in as.
#[derive(clap::Args)]
pub struct Target {
    /// Implicit-TLS address
    #[arg(long)]
    pub addr: SocketAddr,
    #[arg(long, default_value = "mail.example.test")]
    pub server_name: String,
    /// PEM file with the certificate to trust
    #[arg(long)]
    pub ca: PathBuf,
    /// The user to log in as
    #[arg(long)]
    pub user: String,
    #[arg(long)]
    pub password: String,
}

impl Target {
    /// A client configuration pinned to the certificates in the --ca file, which never resumes
    /// a session (every connection makes a full handshake).
    pub fn pinned_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        sealmail_testkit::pinned_client_config(&self.ca).map_err(anyhow::Error::msg)
    }
}

/// The server's processes whose memory is measured, and the name the report gives them.
#[derive(clap::Args)]
pub struct Measured {
    /// Process names (comm) whose resident memory is summed
    #[arg(long, value_delimiter = ',')]
    pub server_processes: Vec<String>,
    /// A label for the report
    #[arg(long, default_value = "server")]
    pub label: String,
}

#[derive(clap::Args)]
pub struct FetchArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(long, default_value_t = 10_000)]
    pub messages: usize,
    #[arg(long, default_value_t = 4096)]
    pub size: usize,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[command(flatten)]
    pub measured: Measured,
}

#[derive(clap::Args)]
pub struct IdleArgs {
    /// Every session watches the INBOX of the target's user.
    #[command(flatten)]
    pub target: Target,
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Implicit-TLS submission address for the deliveries
    #[arg(long)]
    pub submission: SocketAddr,
    #[arg(long)]
    pub sender: String,
    #[arg(long)]
    pub sender_password: String,
    #[arg(long, default_value_t = 5)]
    pub deliveries: usize,
    #[command(flatten)]
    pub measured: Measured,
}

async fn connect(
    target: &Target,
    config: Arc<rustls::ClientConfig>,
    source: Option<IpAddr>,
) -> anyhow::Result<Stream> {
    let tcp = match source {
        Some(ip) => crate::tcp_from(ip, target.addr).await?,
        None => TcpStream::connect(target.addr).await?,
    };
    let name = ServerName::try_from(target.server_name.clone())?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    Ok(BufReader::new(tls))
}

/// Reads one response line; a literal at its end (`{n}`) is read too and counted in `bytes`.
async fn read_response_line(stream: &mut Stream, line: &mut Vec<u8>, bytes: &mut u64) -> anyhow::Result<()> {
    line.clear();
    loop {
        let start = line.len();
        if stream.read_until(b'\n', line).await? == 0 {
            bail!("connection closed");
        }
        let text = &line[start..];
        let trimmed = text.strip_suffix(b"\r\n").unwrap_or(text);
        let literal = trimmed
            .strip_suffix(b"}")
            .and_then(|t| t.iter().rposition(|&b| b == b'{').map(|i| &t[i + 1..]))
            .and_then(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok());
        match literal {
            Some(n) => {
                let mut buf = vec![0u8; n];
                stream.read_exact(&mut buf).await?;
                *bytes += n as u64;
                // The response goes on after the literal.
            }
            None => return Ok(()),
        }
    }
}

/// Sends `tag command` and reads until the tagged response; returns the untagged lines that
/// start with `want` (e.g. "* 3 FETCH") counted, and the tagged line.
async fn command(
    stream: &mut Stream,
    tag: &str,
    command: &str,
    bytes: &mut u64,
) -> anyhow::Result<(usize, String)> {
    stream
        .get_mut()
        .write_all(format!("{tag} {command}\r\n").as_bytes())
        .await?;
    tagged(stream, tag, command, bytes).await
}

/// Reads responses until the one tagged `tag`; counts the untagged FETCH responses.
async fn tagged(
    stream: &mut Stream,
    tag: &str,
    command: &str,
    bytes: &mut u64,
) -> anyhow::Result<(usize, String)> {
    let mut line = Vec::new();
    let mut fetches = 0;
    loop {
        read_response_line(stream, &mut line, bytes).await?;
        if line.starts_with(format!("{tag} ").as_bytes()) {
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            if !text.starts_with(&format!("{tag} OK")) {
                bail!("{command}: {text}");
            }
            return Ok((fetches, text));
        }
        if line.starts_with(b"* ") && line.windows(7).any(|w| w == b" FETCH ") {
            fetches += 1;
        }
    }
}

async fn login(stream: &mut Stream, target: &Target) -> anyhow::Result<()> {
    let mut greeting = Vec::new();
    read_response_line(stream, &mut greeting, &mut 0).await?;
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("\0{}\0{}", target.user, target.password));
    command(stream, "l", &format!("AUTHENTICATE PLAIN {auth}"), &mut 0).await?;
    Ok(())
}

fn message(i: usize, size: usize, user: &str) -> Vec<u8> {
    let mut m = format!(
        "From: bench@example.test\r\nTo: {user}\r\nSubject: benchmark message {i}\r\nMessage-ID: <bench{i}@example.test>\r\nDate: Sat, 28 Nov 2026 12:00:00 +0000\r\n\r\n"
    )
    .into_bytes();
    while m.len() < size {
        m.extend_from_slice(
            b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n",
        );
    }
    m
}

pub async fn fetch(args: FetchArgs) -> anyhow::Result<()> {
    let FetchArgs {
        target,
        messages,
        size,
        rounds,
        measured,
    } = args;
    let (server_processes, label) = (measured.server_processes, measured.label);
    let config = target.pinned_config()?;
    let target = Arc::new(target);
    let mut s = connect(&target, config.clone(), None).await?;
    login(&mut s, &target).await?;
    command(&mut s, "c", "CREATE bench", &mut 0).await.ok();
    let (_, _) = command(&mut s, "s", "SELECT bench", &mut 0).await?;
    let have = {
        s.get_mut().write_all(b"n STATUS bench (MESSAGES)\r\n").await?;
        let mut line = Vec::new();
        let mut found = 0usize;
        loop {
            read_response_line(&mut s, &mut line, &mut 0).await?;
            let text = String::from_utf8_lossy(&line).to_string();
            if let Some(rest) = text.split("MESSAGES ").nth(1) {
                found = rest.trim_end().trim_end_matches(')').parse().unwrap_or(0);
            }
            if text.starts_with("n ") {
                break found;
            }
        }
    };
    if have < messages {
        let started = Instant::now();
        let workers = 8;
        let missing = messages - have;
        let mut tasks = Vec::new();
        for w in 0..workers {
            let (target, config) = (target.clone(), config.clone());
            tasks.push(tokio::spawn(async move {
                let mut a = connect(&target, config, None).await?;
                login(&mut a, &target).await?;
                let mut i = w;
                while i < missing {
                    let body = message(have + i, size, &target.user);
                    a.get_mut()
                        .write_all(format!("a APPEND bench {{{}+}}\r\n", body.len()).as_bytes())
                        .await?;
                    a.get_mut().write_all(&body).await?;
                    a.get_mut().write_all(b"\r\n").await?;
                    tagged(&mut a, "a", "APPEND", &mut 0).await?;
                    i += workers;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        println!(
            "filled {missing} messages in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        command(&mut s, "s", "SELECT bench", &mut 0).await?;
    }
    for (what, items) in [
        ("whole messages", "BODY.PEEK[]"),
        ("headers only", "BODY.PEEK[HEADER]"),
    ] {
        let mut best = f64::MAX;
        let (mut count, mut total_bytes, mut cpu) = (0, 0u64, 0.0);
        for round in 0..rounds {
            let (busy0, own0) = (crate::machine_busy_ticks()?, crate::own_ticks()?);
            let started = Instant::now();
            let mut bytes = 0;
            let (fetched, _) = command(
                &mut s,
                &format!("f{round}"),
                &format!("FETCH 1:* ({items})"),
                &mut bytes,
            )
            .await?;
            let elapsed = started.elapsed().as_secs_f64();
            let (busy1, own1) = (crate::machine_busy_ticks()?, crate::own_ticks()?);
            if elapsed < best {
                best = elapsed;
                count = fetched;
                total_bytes = bytes;
                cpu = (busy1.saturating_sub(busy0).saturating_sub(own1 - own0)) as f64
                    / crate::ticks_per_second();
            }
        }
        println!(
            "{label} FETCH {what}: {count} messages in {best:.3} s = {:.0} msg/s, {:.1} MiB/s, server CPU {:.1} µs/msg (best of {rounds})",
            count as f64 / best,
            total_bytes as f64 / best / 1048576.0,
            cpu * 1e6 / count.max(1) as f64
        );
    }
    println!(
        "{label} server RSS {:.1} MiB",
        crate::rss_of(&server_processes) as f64 / 1024.0
    );
    Ok(())
}

/// Sum of PSS (KiB) of processes named in `names`: shared pages are split between the
/// processes that share them, so a multi-process server is not counted several times over.
fn pss_of(names: &[String]) -> u64 {
    crate::memory_of(names, "smaps_rollup", "Pss:")
}

pub async fn idle(args: IdleArgs) -> anyhow::Result<()> {
    let IdleArgs {
        target,
        sessions,
        submission,
        sender,
        sender_password,
        deliveries,
        measured,
    } = args;
    let (server_processes, label) = (measured.server_processes, measured.label);
    let config = target.pinned_config()?;
    let target = Arc::new(target);
    let (rss0, pss0) = (crate::rss_of(&server_processes), pss_of(&server_processes));
    let started = Instant::now();
    // Sessions come from 127.0.0.10.. in blocks, so no single address runs out of ports.
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<anyhow::Result<()>>(sessions);
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(64));
    for i in 0..sessions {
        let (target, config, ready, seen, semaphore) = (
            target.clone(),
            config.clone(),
            ready_tx.clone(),
            seen_tx.clone(),
            semaphore.clone(),
        );
        tokio::spawn(async move {
            let setup = async {
                let _permit = semaphore.acquire().await?;
                let source = IpAddr::from([127, 0, 0, 10 + (i / 5000) as u8]);
                let mut s = connect(&target, config, Some(source)).await?;
                login(&mut s, &target).await?;
                command(&mut s, "s", "SELECT INBOX", &mut 0).await?;
                s.get_mut().write_all(b"i IDLE\r\n").await?;
                let mut line = Vec::new();
                read_response_line(&mut s, &mut line, &mut 0).await?;
                if !line.starts_with(b"+") {
                    bail!("IDLE refused: {}", String::from_utf8_lossy(&line));
                }
                anyhow::Ok(s)
            };
            let mut s = match setup.await {
                Ok(s) => {
                    let _ = ready.send(Ok(())).await;
                    s
                }
                Err(e) => {
                    let _ = ready.send(Err(e)).await;
                    return;
                }
            };
            let mut line = Vec::new();
            let mut delivery = 0;
            while read_response_line(&mut s, &mut line, &mut 0).await.is_ok() {
                if line.ends_with(b" EXISTS\r\n") {
                    let _ = seen.send((delivery, Instant::now()));
                    delivery += 1;
                }
            }
        });
    }
    drop(ready_tx);
    drop(seen_tx);
    let mut failures = 0;
    for _ in 0..sessions {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                if failures < 3 {
                    eprintln!("session failed: {e:#}");
                }
                failures += 1;
            }
            None => break,
        }
    }
    let opened = sessions - failures;
    println!(
        "{label}: {opened} IDLE sessions open in {:.1} s ({failures} failed)",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss1, pss1) = (crate::rss_of(&server_processes), pss_of(&server_processes));
    println!(
        "{label}: server RSS {:.1} -> {:.1} MiB, PSS {:.1} -> {:.1} MiB; per session {:.1} KiB RSS, {:.1} KiB PSS",
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        pss0 as f64 / 1024.0,
        pss1 as f64 / 1024.0,
        rss1.saturating_sub(rss0) as f64 / opened.max(1) as f64,
        pss1.saturating_sub(pss0) as f64 / opened.max(1) as f64
    );
    let smtp_config = target.pinned_config()?;
    let mut all = Vec::new();
    for delivery in 0..deliveries {
        let accepted = submit(
            submission,
            &target.server_name,
            smtp_config.clone(),
            &sender,
            &sender_password,
            &target.user,
            delivery,
        )
        .await?;
        let mut latencies = Vec::with_capacity(opened);
        let deadline = accepted + Duration::from_secs(60);
        while latencies.len() < opened {
            match tokio::time::timeout_at(deadline.into(), seen_rx.recv()).await {
                Ok(Some((d, at))) if d == delivery => latencies.push(at.saturating_duration_since(accepted)),
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        latencies.sort();
        println!(
            "{label}: delivery {delivery}: {} of {opened} sessions saw EXISTS; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms after the 250",
            latencies.len(),
            crate::percentile(&latencies, 0.5),
            crate::percentile(&latencies, 0.99),
            latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        );
        all.extend(latencies);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    all.sort();
    println!(
        "{label}: all deliveries: p50 {:.1} ms, p99 {:.1} ms",
        crate::percentile(&all, 0.5),
        crate::percentile(&all, 0.99)
    );
    Ok(())
}

/// Submits one message over implicit TLS; returns when the 250 after DATA arrived.
async fn submit(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
    user: &str,
    password: &str,
    to: &str,
    n: usize,
) -> anyhow::Result<Instant> {
    let tcp = TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from(server_name.to_string())?, tcp)
        .await?;
    let mut r = BufReader::new(tls);
    crate::expect(&mut r, "220").await?;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    for (line, code) in [
        ("EHLO bench.test".to_string(), "250"),
        (format!("AUTH PLAIN {auth}"), "235"),
        (format!("MAIL FROM:<{user}>"), "250"),
        (format!("RCPT TO:<{to}>"), "250"),
        ("DATA".to_string(), "354"),
    ] {
        r.get_mut().write_all(format!("{line}\r\n").as_bytes()).await?;
        crate::expect(&mut r, code).await?;
    }
    r.get_mut()
        .write_all(
            format!("From: {user}\r\nTo: {to}\r\nSubject: idle push {n}\r\n\r\nhello\r\n.\r\n").as_bytes(),
        )
        .await?;
    crate::expect(&mut r, "250").await.context("DATA")?;
    let accepted = Instant::now();
    let _ = r.get_mut().write_all(b"QUIT\r\n").await;
    Ok(accepted)
}
