//! Listeners end to end: quickstart, TLS versions and suites (rustls, raw ClientHellos and
//! openssl s_client), STARTTLS injection, SNI, certificate reload, start-up failures,
//! connection caps, timeouts and graceful shutdown.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use nix::sys::signal::Signal;
use rustls::version::{TLS12, TLS13};
use tokio::net::{TcpSocket, TcpStream};

use common::{Instance, QUICKSTART_PORTS, free_addr, serve, write_config};
use sealmail_testkit::{
    HelloAnswer, LineClient, TLS1_0, TLS1_1, TLS1_2, TestResult, client_hello, ctx, send_client_hello,
    tls_connect, tls_upgrade,
};

const MX: u16 = 2525;
const SUBMISSION_TLS: u16 = 2465;
const SUBMISSION_STARTTLS: u16 = 2587;
const IMAP_STARTTLS: u16 = 2143;
const IMAP_TLS: u16 = 2993;
const SERVER_NAME: &str = "mail.example.test";

async fn plain(addr: SocketAddr) -> TestResult<LineClient<TcpStream>> {
    Ok(LineClient::new(ctx(TcpStream::connect(addr).await, "connect")?))
}

/// Reads the SMTP greeting, says EHLO, sends STARTTLS and returns the raw stream for the handshake.
async fn smtp_to_starttls(addr: SocketAddr) -> TestResult<TcpStream> {
    let mut c = plain(addr).await?;
    let greeting = c.smtp_reply().await?;
    assert!(greeting.starts_with("220 "), "{greeting}");
    c.send("EHLO client.test\r\n").await?;
    let ehlo = c.smtp_reply().await?;
    assert!(ehlo.contains("250-STARTTLS"), "STARTTLS not offered: {ehlo}");
    c.send("STARTTLS\r\n").await?;
    assert!(c.smtp_reply().await?.starts_with("220 2.0.0"));
    Ok(c.into_inner())
}

async fn imap_to_starttls(addr: SocketAddr) -> TestResult<TcpStream> {
    let mut c = plain(addr).await?;
    let greeting = c.line().await?;
    assert!(
        greeting.starts_with("* OK [CAPABILITY IMAP4rev1 IMAP4rev2 STARTTLS LOGINDISABLED]"),
        "{greeting}"
    );
    c.send("a1 STARTTLS\r\n").await?;
    assert_eq!(c.line().await?, "a1 OK Begin TLS negotiation now");
    Ok(c.into_inner())
}

#[tokio::test]
async fn quickstart_prints_credentials_listens_on_five_ports_and_reuses_its_folder() -> TestResult {
    let mut instance = Instance::quickstart().await?;
    let output = instance.process.output();
    let credentials_path = instance.data_dir().join("quickstart-credentials.txt");
    let credentials = ctx(std::fs::read_to_string(&credentials_path), "credentials file")?;
    let mode = ctx(std::fs::metadata(&credentials_path), "stat")?
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let lines: Vec<&str> = credentials.lines().collect();
    assert_eq!(lines.len(), 2, "{credentials}");
    for (line, user) in lines.iter().zip(["alice@example.test", "bob@example.test"]) {
        let (address, password) = line.split_once(' ').ok_or("no space")?;
        assert_eq!(address, user);
        assert!(password.len() >= 20, "weak password {password}");
        assert!(output.contains(line), "credentials not printed: {output}");
    }
    let key_mode = ctx(std::fs::metadata(instance.data_dir().join("tls/key.pem")), "stat")?
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    for port in QUICKSTART_PORTS {
        ctx(TcpStream::connect(instance.addr(port)).await, "connect")?;
    }

    instance.process.signal(Signal::SIGTERM)?;
    assert_eq!(
        instance.process.wait_exit(Duration::from_secs(30)).await?,
        Some(0)
    );
    // A second run reuses the folder: same credentials, nothing printed again.
    let offset = instance.offset.to_string();
    let again = sealmail_testkit::Sealmail::spawn(
        common::bin(),
        &["quickstart", "--port-offset", &offset],
        instance.root.path(),
        instance.root.path(),
    )?;
    again
        .wait_for_log("sealmail ready", Duration::from_secs(60))
        .await?;
    assert!(again.output().contains("reusing"), "{}", again.output());
    assert!(!again.output().contains(lines[0]), "password printed twice");
    assert_eq!(
        ctx(std::fs::read_to_string(&credentials_path), "credentials")?,
        credentials
    );
    Ok(())
}

