//! Second factors and app passwords end to end, against a real `sealmail serve` over real TLS:
//! TOTP enrolment (RFC 6238) checked with an independent implementation (Python's hmac), the
//! account password refused once a second factor is active, app passwords and their scopes,
//! revocation reaching running sessions, `auth.password_with_code` with replay refused, and
//! every refusal counted as a security event (and towards a ban). Logins go through Python's
//! imaplib and smtplib where a held session is not needed, so the clients are not ours.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rustls::version::TLS13;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use common::{TEST_PASSWORD, admin, config_with_users, free_addr, run, serve};
use sealmail_testkit::{LineClient, Sealmail, TestResult, ctx, tls_connect};

const DOMAIN: &str = "example.test";
const NAME: &str = "mail.example.test";

/// The independent client: TOTP from an otpauth URI with hmac/hashlib/base64/struct, and
/// logins with imaplib and smtplib (one SASL PLAIN attempt: `SMTP.login` would retry with
/// LOGIN after a refusal and so count twice). Logins print `OK` or `REFUSED reason`.
const PYTHON: &str = r#"
import base64, hashlib, hmac, imaplib, smtplib, socket, ssl, struct, sys, time, urllib.parse

NAME = 'mail.example.test'

def codes(uri):
    parts = urllib.parse.urlsplit(uri)
    assert parts.scheme == 'otpauth' and parts.netloc == 'totp', uri
    query = dict(urllib.parse.parse_qsl(parts.query, strict_parsing=True))
    secret = query['secret'].upper()
    key = base64.b32decode(secret + '=' * (-len(secret) % 8))
    digest = {'SHA1': hashlib.sha1}[query.get('algorithm', 'SHA1')]
    digits = int(query.get('digits', '6'))
    period = int(query.get('period', '30'))
    step = int(time.time()) // period
    for s in (step - 1, step, step + 1):
        mac = hmac.new(key, struct.pack('>Q', s), digest).digest()
        offset = mac[-1] & 0x0F
        value = (struct.unpack('>I', mac[offset:offset + 4])[0] & 0x7FFFFFFF) % 10 ** digits
        print(s, str(value).zfill(digits))

class Imap(imaplib.IMAP4_SSL):
    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=NAME)

class Smtp(smtplib.SMTP_SSL):
    def _get_socket(self, host, port, timeout):
        sock = socket.create_connection((host, port), timeout, self.source_address)
        return self.context.wrap_socket(sock, server_hostname=NAME)

def imap(port, cafile, user, password):
    client = Imap('127.0.0.1', int(port), ssl_context=ssl.create_default_context(cafile=cafile), timeout=30)
    try:
        client.login(user, password)
    except imaplib.IMAP4.abort:
        raise
    except imaplib.IMAP4.error as e:
        print('REFUSED', e)
        return
    client.select('INBOX')
    client.logout()
    print('OK')

def smtp(port, cafile, user, password):
    client = Smtp('127.0.0.1', int(port), context=ssl.create_default_context(cafile=cafile), timeout=30)
    client.ehlo('client.example.test')
    assert 'PLAIN' in client.esmtp_features.get('auth', '').split(), client.esmtp_features
    client.user, client.password = user, password
    try:
        client.auth('PLAIN', client.auth_plain)
    except smtplib.SMTPAuthenticationError as e:
        print('REFUSED', e.smtp_code, e.smtp_error.decode())
        return
    client.quit()
    print('OK')

{'codes': codes, 'imap': imap, 'smtp': smtp}[sys.argv[1]](*sys.argv[2:])
"#;

