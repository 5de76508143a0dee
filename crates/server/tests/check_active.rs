//! `sealmail check --active`: the attacks tried on servers the user runs. A sealmail instance
//! passes every probe and still greets and logs in the probing address afterwards (one run
//! must not get it banned); a deliberately weak fake server (an open relay for the percent
//! hack, bare LF taken as the end of data, commands sent with STARTTLS answered inside TLS,
//! AUTH and IMAP LOGIN evaluated in plaintext) gets each documented FAIL and fix; `--active` without
//! `--i-run-this-server` is a usage error that sends nothing; a server without postmaster is
//! told so by the smuggling probe, which asked for it once.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use sealmail_testkit::dns::DnsServer;
use sealmail_testkit::{LineClient, TestResult, ctx, tls_upgrade};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{check, finding, json_check};

/// A closed loopback port, for the services a test does not run.
fn closed() -> TestResult<u16> {
    Ok(common::free_addr()?.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealmail_server_passes_every_probe_and_does_not_ban_the_prober() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let dns = DnsServer::start().await?;
    let (mx, submission, imap) = (common::free_addr()?, common::free_addr()?, common::free_addr()?);
    // postmaster exists: RFC 5321 4.5.1 requires it, and the smuggling probe writes to it.
    let config = common::config_with_users(
        dir.path(),
        "good.test",
        &["alice", "postmaster"],
        &[
            ("mx", mx, "starttls"),
            ("submission", submission, "starttls"),
            ("imap", imap, "starttls"),
        ],
        "",
    )?;
    let ca = sealmail_testkit::pki::TestCa::new("check active CA")?;
    let ca_file = common::install_issued(dir.path(), &ca, &["mail.good.test"])?;
    let _server = common::serve(dir.path(), &config).await?;
    dns.add_mx("good.test", 10, "mail.good.test");
    dns.add_a("mail.good.test", std::net::Ipv4Addr::LOCALHOST);
    let ports = format!(
        "smtp={},submission={},imap={},submissions={},imaps={},https={}",
        mx.port(),
        submission.port(),
        imap.port(),
        closed()?,
        closed()?,
        closed()?
    );
    let ca_arg = ca_file.to_string_lossy().into_owned();
    let report = json_check(
        dir.path(),
        &dns,
        &[
            "good.test",
            "--active",
            "--i-run-this-server",
            "--port",
            &ports,
            "--ca-file",
            &ca_arg,
            "--host",
            "mail.good.test",
        ],
    )?;
    let mut ids = Vec::new();
    for id in [
        "plaintext-auth",
        "starttls-injection",
        "open-relay",
        "smtp-smuggling",
    ] {
        ids.push(format!("{id}:mail.good.test:{}", mx.port()));
    }
    for port in [submission.port(), imap.port()] {
        for id in ["plaintext-auth", "starttls-injection"] {
            ids.push(format!("{id}:mail.good.test:{port}"));
        }
    }
    for id in &ids {
        let found = finding(&report, id)?;
        assert_eq!(found["status"], "PASS", "{found}");
    }
    let pillar = |id: &str| {
        finding(&report, &format!("{id}:mail.good.test:{}", mx.port())).map(|c| c["pillar"].clone())
    };
    assert_eq!(pillar("open-relay")?, "server_security");
    assert_eq!(pillar("smtp-smuggling")?, "server_security");
    assert_eq!(pillar("plaintext-auth")?, "server_security");
    assert_eq!(pillar("starttls-injection")?, "encryption");
    let relay = finding(&report, &format!("open-relay:mail.good.test:{}", mx.port()))?;
    assert!(
        relay["detail"]
            .as_str()
            .is_some_and(|d| d.contains("percent hack") && d.contains("source route")),
        "{relay}"
    );
    // No active probe is a WARN or FAIL, nor a probe that could not be made.
    let active = [
        "plaintext-auth",
        "starttls-injection",
        "open-relay",
        "smtp-smuggling",
        "active",
    ];
    for check in report["checks"].as_array().ok_or("no checks")? {
        let id = check["id"].as_str().unwrap_or_default();
        if active.iter().any(|a| id.starts_with(&format!("{a}:"))) {
            assert_eq!(check["status"], "PASS", "{check}");
        }
    }
    // No probe message was delivered (the smuggling probes never end their data).
    let data = dir.path().join("data");
    for user in ["postmaster@good.test", "alice@good.test"] {
        let inbox = common::mailbox_contents(&data, user, "INBOX").await?;
        assert!(inbox.is_empty(), "{user} got {} message(s)", inbox.len());
    }

    // The probing address is not banned: the MX greets it, and it logs in on submission.
    let mut client = LineClient::new(ctx(TcpStream::connect(mx).await, "connect mx")?);
    let greeting = client.smtp_reply().await?;
    assert!(greeting.starts_with("220 "), "{greeting}");
    let mut client = LineClient::new(ctx(TcpStream::connect(submission).await, "connect")?);
    client.smtp_reply().await?;
    client
        .dialog(&[("EHLO client.test", "250"), ("STARTTLS", "220")])
        .await?;
    let tls = sealmail_testkit::client_config(&[ca_file.as_path()], &[&rustls::version::TLS13], &[])?;
    let mut client = LineClient::new(tls_upgrade(client.into_inner(), tls, "mail.good.test").await?);
    client.command("EHLO client.test", "250").await?;
    let token = base64::engine::general_purpose::STANDARD
        .encode(format!("\0alice@good.test\0{}", common::TEST_PASSWORD));
    client.command(&format!("AUTH PLAIN {token}"), "235").await?;
    // And so on IMAP.
    let mut imap = LineClient::new(ctx(TcpStream::connect(imap).await, "connect imap")?);
    let greeting = imap.line().await?;
    assert!(greeting.starts_with("* OK"), "{greeting}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_postmaster_the_smuggling_probe_says_so_after_one_try() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let dns = DnsServer::start().await?;
    let mx = common::free_addr()?;
    let config =
        common::config_with_users(dir.path(), "bare.test", &["alice"], &[("mx", mx, "starttls")], "")?;
    let _server = common::serve(dir.path(), &config).await?;
    dns.add_mx("bare.test", 10, "mail.bare.test");
    dns.add_a("mail.bare.test", std::net::Ipv4Addr::LOCALHOST);
    let ports = format!(
        "smtp={},submission={},imap={},submissions={},imaps={},https={}",
        mx.port(),
        closed()?,
        closed()?,
        closed()?,
        closed()?,
        closed()?
    );
    let report = json_check(
        dir.path(),
        &dns,
        &["bare.test", "--active", "--i-run-this-server", "--port", &ports],
    )?;
    let smuggling = finding(&report, &format!("smtp-smuggling:mail.bare.test:{}", mx.port()))?;
    assert_eq!(smuggling["status"], "INFO", "{smuggling}");
    assert!(
        smuggling["detail"]
            .as_str()
            .is_some_and(|d| d.contains("RFC 5321 4.5.1")),
        "{smuggling}"
    );
    assert!(
        smuggling["fix"]
            .as_str()
            .is_some_and(|f| f.contains("sealmail user add postmaster@bare.test")),
        "{smuggling}"
    );
    // An INFO that could not be made keeps the grade below A.
    assert_ne!(report["grade"], "A");
    // postmaster was asked for once, not once per false ending: one unknown recipient counted.
    // Events are written in batches: wait for the relay attempts, the last probes' events.
    let mut events = String::new();
    for _ in 0..50 {
        let (code, out, err) = common::admin(dir.path(), &config, &["security", "events"])?;
        assert_eq!(code, 0, "{err}");
        events = out;
        if events.matches("relay_denied").count() >= 2 && events.contains("postmaster@bare.test") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        events.matches("RCPT TO:<postmaster@bare.test>").count(),
        1,
        "{events}"
    );
    Ok(())
}

/// A connection of the weak server: plaintext, then TLS after STARTTLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Gone,
}

impl Conn {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf).await,
            Conn::Tls(s) => s.read(buf).await,
            Conn::Gone => Ok(0),
        }
    }

    async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(data).await,
            Conn::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Conn::Gone => Ok(()),
        }
    }
}

