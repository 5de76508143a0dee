//! Debian's `pebble` (an ACME test server, RFC 8555) on loopback for the ACME tests: its own API
//! certificate from a CA made here, its DNS through a [`DnsServer`] of the test, and the
//! validation ports the test chooses. Started with no random sleeps and no rejected nonces.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::dns::DnsServer;
use crate::{TestResult, ctx};

/// Pebble's program, found on PATH (Debian's package installs it there).
pub fn program() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("pebble"))
        .find(|candidate| candidate.is_file())
}

/// A running pebble; killed when dropped.
pub struct Pebble {
    _child: tokio::process::Child,
    pub dir: tempfile::TempDir,
    pub acme_port: u16,
    pub mgmt_port: u16,
    /// Where pebble validates HTTP-01 and TLS-ALPN-01 challenges (on the name's address).
    pub http_port: u16,
    pub tls_port: u16,
    /// The CA that signed pebble's own API certificate (what an ACME client must trust).
    pub api_ca: PathBuf,
    /// Pebble's resolver: names the test adds here point pebble at the server under test.
    pub dns: DnsServer,
}

impl Pebble {
    /// Starts pebble with its validation ports; `names` resolve to 127.0.0.1. `None` (with a
    /// message) when pebble is not installed.
    pub async fn start(names: &[&str], http_port: u16, tls_port: u16) -> TestResult<Option<Pebble>> {
        let Some(program) = program() else {
            eprintln!(
                "SKIPPED: pebble is not installed (apt-get install pebble); the ACME tests did not run"
            );
            return Ok(None);
        };
        let dir = ctx(tempfile::tempdir(), "tempdir")?;
        let ca_key = ctx(rcgen::KeyPair::generate(), "key")?;
        let mut ca_params = ctx(rcgen::CertificateParams::new(Vec::<String>::new()), "params")?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pebble API test CA");
        let ca = ctx(ca_params.self_signed(&ca_key), "CA")?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = ctx(rcgen::KeyPair::generate(), "key")?;
        let leaf_params = ctx(
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]),
            "params",
        )?;
        let leaf = ctx(leaf_params.signed_by(&leaf_key, &issuer), "leaf")?;
        let api_ca = dir.path().join("api-ca.pem");
        let (cert, key) = (dir.path().join("api-cert.pem"), dir.path().join("api-key.pem"));
        ctx(std::fs::write(&api_ca, ca.pem()), "write")?;
        ctx(std::fs::write(&cert, leaf.pem()), "write")?;
        ctx(std::fs::write(&key, leaf_key.serialize_pem()), "write")?;
        let (acme_port, mgmt_port) = (crate::free_port(), crate::free_port());
        let config = format!(
            "{{\"pebble\": {{\"listenAddress\": \"127.0.0.1:{acme_port}\", \"managementListenAddress\": \"127.0.0.1:{mgmt_port}\", \
             \"certificate\": {:?}, \"privateKey\": {:?}, \"httpPort\": {http_port}, \"tlsPort\": {tls_port}, \
             \"ocspResponderURL\": \"\", \"externalAccountBindingRequired\": false}}}}",
            cert.display().to_string(),
            key.display().to_string()
        );
        let config_path = dir.path().join("pebble.json");
        ctx(std::fs::write(&config_path, config), "write config")?;
        let dns = DnsServer::start().await?;
        for name in names {
            dns.add_a(name, Ipv4Addr::LOCALHOST);
        }
        let log = ctx(std::fs::File::create(dir.path().join("pebble.log")), "log")?;
        let child = ctx(
            tokio::process::Command::new(&program)
                .arg("-config")
                .arg(&config_path)
                .arg("-dnsserver")
                .arg(dns.addr().to_string())
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0")
                .stdin(Stdio::null())
                .stdout(ctx(log.try_clone(), "log")?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn(),
            "start pebble",
        )?;
        let pebble = Pebble {
            _child: child,
            dir,
            acme_port,
            mgmt_port,
            http_port,
            tls_port,
            api_ca,
            dns,
        };
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", acme_port)).await.is_ok()
                && TcpStream::connect(("127.0.0.1", mgmt_port)).await.is_ok()
            {
                return Ok(Some(pebble));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("pebble did not start: {}", pebble.log()))
    }

    /// The ACME directory URL.
    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// Pebble's issuing root, from its management port.
    pub async fn root(&self) -> TestResult<CertificateDer<'static>> {
        let body = self.management_get("/roots/0").await?;
        ctx(CertificateDer::from_pem_slice(body.as_bytes()), "root PEM")
    }

    /// A GET on the management port.
    pub async fn management_get(&self, path: &str) -> TestResult<String> {
        self.api_get(self.mgmt_port, path).await
    }

    /// A GET on one of pebble's ports (HTTP/1.0 over TLS, trusting only the API CA); the body
    /// of a 200 answer.
    pub async fn api_get(&self, port: u16, path: &str) -> TestResult<String> {
        let ca = ctx(CertificateDer::from_pem_file(&self.api_ca), "API CA")?;
        let mut roots = rustls::RootCertStore::empty();
        ctx(roots.add(ca), "root")?;
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(sealmail_tls::restricted_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = ctx(TcpStream::connect(("127.0.0.1", port)).await, "connect")?;
        let name = ctx(ServerName::try_from("127.0.0.1"), "name")?;
        let mut tls = ctx(connector.connect(name, tcp).await, "TLS")?;
        ctx(
            tls.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
                .await,
            "write",
        )?;
        let mut response = Vec::new();
        let _ = tls.read_to_end(&mut response).await;
        let text = ctx(String::from_utf8(response), "utf-8")?;
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP header end")?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            return Err(format!("GET {path}: {head}"));
        }
        Ok(body.to_string())
    }
}
