//! The HTTPS client instant-acme talks to the ACME server through: hyper over rustls with our
//! restricted provider, trusting either the system roots or the PEM roots of `ca_file`, a time
//! limit on every whole exchange (the body included), a size limit on every body, and
//! `Retry-After` values clamped to a day (instant-acme adds them to the clock unchecked).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::AcmeError;

/// One ACME request (headers and body) may take at most this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A response body larger than this is an error (certificate chains are a few KiB).
pub const MAX_BODY: usize = 1024 * 1024;
/// A `Retry-After` of more seconds than this is taken as this.
pub const MAX_RETRY_AFTER_SECS: u64 = 86_400;

pub(crate) struct AcmeHttp {
    client: Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    timeout: Duration,
}

impl AcmeHttp {
    pub(crate) fn new(ca_file: Option<&Path>) -> Result<AcmeHttp, AcmeError> {
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(path) => {
                let bad = |detail: String| AcmeError::CaFile {
                    path: path.to_path_buf(),
                    detail,
                };
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .map_err(|e| bad(e.to_string()))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| bad(e.to_string()))?;
                if certs.is_empty() {
                    return Err(bad("holds no PEM certificate".into()));
                }
                for cert in certs {
                    roots.add(cert).map_err(|e| bad(e.to_string()))?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(native.certs);
                if added == 0 {
                    return Err(AcmeError::Config(
                        "no system root certificates were found; set [acme] ca_file".into(),
                    ));
                }
            }
        }
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(sealmail_tls::restricted_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| AcmeError::Config(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_http1()
            .build();
        Ok(AcmeHttp {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout: REQUEST_TIMEOUT,
        })
    }
}

/// A `Retry-After` in seconds above a day becomes a day (a huge one would make instant-acme's
/// `SystemTime::now() + secs` panic). It is read as instant-acme reads it (`u64::from_str`
/// after trimming, which takes a leading `+`); anything else, a date included, is removed, so
/// instant-acme falls back to its own pacing.
fn clamp_retry_after(headers: &mut http::HeaderMap) {
    let Some(value) = headers.get(http::header::RETRY_AFTER) else {
        return;
    };
    let seconds = value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    match seconds {
        Some(secs) if secs <= MAX_RETRY_AFTER_SECS => {
            headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        Some(_) => {
            headers.insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from(MAX_RETRY_AFTER_SECS),
            );
        }
        None => {
            headers.remove(http::header::RETRY_AFTER);
        }
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let fut = self.client.request(req);
        let limit = self.timeout;
        let whole = async move {
            use http_body_util::BodyExt;
            let rsp = fut.await.map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            let (mut parts, body) = rsp.into_parts();
            let body = http_body_util::Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        instant_acme::Error::Str("the ACME server's answer is larger than 1 MiB")
                    } else {
                        instant_acme::Error::Other(e)
                    }
                })?
                .to_bytes();
            clamp_retry_after(&mut parts.headers);
            Ok(BytesResponse {
                parts,
                body: Box::new(body),
            })
        };
        Box::pin(async move {
            match tokio::time::timeout(limit, whole).await {
                Ok(result) => result,
                Err(_) => Err(instant_acme::Error::Str("the ACME server did not answer in time")),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    type R<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

    /// An HTTPS server on loopback answering every request with `answer` (after the head),
    /// then `stall`ing before closing; returns its port and the CA file to trust it by.
    async fn server(answer: Vec<u8>, stall: Duration, dir: &Path) -> R<u16> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate()?;
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])?.signed_by(&key, &issuer)?;
        std::fs::write(dir.join("ca.pem"), ca.pem())?;
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(sealmail_tls::restricted_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(
                    vec![leaf.der().clone()],
                    rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der())?,
                )?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let answer = answer.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65_536 {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(buf.get(..n).unwrap_or_default()),
                        }
                    }
                    let _ = tls.write_all(&answer).await;
                    let _ = tls.flush().await;
                    tokio::time::sleep(stall).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Ok(port)
    }

    async fn get(client: &AcmeHttp, port: u16) -> Result<BytesResponse, instant_acme::Error> {
        let req = http::Request::builder()
            .uri(format!("https://127.0.0.1:{port}/dir"))
            .body(BodyWrapper::from(Vec::new()))
            .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
        client.request(req).await
    }

    #[tokio::test]
    async fn a_huge_retry_after_is_clamped_to_a_day() -> R {
        let dir = tempfile::tempdir()?;
        let answer = b"HTTP/1.1 200 OK\r\nRetry-After: 18446744073709551615\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".to_vec();
        let port = server(answer, Duration::ZERO, dir.path()).await?;
        let client = AcmeHttp::new(Some(&dir.path().join("ca.pem")))?;
        let mut rsp = get(&client, port).await?;
        assert_eq!(
            rsp.parts
                .headers
                .get(http::header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"86400"[..])
        );
        assert_eq!(
            rsp.body.into_bytes().await.map_err(|e| e.to_string())?,
            &b"{}"[..]
        );

        let mut headers = http::HeaderMap::new();
        let mut clamped = |value: &'static str| {
            headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static(value));
            clamp_retry_after(&mut headers);
            headers
                .get(http::header::RETRY_AFTER)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        // As instant-acme reads it: u64::from_str takes a leading '+'.
        assert_eq!(clamped("+18446744073709551615").as_deref(), Some("86400"));
        assert_eq!(clamped(" 18446744073709551615 ").as_deref(), Some("86400"));
        assert_eq!(clamped("+120").as_deref(), Some("120"));
        assert_eq!(clamped("120").as_deref(), Some("120"));
        // What instant-acme would not read as seconds is taken away, dates included.
        assert_eq!(clamped("99999999999999999999999"), None);
        assert_eq!(clamped("Fri, 31 Dec 1999 23:59:59 GMT"), None);
        assert_eq!(clamped("-1"), None);
        Ok(())
    }

    #[tokio::test]
    async fn a_body_over_a_mebibyte_is_an_error() -> R {
        let dir = tempfile::tempdir()?;
        let size = MAX_BODY + 1;
        let mut answer =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n").into_bytes();
        answer.resize(answer.len() + size, b'x');
        let port = server(answer, Duration::ZERO, dir.path()).await?;
        let client = AcmeHttp::new(Some(&dir.path().join("ca.pem")))?;
        let e = get(&client, port)
            .await
            .err()
            .ok_or("a body over 1 MiB was taken")?;
        assert!(e.to_string().contains("larger than 1 MiB"), "{e}");
        Ok(())
    }

    #[tokio::test]
    async fn the_time_limit_covers_the_body() -> R {
        let dir = tempfile::tempdir()?;
        // The head at once, then half of the promised body, then nothing for a minute.
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345".to_vec();
        let port = server(answer, Duration::from_secs(60), dir.path()).await?;
        let mut client = AcmeHttp::new(Some(&dir.path().join("ca.pem")))?;
        client.timeout = Duration::from_millis(500);
        let started = std::time::Instant::now();
        let e = get(&client, port).await.err().ok_or("a stalled body was taken")?;
        assert!(e.to_string().contains("in time"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
        Ok(())
    }
}
