//! A real browser for the web pages' tests: headless Chromium driven over WebDriver
//! (chromedriver on loopback, fantoccini as the client). Owns the chromedriver process, the
//! browser profile in a temporary folder, and the screenshots under `target/web-screenshots/`.
//!
//! Chromium reaches nothing but loopback: background networking, component updates and sync
//! are off, and every host name it is not told to map fails to resolve.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use fantoccini::{Client, ClientBuilder, Locator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long an element may take to appear (a page still loading, a form being answered).
const ELEMENT_WAIT: Duration = Duration::from_secs(10);
/// How long chromedriver may take to answer its status request after it started.
const DRIVER_START: Duration = Duration::from_secs(20);

/// chromedriver: `SEALMAIL_CHROMEDRIVER`, else the first on PATH, else where Debian's
/// `chromium-driver` puts it.
pub fn chromedriver_program() -> PathBuf {
    if let Some(path) = std::env::var_os("SEALMAIL_CHROMEDRIVER") {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("chromedriver"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"))
}

/// One cookie as the browser keeps it, with the flags the tests check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserCookie {
    pub name: String,
    pub value: String,
    pub http_only: bool,
    pub secure: bool,
    /// `Strict`, `Lax` or `None` when the server set one.
    pub same_site: Option<String>,
    pub path: Option<String>,
    pub domain: Option<String>,
}

/// A headless Chromium session and the chromedriver serving it. [`Browser::close`] ends both
/// in order; dropping it kills chromedriver's whole process group, Chromium included.
pub struct Browser {
    client: Client,
    driver: Option<tokio::process::Child>,
    /// Chromium's profile and chromedriver's log; removed after the processes are gone.
    dir: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium that resolves no host names (tests load
    /// `http://127.0.0.1:PORT/` and the like).
    pub async fn start() -> anyhow::Result<Browser> {
        Browser::start_resolving(&[]).await
    }

    /// As [`Browser::start`], with `names` resolving to the given addresses, for servers that
    /// route by Host name: `https://mail.example.test:PORT/` then reaches `PORT` on the address.
    pub async fn start_resolving(names: &[(&str, IpAddr)]) -> anyhow::Result<Browser> {
        let dir = tempfile::tempdir().context("browser tempdir")?;
        let profile = dir.path().join("profile");
        std::fs::create_dir(&profile).context("browser profile folder")?;
        let log_path = dir.path().join("chromedriver.log");
        let port = crate::free_port();
        let program = chromedriver_program();
        let log = std::fs::File::create(&log_path).context("chromedriver log")?;
        let driver = tokio::process::Command::new(&program)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log_path.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("chromedriver log")?)
            .stderr(log)
            // Its own process group, so that one signal also ends the Chromium it started.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {} (apt-get install chromium-driver)", program.display()))?;
        // Until the session exists, this kills chromedriver on every way out.
        let mut driver = DriverGuard(Some(driver));
        let driver_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Err(e) = wait_until_ready(port).await {
            bail!("{e:#}; chromedriver's log: {}", driver_log());
        }
        let capabilities = capabilities(&profile, names)?;
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .map_err(|e| anyhow!("WebDriver session: {e}; chromedriver's log: {}", driver_log()))?;
        Ok(Browser {
            client,
            driver: driver.0.take(),
            dir,
        })
    }

    /// The WebDriver client, for what the helpers below do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Loads `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.client()
            .goto(url)
            .await
            .with_context(|| format!("goto {url}"))
    }

    /// Adds a virtual authenticator (WebDriver's WebAuthn extension): a CTAP2 USB security key
    /// that is always touched and verifies the user, so the page's WebAuthn calls succeed
    /// without a person. Its id.
    pub async fn add_virtual_authenticator(&self) -> anyhow::Result<String> {
        let answer = self
            .client()
            .issue_cmd(WebAuthnCommand::AddAuthenticator)
            .await
            .context("add a virtual authenticator")?;
        answer
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no authenticator id in {answer}"))
    }

    /// The credentials the virtual authenticator `id` holds, with their signature counters.
    pub async fn virtual_credentials(&self, id: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let answer = self
            .client()
            .issue_cmd(WebAuthnCommand::Credentials(id.to_string()))
            .await
            .context("read the virtual authenticator's credentials")?;
        Ok(answer.as_array().cloned().unwrap_or_default())
    }

    /// Removes the virtual authenticator `id` (the key is unplugged).
    pub async fn remove_virtual_authenticator(&self, id: &str) -> anyhow::Result<()> {
        self.client()
            .issue_cmd(WebAuthnCommand::Remove(id.to_string()))
            .await
            .context("remove the virtual authenticator")?;
        Ok(())
    }

    /// The URL of the page shown now (after redirects).
    pub async fn current_url(&self) -> anyhow::Result<String> {
        Ok(self
            .client()
            .current_url()
            .await
            .context("current URL")?
            .to_string())
    }

    /// Replaces the text of the field matching `css` with `text`, as typed keys.
    pub async fn fill(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let field = self.find(css).await?;
        field.clear().await.with_context(|| format!("clear {css}"))?;
        field
            .send_keys(text)
            .await
            .with_context(|| format!("type into {css}"))
    }

    /// Clicks the element matching `css` (a submit button waits for the next page to load).
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        self.find(css)
            .await?
            .click()
            .await
            .with_context(|| format!("click {css}"))
    }

    /// The rendered text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        self.find(css)
            .await?
            .text()
            .await
            .with_context(|| format!("text of {css}"))
    }

    /// The page's HTML as the browser has it now (scripts' changes included).
    pub async fn page_source(&self) -> anyhow::Result<String> {
        self.client().source().await.context("page source")
    }

    /// Every cookie the browser holds for the page shown now, HttpOnly ones included.
    pub async fn cookies(&self) -> anyhow::Result<Vec<BrowserCookie>> {
        let cookies = self.client().get_all_cookies().await.context("cookies")?;
        Ok(cookies
            .into_iter()
            .map(|c| BrowserCookie {
                name: c.name().to_string(),
                value: c.value().to_string(),
                http_only: c.http_only().unwrap_or(false),
                secure: c.secure().unwrap_or(false),
                same_site: c.same_site().map(|s| s.to_string()),
                path: c.path().map(str::to_string),
                domain: c.domain().map(str::to_string),
            })
            .collect())
    }

    /// Saves what the window shows as `target/web-screenshots/NAME.png` (for people to look
    /// at) and returns its path.
    pub async fn screenshot(&self, name: &str) -> anyhow::Result<PathBuf> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!("screenshot name {name:?}: letters, digits, - and _ only");
        }
        let png = self.client().screenshot().await.context("screenshot")?;
        let folder = target_dir()?.join("web-screenshots");
        std::fs::create_dir_all(&folder).with_context(|| format!("create {}", folder.display()))?;
        let path = folder.join(format!("{name}.png"));
        std::fs::write(&path, png).with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    }

    /// Ends the WebDriver session (Chromium exits), then chromedriver.
    pub async fn close(mut self) -> anyhow::Result<()> {
        // A clone is a handle to the same session; the one left in `self` is dropped after.
        let ended = self
            .client
            .clone()
            .close()
            .await
            .context("end the WebDriver session");
        if let Some(mut driver) = self.driver.take() {
            kill_group(&driver);
            // Reaped here so no zombie is left behind.
            let _ = tokio::time::timeout(Duration::from_secs(10), driver.wait()).await;
        }
        ended
    }

    /// chromedriver's log so far, for error messages.
    pub fn driver_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default()
    }

    async fn find(&self, css: &str) -> anyhow::Result<fantoccini::elements::Element> {
        self.client()
            .wait()
            .at_most(ELEMENT_WAIT)
            .for_element(Locator::Css(css))
            .await
            .with_context(|| format!("no element {css} within {ELEMENT_WAIT:?}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The session cannot be ended without awaiting; the signal ends Chromium with it.
        if let Some(driver) = self.driver.take() {
            drop(DriverGuard(Some(driver)));
        }
    }
}

/// Kills chromedriver's process group when dropped.
struct DriverGuard(Option<tokio::process::Child>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        if let Some(mut driver) = self.0.take() {
            kill_group(&driver);
            let _ = driver.start_kill();
            // Reaped now when it is already gone; tokio reaps it later otherwise.
            let _ = driver.try_wait();
        }
    }
}

