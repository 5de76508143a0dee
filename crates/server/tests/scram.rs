//! SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802, RFC 7677) end to end against a real
//! `sealmail serve`: Python's scramp over imaplib and smtplib with tls-server-end-point
//! (RFC 5929), and a client written here from the RFCs with tls-exporter (RFC 9266); neither
//! shares code with the server. Covers advertising, `[auth] scram = false`, verifiers made at
//! `user add`, rewritten by `user passwd` and made at a password login for accounts without
//! one, MFA turning SCRAM off, and failures recorded and counted toward bans.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use rustls::version::TLS13;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};

use sealmail_testkit::{LineClient, Sealmail, TestResult, ctx, tcp_from, tls_upgrade};

const NAME: &str = "mail.example.test";
const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";
const PASSWORD: &str = common::TEST_PASSWORD;
const PLUS: &str = "SCRAM-SHA-256-PLUS";
const SCRAM: &str = "SCRAM-SHA-256";
/// RFC 9266 2.
const EXPORTER_LABEL: &[u8] = b"EXPORTER-Channel-Binding";

/// A server with alice and bob of example.test (added by `user add`, so their SCRAM verifiers
/// come from there), IMAP and submission over implicit TLS, and IMAP with STARTTLS.
struct Server {
    dir: tempfile::TempDir,
    config: PathBuf,
    imap: SocketAddr,
    imap_starttls: SocketAddr,
    submission: SocketAddr,
    _process: Sealmail,
}

impl Server {
    async fn start(extra: &str) -> TestResult<Server> {
        let dir = ctx(tempfile::tempdir(), "tempdir")?;
        let (imap, imap_starttls, submission) =
            (common::free_addr()?, common::free_addr()?, common::free_addr()?);
        let listeners = [
            ("imap", imap, "implicit"),
            ("imap", imap_starttls, "starttls"),
            ("submission", submission, "implicit"),
        ];
        let config =
            common::config_with_users(dir.path(), "example.test", &["alice", "bob"], &listeners, extra)?;
        let process = common::serve(dir.path(), &config).await?;
        Ok(Server {
            dir,
            config,
            imap,
            imap_starttls,
            submission,
            _process: process,
        })
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("tls/0.pem")
    }

    fn admin(&self, args: &[&str]) -> TestResult<String> {
        let (code, out, err) = common::admin(self.dir.path(), &self.config, args)?;
        if code != 0 {
            return Err(format!("{args:?}: exit {code}: {err}"));
        }
        Ok(out)
    }

    /// `sealmail security events --since 1h`, one JSON object per event.
    fn events(&self) -> TestResult<Vec<Value>> {
        let out = self.admin(&["security", "events", "--since", "1h"])?;
        out.lines()
            .map(|line| ctx(serde_json::from_str(line), line))
            .collect()
    }

    /// The events of `kind` for `account`.
    fn events_of(&self, kind: &str, account: &str) -> TestResult<Vec<Value>> {
        Ok(self
            .events()?
            .into_iter()
            .filter(|e| e["kind"] == kind && e["account"] == account)
            .collect())
    }

    /// One login by scramp (see tests/interop/scramp_client.py for the arguments and result).
    fn scramp(
        &self,
        protocol: &str,
        user: &str,
        password: &str,
        mechanism: &str,
        binding: &str,
    ) -> TestResult<Login> {
        let port = match protocol {
            "imap" => self.imap.port(),
            _ => self.submission.port(),
        };
        let out = python(&[
            "login",
            protocol,
            &port.to_string(),
            &self.cert().to_string_lossy(),
            user,
            password,
            mechanism,
            binding,
        ])?;
        let value: Value = ctx(serde_json::from_str(out.trim()), &out)?;
        Ok(Login { value })
    }
}

/// What scramp_client.py reported about one login.
struct Login {
    value: Value,
}

impl Login {
    fn outcome(&self) -> &str {
        self.value["outcome"].as_str().unwrap_or_default()
    }

    /// Logged in, scramp checked the server's signature, and the session works afterwards.
    fn assert_ok(&self) {
        assert_eq!(self.outcome(), "ok", "{}", self.value);
        assert_eq!(self.value["verified"], true, "{}", self.value);
        assert_eq!(self.value["session"], "OK", "{}", self.value);
    }