/// What a badly written SMTP server does: lines end at any LF (so `<LF>.<LF>` ends the
/// data), what was read before STARTTLS is kept and answered after it (CVE-2011-0411), AUTH
/// is checked without TLS (and always fails), and RCPT takes the percent hack (relaying).
async fn weak_session(stream: TcpStream, acceptor: tokio_rustls::TlsAcceptor) -> std::io::Result<()> {
    let mut conn = Conn::Plain(stream);
    let mut buffer: Vec<u8> = Vec::new();
    let mut in_data = false;
    let mut message = String::new();
    conn.write(b"220 weak.test ESMTP\r\n").await?;
    loop {
        let Some(end) = buffer.iter().position(|b| *b == b'\n') else {
            let mut chunk = [0u8; 4096];
            let read = conn.read(&mut chunk).await?;
            if read == 0 || buffer.len() > 65_536 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..read]);
            continue;
        };
        let line: Vec<u8> = buffer.drain(..=end).collect();
        let line = String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_string();
        if in_data {
            message.push_str(&line);
            if line == "." {
                in_data = false;
                // The <LF>.<LF> probe's message it refuses (as a DMARC milter would a
                // message from a foreign address), after taking its ending as the end of data.
                if message.contains("took <LF>.<LF> as") {
                    conn.write(b"550 5.7.1 rejected by DMARC policy\r\n").await?;
                } else {
                    conn.write(b"250 2.0.0 queued\r\n").await?;
                }
                message.clear();
            }
            continue;
        }
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = match upper.split_whitespace().next().unwrap_or("") {
            "EHLO" => b"250-weak.test\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n",
            "STARTTLS" => {
                conn.write(b"220 2.0.0 go ahead\r\n").await?;
                let Conn::Plain(tcp) = std::mem::replace(&mut conn, Conn::Gone) else {
                    return Ok(());
                };
                // The flaw: `buffer` keeps what came with STARTTLS.
                conn = Conn::Tls(Box::new(acceptor.accept(tcp).await?));
                continue;
            }
            "NOOP" | "MAIL" | "RSET" => b"250 2.0.0 OK\r\n",
            "AUTH" => b"535 5.7.8 authentication failed\r\n",
            "RCPT" if line.contains('%') || upper.contains("POSTMASTER@") => b"250 2.1.5 OK\r\n",
            "RCPT" => b"550 5.7.1 relaying denied\r\n",
            "DATA" => {
                in_data = true;
                b"354 go ahead\r\n"
            }
            "QUIT" => {
                conn.write(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => b"502 5.5.2 no\r\n",
        };
        conn.write(reply).await?;
    }
}

