//! The account pages and the admin console in a real browser (Debian's Chromium, driven over
//! WebDriver by `sealmail_testkit::browser`), and the same pages attacked with curl and raw
//! clients: XSS in what senders and clients choose, CSRF, session fixation, brute force.
//! Screenshots of every page are left in `target/web-screenshots/`.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use base64::Engine;
use sealmail_testkit::browser::Browser;
use sealmail_testkit::pki::TestCa;
use sealmail_testkit::{LineClient, TestResult, ctx};

const DOMAIN: &str = "example.test";
const HOST: &str = "mail.example.test";
const SESSION: &str = "__Host-sealmail-session";

/// An anyhow result (the browser's) as a test result.
fn b<T>(result: anyhow::Result<T>) -> TestResult<T> {
    result.map_err(|e| format!("{e:#}"))
}

struct Site {
    dir: tempfile::TempDir,
    config: PathBuf,
    _process: sealmail_testkit::Sealmail,
    ca: PathBuf,
    https: SocketAddr,
    /// A second https listener, the only one with the admin console (`[web] admin_listener`).
    admin_https: SocketAddr,
    imaps: SocketAddr,
    submissions: SocketAddr,
}

impl Site {
    async fn start(extra: &str) -> TestResult<Site> {
        Site::start_with(extra, false).await
    }

    async fn start_with(extra: &str, admin_listener: bool) -> TestResult<Site> {
        let dir = ctx(tempfile::tempdir(), "tempdir")?;
        let (https, imaps, submissions) = (common::free_addr()?, common::free_addr()?, common::free_addr()?);
        let admin_https = SocketAddr::from(([127, 0, 0, 5], common::free_addr()?.port()));
        let mut listeners = vec![
            ("https", https, "implicit"),
            ("imap", imaps, "implicit"),
            ("submission", submissions, "implicit"),
        ];
        let mut extra = extra.to_string();
        if admin_listener {
            listeners.push(("https", admin_https, "implicit"));
            extra.push_str(&format!("\n[web]\nadmin_listener = \"{admin_https}\"\n"));
        }
        let config = common::config_with_users(dir.path(), DOMAIN, &["alice", "bob"], &listeners, &extra)?;
        let (code, _, err) = common::admin(dir.path(), &config, &["ca", "init"])?;
        if code != 0 {
            return Err(format!("ca init: {err}"));
        }
        let (code, _, err) = common::admin(
            dir.path(),
            &config,
            &["user", "add", "admin@example.test", "--password-stdin", "--admin"],
        )?;
        if code != 0 {
            return Err(format!("user add --admin: {err}"));
        }
        let ca = TestCa::new("pages test CA")?;
        let ca_file = common::install_issued(dir.path(), &ca, &[HOST])?;
        let process = common::serve(dir.path(), &config).await?;
        Ok(Site {
            dir,
            config,
            _process: process,
            ca: ca_file,
            https,
            admin_https,
            imaps,
            submissions,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("https://{HOST}:{}{path}", self.https.port())
    }

    async fn browser(&self) -> TestResult<Browser> {
        b(Browser::start_resolving(&[(HOST, IpAddr::from([127, 0, 0, 1]))]).await)
    }

    fn tls(&self) -> TestResult<Arc<rustls::ClientConfig>> {
        sealmail_testkit::client_config(&[&self.ca], &[&rustls::version::TLS13], &[])
    }

    /// IMAP LOGIN over implicit TLS: whether it was accepted.
    async fn imap_login(&self, user: &str, password: &str) -> TestResult<bool> {
        let tls = sealmail_testkit::tls_connect(self.imaps, self.tls()?, HOST).await?;
        let mut c = LineClient::new(tls);
        c.line().await?;
        let reply = c.imap("l", &format!("LOGIN {user} \"{password}\"")).await?;
        Ok(reply.last().is_some_and(|l| l.starts_with("l OK")))
    }

    /// Submits a message from alice over implicit TLS.
    async fn submit(&self, to: &str, message: &str) -> TestResult {
        let tls = sealmail_testkit::tls_connect(self.submissions, self.tls()?, HOST).await?;
        let mut c = LineClient::new(tls);
        c.smtp_reply().await?;
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("\0alice@example.test\0{}", common::TEST_PASSWORD));
        c.dialog(&[
            ("EHLO client.test".to_string(), "250"),
            (format!("AUTH PLAIN {auth}"), "235"),
            ("MAIL FROM:<alice@example.test>".to_string(), "250"),
            (format!("RCPT TO:<{to}>"), "250"),
            ("DATA".to_string(), "354"),
        ])
        .await?;
        c.command(&format!("{message}\r\n."), "250").await?;
        Ok(())
    }

    /// curl with our name resolved and our CA trusted: (status, body).
    fn curl(&self, path: &str, extra: &[&str], from: &str) -> TestResult<(u16, String, String)> {
        curl(&self.url(path), self.https.port(), &self.ca, extra, from)
    }
}

fn curl(url: &str, port: u16, ca: &Path, extra: &[&str], from: &str) -> TestResult<(u16, String, String)> {
    let resolve = format!("{HOST}:{port}:127.0.0.1");
    let output = ctx(
        Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-D",
                "-",
                "--interface",
                from,
                "--resolve",
                &resolve,
                "--cacert",
            ])
            .arg(ca)
            .args(extra)
            .arg(url)
            .output(),
        "curl",
    )?;
    if !output.status.success() {
        return Err(format!("curl {url}: {}", String::from_utf8_lossy(&output.stderr)));
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no header end")?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or("no status")?;
    Ok((status, head.to_string(), body.to_string()))
}