/// SIGKILL to chromedriver's process group: chromedriver and every Chromium process.
fn kill_group(driver: &tokio::process::Child) {
    if let Some(pid) = driver.id().and_then(|id| i32::try_from(id).ok()) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Headless Chromium that trusts the tests' self-signed certificates and talks to nothing
/// beyond what the test serves.
fn capabilities(profile: &Path, names: &[(&str, IpAddr)]) -> anyhow::Result<fantoccini::wd::Capabilities> {
    let mut rules: Vec<String> = names
        .iter()
        .map(|(name, ip)| match ip {
            IpAddr::V4(v4) => format!("MAP {name} {v4}"),
            IpAddr::V6(v6) => format!("MAP {name} [{v6}]"),
        })
        .collect();
    // Any other name fails to resolve; address literals (127.0.0.1) are not looked up at all.
    rules.push("MAP * ~NOTFOUND".to_string());
    rules.push("EXCLUDE localhost".to_string());
    let args = vec![
        "--headless=new".to_string(),
        // Tests run as root, where Chromium's sandbox refuses to start.
        "--no-sandbox".to_string(),
        "--disable-gpu".to_string(),
        // Containers give /dev/shm a few MiB; Chromium then crashes on larger pages.
        "--disable-dev-shm-usage".to_string(),
        format!("--user-data-dir={}", profile.display()),
        "--window-size=1280,900".to_string(),
        "--disable-background-networking".to_string(),
        "--disable-component-update".to_string(),
        "--disable-sync".to_string(),
        "--disable-default-apps".to_string(),
        "--disable-extensions".to_string(),
        "--no-first-run".to_string(),
        "--no-default-browser-check".to_string(),
        "--lang=en-US".to_string(),
        format!("--host-resolver-rules={}", rules.join(", ")),
    ];
    let mut chrome_options = serde_json::json!({ "args": args });
    if let Some(binary) = std::env::var_os("SEALMAIL_CHROMIUM") {
        let binary = binary
            .into_string()
            .map_err(|b| anyhow!("SEALMAIL_CHROMIUM {b:?}: not UTF-8"))?;
        chrome_options["binary"] = serde_json::Value::String(binary);
    }
    let capabilities = serde_json::json!({
        "browserName": "chrome",
        "acceptInsecureCerts": true,
        "goog:chromeOptions": chrome_options,
    });
    match capabilities {
        serde_json::Value::Object(map) => Ok(map),
        _ => bail!("capabilities are not a JSON object"),
    }
}

/// Waits until chromedriver on `port` says it is ready for a session.
async fn wait_until_ready(port: u16) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last = String::from("no answer");
    while start.elapsed() < DRIVER_START {
        match ready(port).await {
            Ok(true) => return Ok(()),
            Ok(false) => last = "not ready".to_string(),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("chromedriver on port {port} not ready after {DRIVER_START:?}: {last}")
}

/// Whether GET /status says `"ready": true`. chromedriver keeps the connection open despite
/// `Connection: close`, so the answer is read only until it says so.
async fn ready(port: u16) -> anyhow::Result<bool> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
            Ok(read) => read?,
            Err(_) => 0,
        };
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).replace(char::is_whitespace, "");
        if text.contains("\"ready\":true") {
            return Ok(true);
        }
        if n == 0 || answer.len() > 65_536 {
            return Ok(false);
        }
    }
}

