//! ACME end to end against Debian's pebble: the server obtains its certificate by itself
//! (TLS-ALPN-01 on the `https` listener, or HTTP-01 on the `http` one), serves it on every
//! listener, renews it with the same key (so the published TLSA record stays right), moves to
//! a new key only through `cert rollover`, and keeps the old certificate when a challenge fails.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use sealmail_testkit::pebble::Pebble;
use sealmail_testkit::{Sealmail, TestResult, ctx};

const DOMAIN: &str = "example.test";
const HOST: &str = "mail.example.test";
const NAMES: [&str; 4] = [
    HOST,
    "mta-sts.example.test",
    "autoconfig.example.test",
    "autodiscover.example.test",
];

struct Server {
    dir: tempfile::TempDir,
    config: PathBuf,
    process: Option<Sealmail>,
    https: SocketAddr,
    imaps: SocketAddr,
    submissions: SocketAddr,
    mx: SocketAddr,
}

impl Server {
    /// A server for example.test whose `[acme]` points at `pebble`; `https` must be the port
    /// pebble validates TLS-ALPN-01 on. `more` goes in `[acme]`; `http` adds that listener.
    fn new(pebble: &Pebble, https: SocketAddr, http: Option<SocketAddr>, more: &str) -> TestResult<Server> {
        let dir = ctx(tempfile::tempdir(), "tempdir")?;
        let (imaps, submissions, mx) = (common::free_addr()?, common::free_addr()?, common::free_addr()?);
        let mut listeners = vec![
            ("mx", mx, "starttls"),
            ("imap", imaps, "implicit"),
            ("submission", submissions, "implicit"),
            ("https", https, "implicit"),
        ];
        if let Some(http) = http {
            listeners.push(("http", http, "none"));
        }
        let acme = format!(
            "[acme]\ndirectory = \"{}\"\ncontact = [\"mailto:admin@example.test\"]\nca_file = \"{}\"\n{more}",
            pebble.directory(),
            pebble.api_ca.display()
        );
        let config = common::config_with_users(dir.path(), DOMAIN, &["alice"], &listeners, &acme)?;
        Ok(Server {
            dir,
            config,
            process: None,
            https,
            imaps,
            submissions,
            mx,
        })
    }

    async fn start(&mut self) -> TestResult {
        self.process = Some(common::serve(self.dir.path(), &self.config).await?);
        Ok(())
    }

    fn process(&self) -> TestResult<&Sealmail> {
        self.process.as_ref().ok_or_else(|| "not started".to_string())
    }

    async fn stop(&mut self) -> TestResult {
        if let Some(mut process) = self.process.take() {
            process.signal(nix::sys::signal::Signal::SIGTERM)?;
            process.wait_exit(Duration::from_secs(30)).await?;
        }
        Ok(())
    }

    /// Waits until the log holds `needle` `count` times.
    async fn wait_for(&self, needle: &str, count: usize, limit: Duration) -> TestResult {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let log = self.process()?.errors();
            if log.matches(needle).count() >= count {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("{needle:?} not logged {count} times:\n{log}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn admin(&self, args: &[&str]) -> TestResult<String> {
        let (code, out, err) = common::admin(self.dir.path(), &self.config, args)?;
        if code != 0 {
            return Err(format!("{args:?}: exit {code}: {err}"));
        }
        Ok(out)
    }

    fn acme_file(&self, name: &str) -> PathBuf {
        self.dir.path().join("data/acme").join(name)
    }

    /// The TLSA `3 1 1` hashes `domain dns` prints for port 25.
    fn tlsa(&self) -> TestResult<Vec<String>> {
        let zone = self.admin(&["domain", "dns", DOMAIN])?;
        Ok(zone
            .lines()
            .filter(|l| l.contains("\tTLSA\t"))
            .filter_map(|l| l.split("3 1 1 ").nth(1))
            .map(str::to_string)
            .collect())
    }
}

/// The SHA-256 of a certificate's SubjectPublicKeyInfo, hex: what `TLSA 3 1 1` holds.
fn spki_hash(leaf: &CertificateDer<'_>) -> TestResult<String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).map_err(|e| e.to_string())?;
    Ok(hex::encode(sha2::Sha256::digest(cert.public_key().raw)))
}

/// The issuer and notAfter of a certificate.
fn issuer_and_end(leaf: &CertificateDer<'_>) -> TestResult<(String, i64)> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).map_err(|e| e.to_string())?;
    Ok((cert.issuer().to_string(), cert.validity().not_after.timestamp()))
}

/// The leaf a TLS client trusting only `roots` gets from `addr` for `name`.
async fn served_leaf(addr: SocketAddr, roots: &Path, name: &str) -> TestResult<CertificateDer<'static>> {
    let client =
        sealmail_testkit::client_config(&[roots], &[&rustls::version::TLS13, &rustls::version::TLS12], &[])?;
    let tls = sealmail_testkit::tls_connect(addr, client, name).await?;
    leaf_of(&tls)
}

fn leaf_of<S>(tls: &tokio_rustls::client::TlsStream<S>) -> TestResult<CertificateDer<'static>> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.clone().into_owned())
        .ok_or_else(|| "no certificate".to_string())
}