/// The same flaws in IMAP: LOGIN checked without TLS (and always failing), and what came
/// with STARTTLS answered after it.
async fn weak_imap_session(stream: TcpStream, acceptor: tokio_rustls::TlsAcceptor) -> std::io::Result<()> {
    let mut conn = Conn::Plain(stream);
    let mut buffer: Vec<u8> = Vec::new();
    conn.write(b"* OK weak IMAP ready\r\n").await?;
    loop {
        let Some(end) = buffer.iter().position(|b| *b == b'\n') else {
            let mut chunk = [0u8; 4096];
            let read = conn.read(&mut chunk).await?;
            if read == 0 || buffer.len() > 65_536 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..read]);
            continue;
        };
        let line: Vec<u8> = buffer.drain(..=end).collect();
        let line = String::from_utf8_lossy(&line).trim_end().to_string();
        let mut words = line.split_whitespace();
        let (tag, command) = (
            words.next().unwrap_or("*"),
            words.next().unwrap_or("").to_ascii_uppercase(),
        );
        let reply = match command.as_str() {
            "CAPABILITY" => format!("* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN\r\n{tag} OK done\r\n"),
            "LOGIN" => format!("{tag} NO [AUTHENTICATIONFAILED] invalid credentials\r\n"),
            "NOOP" => format!("{tag} OK NOOP done\r\n"),
            "STARTTLS" => {
                conn.write(format!("{tag} OK begin TLS\r\n").as_bytes()).await?;
                let Conn::Plain(tcp) = std::mem::replace(&mut conn, Conn::Gone) else {
                    return Ok(());
                };
                conn = Conn::Tls(Box::new(acceptor.accept(tcp).await?));
                continue;
            }
            "LOGOUT" => {
                conn.write(format!("* BYE\r\n{tag} OK bye\r\n").as_bytes())
                    .await?;
                return Ok(());
            }
            _ => format!("{tag} BAD no\r\n"),
        };
        conn.write(reply.as_bytes()).await?;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weak_server_gets_each_finding_and_its_fix() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let dns = DnsServer::start().await?;
    let (tls, _) = sealmail_testkit::pki::tls_pair(dir.path(), "mx.weak.test")?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = ctx(tokio::net::TcpListener::bind("127.0.0.1:0").await, "bind")?;
    let smtp = ctx(listener.local_addr(), "addr")?.port();
    let imap_listener = ctx(tokio::net::TcpListener::bind("127.0.0.1:0").await, "bind")?;
    let imap = ctx(imap_listener.local_addr(), "addr")?.port();
    let imap_acceptor = acceptor.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(weak_session(stream, acceptor.clone()));
        }
    });
    tokio::spawn(async move {
        while let Ok((stream, _)) = imap_listener.accept().await {
            tokio::spawn(weak_imap_session(stream, imap_acceptor.clone()));
        }
    });
    dns.add_mx("weak.test", 10, "mx.weak.test");
    dns.add_a("mx.weak.test", std::net::Ipv4Addr::LOCALHOST);
    let submission = closed()?;
    let ports = format!(
        "smtp={smtp},submission={submission},imap={imap},submissions={},imaps={},https={}",
        closed()?,
        closed()?,
        closed()?
    );
    let report = json_check(
        dir.path(),
        &dns,
        &[
            "weak.test",
            "--active",
            "--i-run-this-server",
            "--port",
            &ports,
            "--host",
            "mx.weak.test",
        ],
    )?;
    let mx = |id: &str| finding(&report, &format!("{id}:mx.weak.test:{smtp}"));
    let fix = |check: &serde_json::Value| check["fix"].as_str().unwrap_or_default().to_string();
    let detail = |check: &serde_json::Value| check["detail"].as_str().unwrap_or_default().to_string();

    let relay = mx("open-relay")?;
    assert_eq!(relay["status"], "FAIL", "{relay}");
    assert!(
        detail(relay).contains("<relay-probe%relay-test.invalid@weak.test>")
            && detail(relay).contains("percent hack"),
        "{relay}"
    );
    assert!(
        !detail(relay).contains("bang path"),
        "only the percent hack relays: {relay}"
    );
    assert!(fix(relay).contains("reject_unauth_destination"), "{relay}");

    let smuggling = mx("smtp-smuggling")?;
    assert_eq!(smuggling["status"], "FAIL", "{smuggling}");
    for taken in ["<LF>.<LF>", "<CRLF>.<LF>", "<LF>.<CRLF>"] {
        assert!(detail(smuggling).contains(taken), "{taken}: {smuggling}");
    }
    // A rejection after a false ending is no defence when the server then reads commands.
    assert!(
        detail(smuggling).contains("550 5.7.1 rejected by DMARC policy, then NOOP answered"),
        "{smuggling}"
    );
    // A bare CR or a NUL does not end a line for this server.
    for kept in ["<CR>.<CR>", "<CRLF>.<CR>", "<NUL>"] {
        assert!(!detail(smuggling).contains(kept), "{kept}: {smuggling}");
    }
    assert!(
        fix(smuggling).contains("smtpd_forbid_bare_newline"),
        "{smuggling}"
    );

    let injection = mx("starttls-injection")?;
    assert_eq!(injection["status"], "FAIL", "{injection}");
    assert_eq!(injection["pillar"], "encryption");
    assert!(detail(injection).contains("(`250 2.0.0 OK`)"), "{injection}");
    assert!(fix(injection).contains("RFC 3207"), "{injection}");

    let auth = mx("plaintext-auth")?;
    assert_eq!(auth["status"], "FAIL", "{auth}");
    assert!(detail(auth).contains("535"), "{auth}");
    assert!(fix(auth).contains("smtpd_tls_auth_only = yes"), "{auth}");

    // IMAP: LOGIN evaluated before TLS, the tagged NOOP answered inside TLS.
    let imap_check = |id: &str| finding(&report, &format!("{id}:mx.weak.test:{imap}"));
    let login = imap_check("plaintext-auth")?;
    assert_eq!(login["status"], "FAIL", "{login}");
    assert!(detail(login).contains("AUTHENTICATIONFAILED"), "{login}");
    assert!(fix(login).contains("disable_plaintext_auth"), "{login}");
    let injection = imap_check("starttls-injection")?;
    assert_eq!(injection["status"], "FAIL", "{injection}");
    assert!(detail(injection).contains("(`p3 OK NOOP done`)"), "{injection}");
    // A port that is closed is not probed, and says so.
    let closed_port = finding(&report, &format!("active:mx.weak.test:{submission}"))?;
    assert_eq!(closed_port["status"], "INFO", "{closed_port}");
    assert_ne!(report["grade"], "A");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_without_i_run_this_server_is_a_usage_error_that_sends_nothing() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let dns = DnsServer::start().await?;
    let listener = ctx(tokio::net::TcpListener::bind("127.0.0.1:0").await, "bind")?;
    let smtp = ctx(listener.local_addr(), "addr")?.port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = stream.write_all(b"220 mx.any.test ESMTP\r\n").await;
        }
    });
    dns.add_mx("any.test", 10, "mx.any.test");
    dns.add_a("mx.any.test", std::net::Ipv4Addr::LOCALHOST);
    let ports = format!("smtp={smtp}");
    let (code, out, err) = check(dir.path(), &dns, &["any.test", "--active", "--port", &ports])?;
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("only for servers you run") && err.contains("--i-run-this-server"),
        "{err}"
    );
    assert!(out.is_empty(), "{out}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "a connection was made");
    assert_eq!(dns.queries(), 0, "a DNS lookup was made");
    Ok(())
}