#[tokio::test]
async fn every_tls_listener_completes_tls12_and_tls13_handshakes() -> TestResult {
    let instance = Instance::quickstart().await?;
    for (version, name) in [(&TLS12, "TLSv1_2"), (&TLS13, "TLSv1_3")] {
        let config = instance.client(&[version])?;
        // Implicit TLS: SMTP submission and IMAP.
        let tls = tls_connect(instance.addr(SUBMISSION_TLS), config.clone(), SERVER_NAME).await?;
        assert_eq!(
            format!("{:?}", tls.get_ref().1.protocol_version().ok_or("no version")?),
            name
        );
        let mut c = LineClient::new(tls);
        assert!(c.smtp_reply().await?.starts_with("220 mail.example.test ESMTP"));
        let tls = tls_connect(instance.addr(IMAP_TLS), config.clone(), SERVER_NAME).await?;
        let mut c = LineClient::new(tls);
        assert!(c.line().await?.starts_with("* OK [CAPABILITY IMAP4rev1 "));

        // STARTTLS: both SMTP listeners and IMAP; after the upgrade STARTTLS is no longer offered.
        for port in [MX, SUBMISSION_STARTTLS] {
            let tcp = smtp_to_starttls(instance.addr(port)).await?;
            let tls = tls_upgrade(tcp, config.clone(), SERVER_NAME).await?;
            assert_eq!(
                format!("{:?}", tls.get_ref().1.protocol_version().ok_or("no version")?),
                name
            );
            let mut c = LineClient::new(tls);
            c.send("EHLO client.test\r\n").await?;
            let ehlo = c.smtp_reply().await?;
            assert!(
                ehlo.starts_with("250-mail.example.test") && !ehlo.contains("STARTTLS"),
                "{ehlo}"
            );
        }
        let tcp = imap_to_starttls(instance.addr(IMAP_STARTTLS)).await?;
        let mut c = LineClient::new(tls_upgrade(tcp, config.clone(), SERVER_NAME).await?);
        c.send("a2 CAPABILITY\r\n").await?;
        let capability = c.line().await?;
        assert!(
            capability.starts_with("* CAPABILITY IMAP4rev1 ")
                && capability.contains("AUTH=PLAIN")
                && !capability.contains("STARTTLS")
                && !capability.contains("LOGINDISABLED"),
            "{capability}"
        );
        assert_eq!(c.line().await?, "a2 OK CAPABILITY completed");
    }
    Ok(())
}

/// IANA codes of suites sealmail must never choose, and of one it must.
const TLS_RSA_WITH_AES_128_GCM_SHA256: u16 = 0x009c; // no forward secrecy
const TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA: u16 = 0xc009; // not AEAD
const TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256: u16 = 0xc023; // not AEAD
const TLS_DHE_RSA_WITH_AES_128_CBC_SHA: u16 = 0x0033;
const TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256: u16 = 0xc02b;

#[tokio::test]
async fn legacy_versions_and_weak_suites_never_get_a_server_hello() -> TestResult {
    let instance = Instance::quickstart().await?;
    let legacy_suites = [
        TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ];
    let cases: Vec<(u16, Vec<u16>, bool)> = vec![
        (TLS1_0, legacy_suites.to_vec(), false),
        (TLS1_1, legacy_suites.to_vec(), false),
        (TLS1_2, vec![TLS_RSA_WITH_AES_128_GCM_SHA256], false),
        (
            TLS1_2,
            vec![
                TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA,
                TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256,
            ],
            false,
        ),
        (TLS1_2, vec![TLS_DHE_RSA_WITH_AES_128_CBC_SHA], false),
        // The control case: the same hand-made hello with a good suite is answered.
        (TLS1_2, vec![TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256], true),
    ];
    for (case, (version, suites, accepted)) in cases.into_iter().enumerate() {
        let hello = client_hello(version, &suites, SERVER_NAME);
        // Failed handshakes count toward a ban: each case comes from its own address.
        let source = [127, 0, 0, 20 + case as u8];
        for (label, port) in [
            ("implicit smtp", SUBMISSION_TLS),
            ("implicit imap", IMAP_TLS),
            ("starttls smtp", MX),
        ] {
            let mut stream = if port == MX {
                smtp_to_starttls(instance.addr(port)).await?
            } else {
                let socket = ctx(TcpSocket::new_v4(), "socket")?;
                ctx(socket.bind(SocketAddr::from((source, 0))), "bind")?;
                ctx(socket.connect(instance.addr(port)).await, "connect")?
            };
            let answer = send_client_hello(&mut stream, &hello).await?;
            let what = format!("{label}: version {version:#06x} suites {suites:04x?}: {answer:?}");
            if accepted {
                assert_eq!(answer, HelloAnswer::ServerHello, "{what}");
            } else {
                assert!(
                    matches!(answer, HelloAnswer::Alert(_) | HelloAnswer::Closed),
                    "{what}"
                );
            }
        }
    }
    Ok(())
}