/// A connection from 127.0.0.3, kept alive, with the login form read over it: the connection,
/// the Host header, the login cookie and the form's token.
async fn open_login_form(
    site: &Site,
) -> TestResult<(
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    String,
    String,
    String,
)> {
    let tls = sealmail_testkit::tcp_from([127, 0, 0, 3], site.https).await?;
    let mut kept = sealmail_testkit::tls_upgrade(tls, site.tls()?, HOST).await?;
    let host_header = format!("{HOST}:{}", site.https.port());
    let (head, page) = http_exchange(
        &mut kept,
        &format!("GET / HTTP/1.1\r\nHost: {host_header}\r\n\r\n"),
    )
    .await?;
    let cookie = set_cookie(&head, "__Host-sealmail-login").ok_or("no login cookie")?;
    let token = hidden(&page, "csrf").ok_or("no csrf field")?;
    Ok((kept, host_header, cookie, token))
}

/// One HTTP/1.1 request on a kept-alive connection: the response's head and body (by its
/// Content-Length).
async fn http_exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    request: &str,
) -> TestResult<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ctx(stream.write_all(request.as_bytes()).await, "send request")?;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = ctx(
            tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buffer))
                .await
                .map_err(|_| "response timed out".to_string())?,
            "read response",
        )?;
        if n == 0 {
            return Err("connection closed before a response".into());
        }
        received.extend_from_slice(&buffer[..n]);
    };
    let head = String::from_utf8_lossy(&received[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse().ok())
        .ok_or("no content-length")?;
    while received.len() < head_end + length {
        let n = ctx(stream.read(&mut buffer).await, "read body")?;
        if n == 0 {
            return Err("connection closed in the body".into());
        }
        received.extend_from_slice(&buffer[..n]);
    }
    let body = String::from_utf8_lossy(&received[head_end..head_end + length]).into_owned();
    Ok((head, body))
}

/// The value of the hidden field `name` in a page.
/// The value of the first attribute `name` in `page`.
fn attribute(page: &str, name: &str) -> Option<String> {
    let start = page.find(&format!("{name}=\""))? + name.len() + 2;
    let end = page[start..].find('"')? + start;
    Some(page[start..end].to_string())
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}

fn hidden(page: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page.find(&marker)? + marker.len();
    let end = page[start..].find('"')? + start;
    Some(page[start..end].to_string())
}

/// A cookie's value from response headers.
fn set_cookie(head: &str, name: &str) -> Option<String> {
    head.lines()
        .filter_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .filter_map(|c| c.split(';').next())
        .filter_map(|c| c.split_once('='))
        .find(|(n, v)| *n == name && !v.is_empty())
        .map(|(_, v)| v.to_string())
}