/// Cargo's target folder: `CARGO_TARGET_DIR` when absolute (a relative one is relative to
/// where cargo ran, not to the test), else the `target` folder above the test binary, else the
/// folder above the binary's profile folder (`DIR/debug/deps/TEST`).
pub fn target_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from)
        && dir.is_absolute()
    {
        return Ok(dir);
    }
    let exe = std::env::current_exe().context("current exe")?;
    if let Some(target) = exe
        .ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == "target"))
    {
        return Ok(target.to_path_buf());
    }
    let bin_dir = exe.parent().context("test binary without a folder")?;
    let profile = if bin_dir.file_name().is_some_and(|n| n == "deps") {
        bin_dir.parent()
    } else {
        Some(bin_dir)
    };
    profile
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("no target folder above the test binary")
}

/// Commands of WebDriver's WebAuthn extension (W3C WebAuthn Level 2, 11.3), which fantoccini
/// does not wrap.
#[derive(Debug)]
enum WebAuthnCommand {
    AddAuthenticator,
    Credentials(String),
    Remove(String),
}

impl fantoccini::wd::WebDriverCompatibleCommand for WebAuthnCommand {
    fn endpoint(&self, base_url: &url::Url, session_id: Option<&str>) -> Result<url::Url, url::ParseError> {
        let session = session_id.unwrap_or_default();
        let path = match self {
            WebAuthnCommand::AddAuthenticator => format!("session/{session}/webauthn/authenticator"),
            WebAuthnCommand::Credentials(id) => {
                format!("session/{session}/webauthn/authenticator/{id}/credentials")
            }
            WebAuthnCommand::Remove(id) => format!("session/{session}/webauthn/authenticator/{id}"),
        };
        base_url.join(&path)
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        match self {
            WebAuthnCommand::AddAuthenticator => (
                http::Method::POST,
                Some(
                    serde_json::json!({
                        "protocol": "ctap2",
                        "transport": "usb",
                        "hasResidentKey": true,
                        "hasUserVerification": true,
                        "isUserConsenting": true,
                        "isUserVerified": true,
                    })
                    .to_string(),
                ),
            ),
            WebAuthnCommand::Credentials(_) => (http::Method::GET, None),
            WebAuthnCommand::Remove(_) => (http::Method::DELETE, None),
        }
    }
}
