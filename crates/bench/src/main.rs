//! `sealmail-bench`: measures an SMTP server the way the SMTP issue asks, so that sealmail and
//! the Postfix + Dovecot peer are measured by the same client in the same run.
//!
//! `smtp`: N concurrent sessions, each message on a new TCP + TLS connection (one handshake per
//! message): EHLO, AUTH PLAIN, MAIL, RCPT, DATA, QUIT. Reports messages/s, latency p50/p99
//! (connect to the 250 after DATA), server CPU (all CPU time on the machine minus this
//! client's, so multi-process servers are counted whole) and the servers' peak RSS.
//! `crypto`: the raw server-side cost of one TLS handshake, of decrypting and of hashing a
//! message of the same size, in process, as the baseline for "CPU per message".
//! `imap-fetch` and `imap-idle`: see [`imap`]. `auth`: see [`auth`].

mod auth;
mod imap;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::{Parser, Subcommand};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run; the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Sender-authentication cost per message (verification and DKIM signing) against the
    /// raw cryptography of the same operations
    Auth {
        #[arg(long, default_value_t = 4096)]
        size: usize,
        #[arg(long, default_value_t = 2000)]
        iterations: usize,
    },
    /// FETCH throughput (whole messages, headers only) over one TLS session on a mailbox of
    /// N messages (filled with APPEND first when it has fewer)
    ImapFetch(imap::FetchArgs),
    /// Memory per IDLE session and the time until every IDLE session sees a delivered message
    ImapIdle(imap::IdleArgs),
    /// Submit messages over implicit TLS with AUTH, one connection per message
    Smtp(SmtpArgs),
    /// Intrusion prevention costs: refusing a banned address vs a TLS handshake, and login
    /// latency with and without a flood of failed logins from other addresses
    Security {
        /// Implicit-TLS submission address
        #[arg(long)]
        submission: std::net::SocketAddr,
        /// STARTTLS MX address (where a banned client is refused in plaintext)
        #[arg(long)]
        mx: std::net::SocketAddr,
        #[arg(long, default_value = "mail.example.test")]
        server_name: String,
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        user: String,
        #[arg(long)]
        password: String,
        /// Seconds for each measurement
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Serve an empty DNS zone (every name NXDOMAIN, instantly) on loopback until killed,
    /// printing its address: the resolver of benchmark servers, so no query leaves the machine
    Dns,
    /// Measure the in-process cost of a server TLS handshake, AEAD decryption and SHA-256
    Crypto {
        #[arg(long, default_value_t = 4096)]
        size: usize,
        #[arg(long, default_value_t = 500)]
        iterations: usize,
    },
}

/// What `smtp` submits, to whom and how often.
#[derive(clap::Args)]
struct SmtpArgs {
    #[command(flatten)]
    target: imap::Target,
    #[arg(long)]
    to: String,
    #[arg(long, default_value_t = 20)]
    sessions: usize,
    #[arg(long, default_value_t = 50)]
    messages_per_session: usize,
    #[arg(long, default_value_t = 4096)]
    size: usize,
    #[command(flatten)]
    measured: imap::Measured,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crypto { size, iterations } => crypto(size, iterations),
        Command::Dns => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let server = sealmail_testkit::dns::DnsServer::start()
                    .await
                    .map_err(anyhow::Error::msg)?;
                println!("{}", server.addr());
                tokio::signal::ctrl_c().await?;
                drop(server);
                Ok(())
            })
        }
        Command::Auth { size, iterations } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(auth::run(size, iterations))
        }
        Command::Security { .. } => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(security(cli.command))
        }
        Command::Smtp(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(smtp(args))
        }
        Command::ImapFetch(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(imap::fetch(args))
        }
        Command::ImapIdle(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(imap::idle(args))
        }
    }
}

/// Total busy CPU time of the machine, in clock ticks (from /proc/stat).
fn machine_busy_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = fields
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    Ok(busy)
}

/// CPU time of this process, in clock ticks.
fn own_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let after = stat.rsplit_once(')').context("bad stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

/// Sum of VmRSS (KiB) of processes whose name is in `names`.
fn rss_of(names: &[String]) -> u64 {
    memory_of(names, "status", "VmRSS:")
}

/// Sum over processes named in `names` of a KiB figure from a /proc/PID file (`status` for
/// VmRSS, `smaps_rollup` for Pss).
fn memory_of(names: &[String], file: &str, field: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if !names.iter().any(|n| n == comm.trim()) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(path.join(file)) else {
            continue;
        };
        if let Some(kb) = text
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
        {
            total += kb;
        }
    }
    total
}