/// Runs the Python client with `args`; its standard output, or an error when it failed.
fn python(args: &[&str]) -> TestResult<String> {
    let interpreter = std::env::var("SEALMAIL_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let output = ctx(
        std::process::Command::new(&interpreter)
            .arg("-c")
            .arg(PYTHON)
            .args(args)
            .output(),
        &interpreter,
    )?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(format!(
            "python {}: {stdout}{}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(stdout.trim_end().to_string())
}

/// The TOTP codes of the steps before, at and after now, from an otpauth URI, computed by
/// Python: (current step, [previous, current, next]).
fn totp_codes(uri: &str) -> TestResult<(i64, [String; 3])> {
    let out = python(&["codes", uri])?;
    let mut steps = Vec::new();
    let mut codes = Vec::new();
    for line in out.lines() {
        let (step, code) = line.split_once(' ').ok_or(format!("codes: {out}"))?;
        steps.push(ctx(step.parse::<i64>(), "step")?);
        codes.push(code.to_string());
    }
    let current = *steps.get(1).ok_or(format!("codes: {out}"))?;
    let codes: [String; 3] = codes.try_into().map_err(|_| format!("codes: {out}"))?;
    Ok((current, codes))
}

/// A six-digit code that is none of `codes` (so wrong at every step the server accepts).
fn wrong_code(codes: &[String; 3]) -> String {
    (0..4)
        .map(|n| format!("{:06}", 123_456 + 111_111 * n))
        .find(|c| !codes.contains(c))
        .unwrap_or_default()
}

fn address(user: &str) -> String {
    format!("{user}@{DOMAIN}")
}

/// `sealmail --config CONFIG ARGS` must succeed; its standard output.
fn cli(dir: &Path, config: &Path, args: &[&str]) -> TestResult<String> {
    let (code, out, err) = admin(dir, config, args)?;
    if code != 0 {
        return Err(format!("{args:?} exited {code}: {out}{err}"));
    }
    Ok(out)
}

/// What `user mfa enable` printed, taken apart.
struct Enrolment {
    uri: String,
    qr_lines: usize,
}

fn enable_mfa(dir: &Path, config: &Path, user: &str) -> TestResult<Enrolment> {
    let out = cli(dir, config, &["user", "mfa", "enable", &address(user)])?;
    let uris: Vec<&str> = out.lines().filter(|l| l.contains("otpauth://")).collect();
    assert_eq!(uris.len(), 1, "one URI, on a line of its own: {out}");
    let uri = uris.first().ok_or("no URI")?.to_string();
    assert!(
        uri.starts_with("otpauth://totp/"),
        "not alone on its line: {uri:?}"
    );
    let qr_lines = out.lines().filter(|l| l.contains(['█', '▀', '▄'])).count();
    Ok(Enrolment { uri, qr_lines })
}

/// Enables and confirms a second factor for `user` with the current code as argument; the
/// confirming step and the 10 recovery codes.
fn enrol(dir: &Path, config: &Path, user: &str) -> TestResult<(Enrolment, i64, Vec<String>)> {
    let enrolment = enable_mfa(dir, config, user)?;
    let (step, codes) = totp_codes(&enrolment.uri)?;
    let out = cli(
        dir,
        config,
        &["user", "mfa", "confirm", &address(user), &codes[1]],
    )?;
    let recovery = recovery_codes(&out);
    Ok((enrolment, step, recovery))
}

/// The `xxxx-xxxx-xxxx-xxxx` lines of `user mfa confirm`'s output.
fn recovery_codes(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| {
            l.len() == 19
                && l.split('-').count() == 4
                && l.split('-')
                    .all(|g| g.len() == 4 && g.bytes().all(|b| b.is_ascii_alphanumeric()))
        })
        .map(str::to_string)
        .collect()
}

fn mfa_status(dir: &Path, config: &Path, user: &str) -> TestResult<String> {
    cli(dir, config, &["user", "mfa", "status", &address(user)])
}

/// A new app password (the last line of `user app-password add`).
fn add_app_password(
    dir: &Path,
    config: &Path,
    user: &str,
    name: &str,
    scope: Option<&str>,
) -> TestResult<String> {
    let addr = address(user);
    let mut args = vec!["user", "app-password", "add", addr.as_str(), name];
    if let Some(scope) = scope {
        args.extend(["--scope", scope]);
    }
    let out = cli(dir, config, &args)?;
    let password = out.lines().last().ok_or("no output")?.trim().to_string();
    assert!(
        password.len() >= 16 && !password.contains(' '),
        "not a password alone on the last line: {out}"
    );
    Ok(password)
}

/// A running server with implicit-TLS IMAP and submission listeners and `users` (password
/// `TEST_PASSWORD`) in example.test.
struct Server {
    dir: tempfile::TempDir,
    config: PathBuf,
    imap: SocketAddr,
    submission: SocketAddr,
    process: Option<Sealmail>,
}

impl Server {
    fn configure(users: &[&str], extra: &str) -> TestResult<Server> {
        let dir = ctx(tempfile::tempdir(), "tempdir")?;
        let (mx, submission, imap) = (free_addr()?, free_addr()?, free_addr()?);
        let listeners = [
            ("mx", mx, "starttls"),
            ("submission", submission, "implicit"),
            ("imap", imap, "implicit"),
        ];
        let config = config_with_users(dir.path(), DOMAIN, users, &listeners, extra)?;
        Ok(Server {
            dir,
            config,
            imap,
            submission,
            process: None,
        })
    }

    async fn start(mut self) -> TestResult<Server> {
        self.process = Some(serve(self.dir.path(), &self.config).await?);
        Ok(self)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("tls/0.pem")
    }

    fn cli(&self, args: &[&str]) -> TestResult<String> {
        cli(self.path(), &self.config, args)
    }

    fn login(&self, protocol: &str, user: &str, password: &str) -> TestResult<String> {
        let port = match protocol {
            "imap" => self.imap.port(),
            _ => self.submission.port(),
        }
        .to_string();
        let cert = self.cert().to_string_lossy().into_owned();
        python(&[protocol, &port, &cert, &address(user), password])
    }

    /// An IMAP session logged in with LOGIN (our client: the test holds it open).
    async fn imap_session(&self, user: &str, password: &str) -> TestResult<LineClient<TlsStream<TcpStream>>> {
        let tls = sealmail_testkit::client_config(&[&self.cert()], &[&TLS13], &[])?;
        let mut c = LineClient::new(tls_connect(self.imap, tls, NAME).await?);
        c.line().await?;
        let reply = c
            .imap("l", &format!("LOGIN {} \"{password}\"", address(user)))
            .await?;
        let last = reply.last().ok_or("no reply")?;
        if !last.starts_with("l OK") {
            return Err(format!("LOGIN {user}: {reply:?}"));
        }
        Ok(c)
    }

    /// `security events --since 1h`, one JSON object per line.
    fn events(&self) -> TestResult<Vec<serde_json::Value>> {
        let out = self.cli(&["security", "events", "--since", "1h"])?;
        out.lines()
            .map(|l| ctx(serde_json::from_str(l), "event JSON"))
            .collect()
    }

    /// The events of `kind` for `user`'s account.
    fn events_of(&self, kind: &str, user: &str) -> TestResult<Vec<serde_json::Value>> {
        let account = address(user);
        Ok(self
            .events()?
            .into_iter()
            .filter(|e| e["kind"] == kind && e["account"] == account.as_str())
            .collect())
    }
}

/// Reads until the session is ended (BYE, then EOF, or EOF at once); the BYE line if any. An
/// error when the session is still up after `limit`.
async fn ended_within<S>(session: &mut LineClient<S>, limit: Duration) -> TestResult<Option<String>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut bye = None;
    loop {
        match tokio::time::timeout_at(deadline, session.line()).await {
            Err(_) => return Err(format!("session still open after {limit:?} (bye: {bye:?})")),
            Ok(Err(_)) => return Ok(bye),
            Ok(Ok(line)) if line.starts_with("* BYE") => bye = Some(line),
            Ok(Ok(line)) => return Err(format!("unexpected line while waiting for the end: {line}")),
        }
    }
}

