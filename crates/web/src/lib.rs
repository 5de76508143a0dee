//! The `https` and `http` listeners: what a mail domain serves over the web.
//!
//! `https` answers, by Host name: the MTA-STS policy at `mta-sts.DOMAIN` (RFC 8461,
//! [`policy`]), Thunderbird's autoconfig at `autoconfig.DOMAIN` and under `/.well-known/`,
//! Microsoft's Autodiscover (POX) at `autodiscover.DOMAIN` ([`autoconfig`]), and a page with
//! the settings to type by hand ([`page`]); ACME TLS-ALPN-01 handshakes end in the TLS layer
//! (`sealmail-tls`), and such a connection is closed here without a word. `http` answers ACME
//! HTTP-01 challenges and redirects everything else to HTTPS. A Host name we do not serve, or
//! a path we do not know, gets `404` with an empty body: nothing about us is told to a client
//! that did not ask by one of our names.
//!
//! Connections arrive through `sealmail-net`, so bans, allow/deny lists, per-address caps and
//! rates, and TLS policy are the mail listeners'. HTTP is hyper's (HTTP/1.1): a request head
//! may be at most 8 KiB and must arrive within [`HEADER_TIMEOUT`]; a connection lives at most
//! [`CONNECTION_TIMEOUT`]; the only body ever read is an Autodiscover request, at most 8 KiB.

pub mod autoconfig;
pub mod chart;
pub mod page;
pub mod pages;
pub mod policy;
pub mod qr;
pub mod webauthn;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use sealmail_config::MtaStsConfig;
use sealmail_net::{Connection, Handler};
use sealmail_store::Store;
use sealmail_tls::CertResolver;
use sealmail_types::Domain;

use crate::autoconfig::Endpoints;
use crate::policy::MtaStsPolicy;

/// Time a client has to send a request's head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection stays open, keep-alive included.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest request head read (hyper's smallest read buffer).
const MAX_REQUEST_HEAD: usize = 8192;
use sealmail_tls::ACME_TLS_ALPN;
/// HSTS for a year on every HTTPS answer; not for subdomains, which are not all ours.
const HSTS: &str = "max-age=31536000";

/// Answers to ACME HTTP-01 challenges under way (`sealmail-acme` keeps them).
pub trait Http01Answers: Send + Sync + 'static {
    /// The key authorization for `token`, while its challenge is pending.
    fn answer(&self, token: &str) -> Option<String>;
}

/// What the web listeners serve from.
pub struct WebContext {
    pub hostname: Domain,
    pub store: Arc<dyn Store>,
    pub mta_sts: MtaStsConfig,
    pub endpoints: Endpoints,
    /// The certificates served: the automatic MTA-STS mode depends on whether the host's is
    /// from a CA.
    pub certificates: Arc<CertResolver>,
    pub http01: Option<Arc<dyn Http01Answers>>,
    /// The port of the `https` listener, for redirects from `http`.
    pub https_port: Option<u16>,
    /// The account pages and admin console on the host name; `None` serves neither.
    pub pages: Option<pages::Pages>,
}

impl WebContext {
    /// The MTA-STS policy as it stands now (the certificate may have changed).
    pub fn policy(&self) -> MtaStsPolicy {
        let serving = self.certificates.serving(self.hostname.as_str());
        MtaStsPolicy::for_certificate(&self.mta_sts, self.hostname.as_str(), &serving)
    }
}

/// The TLS configuration of `https` listeners: the mail listeners' with ALPN for HTTP/1.1 and
/// for ACME TLS-ALPN-01 validation.
pub fn https_tls(base: &rustls::ServerConfig) -> Arc<rustls::ServerConfig> {
    let mut config = base.clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    Arc::new(config)
}

/// Serves `https` and `http` connections.
pub struct WebHandler {
    context: Arc<WebContext>,
}

impl WebHandler {
    pub fn new(context: WebContext) -> WebHandler {
        WebHandler {
            context: Arc::new(context),
        }
    }
}