fn ticks_per_second() -> f64 {
    // USER_HZ is 100 on every Linux this runs on (sysconf is unsafe to call without libc).
    100.0
}

async fn expect(
    reader: &mut BufReader<tokio_rustls::client::TlsStream<TcpStream>>,
    code: &str,
) -> anyhow::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            bail!("connection closed while waiting for {code}");
        }
        if line.len() >= 4 && &line[3..4] == "-" {
            continue;
        }
        if !line.starts_with(code) {
            bail!("expected {code}, got {}", line.trim_end());
        }
        return Ok(());
    }
}

struct Job {
    addr: std::net::SocketAddr,
    server_name: ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
    auth: String,
    from: String,
    to: String,
    body: Vec<u8>,
}

async fn one_message(job: &Job) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let tcp = TcpStream::connect(job.addr).await?;
    tcp.set_nodelay(true)?;
    let tls = job.connector.connect(job.server_name.clone(), tcp).await?;
    let mut conn = BufReader::new(tls);
    expect(&mut conn, "220").await?;
    conn.get_mut().write_all(b"EHLO bench.test\r\n").await?;
    expect(&mut conn, "250").await?;
    conn.get_mut()
        .write_all(format!("AUTH PLAIN {}\r\n", job.auth).as_bytes())
        .await?;
    expect(&mut conn, "235").await?;
    let envelope = format!("MAIL FROM:<{}>\r\nRCPT TO:<{}>\r\nDATA\r\n", job.from, job.to);
    conn.get_mut().write_all(envelope.as_bytes()).await?;
    expect(&mut conn, "250").await?;
    expect(&mut conn, "250").await?;
    expect(&mut conn, "354").await?;
    conn.get_mut().write_all(&job.body).await?;
    expect(&mut conn, "250").await?;
    let elapsed = started.elapsed();
    conn.get_mut().write_all(b"QUIT\r\n").await?;
    let _ = expect(&mut conn, "221").await;
    Ok(elapsed)
}

fn body(from: &str, to: &str, size: usize) -> Vec<u8> {
    let mut body = format!("From: {from}\r\nTo: {to}\r\nSubject: bench\r\n\r\n").into_bytes();
    let line = b"abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz012345\r\n";
    while body.len() < size {
        body.extend_from_slice(line);
    }
    body.extend_from_slice(b".\r\n");
    body
}