fn is_ok(result: &str) -> bool {
    result == "OK"
}

fn is_refused(result: &str) -> bool {
    result.starts_with("REFUSED")
}

#[tokio::test]
async fn totp_enrolment_agrees_with_an_independent_implementation_and_yields_ten_recovery_codes() -> TestResult
{
    let server = Server::configure(&["alice", "bob"], "")?;
    let (dir, config) = (server.path(), server.config.as_path());

    let enrolment = enable_mfa(dir, config, "alice")?;
    let uri = enrolment.uri.as_str();
    let (label, query) = uri
        .strip_prefix("otpauth://totp/")
        .and_then(|rest| rest.split_once('?'))
        .ok_or(format!("URI shape: {uri}"))?;
    assert_eq!(label, "mail.example.test:alice%40example.test", "{uri}");
    let params: std::collections::HashMap<&str, &str> =
        query.split('&').filter_map(|p| p.split_once('=')).collect();
    assert_eq!(
        params.get("issuer"),
        Some(&NAME),
        "issuer is the config's hostname: {uri}"
    );
    assert_eq!(params.get("algorithm"), Some(&"SHA1"), "{uri}");
    assert_eq!(params.get("digits"), Some(&"6"), "{uri}");
    assert_eq!(params.get("period"), Some(&"30"), "{uri}");
    let secret = params.get("secret").ok_or("no secret")?;
    assert!(
        secret.len() >= 26
            && secret
                .bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)),
        "secret is not base32 of at least 128 bits: {secret}"
    );
    assert!(
        enrolment.qr_lines >= 10,
        "no QR code drawn ({} lines)",
        enrolment.qr_lines
    );
    assert!(
        mfa_status(dir, config, "alice")?.contains("pending"),
        "enabled but not confirmed is pending"
    );

    // A wrong code is refused and leaves the enrolment pending.
    let (_, codes) = totp_codes(uri)?;
    let wrong = wrong_code(&codes);
    let (code, out, err) = run(
        dir,
        &[
            "--config",
            &config.to_string_lossy(),
            "user",
            "mfa",
            "confirm",
            &address("alice"),
            &wrong,
        ],
        None,
    )?;
    assert_ne!(code, 0, "a wrong code was accepted: {out}");
    assert!(recovery_codes(&out).is_empty(), "{out}{err}");
    assert!(mfa_status(dir, config, "alice")?.contains("pending"));

    // The right code, computed by Python from the URI alone, on standard input.
    let (_, codes) = totp_codes(uri)?;
    let (code, out, err) = run(
        dir,
        &[
            "--config",
            &config.to_string_lossy(),
            "user",
            "mfa",
            "confirm",
            &address("alice"),
        ],
        Some(&format!("{}\n", codes[1])),
    )?;
    assert_eq!(code, 0, "{out}{err}");
    let recovery = recovery_codes(&out);
    assert_eq!(recovery.len(), 10, "{out}");
    let distinct: std::collections::HashSet<&String> = recovery.iter().collect();
    assert_eq!(distinct.len(), 10, "recovery codes repeat: {out}");
    let status = mfa_status(dir, config, "alice")?;
    assert!(
        status.contains("active") && status.contains("10 recovery code(s) left"),
        "{status}"
    );

    // Another account, the code as an argument.
    let (bob, _, recovery) = enrol(dir, config, "bob")?;
    assert_ne!(bob.uri, enrolment.uri, "two accounts share a secret");
    assert_eq!(recovery.len(), 10);
    let status = mfa_status(dir, config, "bob")?;
    assert!(
        status.contains("active") && status.contains("10 recovery code(s) left"),
        "{status}"
    );
    assert!(mfa_status(dir, config, "alice")?.contains("10 recovery code(s) left"));
    Ok(())
}

