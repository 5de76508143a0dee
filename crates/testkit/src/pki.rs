//! A certificate authority for tests, and a small HTTPS server (MTA-STS policies): what a real
//! deployment gets from a public CA and a web server, on loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::{TestResult, ctx};

pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
}

/// A certificate issued by a [`TestCa`], written as PEM files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new(name: &str) -> TestResult<TestCa> {
        let mut params = ctx(CertificateParams::new(Vec::<String>::new()), "CA params")?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = ctx(KeyPair::generate(), "CA key")?;
        let cert = ctx(params.self_signed(&key), "CA certificate")?;
        Ok(TestCa {
            issuer: Issuer::new(params, key),
            pem: cert.pem(),
        })
    }

    /// Writes the CA certificate to `path`.
    pub fn write(&self, path: &Path) -> TestResult {
        ctx(std::fs::write(path, &self.pem), "write CA")
    }

    /// A certificate for `names`, written to `DIR/STEM.pem` and `DIR/STEM.key` (0600).
    pub fn issue(&self, names: &[&str], dir: &Path, stem: &str) -> TestResult<Issued> {
        self.issue_with(names, dir, stem, |_| {})
    }

    /// Like [`TestCa::issue`], valid only during 2020: an expired certificate.
    pub fn issue_expired(&self, names: &[&str], dir: &Path, stem: &str) -> TestResult<Issued> {
        self.issue_with(names, dir, stem, |params| {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 12, 31);
        })
    }

    fn issue_with(
        &self,
        names: &[&str],
        dir: &Path,
        stem: &str,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> TestResult<Issued> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = ctx(CertificateParams::new(names), "params")?;
        adjust(&mut params);
        let key = ctx(KeyPair::generate(), "key")?;
        let cert = ctx(params.signed_by(&key, &self.issuer), "sign")?;
        let issued = Issued {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        };
        ctx(std::fs::create_dir_all(dir), "mkdir")?;
        ctx(std::fs::write(&issued.cert, cert.pem()), "write cert")?;
        ctx(std::fs::write(&issued.key, key.serialize_pem()), "write key")?;
        use std::os::unix::fs::PermissionsExt;
        ctx(
            std::fs::set_permissions(&issued.key, std::fs::Permissions::from_mode(0o600)),
            "chmod key",
        )?;
        Ok(issued)
    }
}

/// The server configuration every sealmail listener uses (`sealmail_tls::server_config`),
/// serving a certificate for `name` from a new test CA (files in `dir`), and a client that
/// trusts exactly that CA: what a session test over `tokio::io::duplex` needs for real TLS.
pub fn tls_pair(dir: &Path, name: &str) -> TestResult<(Arc<ServerConfig>, Arc<rustls::ClientConfig>)> {
    let ca = TestCa::new("sealmail test CA")?;
    let issued = ca.issue(&[name], dir, "server")?;
    let ca_file = dir.join("ca.pem");
    ca.write(&ca_file)?;
    let files = sealmail_config::CertificateFiles {
        cert: issued.cert,
        key: issued.key,
    };
    let set = ctx(sealmail_tls::CertSet::load(&[files]), "load certificate")?;
    let server = ctx(
        sealmail_tls::server_config(sealmail_tls::CertResolver::new(set)),
        "server config",
    )?;
    let client = crate::client_config(
        &[&ca_file],
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        &[],
    )?;
    Ok((server, client))
}

/// A POST's path and body.
pub type Post = (String, Vec<u8>);

/// An HTTPS server answering every request with `200 text/plain` and the current body, the
/// way `mta-sts.DOMAIN` serves `/.well-known/mta-sts.txt`. It records the paths asked for, and
/// what was POSTed (up to 1 MiB), as a TLS report receiver would get it.
pub struct HttpsServer {
    pub addr: SocketAddr,
    body: Arc<Mutex<String>>,
    requests: Arc<Mutex<Vec<String>>>,
    posts: Arc<Mutex<Vec<Post>>>,
    failing: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpsServer {
    pub async fn start(cert: &Issued, body: &str) -> TestResult<HttpsServer> {
        let chain: Vec<CertificateDer<'static>> = ctx(CertificateDer::pem_file_iter(&cert.cert), "cert")?
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let key = ctx(PrivateKeyDer::from_pem_file(&cert.key), "key")?;
        let config = ctx(
            ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(chain, key),
            "server config",
        )?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = ctx(TcpListener::bind("127.0.0.1:0").await, "bind")?;
        let addr = ctx(listener.local_addr(), "addr")?;
        let body = Arc::new(Mutex::new(body.to_string()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let posts = Arc::new(Mutex::new(Vec::new()));
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (served, seen, posted, broken) = (body.clone(), requests.clone(), posts.clone(), failing.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, served, seen, posted, broken) = (
                    acceptor.clone(),
                    served.clone(),
                    seen.clone(),
                    posted.clone(),
                    broken.clone(),
                );
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16_384 {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&request[..end]).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    seen.lock().unwrap_or_else(|p| p.into_inner()).push(path.clone());
                    if head.starts_with("POST ") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                let (name, value) = l.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0)
                            .min(1 << 20);
                        let mut body = request[end + 4..].to_vec();
                        while body.len() < length {
                            match tls.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => body.extend_from_slice(&buf[..n]),
                            }
                        }
                        body.truncate(length);
                        posted
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((path, body));
                    }
                    let body = served.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let response = if broken.load(std::sync::atomic::Ordering::SeqCst) {
                        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_string()
                    } else {
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Ok(HttpsServer {
            addr,
            body,
            requests,
            posts,
            failing,
            task,
        })
    }

    pub fn set_body(&self, body: &str) {
        *self.body.lock().unwrap_or_else(|p| p.into_inner()) = body.to_string();
    }

    /// From now on every request gets `503` (a fetch an attacker blocked, a server down).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Each POST's path and body.
    pub fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