/// Runs `openssl s_client` with a version flag; returns whether a session was established.
fn openssl_handshake(addr: SocketAddr, version_flag: &str, starttls: Option<&str>) -> TestResult<bool> {
    let mut cmd = std::process::Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &addr.to_string(),
        "-servername",
        SERVER_NAME,
        version_flag,
    ]);
    if version_flag == "-tls1_1" {
        // Let the client really offer TLS 1.1 (OpenSSL 3 refuses it at its default level).
        cmd.args(["-cipher", "DEFAULT@SECLEVEL=0"]);
    }
    if let Some(protocol) = starttls {
        cmd.args(["-starttls", protocol]);
    }
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(out.status.success() && text.contains("Cipher is ") && !text.contains("Cipher is (NONE)"))
}

#[tokio::test]
async fn openssl_s_client_connects_with_tls12_and_tls13_but_not_tls11() -> TestResult {
    let instance = Instance::quickstart().await?;
    let targets = [
        (SUBMISSION_TLS, None),
        (IMAP_TLS, None),
        (MX, Some("smtp")),
        (SUBMISSION_STARTTLS, Some("smtp")),
        (IMAP_STARTTLS, Some("imap")),
    ];
    for (port, starttls) in targets {
        let addr = instance.addr(port);
        assert!(
            !openssl_handshake(addr, "-tls1_1", starttls)?,
            "TLS 1.1 accepted on {port}"
        );
        assert!(
            openssl_handshake(addr, "-tls1_2", starttls)?,
            "TLS 1.2 refused on {port}"
        );
        assert!(
            openssl_handshake(addr, "-tls1_3", starttls)?,
            "TLS 1.3 refused on {port}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn negotiated_suites_are_only_the_documented_ones() -> TestResult {
    let instance = Instance::quickstart().await?;
    let all = rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES;
    let mut negotiated = Vec::new();
    for suite in all {
        let version = match suite {
            rustls::SupportedCipherSuite::Tls13(_) => &TLS13,
            rustls::SupportedCipherSuite::Tls12(_) => &TLS12,
        };
        let config = sealmail_testkit::client_config(&[&instance.cert()], &[version], &[*suite])?;
        if let Ok(tls) = tls_connect(instance.addr(SUBMISSION_TLS), config, SERVER_NAME).await {
            let chosen = tls.get_ref().1.negotiated_cipher_suite().ok_or("no suite")?;
            negotiated.push(sealmail_tls::suite_name(chosen));
        }
    }
    let allowed: Vec<&str> = sealmail_tls::ALLOWED_CIPHER_SUITES
        .iter()
        .map(|s| sealmail_tls::suite_name(*s))
        .collect();
    assert!(!negotiated.is_empty());
    for name in &negotiated {
        assert!(allowed.contains(name), "{name} negotiated but not documented");
    }
    // The docs list every suite: check docs/SECURITY.md names each allowed one.
    let security = ctx(
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/SECURITY.md")),
        "docs",
    )?;
    for name in &allowed {
        assert!(security.contains(name), "{name} missing from docs/SECURITY.md");
    }
    Ok(())
}

#[tokio::test]
async fn bytes_pipelined_after_starttls_are_discarded() -> TestResult {
    let instance = Instance::quickstart().await?;
    let config = instance.client(&[&TLS13])?;

    // SMTP: VRFY pipelined behind STARTTLS would answer 252 inside TLS if it were executed.
    let mut c = plain(instance.addr(SUBMISSION_STARTTLS)).await?;
    c.smtp_reply().await?;
    c.send("EHLO client.test\r\n").await?;
    c.smtp_reply().await?;
    c.send("STARTTLS\r\nVRFY injected\r\n").await?;
    assert!(c.smtp_reply().await?.starts_with("220 2.0.0"));
    let mut c = LineClient::new(tls_upgrade(c.into_inner(), config.clone(), SERVER_NAME).await?);
    c.send("NOOP\r\n").await?;
    assert_eq!(
        c.smtp_reply().await?,
        "250 2.0.0 OK",
        "the injected command was executed"
    );

    // IMAP: the same with a pipelined tagged command.
    let mut c = plain(instance.addr(IMAP_STARTTLS)).await?;
    c.line().await?;
    c.send("a1 STARTTLS\r\nx1 CAPABILITY\r\n").await?;
    assert_eq!(c.line().await?, "a1 OK Begin TLS negotiation now");
    let mut c = LineClient::new(tls_upgrade(c.into_inner(), config, SERVER_NAME).await?);
    c.send("a2 NOOP\r\n").await?;
    assert_eq!(
        c.line().await?,
        "a2 OK NOOP completed",
        "the injected command was executed"
    );
    Ok(())
}

#[tokio::test]
async fn submission_refuses_mail_before_tls_and_long_lines_get_500() -> TestResult {
    let instance = Instance::quickstart().await?;
    let mut c = plain(instance.addr(SUBMISSION_STARTTLS)).await?;
    c.smtp_reply().await?;
    c.send("EHLO client.test\r\n").await?;
    c.smtp_reply().await?;
    c.send("AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n").await?;
    assert!(c.smtp_reply().await?.starts_with("530 5.7.0"));
    c.send("MAIL FROM:<alice@example.test>\r\n").await?;
    assert!(c.smtp_reply().await?.starts_with("530 5.7.0"));
    c.send(&format!("NOOP {}\r\n", "x".repeat(600))).await?;
    assert!(c.smtp_reply().await?.starts_with("500 5.5.2"));
    // The session is still sane.
    c.send("NOOP\r\n").await?;
    assert_eq!(c.smtp_reply().await?, "250 2.0.0 OK");

    let mut imap = plain(instance.addr(IMAP_STARTTLS)).await?;
    imap.line().await?;
    imap.send("a1 LOGIN alice secret\r\n").await?;
    assert!(imap.line().await?.starts_with("a1 NO [PRIVACYREQUIRED]"));
    Ok(())
}

#[tokio::test]
async fn sni_selects_the_certificate_for_the_requested_name() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let addr = free_addr()?;
    let config = write_config(
        dir.path(),
        &["mail.a.test", "mail.b.test"],
        &[("imap", addr, "implicit")],
        "",
    )?;
    let _server = serve(dir.path(), &config).await?;
    let certs = [dir.path().join("tls/0.pem"), dir.path().join("tls/1.pem")];
    let client = sealmail_testkit::client_config(&[&certs[0], &certs[1]], &[&TLS13], &[])?;
    for (name, expected) in [("mail.a.test", 0), ("mail.b.test", 1), ("other.test", 0)] {
        let expected_der = sealmail_testkit::pem_certificate_der(&certs[expected])?;
        // For an unknown name the default certificate does not verify: inspect it without verification.
        if name == "other.test" {
            let served = sealmail_testkit::served_certificate(addr, name).await?;
            assert_eq!(served, expected_der, "{name}");
            continue;
        }
        let tls = tls_connect(addr, client.clone(), name).await?;
        let served = tls.get_ref().1.peer_certificates().ok_or("no certificate")?[0]
            .as_ref()
            .to_vec();
        assert_eq!(served, expected_der, "{name}");
    }
    Ok(())
}

#[tokio::test]
async fn sighup_reloads_certificates_for_new_handshakes_while_sessions_continue() -> TestResult {
    let instance = Instance::quickstart().await?;
    let old_cert = instance.cert();
    let old_der = sealmail_testkit::pem_certificate_der(&old_cert)?;
    let old_copy = instance.root.path().join("old-cert.pem");
    ctx(std::fs::copy(&old_cert, &old_copy), "copy")?;

    let config = instance.client(&[&TLS13])?;
    let mut in_flight =
        LineClient::new(tls_connect(instance.addr(SUBMISSION_TLS), config, SERVER_NAME).await?);
    in_flight.smtp_reply().await?;

    let files = sealmail_config::CertificateFiles {
        cert: old_cert.clone(),
        key: instance.data_dir().join("tls/key.pem"),
    };
    ctx(
        sealmail_tls::selfsigned::generate(&[SERVER_NAME.to_string()], &files, 10),
        "new certificate",
    )?;
    let new_der = sealmail_testkit::pem_certificate_der(&old_cert)?;
    assert_ne!(old_der, new_der);
    instance.process.signal(Signal::SIGHUP)?;
    instance
        .process
        .wait_for_log("certificates reloaded", Duration::from_secs(10))
        .await?;

    let both = sealmail_testkit::client_config(&[&old_copy, &old_cert], &[&TLS13], &[])?;
    let fresh = tls_connect(instance.addr(SUBMISSION_TLS), both, SERVER_NAME).await?;
    let served = fresh.get_ref().1.peer_certificates().ok_or("no certificate")?[0]
        .as_ref()
        .to_vec();
    assert_eq!(served, new_der, "a new handshake still got the old certificate");

    in_flight.send("NOOP\r\n").await?;
    assert_eq!(
        in_flight.smtp_reply().await?,
        "250 2.0.0 OK",
        "the session in flight broke"
    );

    // A broken replacement is refused and the server keeps serving the last good certificate.
    ctx(std::fs::write(&old_cert, "garbage"), "write")?;
    instance.process.signal(Signal::SIGHUP)?;
    instance
        .process
        .wait_for_log("certificate reload failed", Duration::from_secs(10))
        .await?;
    let still = sealmail_testkit::served_certificate(instance.addr(SUBMISSION_TLS), SERVER_NAME).await?;
    assert_eq!(still, new_der);
    Ok(())
}

#[tokio::test]
async fn bad_certificates_stop_start_up_with_a_clear_message() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let addr = free_addr()?;
    let config = write_config(
        dir.path(),
        &["mail.a.test", "mail.b.test"],
        &[("mx", addr, "starttls")],
        "",
    )?;
    let config_arg = config.to_string_lossy().into_owned();
    let key = dir.path().join("tls/0.key");
    let cert = dir.path().join("tls/0.pem");
    let start = |expect: &str| -> TestResult {
        let (code, _, err) = common::run(dir.path(), &["--config", &config_arg, "serve"], None)?;
        assert_ne!(code, 0, "started despite: {expect}");
        assert!(err.contains(expect), "expected {expect:?} in:\n{err}");
        Ok(())
    };

    ctx(
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)),
        "chmod",
    )?;
    start(&format!(
        "private key {} is readable by other users (mode 0644); run `chmod 600 {}`",
        key.display(),
        key.display()
    ))?;
    ctx(
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)),
        "chmod",
    )?;

    let good_cert = ctx(std::fs::read(&cert), "read")?;
    ctx(std::fs::copy(dir.path().join("tls/1.pem"), &cert), "copy")?;
    start("does not belong to certificate")?;
    ctx(
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
        ),
        "write",
    )?;
    start(&format!("certificate file {}", cert.display()))?;
    ctx(std::fs::remove_file(&cert), "rm")?;
    start(&format!("certificate file {} does not exist", cert.display()))?;
    ctx(std::fs::write(&cert, &good_cert), "restore")?;

    // A data folder others can enter is refused, with the fix.
    let data = dir.path().join("data");
    ctx(std::fs::create_dir_all(&data), "mkdir")?;
    ctx(
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)),
        "chmod",
    )?;
    start(&format!(
        "the data folder {} is accessible by other users (mode 0755); run `chmod 700 {}`",
        data.display(),
        data.display()
    ))?;
    ctx(
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)),
        "chmod",
    )?;

    // An expired certificate starts, with a loud warning.
    let files = sealmail_config::CertificateFiles {
        cert: cert.clone(),
        key: key.clone(),
    };
    ctx(
        sealmail_tls::selfsigned::generate_with_validity(&["mail.a.test".to_string()], &files, -60, -1),
        "expired",
    )?;
    let server = serve(dir.path(), &config).await?;
    assert!(
        server.errors().contains("CERTIFICATE EXPIRED"),
        "{}",
        server.errors()
    );
    Ok(())
}