/// The reference peer of `../shared/peers/setup-postfix-dovecot.sh` (Postfix 3.7 with
/// `smtpd_forbid_bare_newline = yes`, no `mynetworks`, AUTH only after TLS on submission;
/// Dovecot, which closes a connection that pipelines after STARTTLS), when it runs: real,
/// well-configured servers pass the probes too. Skipped (and said so) when the peer does not
/// listen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_and_dovecot_pass_every_probe_when_the_peer_runs() -> TestResult {
    let smtp = std::net::SocketAddr::from(([127, 0, 0, 1], 12525));
    if TcpStream::connect(smtp).await.is_err() {
        eprintln!("skipped: no Postfix peer on {smtp} (../shared/peers/setup-postfix-dovecot.sh)");
        return Ok(());
    }
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let dns = DnsServer::start().await?;
    dns.add_mx("example.test", 10, "mail.example.test");
    dns.add_a("mail.example.test", std::net::Ipv4Addr::LOCALHOST);
    let ports = format!(
        "smtp=12525,submissions=12465,submission=12587,imaps=12993,imap=12143,https={}",
        closed()?
    );
    let report = json_check(
        dir.path(),
        &dns,
        &[
            "example.test",
            "--active",
            "--i-run-this-server",
            "--port",
            &ports,
            "--host",
            "mail.example.test",
        ],
    )?;
    for (id, port) in [
        ("plaintext-auth", 12525),
        ("starttls-injection", 12525),
        ("open-relay", 12525),
        ("smtp-smuggling", 12525),
        ("plaintext-auth", 12587),
        ("starttls-injection", 12587),
        ("starttls-injection", 12143),
    ] {
        let found = finding(&report, &format!("{id}:mail.example.test:{port}"))?;
        assert_eq!(found["status"], "PASS", "{found}");
    }
    // Dovecot treats connections from loopback as secure and checks LOGIN there: what this
    // client gets is a FAIL, said to be one of loopback.
    let login = finding(&report, "plaintext-auth:mail.example.test:12143")?;
    assert_eq!(login["status"], "FAIL", "{login}");
    assert!(
        login["detail"]
            .as_str()
            .is_some_and(|d| d.contains("probed over loopback")),
        "{login}"
    );
    Ok(())
}