async fn smtp(args: SmtpArgs) -> anyhow::Result<()> {
    let config = args.target.pinned_config()?;
    let SmtpArgs {
        target:
            imap::Target {
                addr,
                server_name,
                user,
                password,
                ..
            },
        to,
        sessions,
        messages_per_session,
        size,
        measured: imap::Measured {
            server_processes,
            label,
        },
    } = args;
    let job = Arc::new(Job {
        addr,
        server_name: ServerName::try_from(server_name)?,
        connector: tokio_rustls::TlsConnector::from(config),
        auth: base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}")),
        body: body(&user, &to, size),
        from: user,
        to,
    });

    let peak_rss = Arc::new(std::sync::atomic::AtomicU64::new(rss_of(&server_processes)));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak_rss, sampling, names) = (peak_rss.clone(), sampling.clone(), server_processes.clone());
        std::thread::spawn(move || {
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak_rss.fetch_max(rss_of(&names), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let busy_before = machine_busy_ticks()?;
    let own_before = own_ticks()?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..sessions {
        let job = job.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(messages_per_session);
            let mut failures = 0usize;
            for _ in 0..messages_per_session {
                match one_message(&job).await {
                    Ok(latency) => latencies.push(latency),
                    Err(e) => {
                        failures += 1;
                        if failures <= 3 {
                            eprintln!("message failed: {e:#}");
                        }
                    }
                }
            }
            (latencies, failures)
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    for task in tasks {
        let (l, f) = task.await?;
        latencies.extend(l);
        failures += f;
    }
    let wall = started.elapsed();
    let busy = machine_busy_ticks()?.saturating_sub(busy_before);
    let own = own_ticks()?.saturating_sub(own_before);
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.join();

    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    let delivered = latencies.len();
    let server_cpu = busy.saturating_sub(own) as f64 / ticks_per_second();
    println!(
        "{label}: {delivered} messages ({failures} failed) of {size} bytes, {sessions} sessions, one TLS handshake each, in {:.2} s",
        wall.as_secs_f64()
    );
    println!(
        "{label}: throughput {:.1} msg/s",
        delivered as f64 / wall.as_secs_f64()
    );
    println!(
        "{label}: latency p50 {:.1} ms, p99 {:.1} ms",
        pct(0.50),
        pct(0.99)
    );
    println!(
        "{label}: server CPU {:.2} s total, {:.3} ms per message (machine CPU minus client CPU {:.2} s)",
        server_cpu,
        server_cpu * 1000.0 / delivered.max(1) as f64,
        own as f64 / ticks_per_second()
    );
    println!(
        "{label}: server peak RSS {:.1} MiB ({})",
        peak_rss.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0,
        server_processes.join(",")
    );
    Ok(())
}

/// Runs a complete in-memory TLS handshake and returns the time spent in server-side calls.
fn server_handshake(
    client_config: &Arc<rustls::ClientConfig>,
    server_config: &Arc<rustls::ServerConfig>,
) -> anyhow::Result<(Duration, rustls::ClientConnection, rustls::ServerConnection)> {
    let mut client =
        rustls::ClientConnection::new(client_config.clone(), ServerName::try_from("mail.example.test")?)?;
    let mut server = rustls::ServerConnection::new(server_config.clone())?;
    let mut server_time = Duration::ZERO;
    let mut buf = Vec::new();
    while client.is_handshaking() || server.is_handshaking() {
        buf.clear();
        while client.wants_write() {
            client.write_tls(&mut buf)?;
        }
        let t = Instant::now();
        let mut slice = buf.as_slice();
        while !slice.is_empty() {
            server.read_tls(&mut slice)?;
            server.process_new_packets()?;
        }
        buf.clear();
        while server.wants_write() {
            server.write_tls(&mut buf)?;
        }
        server_time += t.elapsed();
        let mut slice = buf.as_slice();
        while !slice.is_empty() {
            client.read_tls(&mut slice)?;
            client.process_new_packets()?;
        }
    }
    Ok((server_time, client, server))
}

fn crypto(size: usize, iterations: usize) -> anyhow::Result<()> {
    use sha2::Digest;
    use std::io::{Read, Write};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["mail.example.test".to_string()])?.self_signed(&key)?;
    let cert_der = cert.der().clone();
    let key_der =
        rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).map_err(anyhow::Error::msg)?;
    let server_config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![cert_der.clone()], key_der)?,
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der)?;
    let mut client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client_config.resumption = rustls::client::Resumption::disabled();
    let client_config = Arc::new(client_config);

    let message = vec![b'x'; size];
    let mut handshake = Duration::ZERO;
    let mut decrypt = Duration::ZERO;
    let mut hashing = Duration::ZERO;
    for _ in 0..iterations {
        let (t, mut client, mut server) = server_handshake(&client_config, &server_config)?;
        handshake += t;
        client.writer().write_all(&message)?;
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire)?;
        }
        let t = Instant::now();
        let mut slice = wire.as_slice();
        let mut plain = vec![0u8; size];
        while !slice.is_empty() {
            server.read_tls(&mut slice)?;
            server.process_new_packets()?;
        }
        server.reader().read_exact(&mut plain)?;
        decrypt += t.elapsed();
        let t = Instant::now();
        let digest = sha2::Sha256::digest(&plain);
        hashing += t.elapsed();
        std::hint::black_box(digest);
    }
    let per = |d: Duration| d.as_secs_f64() * 1000.0 / iterations as f64;
    println!(
        "crypto baseline ({iterations} iterations, {size}-byte message): server handshake {:.3} ms, decrypt {:.4} ms, SHA-256 {:.4} ms; total {:.3} ms per message",
        per(handshake),
        per(decrypt),
        per(hashing),
        per(handshake + decrypt + hashing)
    );
    Ok(())
}

async fn tcp_from(source: std::net::IpAddr, addr: std::net::SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::new(source, 0))?;
    Ok(socket.connect(addr).await?)
}