async fn connect_from(source: [u8; 4], addr: SocketAddr) -> TestResult<LineClient<TcpStream>> {
    let socket = ctx(TcpSocket::new_v4(), "socket")?;
    ctx(socket.bind(SocketAddr::from((source, 0))), "bind source")?;
    Ok(LineClient::new(ctx(socket.connect(addr).await, "connect")?))
}

#[tokio::test]
async fn connection_caps_apply_per_ip_and_globally() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let addr = free_addr()?;
    // One role may hold every slot here, so that the global cap is what is reached.
    let limits =
        "[limits]\nmax_connections = 3\nmax_connections_per_ip = 2\nmax_connections_per_role_percent = 100\n";
    let config = write_config(dir.path(), &["mail.a.test"], &[("mx", addr, "starttls")], limits)?;
    let _server = serve(dir.path(), &config).await?;

    let mut a1 = connect_from([127, 0, 0, 1], addr).await?;
    let mut a2 = connect_from([127, 0, 0, 1], addr).await?;
    for c in [&mut a1, &mut a2] {
        assert!(c.smtp_reply().await?.starts_with("220 "));
    }
    let mut a3 = connect_from([127, 0, 0, 1], addr).await?;
    assert!(
        a3.smtp_reply().await?.starts_with("421 4.7.0"),
        "per-IP cap not applied"
    );
    assert!(a3.closed().await);
    let mut b1 = connect_from([127, 0, 0, 2], addr).await?;
    assert!(
        b1.smtp_reply().await?.starts_with("220 "),
        "another IP was refused"
    );
    let mut c1 = connect_from([127, 0, 0, 3], addr).await?;
    assert!(
        c1.smtp_reply().await?.starts_with("421 4.7.0"),
        "global cap not applied"
    );
    // A slot freed is a slot available again.
    a1.send("QUIT\r\n").await?;
    a1.smtp_reply().await?;
    assert!(a1.closed().await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c2 = connect_from([127, 0, 0, 3], addr).await?;
    assert!(c2.smtp_reply().await?.starts_with("220 "));
    Ok(())
}

