//! Helpers for sealmail's tests and benchmarks (never linked into the server): TLS clients that trust a given
//! certificate, hand-made ClientHello records for refused protocol versions and suites, a
//! process wrapper that runs the real `sealmail` binary, line-based protocol clients, and a
//! local DNS server ([`dns`]), and headless Chromium over WebDriver ([`browser`]).
//! Test code may fail loudly, so helpers return `Result<_, String>` with a readable reason.

pub mod browser;
pub mod dns;
#[cfg(feature = "fakes")]
pub mod fakes;
pub mod pebble;
pub mod pki;
pub mod postgres;
pub mod suite;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub type TestResult<T = ()> = Result<T, String>;

/// The shared third-party test data: `../shared/testdata` beside the project, or wherever
/// SEALMAIL_TESTDATA points.
pub fn testdata() -> String {
    std::env::var("SEALMAIL_TESTDATA")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/testdata").to_string())
}

/// Turns any error into the test's error string, with context.
pub fn ctx<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> TestResult<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// A rustls client that trusts exactly the certificates in `pem_files`, for `versions`, with
/// `suites` (all of the provider's when empty).
pub fn client_config(
    pem_files: &[&Path],
    versions: &[&'static rustls::SupportedProtocolVersion],
    suites: &[rustls::SupportedCipherSuite],
) -> TestResult<Arc<ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for file in pem_files {
        for cert in CertificateDer::pem_file_iter(file).map_err(|e| format!("{}: {e}", file.display()))? {
            let cert = cert.map_err(|e| format!("{}: {e}", file.display()))?;
            roots.add(cert).map_err(|e| format!("{}: {e}", file.display()))?;
        }
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if !suites.is_empty() {
        provider.cipher_suites = suites.to_vec();
    }
    let config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The DER bytes of the first certificate in a PEM file.
pub fn pem_certificate_der(path: &Path) -> TestResult<Vec<u8>> {
    let cert = CertificateDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(cert.as_ref().to_vec())
}

/// Accepts exactly the pinned certificates (or, with `None`, any certificate: only for reading
/// which certificate a server serves), with real handshake signature checks. Self-signed
/// certificates marked as a CA, like the reference peer's, are refused by WebPKI as server
/// certificates; pinning checks them byte for byte instead.
#[derive(Debug)]
struct PinnedCertificates {
    certs: Option<Vec<CertificateDer<'static>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCertificates {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match &self.certs {
            Some(certs) if !certs.iter().any(|c| c.as_ref() == end_entity.as_ref()) => {
                Err(rustls::Error::General("certificate is not the pinned one".into()))
            }
            _ => Ok(rustls::client::danger::ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn pinning_config(certs: Option<Vec<CertificateDer<'static>>>) -> TestResult<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCertificates { certs, provider }))
        .with_no_client_auth())
}

/// A client that trusts exactly the certificates in a PEM file, pinned byte for byte, and
/// never resumes sessions (every connection makes a full handshake; for benchmarks).
pub fn pinned_client_config(pem_file: &Path) -> TestResult<Arc<ClientConfig>> {
    let certs = CertificateDer::pem_file_iter(pem_file)
        .map_err(|e| format!("{}: {e}", pem_file.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", pem_file.display()))?;
    let mut config = pinning_config(Some(certs))?;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The leaf certificate (DER) a server presents for `server_name` on an implicit-TLS port,
/// read without verifying it; tests compare it byte for byte instead.
pub async fn served_certificate(addr: SocketAddr, server_name: &str) -> TestResult<Vec<u8>> {
    let tls = tls_connect(addr, Arc::new(pinning_config(None)?), server_name).await?;
    let certs = tls.get_ref().1.peer_certificates().ok_or("no certificate")?;
    Ok(certs.first().ok_or("empty chain")?.as_ref().to_vec())
}

/// A TCP connection to `addr` from the loopback address `source` (e.g. 127.0.0.2), so tests
/// can play distinct clients.
pub async fn tcp_from(source: [u8; 4], addr: SocketAddr) -> TestResult<TcpStream> {
    let socket = ctx(tokio::net::TcpSocket::new_v4(), "socket")?;
    ctx(socket.bind(SocketAddr::from((source, 0))), "bind")?;
    ctx(socket.connect(addr).await, "connect")
}

/// Connects with TLS from the first byte and returns the stream after the handshake.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    server_name: &str,
) -> TestResult<TlsStream<TcpStream>> {
    let tcp = ctx(TcpStream::connect(addr).await, "connect")?;
    tls_upgrade(tcp, config, server_name).await
}

/// Runs a TLS client handshake over an existing connection.
pub async fn tls_upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    config: Arc<ClientConfig>,
    server_name: &str,
) -> TestResult<TlsStream<S>> {
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
    let connector = TlsConnector::from(config);
    ctx(
        tokio::time::timeout(Duration::from_secs(10), connector.connect(name, stream))
            .await
            .map_err(|_| "TLS handshake timed out".to_string())?,
        "TLS handshake",
    )
}

/// Raw ClientHellos for TLS 1.0 and 1.1, which rustls cannot send: `sealmail check`'s.
pub use sealmail_check::tls::{TLS1_0, TLS1_1, TLS1_2, client_hello};

/// What a server sent back to a ClientHello.
#[derive(Debug, PartialEq, Eq)]
pub enum HelloAnswer {
    ServerHello,
    /// A TLS alert with its description code (70 = protocol_version, 40 = handshake_failure).
    Alert(u8),
    Closed,
    Other(Vec<u8>),
}

/// Sends a ClientHello record and classifies the first record that comes back.
pub async fn send_client_hello<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    hello: &[u8],
) -> TestResult<HelloAnswer> {
    ctx(stream.write_all(hello).await, "send ClientHello")?;
    let mut header = [0u8; 5];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut header)).await;
    match read {
        Err(_) => return Err("no answer to ClientHello within 10 s".into()),
        Ok(Err(_)) => return Ok(HelloAnswer::Closed),
        Ok(Ok(_)) => {}
    }
    let len = u16::from_be_bytes([header[3], header[4]]) as usize;
    let mut body = vec![0u8; len.min(16 * 1024)];
    if tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut body))
        .await
        .is_err()
    {
        return Err("truncated record".into());
    }
    Ok(match (header[0], body.first()) {
        (0x16, Some(2)) => HelloAnswer::ServerHello,
        (0x15, _) if body.len() >= 2 => HelloAnswer::Alert(body[1]),
        _ => HelloAnswer::Other(header.iter().chain(body.iter()).copied().collect()),
    })
}