/// One login over implicit TLS from `source`; returns whether it succeeded and how long it took.
async fn login(
    source: std::net::IpAddr,
    addr: std::net::SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    name: &ServerName<'static>,
    auth: &str,
) -> anyhow::Result<(bool, Duration)> {
    let started = Instant::now();
    let tcp = tcp_from(source, addr).await?;
    let tls = connector.connect(name.clone(), tcp).await?;
    let mut conn = BufReader::new(tls);
    expect(&mut conn, "220").await?;
    conn.get_mut().write_all(b"EHLO bench.test\r\n").await?;
    expect(&mut conn, "250").await?;
    conn.get_mut()
        .write_all(format!("AUTH PLAIN {auth}\r\n").as_bytes())
        .await?;
    let ok = expect(&mut conn, "235").await.is_ok();
    Ok((ok, started.elapsed()))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

async fn security(command: Command) -> anyhow::Result<()> {
    let Command::Security {
        submission,
        mx,
        server_name,
        ca,
        user,
        password,
        seconds,
    } = command
    else {
        bail!("not the security command");
    };
    // Pinned to the --ca file, a full handshake for every connection (no resumption).
    let config = sealmail_testkit::pinned_client_config(&ca).map_err(anyhow::Error::msg)?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = ServerName::try_from(server_name)?;
    let good = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    // Unknown usernames, so that the user's own account is not throttled by this run.
    let bad = base64::engine::general_purpose::STANDARD.encode("\0nobody@example.test\0not-the-password");
    let window = Duration::from_secs(seconds);

    // Get 127.0.0.9 banned the ordinary way.
    let banned: std::net::IpAddr = [127, 0, 0, 9].into();
    for _ in 0..10 {
        if login(banned, submission, &connector, &name, &bad).await.is_err() {
            break;
        }
    }

    // 1. Refusing the banned address, as fast as one client can connect, on 4 tasks.
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let refused = refused.clone();
        tasks.push(tokio::spawn(async move {
            while started.elapsed() < window {
                if let Ok(mut tcp) = tcp_from(banned, mx).await {
                    let mut sink = Vec::new();
                    let _ = tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut sink).await;
                    if sink.starts_with(b"421") {
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let refusals =
        refused.load(std::sync::atomic::Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();

    // 2. Full TLS handshakes from an address in good standing, same concurrency.
    let handshakes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (handshakes, connector, name) = (handshakes.clone(), connector.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            while started.elapsed() < window {
                let Ok(tcp) = tcp_from([127, 0, 0, 10].into(), submission).await else {
                    continue;
                };
                if connector.connect(name.clone(), tcp).await.is_ok() {
                    handshakes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let tls_rate =
        handshakes.load(std::sync::atomic::Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    println!(
        "refusing a banned address: {refusals:.0} connections/s; full TLS handshakes: {tls_rate:.0}/s; ratio {:.1}x",
        refusals / tls_rate.max(1.0)
    );

    // 3. Legitimate login latency, without and then with a flood of failed logins from
    // 127.0.1.0/24 that sprays a new username each time (so per-account throttling does not
    // apply and every attempt costs a full Argon2id hash); each flooding address gets banned
    // after a few tries and the flood moves on to the next.
    let measure = |label: &'static str| {
        let (connector, name, good) = (connector.clone(), name.clone(), good.clone());
        async move {
            let mut latencies = Vec::new();
            let started = Instant::now();
            let mut n = 0u8;
            while started.elapsed() < window {
                // Rotate legitimate addresses so that the per-IP connection rate limit is not the subject.
                n = n.wrapping_add(1);
                let source = std::net::IpAddr::from([127, 0, 2, n]);
                if let Ok((true, latency)) = login(source, submission, &connector, &name, &good).await {
                    latencies.push(latency);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            latencies.sort();
            println!(
                "legitimate logins {label}: {} done, p50 {:.1} ms, p99 {:.1} ms",
                latencies.len(),
                percentile(&latencies, 0.5),
                percentile(&latencies, 0.99)
            );
        }
    };
    measure("without a flood").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attempts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut flood = Vec::new();
    for task in 0..16u8 {
        let (connector, name, stop, attempts) =
            (connector.clone(), name.clone(), stop.clone(), attempts.clone());
        flood.push(tokio::spawn(async move {
            let mut host = task;
            let mut guess = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let source = std::net::IpAddr::from([127, 0, 1, host]);
                guess += 1;
                let sprayed = format!("\0user{task}x{guess}@example.test\0not-the-password");
                let bad = base64::engine::general_purpose::STANDARD.encode(sprayed);
                if login(source, submission, &connector, &name, &bad).await.is_err() {
                    host = host.wrapping_add(16); // banned: move to another address
                }
                attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    measure("during the flood").await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in flood {
        t.abort();
    }
    println!(
        "flood: {} failed-login attempts in {seconds} s from 16 concurrent attackers",
        attempts.load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}