    /// Refused by the server, without a server-final-message.
    fn assert_refused(&self) {
        assert_eq!(self.outcome(), "refused", "{}", self.value);
        assert_eq!(self.value["verified"], false, "{}", self.value);
        assert!(
            !self
                .messages()
                .iter()
                .any(|(from, m)| from == "server" && m.starts_with("v=")),
            "a server signature was sent for a refused login: {}",
            self.value
        );
    }

    fn reply(&self) -> String {
        self.value["reply"].as_str().unwrap_or_default().to_string()
    }

    fn messages(&self) -> Vec<(String, String)> {
        self.value["messages"]
            .as_array()
            .map(|all| {
                all.iter()
                    .map(|m| {
                        (
                            m[0].as_str().unwrap_or_default().to_string(),
                            m[1].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn client_first(&self) -> String {
        self.messages().first().map(|m| m.1.clone()).unwrap_or_default()
    }

    fn mechanisms(&self) -> Vec<String> {
        self.value["mechanisms"]
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|m| m.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn python_path() -> String {
    std::env::var("SEALMAIL_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs tests/interop/scramp_client.py; its standard output.
fn python(args: &[&str]) -> TestResult<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/scramp_client.py");
    let output = ctx(
        std::process::Command::new(python_path())
            .arg(script)
            .args(args)
            .output(),
        "python",
    )?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!(
            "scramp_client.py {:?} failed ({}); scripts/test.sh installs scramp into a venv and exports SEALMAIL_PYTHON: {stderr}",
            args.first(),
            python_path()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A SCRAM-SHA-256 client written from RFC 5802 section 3 and 7 here, so that the tls-exporter
/// logins do not lean on the server's own implementation.
struct ScramClient {
    gs2_header: String,
    binding_data: Vec<u8>,
    nonce: String,
    first_bare: String,
}

impl ScramClient {
    /// `binding`: the cb-name and its data for -PLUS, or None for "n" (no binding).
    fn new(user: &str, binding: Option<(&str, Vec<u8>)>) -> ScramClient {
        let (gs2_header, binding_data) = match binding {
            Some((name, data)) => (format!("p={name},,"), data),
            None => ("n,,".to_string(), Vec::new()),
        };
        let nonce = BASE64.encode(nonce_bytes());
        let user = user.replace('=', "=3D").replace(',', "=2C");
        ScramClient {
            gs2_header,
            binding_data,
            first_bare: format!("n={user},r={nonce}"),
            nonce,
        }
    }

    fn client_first(&self) -> String {
        format!("{}{}", self.gs2_header, self.first_bare)
    }

    /// The client-final-message for `server_first`, and the server signature to expect.
    fn client_final(&self, server_first: &str, password: &str) -> TestResult<(String, Vec<u8>)> {
        let attribute = |name: &str| {
            server_first
                .split(',')
                .find_map(|a| a.strip_prefix(name))
                .ok_or_else(|| format!("no {name} in {server_first:?}"))
        };
        let nonce = attribute("r=")?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(format!("server nonce {nonce:?} does not extend ours"));
        }
        let salt = ctx(BASE64.decode(attribute("s=")?), "salt")?;
        let iterations: u32 = ctx(attribute("i=")?.parse(), "iterations")?;
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key")?;
        let stored_key = Sha256::digest(&client_key);
        let mut channel = self.gs2_header.as_bytes().to_vec();
        channel.extend_from_slice(&self.binding_data);
        let without_proof = format!("c={},r={nonce}", BASE64.encode(&channel));
        let auth_message = format!("{},{server_first},{without_proof}", self.first_bare);
        let signature = hmac(&stored_key, auth_message.as_bytes())?;
        let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(k, s)| k ^ s).collect();
        let server_key = hmac(&salted, b"Server Key")?;
        let server_signature = hmac(&server_key, auth_message.as_bytes())?;
        Ok((
            format!("{without_proof},p={}", BASE64.encode(proof)),
            server_signature,
        ))
    }
}

fn hmac(key: &[u8], data: &[u8]) -> TestResult<Vec<u8>> {
    let mut mac = ctx(<Hmac<Sha256> as Mac>::new_from_slice(key), "hmac key")?;
    mac.update(data);
    Ok(mac.finalize().into_bytes().to_vec())
}

/// Distinct per call and unpredictable enough for a test nonce.
fn nonce_bytes() -> Vec<u8> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    Sha256::digest(format!("{now} {n} {}", std::process::id()))[..18].to_vec()
}

/// How our own client's AUTHENTICATE ended.
#[derive(Debug)]
struct ImapScram {
    /// Every line after the last continuation, up to and including the tagged one.
    lines: Vec<String>,
    /// The server sent the server-final-message and its signature was the expected one.
    verified: bool,
}

impl ImapScram {
    fn ok(&self) -> bool {
        self.lines.last().is_some_and(|l| l.starts_with("a OK"))
    }
}

/// Lines up to the tagged one, or the next continuation request (returned as its data).
async fn tagged_or_continuation<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut LineClient<S>,
) -> TestResult<Result<String, Vec<String>>> {
    let mut lines = Vec::new();
    loop {
        let line = c.line().await?;
        if lines.is_empty()
            && let Some(data) = line.strip_prefix('+')
        {
            return Ok(Ok(data.trim_start().to_string()));
        }
        let done = line.starts_with("a ");
        lines.push(line);
        if done {
            return Ok(Err(lines));
        }
    }
}

/// IMAP AUTHENTICATE `mechanism` (tag "a") with our own client.
async fn imap_scram<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut LineClient<S>,
    mechanism: &str,
    client: &ScramClient,
    password: &str,
) -> TestResult<ImapScram> {
    let refused = |lines| {
        Ok(ImapScram {
            lines,
            verified: false,
        })
    };
    c.send(&format!("a AUTHENTICATE {mechanism}\r\n")).await?;
    match tagged_or_continuation(c).await? {
        Ok(empty) if empty.is_empty() => {}
        Ok(other) => return Err(format!("first challenge {other:?}, expected an empty one")),
        Err(lines) => return refused(lines),
    }
    c.send(&format!("{}\r\n", BASE64.encode(client.client_first())))
        .await?;
    let server_first = match tagged_or_continuation(c).await? {
        Ok(data) => {
            String::from_utf8(ctx(BASE64.decode(data), "server-first")?).map_err(|e| e.to_string())?
        }
        Err(lines) => return refused(lines),
    };
    let (client_final, expected) = client.client_final(&server_first, password)?;
    c.send(&format!("{}\r\n", BASE64.encode(client_final))).await?;
    let server_final = match tagged_or_continuation(c).await? {
        Ok(data) => {
            String::from_utf8(ctx(BASE64.decode(data), "server-final")?).map_err(|e| e.to_string())?
        }
        Err(lines) => return refused(lines),
    };
    let verified = server_final == format!("v={}", BASE64.encode(expected));
    if !verified {
        return Err(format!(
            "server-final {server_final:?} does not carry the expected signature"
        ));
    }
    c.send("\r\n").await?;
    Ok(ImapScram {
        lines: c.imap_until("a").await?,
        verified,
    })
}

type ImapTls = LineClient<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// An implicit-TLS IMAP connection from the loopback address `source` with `version`, past the
/// greeting, and its RFC 9266 tls-exporter channel binding as this client computes it.
async fn imap_tls(
    server: &Server,
    source: [u8; 4],
    version: &'static rustls::SupportedProtocolVersion,
) -> TestResult<(ImapTls, Vec<u8>)> {
    let config = sealmail_testkit::client_config(&[&server.cert()], &[version], &[])?;
    let tls = tls_upgrade(tcp_from(source, server.imap).await?, config, NAME).await?;
    let exporter = ctx(
        tls.get_ref()
            .1
            .export_keying_material([0u8; 32], EXPORTER_LABEL, None),
        "export_keying_material",
    )?;
    let mut c = LineClient::new(tls);
    let greeting = c.line().await?;
    if !greeting.starts_with("* OK") {
        return Err(format!("greeting {greeting:?}"));
    }
    Ok((c, exporter.to_vec()))
}

/// Details of the auth_failure events, oldest first.
fn failure_details(server: &Server, account: &str) -> TestResult<Vec<String>> {
    Ok(server
        .events_of("auth_failure", account)?
        .iter()
        .map(|e| e["detail"].as_str().unwrap_or_default().to_string())
        .collect())
}

#[tokio::test]
async fn scramp_logs_in_with_both_mechanisms_over_imap_and_submission_and_verifies_the_server() -> TestResult
{
    let server = Server::start("").await?;

    // alice's first login ever is a SCRAM one: `user add` stored her verifier.
    let imap_plus = server.scramp("imap", ALICE, PASSWORD, PLUS, "tls-server-end-point")?;
    imap_plus.assert_ok();
    assert!(
        imap_plus
            .client_first()
            .starts_with(&format!("p=tls-server-end-point,,n={ALICE},r=")),
        "{}",
        imap_plus.value
    );
    assert!(
        imap_plus
            .messages()
            .iter()
            .any(|(from, m)| from == "server" && m.starts_with("v=")),
        "{}",
        imap_plus.value
    );

    let imap_plain = server.scramp("imap", BOB, PASSWORD, SCRAM, "none")?;
    imap_plain.assert_ok();
    assert!(
        imap_plain.client_first().starts_with("n,,n="),
        "{}",
        imap_plain.value
    );

    // Submission, with the client-first in AUTH (initial response) and after a 334.
    let smtp_plus = server.scramp("smtp", ALICE, PASSWORD, PLUS, "tls-server-end-point")?;
    smtp_plus.assert_ok();
    assert!(smtp_plus.reply().starts_with("235"), "{}", smtp_plus.value);
    let smtp_plain = server.scramp("smtp-no-ir", BOB, PASSWORD, SCRAM, "none")?;
    smtp_plain.assert_ok();
    assert!(smtp_plain.reply().starts_with("235"), "{}", smtp_plain.value);

    // Each login is recorded as a SCRAM one.
    for (account, count) in [(ALICE, 2), (BOB, 2)] {
        let successes = server.events_of("auth_success", account)?;
        assert_eq!(successes.len(), count, "{successes:?}");
        assert!(successes.iter().all(|e| e["detail"] == "SCRAM"), "{successes:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_wrong_password_or_a_foreign_channel_binding_is_refused_and_recorded() -> TestResult {
    // More failures than the default threshold come from 127.0.0.1 here.
    let server = Server::start("[security]\nauth_failures = 50\n").await?;

    for protocol in ["imap", "smtp"] {
        for mechanism in [PLUS, SCRAM] {
            let binding = if mechanism == PLUS {
                "tls-server-end-point"
            } else {
                "none"
            };
            let login = server.scramp(protocol, ALICE, "not the password", mechanism, binding)?;
            login.assert_refused();
            // The server answered the client-first (with a challenge) and refused the proof.
            assert!(
                login
                    .messages()
                    .iter()
                    .any(|(from, m)| from == "server" && m.starts_with("r=")),
                "{}",
                login.value
            );
        }
    }

    // A binding computed from another certificate: what a client behind a TLS-terminating man
    // in the middle would send.
    let other = sealmail_config::CertificateFiles {
        cert: server.dir.path().join("other.pem"),
        key: server.dir.path().join("other.key"),
    };
    ctx(
        sealmail_tls::selfsigned::generate(&[NAME.to_string()], &other, 30),
        "other certificate",
    )?;
    let foreign = format!("cert:{}", other.cert.display());
    for protocol in ["imap", "smtp"] {
        let login = server.scramp(protocol, ALICE, PASSWORD, PLUS, &foreign)?;
        login.assert_refused();
    }
    assert!(server.events_of("auth_success", ALICE)?.is_empty());

    let details = failure_details(&server, ALICE)?;
    assert_eq!(details.len(), 6, "{details:?}");
    let mismatches = details
        .iter()
        .filter(|d| d.contains("channel binding mismatch"))
        .count();
    assert_eq!(mismatches, 2, "{details:?}");

    // The right password and binding still work afterwards.
    server
        .scramp("imap", ALICE, PASSWORD, PLUS, "tls-server-end-point")?
        .assert_ok();
    Ok(())
}

#[tokio::test]
async fn tls_exporter_binding_of_this_session_logs_in_and_of_another_session_fails() -> TestResult {
    let server = Server::start("").await?;
    let localhost = [127, 0, 0, 1];

    let (mut c, exporter) = imap_tls(&server, localhost, &TLS13).await?;
    let client = ScramClient::new(ALICE, Some(("tls-exporter", exporter)));
    let end = imap_scram(&mut c, PLUS, &client, PASSWORD).await?;
    assert!(end.ok() && end.verified, "{end:?}");
    let select = c.imap("b", "SELECT INBOX").await?;
    assert!(select.last().is_some_and(|l| l.starts_with("b OK")), "{select:?}");

    // Bytes from another live session of the same client: a relayed exchange.
    let (_elsewhere, elsewhere_exporter) = imap_tls(&server, localhost, &TLS13).await?;
    let (mut c, exporter) = imap_tls(&server, localhost, &TLS13).await?;
    assert_ne!(exporter, elsewhere_exporter);
    let client = ScramClient::new(ALICE, Some(("tls-exporter", elsewhere_exporter)));
    let end = imap_scram(&mut c, PLUS, &client, PASSWORD).await?;
    assert!(
        end.lines
            .last()
            .is_some_and(|l| l.starts_with("a NO [AUTHENTICATIONFAILED]")),
        "{end:?}"
    );
    let select = c.imap("b", "SELECT INBOX").await?;
    assert!(
        select.last().is_some_and(|l| l.starts_with("b BAD")),
        "{select:?}"
    );
    let details = failure_details(&server, ALICE)?;
    assert_eq!(details.len(), 1, "{details:?}");
    assert!(details[0].contains("channel binding mismatch"), "{details:?}");

    // The same bytes in the same session log in: only the binding was wrong above.
    let client = ScramClient::new(ALICE, Some(("tls-exporter", exporter)));
    let end = imap_scram(&mut c, PLUS, &client, PASSWORD).await?;
    assert!(end.ok() && end.verified, "{end:?}");
    Ok(())
}

#[tokio::test]
async fn scram_is_advertised_over_tls_only_and_not_at_all_when_turned_off() -> TestResult {
    let server = Server::start("").await?;
    let scramp = server.scramp("imap", ALICE, PASSWORD, PLUS, "tls-server-end-point")?;
    scramp.assert_ok();
    assert_eq!(
        scramp.mechanisms(),
        [PLUS, SCRAM, "PLAIN", "LOGIN"],
        "{}",
        scramp.value
    );
    let smtp = server.scramp("smtp", BOB, PASSWORD, SCRAM, "none")?;
    smtp.assert_ok();
    assert_eq!(
        smtp.mechanisms(),
        [PLUS, SCRAM, "PLAIN", "LOGIN"],
        "{}",
        smtp.value
    );

    // Before STARTTLS nothing is offered; after it, both.
    let tcp = ctx(
        tokio::net::TcpStream::connect(server.imap_starttls).await,
        "connect",
    )?;
    let mut c = LineClient::new(tcp);
    c.line().await?;
    let before = c.imap("a", "CAPABILITY").await?.join("\n");
    assert!(!before.contains("AUTH="), "{before}");
    c.imap("b", "STARTTLS").await?;
    let config = sealmail_testkit::client_config(&[&server.cert()], &[&TLS13], &[])?;
    let mut c = LineClient::new(tls_upgrade(c.into_inner(), config, NAME).await?);
    let after = c.imap("c", "CAPABILITY").await?.join("\n");
    assert!(
        after.contains(" AUTH=SCRAM-SHA-256-PLUS") && after.contains(" AUTH=SCRAM-SHA-256 "),
        "{after}"
    );
    drop(c);
    drop(server);

    let server = Server::start("[auth]\nscram = false\n").await?;
    for (protocol, mechanism, binding) in [
        ("imap", SCRAM, "none"),
        ("imap", PLUS, "tls-server-end-point"),
        ("smtp", SCRAM, "none"),
    ] {
        let login = server.scramp(protocol, ALICE, PASSWORD, mechanism, binding)?;
        login.assert_refused();
        assert!(
            !login.mechanisms().iter().any(|m| m.starts_with("SCRAM")),
            "{}",
            login.value
        );
        assert!(login.mechanisms().iter().any(|m| m == "PLAIN"), "{}", login.value);
        // Refused before any SCRAM message was answered.
        assert!(
            !login.messages().iter().any(|(from, _)| from == "server"),
            "{}",
            login.value
        );
        let expected = if protocol == "imap" {
            "Unsupported mechanism"
        } else {
            "504"
        };
        assert!(login.reply().contains(expected), "{}", login.value);
    }
    Ok(())
}

#[tokio::test]
async fn a_second_factor_turns_scram_off_for_the_account() -> TestResult {
    let server = Server::start("[security]\nauth_failures = 50\n").await?;
    server
        .scramp("imap", ALICE, PASSWORD, PLUS, "tls-server-end-point")?
        .assert_ok();

    let enrolment = server.admin(&["user", "mfa", "enable", ALICE])?;
    let uri = enrolment
        .lines()
        .find(|l| l.starts_with("otpauth://totp/"))
        .ok_or_else(|| format!("no otpauth URI in {enrolment}"))?;
    let code = python(&["totp", uri])?;
    server.admin(&["user", "mfa", "confirm", ALICE, code.trim()])?;
    let status = server.admin(&["user", "mfa", "status", ALICE])?;
    assert!(status.contains("active"), "{status}");

    // SCRAM proves only the password, which is no longer enough alone.
    server
        .scramp("imap", ALICE, PASSWORD, PLUS, "tls-server-end-point")?
        .assert_refused();
    server
        .scramp("imap", ALICE, PASSWORD, SCRAM, "none")?
        .assert_refused();
    server
        .scramp("smtp", ALICE, PASSWORD, PLUS, "tls-server-end-point")?
        .assert_refused();
    assert_eq!(failure_details(&server, ALICE)?.len(), 3);
    // bob, without a second factor, is unaffected.
    server.scramp("imap", BOB, PASSWORD, SCRAM, "none")?.assert_ok();
    Ok(())
}

#[tokio::test]
async fn scram_failures_ban_the_address_like_wrong_passwords() -> TestResult {
    let server = Server::start("[security]\nauth_failures = 3\n").await?;
    let attacker = [127, 0, 0, 2];

    // Two wrong proofs and a wrong binding, each on a new connection.
    let mut ends = Vec::new();
    for attempt in 0..3 {
        let (mut c, exporter) = imap_tls(&server, attacker, &TLS13).await?;
        let (client, password) = match attempt {
            2 => (
                ScramClient::new(BOB, Some(("tls-exporter", vec![0u8; 32]))),
                PASSWORD,
            ),
            _ => (ScramClient::new(BOB, Some(("tls-exporter", exporter))), "guess"),
        };
        let end = imap_scram(&mut c, PLUS, &client, password).await?;
        assert!(!end.ok() && !end.verified, "attempt {attempt}: {end:?}");
        ends.push(end);
    }
    let banned = |end: &ImapScram| end.lines.iter().any(|l| l.starts_with("* BYE"));
    assert!(!banned(&ends[0]) && !banned(&ends[1]), "{ends:?}");
    assert!(banned(&ends[2]), "the third failure did not ban: {ends:?}");

    // Refused at accept time now, on every IMAP port.
    let mut plain = LineClient::new(tcp_from(attacker, server.imap_starttls).await?);
    let greeting = plain.line().await?;
    assert!(greeting.starts_with("* BYE"), "{greeting:?}");
    let bans = server.admin(&["security", "bans", "list"])?;
    assert!(bans.starts_with("127.0.0.2 banned until"), "{bans}");
    assert_eq!(bans.matches("\"kind\":\"auth_failure\"").count(), 3, "{bans}");
    assert!(bans.contains("channel binding mismatch"), "{bans}");

    // Another address still logs in with SCRAM.
    let (mut c, exporter) = imap_tls(&server, [127, 0, 0, 3], &TLS13).await?;
    let client = ScramClient::new(ALICE, Some(("tls-exporter", exporter)));
    let end = tokio::time::timeout(
        Duration::from_secs(20),
        imap_scram(&mut c, PLUS, &client, PASSWORD),
    )
    .await
    .map_err(|_| "login from a bystander timed out".to_string())??;
    assert!(end.ok() && end.verified, "{end:?}");
    Ok(())
}

/// `sealmail user passwd ADDRESS --password-stdin` with `password`.
fn passwd(server: &Server, address: &str, password: &str) -> TestResult {
    let config = server.config.to_string_lossy().into_owned();
    let (code, out, err) = common::run(
        server.dir.path(),
        &["--config", &config, "user", "passwd", address, "--password-stdin"],
        Some(&format!("{password}\n")),
    )?;
    if code != 0 {
        return Err(format!("user passwd: exit {code}: {out}{err}"));
    }
    Ok(())
}

/// The stored SCRAM verifier of each of `addresses`, read from the SQLite file in `data`.
async fn stored_verifiers(data: &Path, addresses: &[&str]) -> TestResult<Vec<Option<String>>> {
    use sealmail_store::{AccountStore, CredentialStore};
    let store = ctx(sealmail_store::SqliteStore::open(data, 16).await, "open store")?;
    let mut verifiers = Vec::new();
    for address in addresses {
        let address = ctx(sealmail_types::EmailAddress::parse(address), "address")?;
        let account = ctx(store.account(&address).await, "account")?.ok_or("no account")?;
        verifiers.push(ctx(store.scram_verifier(account.id).await, "verifier")?);
    }
    Ok(verifiers)
}

#[tokio::test]
async fn the_scram_verifier_follows_a_password_change() -> TestResult {
    let server = Server::start("").await?;
    server.scramp("imap", ALICE, PASSWORD, SCRAM, "none")?.assert_ok();

    let new = "another long enough password";
    passwd(&server, ALICE, new)?;
    server
        .scramp("imap", ALICE, PASSWORD, SCRAM, "none")?
        .assert_refused();
    server
        .scramp("imap", ALICE, PASSWORD, PLUS, "tls-server-end-point")?
        .assert_refused();
    // Made by passwd itself: this is the first login since, and it is a SCRAM one.
    server.scramp("imap", ALICE, new, SCRAM, "none")?.assert_ok();
    server
        .scramp("smtp", ALICE, new, PLUS, "tls-server-end-point")?
        .assert_ok();
    server.scramp("imap", BOB, PASSWORD, SCRAM, "none")?.assert_ok();
    drop(server);

    // Users made while SCRAM is off get no verifier; turned on, a password login makes one.
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let (imap, imap_starttls, submission) =
        (common::free_addr()?, common::free_addr()?, common::free_addr()?);
    let listeners = [
        ("imap", imap, "implicit"),
        ("imap", imap_starttls, "starttls"),
        ("submission", submission, "implicit"),
    ];
    let off = common::config_with_users(
        dir.path(),
        "example.test",
        &["alice", "bob"],
        &listeners,
        "[auth]\nscram = false\n",
    )?;
    let data = dir.path().join("data");
    assert_eq!(stored_verifiers(&data, &[ALICE, BOB]).await?, [None, None]);
    let text = ctx(std::fs::read_to_string(&off), "read config")?;
    let config = dir.path().join("scram-on.toml");
    ctx(
        std::fs::write(&config, text.replace("scram = false", "scram = true")),
        "write config",
    )?;
    let process = common::serve(dir.path(), &config).await?;
    let server = Server {
        dir,
        config,
        imap,
        imap_starttls,
        submission,
        _process: process,
    };
    server
        .scramp("imap", ALICE, PASSWORD, SCRAM, "none")?
        .assert_refused();

    let (mut c, _) = imap_tls(&server, [127, 0, 0, 1], &TLS13).await?;
    let login = c.imap("l", &format!("LOGIN {ALICE} \"{PASSWORD}\"")).await?;
    assert!(login.last().is_some_and(|l| l.starts_with("l OK")), "{login:?}");
    let verifiers = stored_verifiers(&data, &[ALICE, BOB]).await?;
    assert!(
        verifiers[0].is_some() && verifiers[1].is_none(),
        "only alice logged in with her password: {verifiers:?}"
    );
    server.scramp("imap", ALICE, PASSWORD, SCRAM, "none")?.assert_ok();
    server
        .scramp("imap", BOB, PASSWORD, SCRAM, "none")?
        .assert_refused();
    Ok(())
}
