//! Client certificates end to end (issue 17): the internal CA's `ca init` / `ca issue` output
//! checked with the `openssl` tool, mutual TLS and SASL EXTERNAL (RFC 4422 appendix A) on IMAP
//! (RFC 9051 AUTHENTICATE, RFC 4959 SASL-IR) and submission (RFC 4954), with `openssl s_client`
//! as the independent client; refusals (another CA, expired, revoked, none) and the security
//! events logins with a certificate leave.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

use sealmail_testkit::{Sealmail, TestResult, ctx};

const DOMAIN: &str = "example.test";
const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";
const SERVER_NAME: &str = "mail.example.test";

/// Runs `openssl ARGS` in `dir` to completion: (success, stdout, stderr).
fn openssl(dir: &Path, args: &[&str]) -> TestResult<(bool, String, String)> {
    let out = ctx(
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output(),
        "run openssl",
    )?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `openssl ARGS` that must succeed; its stdout.
fn openssl_ok(dir: &Path, args: &[&str]) -> TestResult<String> {
    let (ok, out, err) = openssl(dir, args)?;
    if !ok {
        return Err(format!("openssl {}: {out}{err}", args.join(" ")));
    }
    Ok(out)
}

/// What `openssl x509 -fingerprint -sha256` shows for a PEM certificate, without colons, lower
/// case: the form sealmail prints.
fn openssl_fingerprint(file: &Path) -> TestResult<String> {
    let dir = file.parent().ok_or("no parent")?;
    let path = file.to_str().ok_or("path")?;
    let out = openssl_ok(dir, &["x509", "-in", path, "-noout", "-fingerprint", "-sha256"])?;
    let shown = out.trim().rsplit('=').next().ok_or("no fingerprint")?;
    Ok(shown.replace(':', "").to_lowercase())
}

/// A certificate and its key, as PEM files.
#[derive(Clone)]
struct Identity {
    cert: PathBuf,
    key: PathBuf,
}

/// A server with alice and bob of example.test, a client CA made with `sealmail ca init`
/// before it started, and alice's certificate from `sealmail ca issue`.
struct Server {
    dir: tempfile::TempDir,
    config: PathBuf,
    _process: Sealmail,
    imap_optional: SocketAddr,
    imap_required: SocketAddr,
    submission: SocketAddr,
    alice: Identity,
    alice_fingerprint: String,
}

impl Server {
    async fn start(extra: &str) -> TestResult<Server> {
        let dir = ctx(tempfile::tempdir(), "tempdir")?;
        let (imap_optional, imap_required, submission) =
            (common::free_addr()?, common::free_addr()?, common::free_addr()?);
        let listeners = [
            ("imap", imap_optional, "implicit"),
            ("imap", imap_required, "implicit"),
            ("submission", submission, "starttls"),
        ];
        let config = common::config_with_users(dir.path(), DOMAIN, &["alice", "bob"], &listeners, extra)?;
        // write_config knows no listener keys besides role, bind and tls.
        let mut text = ctx(std::fs::read_to_string(&config), "read config")?;
        for (addr, mode) in [
            (imap_optional, "optional"),
            (imap_required, "required"),
            (submission, "optional"),
        ] {
            let bind = format!("bind = \"{addr}\"\n");
            if !text.contains(&bind) {
                return Err(format!("no listener {addr} in {text}"));
            }
            text = text.replace(&bind, &format!("{bind}client_cert = \"{mode}\"\n"));
        }
        ctx(std::fs::write(&config, text), "write config")?;

        let (code, _, err) = common::admin(dir.path(), &config, &["ca", "init"])?;
        if code != 0 {
            return Err(format!("ca init: {err}"));
        }
        let out = dir.path().join("alice");
        let out_arg = out.to_string_lossy().into_owned();
        let (code, stdout, err) =
            common::admin(dir.path(), &config, &["ca", "issue", ALICE, "--out", &out_arg])?;
        if code != 0 {
            return Err(format!("ca issue: {err}"));
        }
        let alice = Identity {
            cert: out.join("cert.pem"),
            key: out.join("key.pem"),
        };
        let alice_fingerprint = openssl_fingerprint(&alice.cert)?;
        if !stdout.contains(&alice_fingerprint) {
            return Err(format!("ca issue does not name {alice_fingerprint}: {stdout}"));
        }
        let process = common::serve(dir.path(), &config).await?;
        Ok(Server {
            dir,
            config,
            _process: process,
            imap_optional,
            imap_required,
            submission,
            alice,
            alice_fingerprint,
        })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The server's own certificate, which the clients trust.
    fn server_cert(&self) -> PathBuf {
        self.path().join("tls/0.pem")
    }

    /// `sealmail --config CONFIG ARGS` that must succeed; its stdout.
    fn admin(&self, args: &[&str]) -> TestResult<String> {
        let (code, out, err) = common::admin(self.path(), &self.config, args)?;
        if code != 0 {
            return Err(format!("sealmail {}: {out}{err}", args.join(" ")));
        }
        Ok(out)
    }

    /// An IMAP session through `openssl s_client` on an implicit-TLS listener; `Err` with the
    /// client's report when the handshake fails (no greeting comes).
    async fn imap(
        &self,
        addr: SocketAddr,
        identity: Option<&Identity>,
    ) -> TestResult<Result<SClient, String>> {
        let mut client = SClient::spawn(self, addr, identity, false)?;
        match client.line().await? {
            Some(greeting) if greeting.starts_with("* OK") => Ok(Ok(client)),
            Some(other) => Err(format!("unexpected greeting {other:?}")),
            None => Ok(Err(client.finish().await)),
        }
    }

    /// An IMAP session that must come up.
    async fn imap_ok(&self, addr: SocketAddr, identity: Option<&Identity>) -> TestResult<SClient> {
        self.imap(addr, identity)
            .await?
            .map_err(|e| format!("handshake with {addr} failed: {e}"))
    }

    /// The handshake on `addr` with `identity` fails; returns what the client reported.
    async fn imap_refused(&self, addr: SocketAddr, identity: Option<&Identity>) -> TestResult<String> {
        match self.imap(addr, identity).await? {
            Ok(mut client) => {
                let caps = client.imap("C", "CAPABILITY").await?;
                Err(format!("handshake with {addr} succeeded: {caps:?}"))
            }
            Err(report) => Ok(report),
        }
    }

    /// A submission session through `openssl s_client -starttls smtp`, after its EHLO; the
    /// session and the EHLO reply.
    async fn submission(&self, identity: Option<&Identity>) -> TestResult<(SClient, String)> {
        let mut client = SClient::spawn(self, self.submission, identity, true)?;
        let ehlo = client.smtp("EHLO client.example.test").await?;
        if !ehlo.starts_with("250") {
            return Err(format!("EHLO: {ehlo}"));
        }
        Ok((client, ehlo))
    }

    /// The security events of the last hour once `done` holds for them (they are written
    /// behind the sessions' backs), or as they are after 10 s.
    async fn events_once(
        &self,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> TestResult<Vec<serde_json::Value>> {
        let start = Instant::now();
        loop {
            let events = self.events()?;
            if done(&events) || start.elapsed() > Duration::from_secs(10) {
                return Ok(events);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The security events of the last hour, parsed.
    fn events(&self) -> TestResult<Vec<serde_json::Value>> {
        let out = self.admin(&["security", "events", "--since", "1h"])?;
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| format!("{e}: {l}")))
            .collect()
    }
}

/// `openssl s_client` driven through its standard input and output. `-quiet` also means
/// `-ign_eof` and no interactive commands, so IMAP lines starting with Q or R go through.
struct SClient {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: PathBuf,
}

impl SClient {
    fn spawn(
        server: &Server,
        addr: SocketAddr,
        identity: Option<&Identity>,
        smtp: bool,
    ) -> TestResult<SClient> {
        let ca = server.server_cert().to_string_lossy().into_owned();
        let connect = addr.to_string();
        let mut args = vec![
            "s_client".to_string(),
            "-connect".into(),
            connect,
            "-servername".into(),
            SERVER_NAME.into(),
            "-CAfile".into(),
            ca,
            "-verify_return_error".into(),
            "-quiet".into(),
        ];
        if let Some(id) = identity {
            args.push("-cert".into());
            args.push(id.cert.to_string_lossy().into_owned());
            args.push("-key".into());
            args.push(id.key.to_string_lossy().into_owned());
        }
        if smtp {
            args.extend([
                "-starttls".into(),
                "smtp".into(),
                "-name".into(),
                "client.example.test".into(),
            ]);
        }
        let stderr = server
            .path()
            .join(format!("s_client-{}.err", sealmail_testkit::free_port()));
        let err_file = ctx(std::fs::File::create(&stderr), "stderr file")?;
        let mut child = ctx(
            tokio::process::Command::new("openssl")
                .args(&args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(err_file))
                .kill_on_drop(true)
                .spawn(),
            "spawn openssl s_client",
        )?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        Ok(SClient {
            child,
            stdin,
            stdout,
            stderr,
        })
    }

    /// The next line without its CRLF; `None` when the connection ended.
    async fn line(&mut self) -> TestResult<Option<String>> {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(15), self.stdout.read_line(&mut line))
            .await
            .map_err(|_| "no line from s_client within 15 s".to_string())?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(line.trim_end_matches(['\r', '\n']).to_string()))
    }

    async fn send(&mut self, line: &str) -> TestResult {
        ctx(
            self.stdin.write_all(format!("{line}\r\n").as_bytes()).await,
            "write",
        )?;
        ctx(self.stdin.flush().await, "flush")
    }

    /// Sends `TAG COMMAND`; every line up to the tagged one.
    async fn imap(&mut self, tag: &str, command: &str) -> TestResult<Vec<String>> {
        self.send(&format!("{tag} {command}")).await?;
        self.imap_until(tag).await
    }

    async fn imap_until(&mut self, tag: &str) -> TestResult<Vec<String>> {
        let prefix = format!("{tag} ");
        let mut lines = Vec::new();
        loop {
            let line = self
                .line()
                .await?
                .ok_or_else(|| format!("connection closed after {lines:?}"))?;
            let done = line.starts_with(&prefix);
            lines.push(line);
            if done {
                return Ok(lines);
            }
        }
    }

    /// Sends one SMTP command line; its whole reply, lines joined by '\n'.
    async fn smtp(&mut self, line: &str) -> TestResult<String> {
        self.send(line).await?;
        let mut lines = Vec::new();
        loop {
            let line = self
                .line()
                .await?
                .ok_or_else(|| format!("connection closed after {lines:?}"))?;
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return Ok(lines.join("\n"));
            }
        }
    }

    /// Ends the client; what it wrote to stderr.
    async fn finish(mut self) -> String {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        let _ = self.child.start_kill();
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// The untagged CAPABILITY line of a session not logged in yet.
async fn capability(client: &mut SClient) -> TestResult<String> {
    let lines = client.imap("C", "CAPABILITY").await?;
    let tagged = lines.last().ok_or("no reply")?;
    if !tagged.starts_with("C OK") {
        return Err(format!("CAPABILITY: {lines:?}"));
    }
    lines
        .iter()
        .find(|l| l.starts_with("* CAPABILITY "))
        .cloned()
        .ok_or_else(|| format!("no capabilities in {lines:?}"))
}

fn tagged_ok(lines: &[String], tag: &str) -> bool {
    lines.last().is_some_and(|l| l.starts_with(&format!("{tag} OK")))
}

fn tagged_no(lines: &[String], tag: &str) -> bool {
    lines.last().is_some_and(|l| l.starts_with(&format!("{tag} NO")))
}

/// The EHLO reply's AUTH line, its mechanisms.
fn ehlo_mechanisms(ehlo: &str) -> TestResult<Vec<String>> {
    let line = ehlo
        .lines()
        .find(|l| l.get(4..).is_some_and(|rest| rest.starts_with("AUTH ")))
        .ok_or_else(|| format!("no AUTH line in {ehlo}"))?;
    Ok(line[9..].split(' ').map(str::to_string).collect())
}

fn base64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A certificate for `address` that the server's own client CA signed and that expired long
/// ago: `openssl ca` is the one openssl 3.0 command that sets both dates.
fn expired_from_internal_ca(server: &Server, address: &str) -> TestResult<Identity> {
    let work = server.path().join("expired");
    ctx(std::fs::create_dir_all(&work), "mkdir")?;
    let ca_dir = server.path().join("data/client-ca");
    let ca_cert = ca_dir.join("ca.pem").to_string_lossy().into_owned();
    let ca_key = ca_dir.join("ca.key").to_string_lossy().into_owned();
    let cnf = format!(
        "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n\
         default_md = sha256\npolicy = any\nunique_subject = no\nemail_in_dn = no\n\
         [any]\ncommonName = supplied\n\
         [leaf]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage = clientAuth,emailProtection\nsubjectAltName = email:{address}\n\
         authorityKeyIdentifier = keyid\n"
    );
    ctx(std::fs::write(work.join("ca.cnf"), cnf), "ca.cnf")?;
    ctx(std::fs::write(work.join("index.txt"), ""), "index")?;
    ctx(std::fs::write(work.join("serial"), "1000\n"), "serial")?;
    openssl_ok(
        &work,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "req.csr",
            "-subj",
            &format!("/CN={address}"),
        ],
    )?;
    openssl_ok(
        &work,
        &[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-cert",
            &ca_cert,
            "-keyfile",
            &ca_key,
            "-in",
            "req.csr",
            "-out",
            "cert.pem",
            "-notext",
            "-extensions",
            "leaf",
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200201000000Z",
        ],
    )?;
    let identity = Identity {
        cert: work.join("cert.pem"),
        key: work.join("key.pem"),
    };
    // The certificate is good but for its dates: it chains when time is not checked.
    let cert = identity.cert.to_string_lossy().into_owned();
    let verified = openssl_ok(
        &work,
        &[
            "verify",
            "-CAfile",
            &ca_cert,
            "-purpose",
            "sslclient",
            "-no_check_time",
            &cert,
        ],
    )?;
    if !verified.contains(": OK") {
        return Err(format!("the expired certificate does not chain: {verified}"));
    }
    Ok(identity)
}

/// A certificate for `address` from a client CA of another server.
fn from_another_ca(server: &Server, address: &str) -> TestResult<Identity> {
    let other = server.path().join("other-ca");
    let ca = ctx(
        sealmail_tls::client_ca::ClientCa::init(&other.join("ca"), "mail.elsewhere.test"),
        "other CA",
    )?;
    let issued = ctx(ca.issue(address, 30), "issue")?;
    ctx(
        sealmail_tls::client_ca::write_issued(&other.join("leaf"), &issued),
        "write",
    )?;
    Ok(Identity {
        cert: other.join("leaf/cert.pem"),
        key: other.join("leaf/key.pem"),
    })
}

/// Whether `addr` refuses a handshake with `identity` within `limit`, trying every 300 ms.
async fn refused_within(
    server: &Server,
    addr: SocketAddr,
    identity: &Identity,
    limit: Duration,
) -> TestResult<bool> {
    let start = Instant::now();
    while start.elapsed() < limit {
        match server.imap(addr, Some(identity)).await? {
            Err(_) => return Ok(true),
            Ok(client) => drop(client),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(false)
}

#[tokio::test]
async fn ca_issue_writes_a_p12_openssl_opens_a_private_key_and_the_fingerprint_openssl_shows() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let config = common::config_with_users(
        dir.path(),
        DOMAIN,
        &["alice"],
        &[("imap", common::free_addr()?, "implicit")],
        "",
    )?;
    let (code, _, err) = common::admin(dir.path(), &config, &["ca", "init"])?;
    assert_eq!(code, 0, "{err}");
    // A second init would orphan every certificate the first CA issued.
    let (code, _, _) = common::admin(dir.path(), &config, &["ca", "init"])?;
    assert_ne!(code, 0, "ca init replaced an existing CA");

    let out = dir.path().join("alice-cert");
    let out_arg = out.to_string_lossy().into_owned();
    let (code, stdout, err) = common::admin(dir.path(), &config, &["ca", "issue", ALICE, "--out", &out_arg])?;
    assert_eq!(code, 0, "{err}");
    let password = stdout.lines().last().ok_or("no output")?.trim().to_string();
    assert!(password.len() >= 20, "{stdout}");

    let pass = format!("pass:{password}");
    let opened = openssl_ok(&out, &["pkcs12", "-in", "cert.p12", "-passin", &pass, "-nodes"])?;
    assert!(opened.contains("-----BEGIN PRIVATE KEY-----"), "{opened}");
    assert_eq!(
        opened.matches("-----BEGIN CERTIFICATE-----").count(),
        2,
        "leaf and CA: {opened}"
    );
    let (ok, _, _) = openssl(
        &out,
        &["pkcs12", "-in", "cert.p12", "-passin", "pass:wrong", "-nodes"],
    )?;
    assert!(!ok, "the .p12 opened with a wrong password");

    use std::os::unix::fs::PermissionsExt;
    let mode = ctx(std::fs::metadata(out.join("key.pem")), "stat key.pem")?
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "key.pem is {mode:o}");
    // The key in key.pem belongs to cert.pem.
    let cert_key = openssl_ok(&out, &["x509", "-in", "cert.pem", "-noout", "-pubkey"])?;
    let key_key = openssl_ok(&out, &["pkey", "-in", "key.pem", "-pubout"])?;
    assert_eq!(cert_key, key_key);
    // ... and chains to the CA for client authentication.
    let ca = dir
        .path()
        .join("data/client-ca/ca.pem")
        .to_string_lossy()
        .into_owned();
    let verified = openssl_ok(
        &out,
        &["verify", "-CAfile", &ca, "-purpose", "sslclient", "cert.pem"],
    )?;
    assert!(verified.contains("cert.pem: OK"), "{verified}");

    let fingerprint = openssl_fingerprint(&out.join("cert.pem"))?;
    assert_eq!(fingerprint.len(), 64);
    assert!(stdout.contains(&fingerprint), "{stdout}");
    let (code, list, err) = common::admin(dir.path(), &config, &["user", "cert", "list", ALICE])?;
    assert_eq!(code, 0, "{err}");
    let row = list
        .lines()
        .find(|l| l.starts_with(&fingerprint))
        .ok_or_else(|| format!("{fingerprint} not listed: {list}"))?;
    assert!(row.ends_with("\tyes"), "not marked as issued here: {row}");
    Ok(())
}

#[tokio::test]
async fn a_certificate_logs_in_with_external_on_imap_and_submission_and_only_as_its_owner() -> TestResult {
    let server = Server::start("").await?;
    let alice = server.alice.clone();

    // SASL-IR with an empty initial response.
    let mut c = server.imap_ok(server.imap_optional, Some(&alice)).await?;
    let caps = capability(&mut c).await?;
    assert!(caps.contains(" AUTH=EXTERNAL"), "{caps}");
    let reply = c.imap("A", "AUTHENTICATE EXTERNAL =").await?;
    assert!(tagged_ok(&reply, "A"), "{reply:?}");
    let select = c.imap("B", "SELECT INBOX").await?;
    assert!(tagged_ok(&select, "B"), "{select:?}");
    c.imap("Z", "LOGOUT").await?;

    // An empty continuation instead, on the listener that requires a certificate.
    let mut c = server.imap_ok(server.imap_required, Some(&alice)).await?;
    assert!(capability(&mut c).await?.contains(" AUTH=EXTERNAL"));
    c.send("A AUTHENTICATE EXTERNAL").await?;
    let cont = c.line().await?.ok_or("closed")?;
    assert!(cont.starts_with('+'), "{cont:?}");
    c.send("").await?;
    let reply = c.imap_until("A").await?;
    assert!(tagged_ok(&reply, "A"), "{reply:?}");
    let select = c.imap("B", "SELECT INBOX").await?;
    assert!(tagged_ok(&select, "B"), "{select:?}");

    // Naming herself as authorization identity is fine; naming bob is not.
    let mut c = server.imap_ok(server.imap_optional, Some(&alice)).await?;
    let reply = c
        .imap("A", &format!("AUTHENTICATE EXTERNAL {}", base64(BOB)))
        .await?;
    assert!(
        tagged_no(&reply, "A"),
        "alice's certificate logged in as bob: {reply:?}"
    );
    let select = c.imap("B", "SELECT INBOX").await?;
    assert!(!tagged_ok(&select, "B"), "not logged in, yet {select:?}");
    let reply = c
        .imap("C", &format!("AUTHENTICATE EXTERNAL {}", base64(ALICE)))
        .await?;
    assert!(tagged_ok(&reply, "C"), "{reply:?}");

    // Without a certificate the optional listener serves, but offers and takes no EXTERNAL.
    let mut c = server.imap_ok(server.imap_optional, None).await?;
    let caps = capability(&mut c).await?;
    assert!(!caps.contains("AUTH=EXTERNAL"), "{caps}");
    assert!(caps.contains("AUTH=PLAIN"), "{caps}");
    let reply = c.imap("A", "AUTHENTICATE EXTERNAL =").await?;
    assert!(tagged_no(&reply, "A"), "{reply:?}");
    let reply = c
        .imap("B", &format!("LOGIN {ALICE} \"{}\"", common::TEST_PASSWORD))
        .await?;
    assert!(tagged_ok(&reply, "B"), "a password still works there: {reply:?}");

    // Submission over STARTTLS.
    let (mut s, ehlo) = server.submission(Some(&alice)).await?;
    let mechanisms = ehlo_mechanisms(&ehlo)?;
    assert!(mechanisms.iter().any(|m| m == "EXTERNAL"), "{ehlo}");
    let reply = s.smtp("AUTH EXTERNAL =").await?;
    assert!(reply.starts_with("235"), "{reply}");
    let reply = s.smtp(&format!("MAIL FROM:<{ALICE}>")).await?;
    assert!(reply.starts_with("250"), "{reply}");
    let reply = s.smtp(&format!("RCPT TO:<{BOB}>")).await?;
    assert!(reply.starts_with("250"), "{reply}");

    let (mut s, ehlo) = server.submission(Some(&alice)).await?;
    assert!(ehlo_mechanisms(&ehlo)?.iter().any(|m| m == "EXTERNAL"));
    let reply = s.smtp(&format!("AUTH EXTERNAL {}", base64(BOB))).await?;
    assert!(
        reply.starts_with("535"),
        "alice's certificate sent as bob: {reply}"
    );

    let (mut s, ehlo) = server.submission(None).await?;
    let mechanisms = ehlo_mechanisms(&ehlo)?;
    assert!(!mechanisms.iter().any(|m| m == "EXTERNAL"), "{ehlo}");
    assert!(mechanisms.iter().any(|m| m == "PLAIN"), "{ehlo}");
    let reply = s.smtp("AUTH EXTERNAL =").await?;
    assert!(!reply.starts_with("235"), "{reply}");
    Ok(())
}

#[tokio::test]
async fn foreign_expired_revoked_and_missing_certificates_are_refused() -> TestResult {
    // Refused handshakes are many here; they are not what this test counts.
    let server = Server::start("[security]\nauth_failures = 1000\n").await?;
    let alice = server.alice.clone();

    // No certificate at all: the required listener completes no handshake.
    let report = server.imap_refused(server.imap_required, None).await?;
    assert!(report.contains("alert"), "{report}");

    // Another CA's certificate naming alice.
    let foreign = from_another_ca(&server, ALICE)?;
    let report = server.imap_refused(server.imap_required, Some(&foreign)).await?;
    assert!(report.contains("unknown ca"), "{report}");
    // Today the optional listener refuses such a handshake as well (a certificate shown must be
    // acceptable); should it serve one instead, it must neither offer nor take EXTERNAL.
    if let Ok(mut c) = server.imap(server.imap_optional, Some(&foreign)).await? {
        let caps = capability(&mut c).await?;
        assert!(!caps.contains("AUTH=EXTERNAL"), "{caps}");
        let reply = c.imap("A", "AUTHENTICATE EXTERNAL =").await?;
        assert!(tagged_no(&reply, "A"), "{reply:?}");
    }

    // The server's own CA signed it, but it expired.
    let expired = expired_from_internal_ca(&server, ALICE)?;
    let report = server.imap_refused(server.imap_required, Some(&expired)).await?;
    assert!(report.contains("certificate expired"), "{report}");
    if let Ok(mut c) = server.imap(server.imap_optional, Some(&expired)).await? {
        let caps = capability(&mut c).await?;
        assert!(!caps.contains("AUTH=EXTERNAL"), "{caps}");
        let reply = c.imap("A", "AUTHENTICATE EXTERNAL =").await?;
        assert!(tagged_no(&reply, "A"), "{reply:?}");
    }

    // Removal. One session is logged in, one has shaken hands but not logged in yet.
    let mut logged_in = server.imap_ok(server.imap_required, Some(&alice)).await?;
    let reply = logged_in.imap("A", "AUTHENTICATE EXTERNAL =").await?;
    assert!(tagged_ok(&reply, "A"), "{reply:?}");
    let select = logged_in.imap("B", "SELECT INBOX").await?;
    assert!(tagged_ok(&select, "B"), "{select:?}");
    let mut waiting = server.imap_ok(server.imap_optional, Some(&alice)).await?;
    assert!(capability(&mut waiting).await?.contains("AUTH=EXTERNAL"));

    let out = server.admin(&["user", "cert", "remove", ALICE, &server.alice_fingerprint])?;
    assert!(out.contains(&server.alice_fingerprint), "{out}");
    let removed_at = Instant::now();
    let list = server.admin(&["user", "cert", "list", ALICE])?;
    assert!(!list.contains(&server.alice_fingerprint), "{list}");

    // The open session ends by itself (within a poll interval or two), without a command.
    let mut ended = false;
    while removed_at.elapsed() < Duration::from_secs(10) {
        match logged_in.line().await {
            Ok(Some(line)) if line.starts_with("* BYE") => {
                ended = true;
                break;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                ended = true;
                break;
            }
        }
    }
    assert!(ended, "the session of a removed certificate went on");
    assert!(
        removed_at.elapsed() < Duration::from_secs(8),
        "ended only after {:?}",
        removed_at.elapsed()
    );

    // The session that had not logged in yet gets no login from it any more.
    let reply = waiting.imap("A", "AUTHENTICATE EXTERNAL =").await?;
    assert!(
        tagged_no(&reply, "A"),
        "a removed certificate logged in: {reply:?}"
    );

    // New handshakes are refused within a few seconds, on both listeners.
    assert!(
        refused_within(&server, server.imap_required, &alice, Duration::from_secs(6)).await?,
        "the required listener still accepts a removed certificate"
    );
    let report = server.imap_refused(server.imap_required, Some(&alice)).await?;
    assert!(report.contains("certificate revoked"), "{report}");
    if let Ok(mut c) = server.imap(server.imap_optional, Some(&alice)).await? {
        let reply = c.imap("A", "AUTHENTICATE EXTERNAL =").await?;
        assert!(tagged_no(&reply, "A"), "{reply:?}");
    }
    // Submission: no handshake with it either, or at least no login.
    if let Ok((mut s, _)) = server.submission(Some(&alice)).await {
        let reply = s.smtp("AUTH EXTERNAL =").await?;
        assert!(!reply.starts_with("235"), "{reply}");
    }
    Ok(())
}

#[tokio::test]
async fn a_registered_self_signed_certificate_logs_its_owner_in() -> TestResult {
    let server = Server::start("").await?;
    let work = server.path().join("bob");
    ctx(std::fs::create_dir_all(&work), "mkdir")?;
    openssl_ok(
        &work,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-subj",
            "/CN=bob",
            "-days",
            "30",
        ],
    )?;
    let bob = Identity {
        cert: work.join("cert.pem"),
        key: work.join("key.pem"),
    };
    let fingerprint = openssl_fingerprint(&bob.cert)?;

    // Unregistered, it is nobody's.
    server.imap_refused(server.imap_required, Some(&bob)).await?;

    let cert = bob.cert.to_string_lossy().into_owned();
    let out = server.admin(&["user", "cert", "add", BOB, &cert])?;
    assert!(out.contains(&fingerprint), "{out}");
    let list = server.admin(&["user", "cert", "list", BOB])?;
    let row = list
        .lines()
        .find(|l| l.starts_with(&fingerprint))
        .ok_or_else(|| format!("{fingerprint} not listed: {list}"))?;
    assert!(row.ends_with("\tno"), "{row}");

    // The running server learns of it within a few seconds.
    let start = Instant::now();
    let mut c = loop {
        if let Ok(c) = server.imap(server.imap_required, Some(&bob)).await? {
            break c;
        }
        if start.elapsed() > Duration::from_secs(8) {
            return Err("the registered certificate is still refused".into());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(capability(&mut c).await?.contains(" AUTH=EXTERNAL"));
    let reply = c.imap("A", "AUTHENTICATE EXTERNAL =").await?;
    assert!(tagged_ok(&reply, "A"), "{reply:?}");
    // It is bob who logged in: his address is the only one he may name.
    let mut c = server.imap_ok(server.imap_optional, Some(&bob)).await?;
    let reply = c
        .imap("A", &format!("AUTHENTICATE EXTERNAL {}", base64(ALICE)))
        .await?;
    assert!(
        tagged_no(&reply, "A"),
        "bob's certificate logged in as alice: {reply:?}"
    );
    let reply = c
        .imap("B", &format!("AUTHENTICATE EXTERNAL {}", base64(BOB)))
        .await?;
    assert!(tagged_ok(&reply, "B"), "{reply:?}");

    let detail = format!("certificate {fingerprint}");
    let bobs = |e: &serde_json::Value| {
        e["kind"] == "auth_success" && e["account"] == BOB && e["detail"] == detail.as_str()
    };
    let events = server.events_once(|events| events.iter().any(bobs)).await?;
    assert!(events.iter().any(bobs), "{events:?}");
    Ok(())
}

#[tokio::test]
async fn external_logins_are_security_events_and_refusals_count_toward_a_ban() -> TestResult {
    let server = Server::start("[security]\nauth_failures = 3\n").await?;
    let alice = server.alice.clone();
    let detail = format!("certificate {}", server.alice_fingerprint);

    let mut c = server.imap_ok(server.imap_optional, Some(&alice)).await?;
    let reply = c.imap("A", "AUTHENTICATE EXTERNAL =").await?;
    assert!(tagged_ok(&reply, "A"), "{reply:?}");
    c.imap("Z", "LOGOUT").await?;

    let events = server
        .events_once(|events| events.iter().any(|e| e["kind"] == "auth_success"))
        .await?;
    let successes: Vec<_> = events.iter().filter(|e| e["kind"] == "auth_success").collect();
    assert_eq!(successes.len(), 1, "{events:?}");
    assert_eq!(successes[0]["account"], ALICE, "{events:?}");
    assert_eq!(successes[0]["detail"], detail.as_str(), "{events:?}");
    assert_eq!(successes[0]["address"], "127.0.0.1", "{events:?}");
    assert!(!events.iter().any(|e| e["kind"] == "auth_failure"), "{events:?}");

    // Each refusal is a failure, and three ban the address like three wrong passwords.
    let mut c = server.imap_ok(server.imap_optional, Some(&alice)).await?;
    let authzid = base64(BOB);
    let mut closed = false;
    for tag in ["A", "B", "C"] {
        c.send(&format!("{tag} AUTHENTICATE EXTERNAL {authzid}")).await?;
        match c.imap_until(tag).await {
            Ok(reply) => assert!(tagged_no(&reply, tag), "{reply:?}"),
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    let events = server
        .events_once(|events| {
            events.iter().filter(|e| e["kind"] == "auth_failure").count() >= 3
                && events.iter().any(|e| e["kind"] == "ban_added")
        })
        .await?;
    let failures: Vec<_> = events.iter().filter(|e| e["kind"] == "auth_failure").collect();
    assert_eq!(failures.len(), 3, "{events:?}");
    for failure in &failures {
        assert_eq!(failure["address"], "127.0.0.1", "{failure}");
        let text = failure.to_string();
        assert!(
            text.contains(&server.alice_fingerprint),
            "the failure does not name the certificate: {text}"
        );
    }
    assert!(events.iter().any(|e| e["kind"] == "ban_added"), "{events:?}");
    if !closed {
        // The ban ends the session that earned it.
        let next = c.line().await.ok().flatten();
        assert!(next.as_deref().is_none_or(|l| l.starts_with("* BYE")), "{next:?}");
    }
    // And the banned address gets no new session, certificate or not.
    assert!(
        server.imap(server.imap_optional, Some(&alice)).await?.is_err(),
        "a banned address got a session"
    );
    Ok(())
}