#[async_trait::async_trait]
impl Handler for WebHandler {
    async fn handle(&self, conn: Connection) {
        if conn.alpn() == Some(ACME_TLS_ALPN) {
            // The validation is the handshake itself (RFC 8737 3): nothing more is said.
            conn.close().await;
            return;
        }
        let secure = conn.tls().is_some();
        let peer = conn.info().peer;
        let visit = pages::Visit {
            peer: peer.ip(),
            local: conn.info().local,
        };
        let shutdown = conn.shutdown_signal().clone();
        let context = self.context.clone();
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(MAX_REQUEST_HEAD);
        let service = service_fn(move |request: Request<Incoming>| {
            let context = context.clone();
            async move { Ok::<_, Infallible>(respond(&context, secure, visit, request).await) }
        });
        let served = http.serve_connection(TokioIo::new(conn.into_stream()), service);
        let mut served = std::pin::pin!(served);
        tokio::select! {
            result = served.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "web connection ended");
                }
                return;
            }
            () = tokio::time::sleep(CONNECTION_TIMEOUT) => {
                tracing::debug!(%peer, "web connection open too long");
            }
            () = shutdown.cancelled() => {}
        }
        served.as_mut().graceful_shutdown();
        if tokio::time::timeout(HEADER_TIMEOUT, served).await.is_err() {
            tracing::debug!(%peer, "web client too slow");
        }
    }

    fn busy_reply(&self) -> &'static [u8] {
        b""
    }

    fn banned_reply(&self) -> &'static [u8] {
        b""
    }
}

/// A Host name as asked: lower case, without a port or a final dot; `None` when it is not a
/// domain name.
fn host_of(request: &Request<Incoming>) -> Option<Domain> {
    let text = match request.headers().get(header::HOST) {
        Some(value) => value.to_str().ok()?.to_string(),
        None => request.uri().host()?.to_string(),
    };
    let name = match text.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => text.as_str(),
    };
    let name = name.trim_end_matches('.');
    if name.is_empty() || name.len() > 253 || name.starts_with('[') {
        return None;
    }
    Domain::parse(name).ok()
}

/// What a Host name names.
#[derive(Debug, PartialEq, Eq)]
enum Site {
    /// Our host name.
    Host,
    /// `mta-sts.DOMAIN` of a served domain.
    MtaSts(Domain),
    /// `autoconfig.DOMAIN` of a served domain.
    Autoconfig(Domain),
    /// `autodiscover.DOMAIN` of a served domain.
    Autodiscover(Domain),
    /// A served domain itself.
    Domain(Domain),
}

/// Whether `domain` is served here; a store error counts as not (logged).
async fn serves(context: &WebContext, domain: &Domain) -> bool {
    match context.store.domain_exists(domain).await {
        Ok(served) => served,
        Err(error) => {
            tracing::warn!(%error, "cannot read the served domains");
            false
        }
    }
}

async fn site_of(context: &WebContext, host: &Domain) -> Option<Site> {
    if *host == context.hostname {
        return Some(Site::Host);
    }
    let served = |name: &str| {
        let domain = Domain::parse(name).ok();
        async move {
            let domain = domain?;
            serves(context, &domain).await.then_some(domain)
        }
    };
    let text = host.as_str();
    for (prefix, make) in [
        ("mta-sts.", Site::MtaSts as fn(Domain) -> Site),
        ("autoconfig.", Site::Autoconfig),
        ("autodiscover.", Site::Autodiscover),
    ] {
        if let Some(rest) = text.strip_prefix(prefix)
            && let Some(domain) = served(rest).await
        {
            return Some(make(domain));
        }
    }
    served(text).await.map(Site::Domain)
}

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, content_type: Option<&'static str>, body: impl Into<Bytes>) -> Answer {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Some(kind) = content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    }
    response
}

fn not_found() -> Answer {
    answer(StatusCode::NOT_FOUND, None, Bytes::new())
}

async fn respond(
    context: &WebContext,
    secure: bool,
    visit: pages::Visit,
    request: Request<Incoming>,
) -> Answer {
    let head_only = request.method() == Method::HEAD;
    let mut response = if secure {
        https_answer(context, visit, request).await
    } else {
        http_answer(context, &request).await
    };
    let headers = response.headers_mut();
    if secure {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(HSTS));
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
    }
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if head_only {
        *response.body_mut() = Full::new(Bytes::new());
    }
    response
}

fn is_get(request: &Request<Incoming>) -> bool {
    matches!(*request.method(), Method::GET | Method::HEAD)
}

const MTA_STS_PATH: &str = "/.well-known/mta-sts.txt";
const AUTOCONFIG_PATH: &str = "/mail/config-v1.1.xml";
const WELL_KNOWN_AUTOCONFIG_PATH: &str = "/.well-known/autoconfig/mail/config-v1.1.xml";
const AUTODISCOVER_PATH: &str = "/autodiscover/autodiscover.xml";