/// A line-oriented client for SMTP and IMAP dialogs.
pub struct LineClient<S> {
    stream: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> LineClient<S> {
    pub fn new(stream: S) -> Self {
        LineClient {
            stream: BufReader::new(stream),
        }
    }

    pub fn into_inner(self) -> S {
        self.stream.into_inner()
    }

    pub async fn send(&mut self, text: &str) -> TestResult {
        ctx(self.stream.get_mut().write_all(text.as_bytes()).await, "send")?;
        ctx(self.stream.get_mut().flush().await, "flush")
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) -> TestResult {
        ctx(self.stream.get_mut().write_all(bytes).await, "send")?;
        ctx(self.stream.get_mut().flush().await, "flush")
    }

    /// Sends one command line and checks that the (SMTP) reply starts with `code`; returns it.
    pub async fn command(&mut self, line: &str, code: &str) -> TestResult<String> {
        self.send(&format!("{line}\r\n")).await?;
        let reply = self.smtp_reply().await?;
        if !reply.starts_with(code) {
            return Err(format!("{line:?}: expected {code}, got {reply:?}"));
        }
        Ok(reply)
    }

    /// Runs `command` for each (line, expected code) in turn.
    pub async fn dialog<L: AsRef<str>>(&mut self, steps: &[(L, &str)]) -> TestResult {
        for (line, code) in steps {
            self.command(line.as_ref(), code).await?;
        }
        Ok(())
    }

    /// One line without its CRLF; an error on EOF or after 10 s.
    pub async fn line(&mut self) -> TestResult<String> {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read_line(&mut line))
            .await
            .map_err(|_| "no line within 10 s".to_string())?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed".into());
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    /// Sends `TAG COMMAND` (IMAP) and returns every response line up to and including the
    /// tagged one (literals in responses come back as the lines they contain).
    pub async fn imap(&mut self, tag: &str, command: &str) -> TestResult<Vec<String>> {
        self.send(&format!("{tag} {command}\r\n")).await?;
        self.imap_until(tag).await
    }

    /// Response lines up to and including the one tagged `tag`.
    pub async fn imap_until(&mut self, tag: &str) -> TestResult<Vec<String>> {
        let prefix = format!("{tag} ");
        let mut lines = Vec::new();
        loop {
            let line = self.line().await?;
            let done = line.starts_with(&prefix);
            lines.push(line);
            if done {
                return Ok(lines);
            }
        }
    }

    /// A whole SMTP reply (all its lines), joined by '\n'.
    pub async fn smtp_reply(&mut self) -> TestResult<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await?;
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return Ok(lines.join("\n"));
            }
        }
    }

    /// True when the server closed the connection (EOF) within 10 s.
    pub async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 256];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_for_port(addr: SocketAddr, limit: Duration) -> TestResult {
    let start = Instant::now();
    while start.elapsed() < limit {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("nothing listens on {addr} after {limit:?}"))
}