/// The leaf the `mx` listener presents after STARTTLS, to a client trusting only `roots`.
async fn starttls_leaf(addr: SocketAddr, roots: &Path) -> TestResult<CertificateDer<'static>> {
    let mut tcp = ctx(tokio::net::TcpStream::connect(addr).await, "connect")?;
    let mut buffer = [0u8; 2048];
    let read_reply = |buf: &'_ [u8]| String::from_utf8_lossy(buf).into_owned();
    let n = ctx(tcp.read(&mut buffer).await, "greeting")?;
    assert!(read_reply(&buffer[..n]).starts_with("220"));
    ctx(tcp.write_all(b"EHLO client.test\r\n").await, "EHLO")?;
    let mut ehlo = String::new();
    while !ehlo.contains("250 ") {
        let n = ctx(tcp.read(&mut buffer).await, "EHLO reply")?;
        if n == 0 {
            return Err("closed".into());
        }
        ehlo.push_str(&read_reply(&buffer[..n]));
    }
    ctx(tcp.write_all(b"STARTTLS\r\n").await, "STARTTLS")?;
    let n = ctx(tcp.read(&mut buffer).await, "STARTTLS reply")?;
    assert!(read_reply(&buffer[..n]).starts_with("220"));
    let client =
        sealmail_testkit::client_config(&[roots], &[&rustls::version::TLS13, &rustls::version::TLS12], &[])?;
    let tls = sealmail_testkit::tls_upgrade(tcp, client, HOST).await?;
    leaf_of(&tls)
}

/// Pebble's root in a file of the test, for clients that trust only it.
async fn pebble_root(pebble: &Pebble, dir: &Path) -> TestResult<PathBuf> {
    let root = pebble.root().await?;
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64_lines(root.as_ref())
    );
    let path = dir.join("pebble-root.pem");
    ctx(std::fs::write(&path, pem), "write root")?;
    Ok(path)
}