#[tokio::test]
async fn a_flood_on_one_role_leaves_room_for_the_others() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let (mx, imap) = (free_addr()?, free_addr()?);
    // The default share is half the global cap: mx may hold 2 of these 4 slots.
    let limits = "[limits]\nmax_connections = 4\nmax_connections_per_ip = 4\n";
    let listeners = [("mx", mx, "starttls"), ("imap", imap, "starttls")];
    let config = write_config(dir.path(), &["mail.a.test"], &listeners, limits)?;
    let _server = serve(dir.path(), &config).await?;

    let mut flood = Vec::new();
    let mut refused = 0;
    for n in 1..=4u8 {
        let mut c = connect_from([127, 0, 0, n], mx).await?;
        let greeting = c.smtp_reply().await?;
        if greeting.starts_with("421 4.7.0") {
            refused += 1;
        } else {
            assert!(greeting.starts_with("220 "), "{greeting}");
        }
        flood.push(c);
    }
    assert_eq!(refused, 2, "mx took more than its share of the connection cap");
    let mut reader = connect_from([127, 0, 0, 9], imap).await?;
    let greeting = reader.line().await?;
    assert!(
        greeting.starts_with("* OK"),
        "IMAP was starved by the mx flood: {greeting}"
    );
    Ok(())
}