#[tokio::test]
async fn with_a_second_factor_the_password_is_refused_and_an_app_password_logs_in() -> TestResult {
    let server = Server::configure(&["alice"], "[security]\nauth_failures = 100\n")?
        .start()
        .await?;

    // Before: the account password works on both protocols, and holds a session open.
    assert!(is_ok(&server.login("imap", "alice", TEST_PASSWORD)?));
    assert!(is_ok(&server.login("smtp", "alice", TEST_PASSWORD)?));
    let mut held = server.imap_session("alice", TEST_PASSWORD).await?;

    let (_, _, recovery) = enrol(server.path(), &server.config, "alice")?;
    assert_eq!(recovery.len(), 10);

    // The password alone no longer stands, for new logins and for the session it opened.
    let imap = server.login("imap", "alice", TEST_PASSWORD)?;
    assert!(is_refused(&imap), "IMAP: {imap}");
    assert!(imap.contains("AUTHENTICATIONFAILED"), "{imap}");
    let smtp = server.login("smtp", "alice", TEST_PASSWORD)?;
    assert!(smtp.starts_with("REFUSED 535"), "SMTP: {smtp}");
    ended_within(&mut held, Duration::from_secs(6))
        .await
        .map_err(|e| format!("password session after MFA was turned on: {e}"))?;

    let phone = add_app_password(server.path(), &server.config, "alice", "phone", None)?;
    assert!(is_ok(&server.login("imap", "alice", &phone)?));
    assert!(is_ok(&server.login("smtp", "alice", &phone)?));

    // Every refusal is an auth_failure event; successes name the credential.
    let failures = server.events_of("auth_failure", "alice")?;
    assert_eq!(failures.len(), 2, "{failures:?}");
    let successes = server.events_of("auth_success", "alice")?;
    let with_phone = successes
        .iter()
        .filter(|e| e["detail"] == "app password phone")
        .count();
    assert_eq!(with_phone, 2, "{successes:?}");
    let with_password = successes
        .iter()
        .filter(|e| e["detail"] == "account password")
        .count();
    assert_eq!(with_password, 3, "{successes:?}");
    let text = serde_json::Value::Array(server.events()?).to_string();
    assert!(!text.contains(&phone), "an app password reached the events");
    Ok(())
}