fn base64_lines(der: &[u8]) -> String {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    text.as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Replaces `cert.pem` by a certificate for the same key and names, issued by a CA of the
/// test, whose two-thirds point has passed (valid from 60 days ago to tomorrow): due.
fn install_due_certificate(server: &Server) -> TestResult {
    install_due_certificate_for(server, "key.pem")
}

/// As `install_due_certificate`, for the key in `key_file` of `DATA/acme`.
fn install_due_certificate_for(server: &Server, key_file: &str) -> TestResult {
    let key_pem = ctx(std::fs::read_to_string(server.acme_file(key_file)), "key")?;
    let key = ctx(rcgen::KeyPair::from_pem(&key_pem), "key")?;
    let ca_key = ctx(rcgen::KeyPair::generate(), "CA key")?;
    let mut ca_params = ctx(rcgen::CertificateParams::new(Vec::<String>::new()), "params")?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "an earlier CA");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let names: Vec<String> = NAMES.iter().map(|n| n.to_string()).collect();
    let mut params = ctx(rcgen::CertificateParams::new(names), "params")?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(60);
    params.not_after = now + time::Duration::days(1);
    let cert = ctx(params.signed_by(&key, &issuer), "sign")?;
    ctx(std::fs::write(server.acme_file("cert.pem"), cert.pem()), "write")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_certificate_is_served_everywhere_renewed_with_its_key_and_rolled_over_on_request()
-> TestResult {
    let https = common::free_addr()?;
    let Some(pebble) = Pebble::start(&NAMES, sealmail_testkit::free_port(), https.port()).await? else {
        return Ok(());
    };
    let mut server = Server::new(&pebble, https, None, "")?;
    let self_signed_tlsa = server.tlsa()?;
    server.start().await?;
    server
        .wait_for("ACME certificate installed", 1, Duration::from_secs(60))
        .await
        .map_err(|e| format!("{e}\npebble:\n{}", pebble.log()))?;
    let root = pebble_root(&pebble, server.dir.path()).await?;

    // Every listener serves it, to a client trusting only pebble's root.
    let key_hash = ctx(
        sealmail_acme::key_spki_sha256(&server.acme_file("key.pem")),
        "key hash",
    )?
    .ok_or("no key.pem")?;
    for (addr, name) in [
        (server.imaps, HOST),
        (server.submissions, HOST),
        (server.https, "mta-sts.example.test"),
        (server.https, "autoconfig.example.test"),
    ] {
        let leaf = served_leaf(addr, &root, name).await?;
        assert_eq!(spki_hash(&leaf)?, key_hash, "{addr} {name}");
    }
    let leaf = starttls_leaf(server.mx, &root).await?;
    assert_eq!(spki_hash(&leaf)?, key_hash);
    let (issuer, first_end) = issuer_and_end(&leaf)?;
    assert!(issuer.contains("Pebble"), "{issuer}");

    // The first ACME certificate kept the configured certificate's key: the published TLSA
    // record did not change. The status says who renews it.
    assert_eq!(self_signed_tlsa, vec![key_hash.clone()]);
    assert_eq!(server.tlsa()?, vec![key_hash.clone()]);
    let status = server.admin(&["cert", "status"])?;
    assert!(
        status.contains("renewal: acme (tls-alpn-01), by the server itself")
            && status.contains(&format!("key: TLSA 3 1 1 {key_hash}"))
            && status.contains("issuer: CN=Pebble"),
        "{status}"
    );
    // With a CA's certificate the MTA-STS policy is enforced.
    let policy = common_curl_policy(&server, &root)?;
    assert!(policy.contains("mode: enforce"), "{policy}");

    // Renewal: a certificate whose two-thirds point has passed is replaced at start, with the
    // same key; the TLSA record does not change.
    server.stop().await?;
    install_due_certificate(&server)?;
    server.start().await?;
    server
        .wait_for("ACME certificate installed", 1, Duration::from_secs(60))
        .await?;
    let renewed = served_leaf(server.imaps, &root, HOST).await?;
    assert_eq!(spki_hash(&renewed)?, key_hash);
    let (issuer, end) = issuer_and_end(&renewed)?;
    assert!(issuer.contains("Pebble") && end >= first_end, "{issuer} {end}");
    assert_eq!(server.tlsa()?, vec![key_hash.clone()]);

    // Rollover: a next key is published beside the current one; nothing changes until asked.
    let prepared = server.admin(&["cert", "rollover"])?;
    let next = prepared
        .lines()
        .find_map(|l| l.split("3 1 1 ").nth(1))
        .ok_or(format!("no TLSA in {prepared}"))?
        .to_string();
    assert_ne!(next, key_hash);
    assert_eq!(server.tlsa()?, vec![key_hash.clone(), next.clone()]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        spki_hash(&served_leaf(server.imaps, &root, HOST).await?)?,
        key_hash
    );
    server.admin(&["cert", "rollover", "--switch"])?;
    server
        .wait_for("switched to the next key", 1, Duration::from_secs(60))
        .await?;
    assert_eq!(spki_hash(&served_leaf(server.imaps, &root, HOST).await?)?, next);
    assert_eq!(
        spki_hash(&served_leaf(server.https, &root, "mta-sts.example.test").await?)?,
        next
    );
    assert_eq!(server.tlsa()?, vec![next]);

    // A crash in the middle of a switch (the certificate for the next key written, the key
    // not yet renamed) does not keep the server from starting: the switch is finished.
    let prepared = server.admin(&["cert", "rollover"])?;
    let third = prepared
        .lines()
        .find_map(|l| l.split("3 1 1 ").nth(1))
        .ok_or(format!("no TLSA in {prepared}"))?
        .to_string();
    server.stop().await?;
    install_due_certificate_for(&server, "next-key.pem")?;
    server.start().await?;
    // Served at once (finished before loading), then renewed since it was due.
    assert!(!server.acme_file("next-key.pem").exists());
    server
        .wait_for("ACME certificate installed", 1, Duration::from_secs(60))
        .await?;
    assert_eq!(spki_hash(&served_leaf(server.imaps, &root, HOST).await?)?, third);
    assert!(!server.acme_file("next-key.pem").exists());
    assert_eq!(server.tlsa()?, vec![third.clone()]);

    // A certificate that does not go with the key (damaged by hand, say) is set aside at start
    // and a new one is ordered at once; the configured certificate is served meanwhile.
    server.stop().await?;
    let stranger = server.dir.path().join("stranger.key");
    ctx(
        std::fs::write(&stranger, ctx(rcgen::KeyPair::generate(), "key")?.serialize_pem()),
        "write",
    )?;
    ctx(std::fs::copy(&stranger, server.acme_file("stranger.pem")), "copy")?;
    install_due_certificate_for(&server, "stranger.pem")?;
    server.start().await?;
    server
        .wait_for("ACME certificate installed", 1, Duration::from_secs(60))
        .await?;
    assert!(server.acme_file("cert.pem.unusable").exists());
    assert_eq!(spki_hash(&served_leaf(server.imaps, &root, HOST).await?)?, third);
    Ok(())
}

/// The MTA-STS policy, fetched by curl trusting only `root`.
fn common_curl_policy(server: &Server, root: &Path) -> TestResult<String> {
    let port = server.https.port();
    let output = ctx(
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--resolve"])
            .arg(format!("mta-sts.example.test:{port}:127.0.0.1"))
            .arg("--cacert")
            .arg(root)
            .arg(format!(
                "https://mta-sts.example.test:{port}/.well-known/mta-sts.txt"
            ))
            .output(),
        "curl",
    )?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_on_the_http_listener_obtains_the_certificate() -> TestResult {
    let (https, http) = (common::free_addr()?, common::free_addr()?);
    let Some(pebble) = Pebble::start(&NAMES, http.port(), sealmail_testkit::free_port()).await? else {
        return Ok(());
    };
    let mut server = Server::new(&pebble, https, Some(http), "challenge = \"http-01\"\n")?;
    server.start().await?;
    server
        .wait_for("ACME certificate installed", 1, Duration::from_secs(60))
        .await
        .map_err(|e| format!("{e}\npebble:\n{}", pebble.log()))?;
    let root = pebble_root(&pebble, server.dir.path()).await?;
    let leaf = served_leaf(server.https, &root, "autoconfig.example.test").await?;
    let (issuer, _) = issuer_and_end(&leaf)?;
    assert!(issuer.contains("Pebble"), "{issuer}");
    let asked = format!(
        "Attempting to validate w/ HTTP: http://autoconfig.example.test:{}/.well-known/acme-challenge/",
        http.port()
    );
    assert!(
        pebble.log().contains(&asked) && !pebble.log().contains("w/ TLS-ALPN"),
        "pebble validated by HTTP-01 on the http listener:\n{}",
        pebble.log()
    );
    let status = server.admin(&["cert", "status"])?;
    assert!(status.contains("renewal: acme (http-01)"), "{status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_challenge_keeps_the_old_certificate_and_logs_why() -> TestResult {
    let https = common::free_addr()?;
    // Pebble's DNS knows none of our names: every validation fails.
    let Some(pebble) = Pebble::start(&[], sealmail_testkit::free_port(), https.port()).await? else {
        return Ok(());
    };
    let mut server = Server::new(&pebble, https, None, "")?;
    let before = ctx(std::fs::read(server.dir.path().join("tls/0.pem")), "self-signed")?;
    server.start().await?;
    server
        .wait_for("CERTIFICATE EXPIRING", 1, Duration::from_secs(60))
        .await?;
    let log = server.process()?.errors();
    assert!(log.contains(HOST), "the reason names the host:\n{log}");
    assert!(!server.acme_file("cert.pem").exists());
    // The configured certificate is still what clients get.
    let leaf = served_leaf(server.imaps, &server.dir.path().join("tls/0.pem"), HOST).await?;
    let configured = ctx(CertificateDer::from_pem_slice(&before), "pem")?;
    assert_eq!(leaf, configured);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_with_http_01_listens_on_2080_plus_the_offset_and_gets_its_certificate() -> TestResult {
    let offset = sealmail_testkit::free_port_offset();
    let Some(pebble) = Pebble::start(&NAMES, 2080 + offset, sealmail_testkit::free_port()).await? else {
        return Ok(());
    };
    let root_dir = ctx(tempfile::tempdir(), "tempdir")?;
    let (offset_arg, nameserver) = (
        offset.to_string(),
        sealmail_testkit::dns::empty_server()?.to_string(),
    );
    let ca_file = pebble.api_ca.to_string_lossy().into_owned();
    let directory = pebble.directory();
    let process = Sealmail::spawn(
        common::bin(),
        &[
            "quickstart",
            "--port-offset",
            &offset_arg,
            "--nameserver",
            &nameserver,
            "--acme-directory",
            &directory,
            "--acme-challenge",
            "http-01",
            "--acme-ca-file",
            &ca_file,
            "--acme-contact",
            "mailto:admin@example.test",
        ],
        root_dir.path(),
        root_dir.path(),
    )?;
    process
        .wait_for_log("ACME certificate installed", Duration::from_secs(60))
        .await
        .map_err(|e| format!("{e}\npebble:\n{}", pebble.log()))?;
    let listening = process.output();
    assert!(
        listening.contains(&format!("http 127.0.0.1:{} (none)", 2080 + offset))
            && listening.contains(&format!("https 127.0.0.1:{} (implicit)", 2443 + offset)),
        "{listening}"
    );
    let root = pebble_root(&pebble, root_dir.path()).await?;
    let https = SocketAddr::from(([127, 0, 0, 1], 2443 + offset));
    let leaf = served_leaf(https, &root, "mta-sts.example.test").await?;
    assert!(issuer_and_end(&leaf)?.0.contains("Pebble"));
    let imaps = SocketAddr::from(([127, 0, 0, 1], 2993 + offset));
    let leaf = served_leaf(imaps, &root, HOST).await?;
    assert!(issuer_and_end(&leaf)?.0.contains("Pebble"));
    Ok(())
}