async fn https_answer(context: &WebContext, visit: pages::Visit, request: Request<Incoming>) -> Answer {
    let Some(host) = host_of(&request) else {
        return not_found();
    };
    let Some(site) = site_of(context, &host).await else {
        return not_found();
    };
    let path = request.uri().path().to_string();
    let request = match (&site, &context.pages) {
        (Site::Host, Some(pages)) if pages::serves_path(&path) => {
            return match pages::answer(context, pages, visit, request).await {
                Some(answer) => answer,
                None => not_found(),
            };
        }
        _ => request,
    };
    match (&site, path.as_str()) {
        (Site::MtaSts(_), MTA_STS_PATH) if is_get(&request) => answer(
            StatusCode::OK,
            Some("text/plain; charset=utf-8"),
            context.policy().text(),
        ),
        (Site::MtaSts(_), _) => not_found(),
        (Site::Autoconfig(domain), AUTOCONFIG_PATH | WELL_KNOWN_AUTOCONFIG_PATH)
        | (Site::Domain(domain), WELL_KNOWN_AUTOCONFIG_PATH)
            if is_get(&request) =>
        {
            thunderbird_answer(domain, &context.endpoints)
        }
        (Site::Host, WELL_KNOWN_AUTOCONFIG_PATH | AUTOCONFIG_PATH) if is_get(&request) => {
            // Asked of our host name, the domain is the address's (Thunderbird sends it).
            match asked_domain(context, &request).await {
                Some(domain) => thunderbird_answer(&domain, &context.endpoints),
                None => not_found(),
            }
        }
        (Site::Autodiscover(_) | Site::Host | Site::Domain(_), p)
            if p.eq_ignore_ascii_case(AUTODISCOVER_PATH) && request.method() == Method::POST =>
        {
            autodiscover_answer(context, request).await
        }
        (Site::Host | Site::Autoconfig(_), "/") if is_get(&request) => answer(
            StatusCode::OK,
            Some("text/html; charset=utf-8"),
            page::settings(
                &context.endpoints,
                match &site {
                    Site::Autoconfig(domain) => Some(domain),
                    _ => None,
                },
            ),
        ),
        _ => not_found(),
    }
}

fn thunderbird_answer(domain: &Domain, endpoints: &Endpoints) -> Answer {
    answer(
        StatusCode::OK,
        Some("application/xml; charset=utf-8"),
        autoconfig::thunderbird(domain, endpoints),
    )
}

/// The served domain of the `emailaddress` query parameter.
async fn asked_domain(context: &WebContext, request: &Request<Incoming>) -> Option<Domain> {
    let query = request.uri().query()?;
    let value = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("emailaddress="))?;
    // Clients encode only the '@'; anything else percent-encoded is not an address we serve.
    let value = value.replace("%40", "@");
    let address = sealmail_types::EmailAddress::parse(&value).ok()?;
    let domain = address.domain().clone();
    serves(context, &domain).await.then_some(domain)
}

async fn autodiscover_answer(context: &WebContext, request: Request<Incoming>) -> Answer {
    let body = match Limited::new(request.into_body(), autoconfig::MAX_AUTODISCOVER_REQUEST)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return answer(StatusCode::PAYLOAD_TOO_LARGE, None, Bytes::new()),
    };
    let Some(address) = autoconfig::autodiscover_address(&body) else {
        return not_found();
    };
    if !serves(context, address.domain()).await {
        return not_found();
    }
    answer(
        StatusCode::OK,
        Some("application/xml; charset=utf-8"),
        autoconfig::autodiscover(&address, &context.endpoints),
    )
}

async fn http_answer(context: &WebContext, request: &Request<Incoming>) -> Answer {
    let path = request.uri().path();
    if let Some(token) = path.strip_prefix("/.well-known/acme-challenge/") {
        return match context.http01.as_ref().and_then(|a| a.answer(token)) {
            Some(key_authorization) if is_get(request) => answer(
                StatusCode::OK,
                Some("application/octet-stream"),
                key_authorization,
            ),
            _ => not_found(),
        };
    }
    let Some(host) = host_of(request) else {
        return not_found();
    };
    if site_of(context, &host).await.is_none() {
        return not_found();
    }
    let port = match context.https_port {
        Some(443) | None => String::new(),
        Some(port) => format!(":{port}"),
    };
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{host}{port}{target}");
    let mut response = answer(StatusCode::MOVED_PERMANENTLY, None, Bytes::new());
    match HeaderValue::from_str(&location) {
        Ok(value) => {
            response.headers_mut().insert(header::LOCATION, value);
            response
        }
        Err(_) => not_found(),
    }
}