#[tokio::test]
async fn app_passwords_are_scoped_and_their_use_is_listed() -> TestResult {
    let server = Server::configure(&["bob"], "[security]\nauth_failures = 100\n")?
        .start()
        .await?;
    let (dir, config) = (server.path(), server.config.as_path());
    let reader = add_app_password(dir, config, "bob", "reader", Some("imap"))?;
    let sender = add_app_password(dir, config, "bob", "sender", Some("smtp"))?;

    let list = server.cli(&["user", "app-password", "list", &address("bob")])?;
    let unused: Vec<Vec<&str>> = list.lines().skip(1).map(|l| l.split('\t').collect()).collect();
    assert_eq!(unused.len(), 2, "{list}");
    for row in &unused {
        assert_eq!(row.get(4..6), Some(&["never", "-"][..]), "{list}");
    }

    assert!(is_ok(&server.login("imap", "bob", &reader)?));
    let out = server.login("smtp", "bob", &reader)?;
    assert!(
        out.starts_with("REFUSED 535"),
        "imap-only password on SMTP: {out}"
    );
    assert!(is_ok(&server.login("smtp", "bob", &sender)?));
    let out = server.login("imap", "bob", &sender)?;
    assert!(is_refused(&out), "smtp-only password on IMAP: {out}");

    let list = server.cli(&["user", "app-password", "list", &address("bob")])?;
    let rows: std::collections::HashMap<&str, Vec<&str>> = list
        .lines()
        .skip(1)
        .filter_map(|l| {
            let fields: Vec<&str> = l.split('\t').collect();
            Some((*fields.first()?, fields))
        })
        .collect();
    for (name, scope) in [("reader", "imap"), ("sender", "smtp")] {
        let row = rows.get(name).ok_or(format!("{name} not listed: {list}"))?;
        assert_eq!(row.len(), 6, "{list}");
        assert_eq!(row[1], scope, "{list}");
        assert!(row[4].starts_with("20"), "{name}: no last use time: {list}");
        assert_eq!(row[5], "127.0.0.1", "{list}");
    }
    let failures = server.events_of("auth_failure", "bob")?;
    assert_eq!(failures.len(), 2, "{failures:?}");
    Ok(())
}

#[tokio::test]
async fn revoking_an_app_password_refuses_it_at_once_and_ends_only_its_sessions() -> TestResult {
    let server = Server::configure(&["carol"], "[security]\nauth_failures = 100\n")?
        .start()
        .await?;
    let (dir, config) = (server.path(), server.config.as_path());
    let laptop = add_app_password(dir, config, "carol", "laptop", None)?;
    let tablet = add_app_password(dir, config, "carol", "tablet", None)?;
    let mut on_laptop = server.imap_session("carol", &laptop).await?;
    let mut on_tablet = server.imap_session("carol", &tablet).await?;
    for session in [&mut on_laptop, &mut on_tablet] {
        let selected = session.imap("s", "SELECT INBOX").await?;
        assert!(
            selected.last().is_some_and(|l| l.starts_with("s OK")),
            "{selected:?}"
        );
    }

    let out = server.cli(&["user", "app-password", "revoke", &address("carol"), "laptop"])?;
    assert!(out.contains("revoked"), "{out}");
    let revoked_at = Instant::now();
    let again = server.login("imap", "carol", &laptop)?;
    assert!(is_refused(&again), "a revoked app password logged in: {again}");

    // Ended within the credentials poll (2 s) and a lookup; a BYE first is optional.
    ended_within(&mut on_laptop, Duration::from_secs(6)).await?;
    assert!(
        revoked_at.elapsed() < Duration::from_secs(6),
        "{:?}",
        revoked_at.elapsed()
    );

    let noop = on_tablet.imap("n", "NOOP").await?;
    assert!(
        noop.last().is_some_and(|l| l.starts_with("n OK")),
        "the other app password's session ended too: {noop:?}"
    );
    assert!(is_ok(&server.login("imap", "carol", &tablet)?));
    let list = server.cli(&["user", "app-password", "list", &address("carol")])?;
    assert!(!list.contains("laptop") && list.contains("tablet"), "{list}");

    let failures = server.events_of("auth_failure", "carol")?;
    assert_eq!(failures.len(), 1, "{failures:?}");
    Ok(())
}