#[tokio::test]
async fn the_per_ip_connection_rate_is_limited() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let addr = free_addr()?;
    let limits = "[limits]\nmax_connection_rate_per_ip = 5\n";
    let config = write_config(dir.path(), &["mail.a.test"], &[("mx", addr, "starttls")], limits)?;
    let _server = serve(dir.path(), &config).await?;
    for n in 1..=5 {
        let mut c = connect_from([127, 0, 0, 1], addr).await?;
        assert!(c.smtp_reply().await?.starts_with("220 "), "connection {n}");
    }
    let mut sixth = connect_from([127, 0, 0, 1], addr).await?;
    assert!(
        sixth.smtp_reply().await?.starts_with("421 4.7.0"),
        "the sixth connection in a minute got in"
    );
    let mut other = connect_from([127, 0, 0, 2], addr).await?;
    assert!(
        other.smtp_reply().await?.starts_with("220 "),
        "another address was limited"
    );
    Ok(())
}

#[tokio::test]
async fn idle_sessions_time_out_with_a_protocol_reply() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let (mx, imap) = (free_addr()?, free_addr()?);
    let limits =
        "[limits]\ncommand_timeout_secs = 1\ntls_handshake_timeout_secs = 1\nimap_idle_timeout_secs = 3\n";
    let config = write_config(
        dir.path(),
        &["mail.a.test"],
        &[("mx", mx, "starttls"), ("imap", imap, "implicit")],
        limits,
    )?;
    let _server = serve(dir.path(), &config).await?;
    let mut c = plain(mx).await?;
    c.smtp_reply().await?;
    let started = std::time::Instant::now();
    assert!(c.smtp_reply().await?.starts_with("421 4.4.2"));
    assert!(c.closed().await);
    assert!(started.elapsed() < Duration::from_secs(5));
    // A client that never starts its TLS handshake is dropped after the handshake timeout.
    let mut silent = plain(imap).await?;
    assert!(silent.closed().await, "silent TLS client kept open");
    // IMAP has its own, longer idle limit (RFC 9051: at least 30 minutes by default).
    let client = sealmail_testkit::client_config(&[&dir.path().join("tls/0.pem")], &[&TLS13], &[])?;
    let mut c = LineClient::new(tls_connect(imap, client, "mail.a.test").await?);
    assert!(c.line().await?.starts_with("* OK"));
    let started = std::time::Instant::now();
    let bye = c.line().await?;
    assert!(bye.starts_with("* BYE Autologout"), "{bye}");
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_secs(2) && idle < Duration::from_secs(6),
        "logged out after {idle:?}"
    );
    Ok(())
}