/// Ports tests listen on are taken from 10000..32000, below Linux's ephemeral range
/// (32768..60999), so that no outgoing connection (delivery, clients) can be given one of them
/// between the check and the server's bind.
fn random_state() -> u64 {
    let seed = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
    seed.wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        ^ (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0))
}

fn next_random(x: &mut u64) -> u64 {
    *x = x
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *x >> 33
}

/// Ports this process handed out already: a port is free until its test binds it, so two
/// calls in a row must never return the same one (they did, and a test's two listeners
/// collided).
static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// A loopback port that is free now, outside the ephemeral range, and not handed out before
/// by this process.
pub fn free_port() -> u16 {
    let mut x = random_state();
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = 10_000 + (next_random(&mut x) % 22_000) as u16;
        if !handed_out.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
}

/// A port offset under which the quickstart ports (2080..=2993 plus offset) are free now.
pub fn free_port_offset() -> u16 {
    let mut x = random_state();
    loop {
        // Quickstart ports plus the offset stay below 32000.
        let offset = 8_000 + (next_random(&mut x) % 20_000) as u16;
        let free = [2525u16, 2465, 2587, 2143, 2993, 2443, 2080]
            .iter()
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", p + offset)).is_ok());
        if free {
            return offset;
        }
    }
}

/// A running `sealmail` process; killed when dropped. Standard output and error go to files
/// in `log_dir` so tests can read what it printed.
pub struct Sealmail {
    child: Option<Child>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Sealmail {
    pub fn spawn(binary: &Path, args: &[&str], cwd: &Path, log_dir: &Path) -> TestResult<Sealmail> {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stdout = log_dir.join(format!("sealmail-{n}.out"));
        let stderr = log_dir.join(format!("sealmail-{n}.err"));
        let child = Command::new(binary)
            .args(args)
            .current_dir(cwd)
            .env_remove("SEALMAIL_CONFIG")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(ctx(std::fs::File::create(&stdout), "stdout file")?)
            .stderr(ctx(std::fs::File::create(&stderr), "stderr file")?)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", binary.display()))?;
        Ok(Sealmail {
            child: Some(child),
            stdout,
            stderr,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) -> TestResult {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).map_err(|e| e.to_string())
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn errors(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until the process has exited, returning its exit code (None when killed by a signal).
    pub async fn wait_exit(&mut self, limit: Duration) -> TestResult<Option<i32>> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = ctx(child.try_wait(), "wait")?
            {
                self.child = None;
                return Ok(status.code());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("sealmail still running after {limit:?}"))
    }

    /// Waits until a line of standard error contains `needle`.
    pub async fn wait_for_log(&self, needle: &str, limit: Duration) -> TestResult {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.errors().contains(needle) {
                return Ok(());
            }
            if self.exited() {
                return Err(format!(
                    "{needle:?} not logged: the process exited; stderr:\n{}",
                    self.errors()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "{needle:?} not logged within {limit:?}; stderr:\n{}",
            self.errors()
        ))
    }

    /// Whether the process has ended (a zombie waiting to be reaped, or gone); Linux /proc.
    fn exited(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid())) {
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state == "Z" || state == "X"),
            Err(_) => true,
        }
    }
}

impl Drop for Sealmail {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