/// RFC 4648 base32 without padding, as in otpauth URIs.
fn base32_decode(text: &str) -> TestResult<Vec<u8>> {
    let mut bits: u64 = 0;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.trim_end_matches('=').chars() {
        let value = match c {
            'A'..='Z' => c as u64 - 'A' as u64,
            '2'..='7' => c as u64 - '2' as u64 + 26,
            _ => return Err(format!("not base32: {c:?}")),
        };
        bits = (bits << 5) | value;
        count += 5;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Ok(out)
}

/// The TOTP code of `secret` at the current step plus `ahead`.
fn totp_code(secret: &[u8], ahead: i64) -> String {
    let step = sealmail_identity::totp::step_at(sealmail_types::clock::now_unix()) + ahead;
    sealmail_identity::totp::hotp(secret, step as u64, 6)
}

/// Waits (up to 10 s) until the element matching `css` holds `needle`: a click on a submit
/// button may return before the next page has replaced the last one.
async fn until_text(browser: &Browser, css: &str, needle: &str) -> TestResult<String> {
    let mut last = String::new();
    for _ in 0..50 {
        if let Ok(text) = browser.text(css).await {
            if text.contains(needle) {
                return Ok(text);
            }
            last = text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Err(format!("{css} never held {needle:?}; last: {last:?}"))
}

/// Reloads the account page (up to 10 s) until its events hold `needle`: events are written
/// in the background.
async fn until_event(browser: &Browser, site: &Site, needle: &str) -> TestResult {
    let mut last = String::new();
    for _ in 0..50 {
        b(browser.goto(&site.url("/")).await)?;
        last = b(browser.text("#events").await)?;
        if last.contains(needle) {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Err(format!("the events never held {needle:?}; last: {last:?}"))
}

async fn log_in(browser: &Browser, site: &Site, user: &str, password: &str) -> TestResult {
    b(browser.goto(&site.url("/")).await)?;
    b(browser.fill("#username", user).await)?;
    b(browser.fill("#password", password).await)?;
    b(browser.click("#login").await)
}

/// Sets up TOTP from the account page (the QR code drawn, the key read off the page, a
/// computed code), with screenshots when `screenshots`: the secret.
async fn enrol_totp(browser: &Browser, screenshots: bool) -> TestResult<Vec<u8>> {
    b(browser.fill("#mfa-start-password", common::TEST_PASSWORD).await)?;
    b(browser.click("#mfa-start").await)?;
    until_text(browser, "h1", "Set up an authenticator app").await?;
    let svg = b(browser.page_source().await)?;
    assert!(
        svg.contains("<svg") && svg.contains("<path"),
        "no QR code drawn: {svg}"
    );
    if screenshots {
        b(browser.screenshot("enrol-totp").await)?;
    }
    let secret = base32_decode(&b(browser.text("#totp-secret").await)?)?;
    b(browser.fill("#code", &totp_code(&secret, 0)).await)?;
    b(browser.fill("#confirm-password", common::TEST_PASSWORD).await)?;
    b(browser.click("#confirm").await)?;
    until_text(browser, "h1", "Second factor on").await?;
    let page = b(browser.page_source().await)?;
    let recovery_codes = page.matches("class=\"secret\"").count();
    assert_eq!(recovery_codes, 10, "recovery codes shown once");
    if screenshots {
        b(browser.screenshot("recovery-codes").await)?;
    }
    b(browser.click("#done").await)?;
    until_text(browser, "#mfa-status", "On since").await?;
    Ok(secret)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_adds_a_security_key_and_logs_in_with_it_in_a_browser() -> TestResult {
    let site = Site::start("").await?;
    let browser = site.browser().await?;
    let authenticator = b(browser.add_virtual_authenticator().await)?;
    log_in(&browser, &site, "alice@example.test", common::TEST_PASSWORD).await?;
    until_text(&browser, "#who", "alice@example.test").await?;
    // A key stands in for the code of a second factor: none to add before there is one.
    assert!(!b(browser.page_source().await)?.contains("id=\"add-key\""));
    enrol_totp(&browser, false).await?;

    // Adding a key outlives the session: the password is asked (the key answered, but no key
    // is stored without it).
    b(browser.fill("#key-name", "desk key").await)?;
    b(browser.fill("#key-password", "not the password").await)?;
    b(browser.click("#add-key").await)?;
    until_text(&browser, "#error", "not right").await?;
    assert!(!b(browser.text("#security-keys").await)?.contains("desk key"));
    b(browser.fill("#key-name", "desk key").await)?;
    b(browser.fill("#key-password", common::TEST_PASSWORD).await)?;
    b(browser.click("#add-key").await)?;
    until_text(&browser, "#message", "Security key added").await?;
    assert!(b(browser.text("#security-keys").await)?.contains("desk key"));
    b(browser.screenshot("security-key-added").await)?;
    let held = b(browser.virtual_credentials(&authenticator).await)?;
    // The first (refused) ceremony made a credential on the key too; the account has one.
    assert!(!held.is_empty(), "the authenticator made a credential");

    // Out, and in with the password and the key (no code typed).
    b(browser.click("#logout").await)?;
    until_text(&browser, "h1", "Log in").await?;
    log_in(&browser, &site, "alice@example.test", common::TEST_PASSWORD).await?;
    until_text(&browser, "h1", "Second factor").await?;
    b(browser.screenshot("second-factor-key").await)?;
    b(browser.click("#use-key").await)?;
    until_text(&browser, "#who", "alice@example.test").await?;
    until_event(&browser, &site, "password+security key").await?;
    let page = b(browser.page_source().await)?;
    assert!(page.contains("desk key"), "{page}");
    let counters: Vec<i64> = b(browser.virtual_credentials(&authenticator).await)?
        .iter()
        .filter_map(|c| c.get("signCount").and_then(serde_json::Value::as_i64))
        .collect();
    assert!(
        counters.iter().any(|&count| count >= 2),
        "the key signed: {counters:?}"
    );

    // A forged answer (right challenge and credential id, no key's signature), sent with curl
    // for a half login of its own: refused, and that half login is spent.
    let (status, head, page) =
        curl_post_login(&site, "127.0.0.3", "alice@example.test", common::TEST_PASSWORD)?;
    assert_eq!(status, 200);
    let pending = set_cookie(&head, "__Host-sealmail-pending").ok_or("no half login")?;
    let token = hidden(&page, "csrf").ok_or("no csrf field")?;
    let challenge = attribute(&page, "data-challenge").ok_or("no key challenge offered")?;
    let allowed = attribute(&page, "data-allow").ok_or("no key offered")?;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let client_data = format!(
        r#"{{"type":"webauthn.get","challenge":"{challenge}","origin":"https://{HOST}:{}"}}"#,
        site.https.port()
    );
    let mut authenticator_data = sha256(HOST.as_bytes());
    authenticator_data.extend_from_slice(&[0x01, 0, 0, 0x10, 0]);
    let forged = format!(
        "csrf={token}&credential_id={allowed}&client_data={}&authenticator_data={}&signature={}",
        b64(client_data.as_bytes()),
        b64(&authenticator_data),
        b64(&[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01]),
    );
    let pending_header = format!("Cookie: __Host-sealmail-pending={pending}");
    let (status, _, body) = site.curl(
        "/login/key",
        &["-H", &pending_header, "--data", &forged],
        "127.0.0.3",
    )?;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("security key was not accepted"), "{body}");
    let (status, _, _) = site.curl(
        "/login/key",
        &["-H", &pending_header, "--data", &forged],
        "127.0.0.3",
    )?;
    assert_eq!(status, 403, "the half login was used up");

    // Turning the second factor off removes the keys.
    b(browser.fill("#mfa-password", common::TEST_PASSWORD).await)?;
    b(browser.click("#mfa-disable").await)?;
    until_text(&browser, "#message", "off").await?;
    until_event(&browser, &site, "1 security keys removed").await?;
    assert!(!b(browser.page_source().await)?.contains("desk key</td>"));
    b(browser.close().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_logs_in_enrols_totp_and_manages_app_passwords_in_a_browser() -> TestResult {
    let site = Site::start("").await?;
    let browser = site.browser().await?;
    b(browser.goto(&site.url("/")).await)?;
    b(browser.screenshot("login").await)?;
    log_in(&browser, &site, "alice@example.test", common::TEST_PASSWORD).await?;
    assert_eq!(b(browser.text("#who").await)?, "alice@example.test");
    b(browser.screenshot("account").await)?;
    let cookies = b(browser.cookies().await)?;
    let session = cookies
        .iter()
        .find(|c| c.name == SESSION)
        .ok_or("no session cookie")?;
    assert!(session.http_only && session.secure, "{session:?}");
    assert_eq!(session.same_site.as_deref(), Some("Strict"));
    assert!(
        session.domain.as_deref().is_none_or(|d| !d.starts_with('.')),
        "{session:?}"
    );

    // TOTP: the QR code is drawn, the key read off the page, a computed code turns it on.
    // Changes that outlive the session need the password again.
    b(browser.fill("#mfa-start-password", "not the password").await)?;
    b(browser.click("#mfa-start").await)?;
    until_text(&browser, "#error", "not right").await?;
    let secret = enrol_totp(&browser, true).await?;

    // Out, and in again: the password alone is not enough; a fresh code is.
    b(browser.click("#logout").await)?;
    until_text(&browser, "h1", "Log in").await?;
    log_in(&browser, &site, "alice@example.test", common::TEST_PASSWORD).await?;
    until_text(&browser, "h1", "Second factor").await?;
    let page = b(browser.page_source().await)?;
    assert!(page.contains("id=\"verify\""), "second factor asked: {page}");
    assert!(
        !b(browser.cookies().await)?.iter().any(|c| c.name == SESSION),
        "no session before the code"
    );
    b(browser.screenshot("second-factor").await)?;
    b(browser.fill("#code", "000000").await)?;
    b(browser.click("#verify").await)?;
    // A wrong code ends that login: the password must come again before the next code.
    until_text(&browser, "#error", "not right").await?;
    assert!(b(browser.page_source().await)?.contains("id=\"login\""));
    log_in(&browser, &site, "alice@example.test", common::TEST_PASSWORD).await?;
    until_text(&browser, "h1", "Second factor").await?;
    // The enrolment used this step's code; the next step's is within the window.
    b(browser.fill("#code", &totp_code(&secret, 1)).await)?;
    b(browser.click("#verify").await)?;
    assert_eq!(b(browser.text("#who").await)?, "alice@example.test");

    // The client settings, with this user's address.
    b(browser.goto(&site.url("/setup")).await)?;
    assert_eq!(b(browser.text("#setup-user").await)?, "alice@example.test");
    assert!(b(browser.text("#endpoints").await)?.contains(&site.imaps.port().to_string()));
    b(browser.screenshot("setup").await)?;
    b(browser.goto(&site.url("/")).await)?;

    // With a second factor, mail programs need an app password.
    assert!(
        !site
            .imap_login("alice@example.test", common::TEST_PASSWORD)
            .await?
    );
    b(browser.fill("#app-name", "phone").await)?;
    b(browser.fill("#app-password-confirm", common::TEST_PASSWORD).await)?;
    b(browser.click("#app-add").await)?;
    let app_password = b(browser.text("#secret-1").await)?;
    b(browser.screenshot("app-password").await)?;
    assert!(
        site.imap_login("alice@example.test", &app_password).await?,
        "the app password works over IMAP"
    );
    b(browser.click("#done").await)?;
    until_text(&browser, "#app-passwords", "phone").await?;
    let page = b(browser.page_source().await)?;
    assert!(page.contains("<td>phone</td>"), "listed");
    assert!(
        page.contains("from 127.0.0.1"),
        "its last use is shown with the address"
    );
    // The account's own events name the credential each login used.
    assert!(page.contains("password+totp"), "{page}");
    b(browser.click("button.revoke").await)?;
    assert!(b(browser.text("#message").await)?.contains("revoked"));
    assert!(
        !site.imap_login("alice@example.test", &app_password).await?,
        "revoked: refused"
    );

    // A client certificate from the internal CA: a .p12 OpenSSL opens with the password shown.
    b(browser.fill("#cert-password", common::TEST_PASSWORD).await)?;
    b(browser.click("#cert-issue").await)?;
    let p12_password = b(browser.text("#secret-1").await)?;
    let fingerprint = b(browser.text("#cert-fingerprint").await)?;
    let link = b(browser
        .client()
        .find(fantoccini::Locator::Css("#p12"))
        .await
        .map_err(anyhow::Error::from))?;
    let href = b(link.attr("href").await.map_err(anyhow::Error::from))?.ok_or("no href")?;
    let encoded = href.split_once("base64,").ok_or("not a data URL")?.1;
    let p12 = ctx(
        base64::engine::general_purpose::STANDARD.decode(encoded),
        "base64",
    )?;
    let p12_file = site.dir.path().join("alice.p12");
    ctx(std::fs::write(&p12_file, &p12), "write p12")?;
    let opened = ctx(
        Command::new("openssl")
            .args(["pkcs12", "-noout", "-passin"])
            .arg(format!("pass:{p12_password}"))
            .arg("-in")
            .arg(&p12_file)
            .output(),
        "openssl pkcs12",
    )?;
    assert!(
        opened.status.success(),
        "{}",
        String::from_utf8_lossy(&opened.stderr)
    );
    b(browser.screenshot("client-certificate").await)?;
    b(browser.click("#done").await)?;
    assert!(b(browser.text("#certificates").await)?.contains(&fingerprint));

    // Log out everywhere ends this session too: the cookie opens nothing any more.
    let cookie = b(browser.cookies().await)?
        .into_iter()
        .find(|c| c.name == SESSION)
        .ok_or("no session cookie")?;
    b(browser.click("#logout-everywhere").await)?;
    until_text(&browser, "h1", "Log in").await?;
    let header = format!("Cookie: {SESSION}={}", cookie.value);
    let (_, _, body) = site.curl("/", &["-H", &header], "127.0.0.1")?;
    assert!(body.contains("id=\"login\""), "the old session is gone: {body}");
    b(browser.close().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_adds_a_user_unbans_an_address_and_retries_a_queued_message() -> TestResult {
    // remote.test's MX is an address where nothing listens: its mail stays queued.
    let dns = sealmail_testkit::dns::DnsServer::start().await?;
    dns.add_mx("remote.test", 10, "mx.remote.test");
    dns.add_a("mx.remote.test", std::net::Ipv4Addr::new(127, 0, 0, 9));
    let free = common::free_addr()?.port();
    let extra = format!(
        "[security]\nauth_failures = 3\nban_secs = 600\n[delivery]\nsmtp_port = {free}\n{}",
        common::dns_section(dns.addr())
    );
    let site = Site::start(&extra).await?;
    // A queued message for a domain nobody answers for (the test DNS knows nothing), with a
    // subject and display name that try to run script in the console.
    site.submit(
        "someone@remote.test",
        "From: \"<img src=x onerror=alert(1)>\" <alice@example.test>\r\nTo: someone@remote.test\r\nSubject: <script>alert(2)</script>\r\n\r\nhello",
    )
    .await?;
    // A client that guesses passwords over IMAP from 127.0.0.2 until it is banned.
    for _ in 0..3 {
        let tcp = sealmail_testkit::tcp_from([127, 0, 0, 2], site.imaps).await?;
        if let Ok(tls) = sealmail_testkit::tls_upgrade(tcp, site.tls()?, HOST).await {
            let mut c = LineClient::new(tls);
            c.line().await?;
            let _ = c.imap("l", "LOGIN \"<b>bold</b>@example.test\" wrong").await;
        }
    }
    let banned = sealmail_testkit::tcp_from([127, 0, 0, 2], site.imaps).await?;
    assert!(
        sealmail_testkit::tls_upgrade(banned, site.tls()?, HOST)
            .await
            .is_err(),
        "banned"
    );

    let browser = site.browser().await?;
    // Alice is not an admin: the console is not hers.
    log_in(&browser, &site, "alice@example.test", common::TEST_PASSWORD).await?;
    until_text(&browser, "#who", "alice@example.test").await?;
    b(browser.goto(&site.url("/admin")).await)?;
    until_text(&browser, "#text", "for admins").await?;
    b(browser.click("#logout").await)?;
    until_text(&browser, "h1", "Log in").await?;

    log_in(&browser, &site, "admin@example.test", common::TEST_PASSWORD).await?;
    until_text(&browser, "#who", "admin@example.test").await?;
    b(browser.click("#nav-admin").await)?;
    until_text(&browser, "h1", "Admin").await?;
    // Charts of what this server saw: the failed and good logins, TLS 1.3 handshakes.
    let page = b(browser.page_source().await)?;
    assert!(
        page.contains("Logins per hour") && page.contains("class=\"bar\""),
        "{page}"
    );
    assert!(page.contains("TLSv1_3") || page.contains("TLS13"), "{page}");
    assert!(!page.contains("style="), "no inline style");
    b(browser.screenshot("admin-overview").await)?;

    // Users: add carol; the password shown once logs in over IMAP.
    b(browser.goto(&site.url("/admin/users")).await)?;
    b(browser.fill("#new-address", "carol@example.test").await)?;
    b(browser.click("#user-add").await)?;
    let password = b(browser.text("#secret-1").await)?;
    assert!(site.imap_login("carol@example.test", &password).await?);
    b(browser.goto(&site.url("/admin/users")).await)?;
    assert!(b(browser.text("#users").await)?.contains("carol@example.test"));
    b(browser.screenshot("admin-users").await)?;

    // Bans: the ban is shown with the failures that caused it (the guessed name escaped), and
    // lifted from the page.
    b(browser.goto(&site.url("/admin/bans")).await)?;
    let page = b(browser.page_source().await)?;
    assert!(page.contains("127.0.0.2"), "{page}");
    assert!(page.contains("&lt;b&gt;bold&lt;/b&gt;"), "escaped: {page}");
    assert!(!page.contains("<b>bold</b>"));
    b(browser.screenshot("admin-bans").await)?;
    b(browser.click("button.unban").await)?;
    assert!(b(browser.text("#message").await)?.contains("Lifted 1 ban"));
    let tcp = sealmail_testkit::tcp_from([127, 0, 0, 2], site.imaps).await?;
    let mut deadline = 0;
    let mut tls = sealmail_testkit::tls_upgrade(tcp, site.tls()?, HOST).await;
    while tls.is_err() && deadline < 30 {
        // Bans are reread within a second.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let tcp = sealmail_testkit::tcp_from([127, 0, 0, 2], site.imaps).await?;
        tls = sealmail_testkit::tls_upgrade(tcp, site.tls()?, HOST).await;
        deadline += 1;
    }
    assert!(tls.is_ok(), "unbanned");

    // Queue: the message is there, its header shown escaped; retry and delete work.
    b(browser.goto(&site.url("/admin/queue")).await)?;
    let page = b(browser.page_source().await)?;
    assert!(page.contains("someone@remote.test"), "{page}");
    b(browser.click("a.show").await)?;
    until_text(&browser, "#queue-header", "Subject").await?;
    let page = b(browser.page_source().await)?;
    assert!(page.contains("&lt;script&gt;alert(2)&lt;/script&gt;"), "{page}");
    assert!(!page.contains("<script>alert"));
    assert!(!page.contains("<img src=x"));
    // No script ran: a pending alert would make WebDriver refuse the next command.
    assert!(
        browser.client().get_alert_text().await.is_err(),
        "an alert opened"
    );
    b(browser.screenshot("admin-queue").await)?;
    b(browser.click("button.retry").await)?;
    assert!(b(browser.text("#message").await)?.contains("retried"));
    b(browser.click("button.delete").await)?;
    until_text(&browser, "#message", "deleted").await?;
    assert!(b(browser.page_source().await)?.contains("queue-empty"));

    // Every admin action is a security event, and the events page filters.
    b(browser.goto(&site.url("/admin/events?kind=admin_action")).await)?;
    let events = b(browser.text("#events").await)?;
    for action in [
        "added user carol@example.test",
        "lifted 1 ban(s)",
        "retried queued message",
        "deleted queued message",
    ] {
        assert!(events.contains(action), "{action}: {events}");
    }
    assert!(!events.contains("auth_failure"), "filtered: {events}");
    b(browser.screenshot("admin-events").await)?;
    for (path, name) in [
        ("/admin/domains", "admin-domains"),
        ("/admin/certificates", "admin-certificates"),
    ] {
        b(browser.goto(&site.url(path)).await)?;
        b(browser.screenshot(name).await)?;
    }
    b(browser.goto(&site.url("/admin/domains")).await)?;
    let page = b(browser.page_source().await)?;
    assert!(
        page.contains("_mta-sts.example.test") && page.contains("v=DMARC1"),
        "{page}"
    );
    let selectors_before = page.matches("._domainkey.example.test").count();
    b(browser.click("button.rotate-dkim").await)?;
    assert!(b(browser.text("#message").await)?.contains("New DKIM keys"));
    let page = b(browser.page_source().await)?;
    assert!(
        page.matches("._domainkey.example.test").count() > selectors_before,
        "the new keys' records are listed beside the old ones"
    );
    // The live check asks the test's DNS server, which has none of the records.
    b(browser.click("button.check").await)?;
    let checked = b(browser.text("table.dns-check").await)?;
    assert!(
        checked.contains("_dmarc.example.test") && checked.contains("missing"),
        "{checked}"
    );
    b(browser.screenshot("admin-domains-checked").await)?;
    b(browser.goto(&site.url("/admin/certificates")).await)?;
    assert!(b(browser.text("#cert-status").await)?.contains(HOST));

    // Removing a user needs the address typed again.
    b(browser.goto(&site.url("/admin/users")).await)?;
    let remove_carol = "//tr[td[text()='carol@example.test']]";
    let row = b(browser
        .client()
        .find(fantoccini::Locator::XPath(remove_carol))
        .await
        .map_err(anyhow::Error::from))?;
    let confirm = b(row
        .find(fantoccini::Locator::Css("input[name=confirm]"))
        .await
        .map_err(anyhow::Error::from))?;
    b(confirm
        .send_keys("carol@example.test")
        .await
        .map_err(anyhow::Error::from))?;
    let button = b(row
        .find(fantoccini::Locator::Css("button.remove"))
        .await
        .map_err(anyhow::Error::from))?;
    b(button.click().await.map_err(anyhow::Error::from))?;
    assert!(b(browser.text("#message").await)?.contains("Removed carol@example.test"));
    assert!(!site.imap_login("carol@example.test", &password).await?);
    b(browser.close().await)
}

/// Opens the login form with curl from `from` and posts `user` and `password` with its
/// token: the answer's (status, head, page).
fn curl_post_login(site: &Site, from: &str, user: &str, password: &str) -> TestResult<(u16, String, String)> {
    let (_, head, page) = site.curl("/", &[], from)?;
    let login_cookie = set_cookie(&head, "__Host-sealmail-login").ok_or("no login cookie")?;
    let token = hidden(&page, "csrf").ok_or("no csrf field")?;
    let form = format!(
        "username={}&password={}&csrf={token}",
        user.replace('@', "%40"),
        password.replace(' ', "+")
    );
    site.curl(
        "/login",
        &[
            "-H",
            &format!("Cookie: __Host-sealmail-login={login_cookie}"),
            "--data",
            &form,
        ],
        from,
    )
}

/// Logs `user` in through curl from 127.0.0.1: the session cookie's value.
fn curl_log_in(site: &Site, user: &str) -> TestResult<String> {
    let (status, head, _) = curl_post_login(site, "127.0.0.1", user, common::TEST_PASSWORD)?;
    assert_eq!(status, 200);
    set_cookie(&head, SESSION).ok_or_else(|| "no session cookie".to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_user_downloads_an_apple_profile_signed_with_the_server_certificate() -> TestResult {
    let site = Site::start("").await?;
    let profile = site.dir.path().join("mail.mobileconfig");
    let profile_arg = profile.to_string_lossy().into_owned();
    // Not without a session: the address is the account's, known only once logged in.
    let (status, _, body) = site.curl("/setup/apple.mobileconfig", &[], "127.0.0.1")?;
    assert_eq!(status, 403);
    assert!(body.contains("id=\"login\""), "{body}");

    let session = curl_log_in(&site, "alice@example.test")?;
    let session_header = format!("Cookie: {SESSION}={session}");
    let (_, _, setup) = site.curl("/setup", &["-H", &session_header], "127.0.0.1")?;
    assert!(setup.contains("href=\"/setup/apple.mobileconfig\""), "{setup}");
    let (status, head, _) = site.curl(
        "/setup/apple.mobileconfig",
        &["-H", &session_header, "-o", &profile_arg],
        "127.0.0.1",
    )?;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/x-apple-aspen-config"),
        "{head}"
    );

    // OpenSSL, an independent CMS implementation, verifies the signature against the CA that
    // issued the served certificate, and gives back the signed property list.
    let content = site.dir.path().join("profile.plist");
    let signers = site.dir.path().join("signers.pem");
    let verify = |input: &Path| {
        ctx(
            Command::new("openssl")
                .args([
                    "cms", "-verify", "-binary", "-inform", "DER", "-purpose", "any", "-in",
                ])
                .arg(input)
                .arg("-CAfile")
                .arg(&site.ca)
                .arg("-out")
                .arg(&content)
                .arg("-signer")
                .arg(&signers)
                .output(),
            "openssl cms -verify",
        )
    };
    let verified = verify(&profile)?;
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    // The signer is the host's certificate.
    let names = ctx(
        Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(&signers)
            .output(),
        "openssl x509",
    )?;
    assert!(String::from_utf8_lossy(&names.stdout).contains(HOST));

    // Python's plistlib reads the settings: the account, our host, the TLS ports, no password.
    let python = std::env::var("SEALMAIL_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let script = "import plistlib, sys
p = plistlib.load(open(sys.argv[1], 'rb'))
a = p['PayloadContent'][0]
print(p['PayloadType'], a['PayloadType'], a['EmailAddress'], a['IncomingMailServerUsername'])
print(a['IncomingMailServerHostName'], a['IncomingMailServerPortNumber'], a['IncomingMailServerUseSSL'])
print(a['OutgoingMailServerHostName'], a['OutgoingMailServerPortNumber'], a['OutgoingMailServerUseSSL'])
print(sorted(k for k in a if 'Password' in k and k != 'OutgoingPasswordSameAsIncomingPassword'))";
    let read = ctx(
        Command::new(python).args(["-c", script]).arg(&content).output(),
        "python plistlib",
    )?;
    assert!(read.status.success(), "{}", String::from_utf8_lossy(&read.stderr));
    let lines: Vec<String> = String::from_utf8_lossy(&read.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        lines,
        [
            "Configuration com.apple.mail.managed alice@example.test alice@example.test".to_string(),
            format!("{HOST} {} True", site.imaps.port()),
            format!("{HOST} {} True", site.submissions.port()),
            "[]".to_string(),
        ]
    );

    // A profile changed on the way does not verify.
    let mut bytes = ctx(std::fs::read(&profile), "read profile")?;
    let at = bytes
        .windows(b"alice@example.test".len())
        .position(|w| w == b"alice@example.test")
        .ok_or("address not in the profile")?;
    bytes[at] = b'm';
    let forged = site.dir.path().join("forged.mobileconfig");
    ctx(std::fs::write(&forged, &bytes), "write forged")?;
    assert!(!verify(&forged)?.status.success(), "a changed profile verified");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_without_their_token_fixed_sessions_and_guessed_passwords_are_refused() -> TestResult {
    let site = Site::start("[security]\nauth_failures = 3\nban_secs = 600\n").await?;
    // A login through curl: the form's token comes with its cookie.
    let (status, head, page) = site.curl("/", &[], "127.0.0.1")?;
    assert_eq!(status, 200);
    assert!(head.contains("default-src 'self'"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-frame-options: deny"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase().contains("referrer-policy: no-referrer"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase().contains("strict-transport-security"),
        "{head}"
    );
    let login_cookie = set_cookie(&head, "__Host-sealmail-login").ok_or("no login cookie")?;
    let token = hidden(&page, "csrf").ok_or("no csrf field")?;
    let login_header = format!("Cookie: __Host-sealmail-login={login_cookie}");
    let form = format!(
        "username=alice%40example.test&password={}",
        common::TEST_PASSWORD.replace(' ', "+")
    );

    // Without the token, or with another cookie's, the login form is refused.
    let (status, _, _) = site.curl("/login", &["-H", &login_header, "--data", &form], "127.0.0.1")?;
    assert_eq!(status, 403);
    // A session id planted before login (fixation) is not the one after it, and opens nothing.
    let planted = "A".repeat(43);
    let both = format!("{login_header}; {SESSION}={planted}");
    let (status, head, _) = site.curl(
        "/login",
        &["-H", &both, "--data", &format!("{form}&csrf={token}")],
        "127.0.0.1",
    )?;
    assert_eq!(status, 200);
    let session = set_cookie(&head, SESSION).ok_or("no session cookie")?;
    assert_ne!(session, planted);
    let planted_header = format!("Cookie: {SESSION}={planted}");
    let (_, _, body) = site.curl("/", &["-H", &planted_header], "127.0.0.1")?;
    assert!(body.contains("id=\"login\""), "the planted id is not a session");
    // The login form's own cookie is no session either.
    let (_, _, body) = site.curl(
        "/",
        &["-H", &format!("Cookie: {SESSION}={login_cookie}")],
        "127.0.0.1",
    )?;
    assert!(body.contains("id=\"login\""));

    // Signed in, a form without its token (what another site would send) changes nothing.
    let session_header = format!("Cookie: {SESSION}={session}");
    let (status, _, body) = site.curl(
        "/account/app-passwords/add",
        &["-H", &session_header, "--data", "name=evil&scope=imap&days="],
        "127.0.0.1",
    )?;
    assert_eq!(status, 403, "{body}");
    let (_, _, account) = site.curl("/", &["-H", &session_header], "127.0.0.1")?;
    assert!(!account.contains("<td>evil</td>"));
    let token = hidden(&account, "csrf").ok_or("no csrf field")?;
    // With the token but without the password (a stolen session), nothing lasting is made.
    let (status, _, _) = site.curl(
        "/account/app-passwords/add",
        &[
            "-H",
            &session_header,
            "--data",
            &format!("name=stolen&scope=imap&days=&csrf={token}&password=guess"),
        ],
        "127.0.0.1",
    )?;
    assert_eq!(status, 401);
    let (_, _, account) = site.curl("/", &["-H", &session_header], "127.0.0.1")?;
    assert!(!account.contains("<td>stolen</td>"));
    let (status, _, body) = site.curl(
        "/account/app-passwords/add",
        &[
            "-H",
            &session_header,
            "--data",
            &format!(
                "name=laptop&scope=imap&days=&csrf={token}&password={}",
                common::TEST_PASSWORD.replace(' ', "+")
            ),
        ],
        "127.0.0.1",
    )?;
    assert_eq!(status, 200, "{body}");
    // A user is no admin.
    let (status, _, _) = site.curl("/admin/users", &["-H", &session_header], "127.0.0.1")?;
    assert_eq!(status, 403);
    // An enrolment started with the password cannot be finished without it (a stolen session
    // cannot turn on a second factor of its own choosing), even with the right code.
    let password_field = format!("password={}", common::TEST_PASSWORD.replace(' ', "+"));
    let (status, _, page) = site.curl(
        "/account/mfa/start",
        &[
            "-H",
            &session_header,
            "--data",
            &format!("csrf={token}&{password_field}"),
        ],
        "127.0.0.1",
    )?;
    assert_eq!(status, 200);
    let secret_start = page.find("id=\"totp-secret\">").ok_or("no key shown")? + "id=\"totp-secret\">".len();
    let secret_end = page[secret_start..].find('<').ok_or("no key end")? + secret_start;
    let secret = base32_decode(&page[secret_start..secret_end])?;
    let (status, _, _) = site.curl(
        "/account/mfa/confirm",
        &[
            "-H",
            &session_header,
            "--data",
            &format!("csrf={token}&code={}", totp_code(&secret, 0)),
        ],
        "127.0.0.1",
    )?;
    assert_eq!(status, 401);
    let (_, _, account) = site.curl("/", &["-H", &session_header], "127.0.0.1")?;
    assert!(account.contains("Set-up started but not finished"), "{account}");

    // Brute force on the login form is banned like IMAP: after 3 failures the address is refused.
    let mut kept_open = None;
    for attempt in 1..=3 {
        if attempt == 3 {
            kept_open = Some(open_login_form(&site).await?);
        }
        let (status, head, _) = curl_post_login(&site, "127.0.0.3", "alice@example.test", "guess")?;
        if attempt < 3 {
            assert_eq!(status, 401);
        } else {
            // The failure that bans says so and closes the connection it came on.
            assert_eq!(status, 403);
            assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
        }
    }
    assert!(
        site.curl("/", &[], "127.0.0.3").is_err(),
        "the guessing address is banned"
    );
    assert!(site.curl("/", &[], "127.0.0.1").is_ok(), "others are not");
    // The connection opened before the ban gets no further login, not even with the password.
    let (mut kept, host_header, kept_cookie, kept_token) = kept_open.ok_or("no kept connection")?;
    let body = format!(
        "username=alice%40example.test&password={}&csrf={kept_token}",
        common::TEST_PASSWORD.replace(' ', "+")
    );
    let request = format!(
        "POST /login HTTP/1.1\r\nHost: {host_header}\r\nCookie: __Host-sealmail-login={kept_cookie}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (head, _) = http_exchange(&mut kept, &request).await?;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(
        set_cookie(&head, SESSION).is_none(),
        "no session for a banned address: {head}"
    );
    let (code, out, _) = common::admin(site.dir.path(), &site.config, &["security", "bans", "list"])?;
    assert_eq!(code, 0);
    assert!(out.contains("127.0.0.3"), "{out}");
    // The owner of the guessed account sees the ban among the account's events.
    let mut events = String::new();
    for _ in 0..50 {
        let (_, _, account) = site.curl("/", &["-H", &session_header], "127.0.0.1")?;
        events = account
            .split("id=\"events\"")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        if events.contains("ban_added") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        events.contains("ban_added") && events.contains("127.0.0.3"),
        "{events}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_console_answers_only_on_the_admin_listener() -> TestResult {
    let site = Site::start_with("", true).await?;
    let (status, head, _) = curl_post_login(&site, "127.0.0.1", "admin@example.test", common::TEST_PASSWORD)?;
    assert_eq!(status, 200);
    let session = format!(
        "Cookie: {SESSION}={}",
        set_cookie(&head, SESSION).ok_or("no session")?
    );
    // The account page is everywhere; the console only on the admin listener.
    let (status, _, body) = site.curl("/", &["-H", &session], "127.0.0.1")?;
    assert_eq!(status, 200);
    assert!(body.contains("admin@example.test"));
    let (status, _, body) = site.curl("/admin/users", &["-H", &session], "127.0.0.1")?;
    assert_eq!((status, body.as_str()), (404, ""));
    let admin_url = format!("https://{HOST}:{}/admin/users", site.admin_https.port());
    let resolve = format!("{HOST}:{}:127.0.0.5", site.admin_https.port());
    let (status, _, body) = curl(
        &admin_url,
        site.admin_https.port(),
        &site.ca,
        &["--resolve", &resolve, "-H", &session],
        "127.0.0.1",
    )?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("alice@example.test"), "{body}");

    // A login older than 10 minutes may still retry the queue, but not hand out credentials.
    let token = hidden(&body, "csrf").ok_or("no csrf field")?;
    let aged = ctx(
        Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); db.execute('UPDATE web_sessions SET created_at = created_at - 3600'); db.commit()",
            ])
            .arg(site.dir.path().join("data/sealmail.db"))
            .status(),
        "python3 sqlite3",
    )?;
    assert!(aged.success());
    let add_url = format!("https://{HOST}:{}/admin/users/add", site.admin_https.port());
    let (status, _, body) = curl(
        &add_url,
        site.admin_https.port(),
        &site.ca,
        &[
            "--resolve",
            &resolve,
            "-H",
            &session,
            "--data",
            &format!("csrf={token}&address=mallory%40example.test&admin=on"),
        ],
        "127.0.0.1",
    )?;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("log in again"), "{body}");
    let (_, out, _) = common::admin(site.dir.path(), &site.config, &["user", "list"])?;
    assert!(!out.contains("mallory"), "{out}");
    let retry_url = format!("https://{HOST}:{}/admin/queue/retry", site.admin_https.port());
    let (status, _, body) = curl(
        &retry_url,
        site.admin_https.port(),
        &site.ca,
        &[
            "--resolve",
            &resolve,
            "-H",
            &session,
            "--data",
            &format!("csrf={token}&id=12345"),
        ],
        "127.0.0.1",
    )?;
    assert_eq!(
        status, 400,
        "an operational change goes through (to the queue's own answer): {body}"
    );
    assert!(body.contains("is not queued"), "{body}");
    Ok(())
}