#[tokio::test]
async fn sigterm_stops_accepting_and_lets_sessions_finish() -> TestResult {
    let mut instance = Instance::quickstart().await?;
    let mut idle = plain(instance.addr(MX)).await?;
    idle.smtp_reply().await?;
    instance.process.signal(Signal::SIGTERM)?;
    assert!(
        idle.smtp_reply().await?.starts_with("421 4.3.2"),
        "idle session not told"
    );
    assert_eq!(
        instance.process.wait_exit(Duration::from_secs(30)).await?,
        Some(0)
    );
    assert!(
        TcpStream::connect(instance.addr(MX)).await.is_err(),
        "still accepting after shutdown"
    );
    Ok(())
}

#[tokio::test]
async fn quickstart_domain_and_data_dir_options_make_a_separate_instance() -> TestResult {
    let root = ctx(tempfile::tempdir(), "tempdir")?;
    let offset = sealmail_testkit::free_port_offset().to_string();
    let process = sealmail_testkit::Sealmail::spawn(
        common::bin(),
        &[
            "quickstart",
            "--data-dir",
            "b-data",
            "--domain",
            "b.test",
            "--port-offset",
            &offset,
        ],
        root.path(),
        root.path(),
    )?;
    process
        .wait_for_log("sealmail ready", Duration::from_secs(60))
        .await?;
    let credentials = ctx(
        std::fs::read_to_string(root.path().join("b-data/quickstart-credentials.txt")),
        "credentials",
    )?;
    assert!(
        credentials.starts_with("alice@b.test ") && credentials.contains("\nbob@b.test "),
        "{credentials}"
    );
    let cert = root.path().join("b-data/tls/cert.pem");
    let client = sealmail_testkit::client_config(&[&cert], &[&TLS13], &[])?;
    let port: u16 = offset.parse::<u16>().map_err(|e| e.to_string())? + SUBMISSION_TLS;
    let mut c =
        LineClient::new(tls_connect(SocketAddr::from(([127, 0, 0, 1], port)), client, "mail.b.test").await?);
    assert!(c.smtp_reply().await?.starts_with("220 mail.b.test ESMTP"));
    Ok(())
}

#[tokio::test]
async fn listener_allow_and_deny_lists_admit_only_their_range_and_deny_wins() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let addr = free_addr()?;
    let config = write_config(dir.path(), &["mail.a.test"], &[("mx", addr, "starttls")], "")?;
    let text = ctx(std::fs::read_to_string(&config), "read")?.replace(
        "tls = \"starttls\"",
        "tls = \"starttls\"\nallow = [\"127.0.0.0/30\"]\ndeny = [\"127.0.0.2\"]",
    );
    ctx(std::fs::write(&config, text), "write")?;
    let _server = serve(dir.path(), &config).await?;
    let mut inside = connect_from([127, 0, 0, 1], addr).await?;
    assert!(inside.smtp_reply().await?.starts_with("220 "));
    let mut denied = connect_from([127, 0, 0, 2], addr).await?;
    assert!(
        denied.smtp_reply().await?.starts_with("421 4.7.0"),
        "deny did not win"
    );
    let mut outside = connect_from([127, 0, 0, 5], addr).await?;
    assert!(
        outside.smtp_reply().await?.starts_with("421 4.7.0"),
        "an address outside allow got in"
    );
    Ok(())
}