/// One AUTH PLAIN on submission with our client; the reply and a 421 that follows, if any.
async fn smtp_plain(server: &Server, user: &str, password: &str) -> TestResult<Vec<String>> {
    let tls = sealmail_testkit::client_config(&[&server.cert()], &[&TLS13], &[])?;
    let mut c = LineClient::new(tls_connect(server.submission, tls, NAME).await?);
    c.smtp_reply().await?;
    c.command("EHLO client.example.test", "250").await?;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{}\0{password}", address(user)));
    c.send(&format!("AUTH PLAIN {token}\r\n")).await?;
    let mut replies = vec![c.smtp_reply().await?];
    if let Ok(Ok(line)) = tokio::time::timeout(Duration::from_millis(500), c.line()).await {
        replies.push(line);
    }
    Ok(replies)
}

#[tokio::test]
async fn password_with_code_takes_each_code_once_and_wrong_codes_lead_to_a_ban() -> TestResult {
    let server = Server::configure(&["dave"], "[auth]\npassword_with_code = true\n")?;
    let (enrolment, confirmed_step, recovery) = enrol(server.path(), &server.config, "dave")?;
    assert_eq!(recovery.len(), 10);
    let server = server.start().await?;

    // Confirming used its step; a login needs a later one (a step is used once).
    let (mut step, mut codes) = totp_codes(&enrolment.uri)?;
    while step <= confirmed_step {
        tokio::time::sleep(Duration::from_millis(500)).await;
        (step, codes) = totp_codes(&enrolment.uri)?;
    }
    let with_code = format!("{TEST_PASSWORD}{}", codes[1]);
    let first = server.login("imap", "dave", &with_code)?;
    assert!(is_ok(&first), "password + current code: {first}");
    let replay = server.login("imap", "dave", &with_code)?;
    assert!(is_refused(&replay), "the same code twice: {replay}");

    let with_recovery = format!("{TEST_PASSWORD}{}", recovery[3]);
    let first = server.login("smtp", "dave", &with_recovery)?;
    assert!(is_ok(&first), "password + recovery code: {first}");
    let again = server.login("smtp", "dave", &with_recovery)?;
    assert!(again.starts_with("REFUSED 535"), "a recovery code twice: {again}");
    let status = mfa_status(server.path(), &server.config, "dave")?;
    assert!(status.contains("9 recovery code(s) left"), "{status}");

    let alone = server.login("imap", "dave", TEST_PASSWORD)?;
    assert!(is_refused(&alone), "the password alone: {alone}");

    let successes = server.events_of("auth_success", "dave")?;
    let with_codes = successes
        .iter()
        .filter(|e| e["detail"] == "account password and code")
        .count();
    assert_eq!(with_codes, 2, "{successes:?}");
    assert_eq!(server.events_of("auth_failure", "dave")?.len(), 3);

    // Wrong codes count like wrong passwords: the default 5 failures ban the address.
    let wrong = format!("{TEST_PASSWORD}{}", wrong_code(&codes));
    let mut banned_after = None;
    for attempt in 1..=5 {
        let replies = smtp_plain(&server, "dave", &wrong).await?;
        assert!(
            replies[0].starts_with("535 5.7.8"),
            "attempt {attempt}: {replies:?}"
        );
        if replies.iter().any(|r| r.starts_with("421 4.7.0")) {
            banned_after = Some(attempt);
            break;
        }
    }
    assert_eq!(banned_after, Some(2), "3 failures before, 2 wrong codes make 5");
    let after_ban = server.login("imap", "dave", &format!("{TEST_PASSWORD}{}", recovery[4]));
    assert!(
        !after_ban.as_deref().is_ok_and(is_ok),
        "a banned address logged in: {after_ban:?}"
    );
    let events = server.events()?;
    assert!(events.iter().any(|e| e["kind"] == "ban_added"), "{events:?}");
    let prefix_shown = events.iter().any(|e| e.to_string().contains(TEST_PASSWORD));
    assert!(!prefix_shown, "a password reached the events");
    Ok(())
}