#[tokio::test]
async fn slow_senders_are_cut_off_at_the_timeout_however_they_drip() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let mx = free_addr()?;
    let extra = "[limits]\ncommand_timeout_secs = 1\n[smtp]\ndata_timeout_secs = 2\n";
    let config =
        common::config_with_users(dir.path(), "a.test", &["alice"], &[("mx", mx, "starttls")], extra)?;
    let _server = serve(dir.path(), &config).await?;

    // A command line dripped one byte at a time never completes within the command timeout.
    let mut c = plain(mx).await?;
    c.smtp_reply().await?;
    let started = std::time::Instant::now();
    let mut cut = false;
    for byte in "NOOP and more and more and more".bytes() {
        if c.send(&(byte as char).to_string()).await.is_err() {
            cut = true;
            break;
        }
        if let Ok(Ok(line)) = tokio::time::timeout(Duration::from_millis(250), c.line()).await {
            assert!(line.starts_with("421 4.4.2"), "{line}");
            cut = true;
            break;
        }
    }
    assert!(cut, "a dripping client was never cut off");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut off late: {:?}",
        started.elapsed()
    );

    // DATA dripped slowly, with lines completing, is bounded by the whole-transfer timeout.
    let mut c = plain(mx).await?;
    c.smtp_reply().await?;
    c.dialog(&[
        ("EHLO s.test", "250"),
        ("MAIL FROM:<x@s.test>", "250"),
        ("RCPT TO:<alice@a.test>", "250"),
        ("DATA", "354"),
    ])
    .await?;
    let started = std::time::Instant::now();
    let mut reply = String::new();
    for n in 0..40 {
        if c.send(&format!("line {n}\r\n")).await.is_err() {
            break;
        }
        if let Ok(Ok(line)) = tokio::time::timeout(Duration::from_millis(200), c.line()).await {
            reply = line;
            break;
        }
    }
    assert!(reply.starts_with("421 4.4.2"), "{reply:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "cut off late: {:?}",
        started.elapsed()
    );
    Ok(())
}

/// testssl.sh (an independent TLS scanner) against the quickstart's implicit-TLS submission
/// port: it makes hundreds of handshakes that fail by design (old versions, weak suites, a
/// ServerHello read and the connection dropped) and must still finish with every section
/// filled in, because those failures are not abuse (the intrusion prevention does not ban it).
/// `--nodns none`: testssl asks no DNS server (the machine's resolver is off limits in tests).
#[tokio::test]
async fn testssl_completes_every_section_without_getting_banned() -> TestResult {
    let instance = Instance::quickstart().await?;
    let target = instance.addr(SUBMISSION_TLS);
    let program = ["testssl", "testssl.sh"]
        .into_iter()
        .find(|p| std::process::Command::new(p).arg("--version").output().is_ok())
        .ok_or("testssl.sh is not installed (Debian package testssl.sh; scripts/test.sh installs it)")?;
    let output = tokio::process::Command::new(program)
        .args(["--quiet", "--color", "0", "--warnings", "off", "--nodns", "none"])
        .args(["--ip", "127.0.0.1", &target.to_string()])
        .output();
    let output = ctx(
        tokio::time::timeout(Duration::from_secs(600), output).await,
        "testssl took over 10 minutes",
    )?;
    let output = ctx(output, "testssl")?;
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    for expected in [
        // Protocols.
        " SSLv3      not offered (OK)",
        " TLS 1      not offered",
        " TLS 1.1    not offered",
        " TLS 1.2    offered (OK)",
        " TLS 1.3    offered (OK)",
        // Cipher categories and forward secrecy.
        " Obsolete CBC ciphers (AES, ARIA etc.)         not offered",
        " Strong encryption (AEAD ciphers)              offered (OK)",
        " PFS is offered (OK)",
        // Server defaults: it could read the certificate.
        " Common Name (CN)             mail.example.test",
        // Vulnerabilities.
        " Heartbleed (CVE-2014-0160)                not vulnerable (OK)",
        " Secure Renegotiation (RFC 5746)           supported (OK)",
        // Every suite we offer, listed.
        "TLS_AES_256_GCM_SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        // Client simulations connect.
        " Thunderbird (91.9)           TLSv1.3",
        " Android 6.0                  TLSv1.2",
    ] {
        assert!(
            report.contains(expected),
            "{expected:?} missing from testssl's report:\n{report}"
        );
    }
    for failure in [
        "No server cerificate could be retrieved",
        "Handshake error",
        "couldn't connect",
    ] {
        assert!(
            !report.contains(failure),
            "{failure:?} in testssl's report:\n{report}"
        );
    }
    // Not banned: a normal client from the same address is served.
    let mut c = plain(instance.addr(MX)).await?;
    let greeting = c.line().await?;
    assert!(greeting.starts_with("220 "), "{greeting}");
    Ok(())
}
