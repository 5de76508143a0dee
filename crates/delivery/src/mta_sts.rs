//! MTA-STS (RFC 8461): the `_mta-sts` TXT record says a policy exists and its id; the policy is
//! fetched over HTTPS from `mta-sts.DOMAIN` (certificate verified, no redirects, 64 KiB at
//! most) and kept, in memory and in the store (so a restart does not forget it), until its
//! `max_age` ends or the id changes. Host names for the fetch are resolved through sealmail's
//! resolver, never the system's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::RData;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::mta_sts::MtaSts as StsRecord;
use sealmail_dns::Dns;
use sealmail_store::{Store, StoredStsPolicy};
use sealmail_types::cache::ExpiringCache;

use crate::now_unix;
use crate::tls_rpt::ResultType;

/// RFC 8461 3.3: policy bodies over 64 KiB are refused.
const MAX_POLICY_BYTES: usize = 64 * 1024;
/// RFC 8461 3.2: max_age is at most a year.
const MAX_AGE_LIMIT: u64 = 31_557_600;
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Policies kept in memory; past it, the cache evicts the least used (the store keeps them all).
const CACHE_MAX: u64 = 10_000;

/// A policy's `mode` (RFC 8461 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StsMode {
    Enforce,
    Testing,
    None,
}

impl StsMode {
    fn parse(value: &str) -> Option<StsMode> {
        match value {
            "enforce" => Some(StsMode::Enforce),
            "testing" => Some(StsMode::Testing),
            "none" => Some(StsMode::None),
            _ => None,
        }
    }
}

/// One `mx` line of a policy, lower case and without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxPattern {
    /// That host only.
    Host(String),
    /// `*.` and a domain: a host one label below it (RFC 8461 4.1: the wildcard stands for the
    /// left-most label only).
    Wildcard(String),
}

impl MxPattern {
    /// Any value is taken: one that is no host name matches no MX host.
    fn parse(value: &str) -> MxPattern {
        let value = value.trim_end_matches('.').to_ascii_lowercase();
        match value.strip_prefix("*.") {
            Some(suffix) => MxPattern::Wildcard(suffix.to_string()),
            None => MxPattern::Host(value),
        }
    }

    /// `host` lower case, without a trailing dot.
    fn matches(&self, host: &str) -> bool {
        match self {
            MxPattern::Host(name) => name == host,
            MxPattern::Wildcard(suffix) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        }
    }
}

/// As the policy has it (lower case, no trailing dot).
impl std::fmt::Display for MxPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MxPattern::Host(name) => f.write_str(name),
            MxPattern::Wildcard(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// Why a policy body was refused. The text goes into the TLS report's failure detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy line without a key: {0:?}")]
    NoKey(String),
    #[error("unknown mode {0:?}")]
    UnknownMode(String),
    /// Not a number, or over a year.
    #[error("bad max_age {0:?}")]
    BadMaxAge(String),
    #[error("version is not STSv1")]
    Version,
    #[error("no mode")]
    NoMode,
    #[error("no max_age")]
    NoMaxAge,
    /// A mode other than `none` with no `mx` line would allow no host at all.
    #[error("no mx")]
    NoMx,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub id: String,
    pub mode: StsMode,
    pub mx: Vec<MxPattern>,
    /// Seconds, at most a year (RFC 8461 3.2).
    pub max_age: u64,
}

impl Policy {
    /// Parses a policy body (RFC 8461 3.2). Fields it does not know are skipped; of a field
    /// given twice (other than `mx`) the last one counts.
    pub fn parse(id: &str, body: &str) -> Result<Policy, PolicyError> {
        let (mut version, mut mode, mut max_age, mut mx) = (None, None, None, Vec::new());
        for line in body.lines() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                return Err(PolicyError::NoKey(line.to_string()));
            };
            let value = value.trim();
            match key.trim() {
                "version" => version = Some(value),
                "mode" => {
                    mode = Some(
                        StsMode::parse(value).ok_or_else(|| PolicyError::UnknownMode(value.to_string()))?,
                    )
                }
                "max_age" => {
                    max_age = Some(
                        value
                            .parse::<u64>()
                            .ok()
                            .filter(|v| *v <= MAX_AGE_LIMIT)
                            .ok_or_else(|| PolicyError::BadMaxAge(value.to_string()))?,
                    )
                }
                "mx" => mx.push(MxPattern::parse(value)),
                _ => {}
            }
        }
        if version != Some("STSv1") {
            return Err(PolicyError::Version);
        }
        let mode = mode.ok_or(PolicyError::NoMode)?;
        let max_age = max_age.ok_or(PolicyError::NoMaxAge)?;
        if mode != StsMode::None && mx.is_empty() {
            return Err(PolicyError::NoMx);
        }
        Ok(Policy {
            id: id.to_string(),
            mode,
            mx,
            max_age,
        })
    }

    /// RFC 8461 4.1: whether the MX host `host` is one the policy names.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|pattern| pattern.matches(&host))
    }
}

/// Why no policy could be fetched. The text is the TLS report's failure detail and starts
/// with the URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No answer, or the answer broke off (connection, certificate, timeout). Shown with
    /// `{:?}`, whose chain of causes names the certificate problem that Display leaves out.
    #[error("{url}: {error:?}")]
    Request { url: String, error: reqwest::Error },
    #[error("{url}: HTTP {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("{url}: not text/plain")]
    NotTextPlain { url: String },
    #[error("{url}: policy over 64 KiB")]
    TooLarge { url: String },
    #[error("{url}: not UTF-8")]
    NotUtf8 { url: String },
    #[error("{url}: {error}")]
    Invalid { url: String, error: PolicyError },
}

impl FetchError {
    /// How TLS-RPT counts the failure (RFC 8460 4.3.2.2).
    pub fn result_type(&self) -> ResultType {
        match self {
            // reqwest has no certificate error kind of its own: a certificate problem is
            // recognised in the text of its causes, to be reported as such.
            FetchError::Request { .. } => {
                let text = self.to_string();
                if text.contains("certificate") || text.contains("Certificate") {
                    ResultType::StsWebpkiInvalid
                } else {
                    ResultType::StsPolicyFetchError
                }
            }
            FetchError::Status { .. } => ResultType::StsPolicyFetchError,
            FetchError::NotTextPlain { .. }
            | FetchError::TooLarge { .. }
            | FetchError::NotUtf8 { .. }
            | FetchError::Invalid { .. } => ResultType::StsPolicyInvalid,
        }
    }
}

/// The HTTPS client for policies could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the MTA-STS client: {0}")]
pub struct SetupError(reqwest::Error);

/// What discovery found, and why the fetch failed if it did (to report).
pub struct Lookup {
    pub policy: Option<Arc<Policy>>,
    pub failure: Option<FetchError>,
}

pub struct MtaSts {
    dns: Dns,
    /// Where policies are kept across restarts (RFC 8461 5.1: a cached policy stays in force
    /// until its max_age ends, whatever happens to later fetches).
    store: Arc<dyn Store>,
    http: reqwest::Client,
    port: u16,
    cache: ExpiringCache<String, Arc<Policy>>,
}

struct Resolver(Dns);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let dns = self.0.clone();
        let host = format!("{}.", name.as_str().trim_end_matches('.'));
        Box::pin(async move {
            let ips = dns
                .resolver()
                .lookup_ip(host.as_str())
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            let addrs: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(ip, 0)).collect();
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl MtaSts {
    pub fn new(
        dns: Dns,
        store: Arc<dyn Store>,
        tls: rustls::ClientConfig,
        port: u16,
    ) -> Result<MtaSts, SetupError> {
        let http = policy_client(&dns, tls)?;
        Ok(MtaSts {
            dns,
            store,
            http,
            port,
            cache: ExpiringCache::new(CACHE_MAX),
        })
    }

    /// The HTTPS client (our resolver and certificate checks, no redirects), also for TLS
    /// reports.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The policy in force for `domain`: from memory, else from the store.
    async fn cached(&self, domain: &str) -> Option<Arc<Policy>> {
        if let Some(policy) = self.cache.get(domain) {
            return Some(policy);
        }
        let StoredStsPolicy {
            policy_id: id,
            body,
            expires_at,
            ..
        } = self.store.mta_sts_policy(domain).await.ok()??;
        let left = expires_at - now_unix();
        if left <= 0 {
            return None;
        }
        let policy = Arc::new(Policy::parse(&id, &body).ok()?);
        self.remember(domain, policy.clone(), Duration::from_secs(left as u64));
        Some(policy)
    }

    fn remember(&self, domain: &str, policy: Arc<Policy>, for_how_long: Duration) {
        self.cache.insert_for(domain.to_string(), policy, for_how_long);
    }

    /// The policy for `domain` (RFC 8461 5.1): a cached one while its id is current, else a
    /// fresh fetch; if the record or the fetch fails, a still valid cached policy is used.
    pub async fn lookup(&self, domain: &str) -> Lookup {
        let cached = self.cached(domain).await;
        let id = match self.record_id(domain).await {
            Some(id) => id,
            None => {
                return Lookup {
                    policy: cached,
                    failure: None,
                };
            }
        };
        if let Some(policy) = cached.as_ref().filter(|p| p.id == id) {
            return Lookup {
                policy: Some(policy.clone()),
                failure: None,
            };
        }
        match self.fetch(domain, &id).await {
            Ok((policy, body)) => {
                let policy = Arc::new(policy);
                self.remember(domain, policy.clone(), Duration::from_secs(policy.max_age));
                let expires_at = now_unix() + policy.max_age as i64;
                let stored = StoredStsPolicy {
                    domain: domain.to_string(),
                    policy_id: id.clone(),
                    body: body.clone(),
                    expires_at,
                };
                if let Err(e) = self.store.save_mta_sts_policy(stored).await {
                    tracing::warn!(domain, error = %e, "cannot keep the MTA-STS policy in the store");
                }
                Lookup {
                    policy: Some(policy),
                    failure: None,
                }
            }
            Err(failure) => {
                tracing::warn!(domain, reason = %failure, "MTA-STS policy fetch failed");
                Lookup {
                    policy: cached,
                    failure: Some(failure),
                }
            }
        }
    }

    async fn record_id(&self, domain: &str) -> Option<String> {
        let lookup = self
            .dns
            .resolver()
            .txt_lookup(format!("_mta-sts.{domain}."))
            .await
            .ok()?;
        // RFC 8461 3.1: exactly one record starting v=STSv1, or the domain has no policy.
        let records: Vec<StsRecord> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .flat_map(|s| s.iter().copied())
                        .collect::<Vec<u8>>(),
                ),
                _ => None,
            })
            .filter(|text| text.starts_with(b"v=STSv1"))
            .filter_map(|text| StsRecord::parse(&text).ok())
            .collect();
        match records.as_slice() {
            [one] => Some(one.id.clone()),
            _ => None,
        }
    }

    /// The policy and its text.
    async fn fetch(&self, domain: &str, id: &str) -> Result<(Policy, String), FetchError> {
        fetch_policy(&self.http, domain, self.port, id).await
    }
}

/// The HTTPS client for policies (and TLS reports): our resolver, the certificate checks of
/// `tls`, no redirects, no proxy, [`FETCH_TIMEOUT`].
pub fn policy_client(dns: &Dns, tls: rustls::ClientConfig) -> Result<reqwest::Client, SetupError> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .dns_resolver(Arc::new(Resolver(dns.clone())))
        .redirect(reqwest::redirect::Policy::none())
        .https_only(true)
        .no_proxy()
        .timeout(FETCH_TIMEOUT)
        .build()
        .map_err(SetupError)
}

/// Fetches `domain`'s policy from `https://mta-sts.DOMAIN[:port]/.well-known/mta-sts.txt`
/// (RFC 8461 3.3: status 200, text/plain, at most 64 KiB): the policy (with the id `id` of
/// its TXT record) and its text.
pub async fn fetch_policy(
    http: &reqwest::Client,
    domain: &str,
    port: u16,
    id: &str,
) -> Result<(Policy, String), FetchError> {
    let url = match port {
        443 => format!("https://mta-sts.{domain}/.well-known/mta-sts.txt"),
        port => format!("https://mta-sts.{domain}:{port}/.well-known/mta-sts.txt"),
    };
    let request_failed = |error| FetchError::Request {
        url: url.clone(),
        error,
    };
    let mut response = http.get(&url).send().await.map_err(request_failed)?;
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        return Err(FetchError::Status { url, status });
    }
    let text_plain = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("text/plain"));
    if !text_plain {
        return Err(FetchError::NotTextPlain { url });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(request_failed)? {
        if body.len() + chunk.len() > MAX_POLICY_BYTES {
            return Err(FetchError::TooLarge { url });
        }
        body.extend_from_slice(&chunk);
    }
    let Ok(body) = String::from_utf8(body) else {
        return Err(FetchError::NotUtf8 { url });
    };
    match Policy::parse(id, &body) {
        Ok(policy) => Ok((policy, body)),
        Err(error) => Err(FetchError::Invalid { url, error }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_match_mx_hosts() -> Result<(), PolicyError> {
        let policy = Policy::parse(
            "1",
            "version: STSv1\r\nmode: enforce\r\nmx: mx1.b.test\r\nmx: *.b.net\r\nmax_age: 86400\r\n",
        )?;
        assert_eq!(policy.mode, StsMode::Enforce);
        assert_eq!(policy.max_age, 86400);
        assert_eq!(
            policy.mx,
            [
                MxPattern::Host("mx1.b.test".into()),
                MxPattern::Wildcard("b.net".into())
            ]
        );
        assert!(policy.allows("mx1.b.test") && policy.allows("MX1.B.TEST."));
        assert!(policy.allows("anything.b.net"));
        assert!(!policy.allows("b.net") && !policy.allows("a.b.b.net") && !policy.allows("mx2.b.test"));
        assert!(Policy::parse("1", "version: STSv1\nmode: none\nmax_age: 5\n").is_ok());
        // Unknown fields are skipped; the last of a repeated field counts.
        let policy = Policy::parse(
            "2",
            "version: STSv1\nmode: enforce\nmode: testing\nmx: MX.B.Test.\nfuture: x\nmax_age: 5\n",
        )?;
        assert_eq!(policy.mode, StsMode::Testing);
        assert_eq!(policy.mx, [MxPattern::Host("mx.b.test".into())]);
        Ok(())
    }

    /// Each refusal, with the text a TLS report carries.
    #[test]
    fn policies_are_refused_with_the_reason() {
        let refused = |body: &str| Policy::parse("1", body).err().map(|e| e.to_string());
        for (body, reason) in [
            ("version: STSv1\nmode: testing\nmax_age: 5\n", "no mx"),
            (
                "version: STSv2\nmode: enforce\nmx: a\nmax_age: 5\n",
                "version is not STSv1",
            ),
            ("mode: enforce\nmx: a\nmax_age: 5\n", "version is not STSv1"),
            (
                "version: STSv1\nmode: enforce\nmx: a\nmax_age: 99999999999\n",
                "bad max_age \"99999999999\"",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a\nmax_age: 31557601\n",
                "bad max_age \"31557601\"",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a\nmax_age: -1\n",
                "bad max_age \"-1\"",
            ),
            (
                "version: STSv1\nmode: Enforce\nmx: a\nmax_age: 5\n",
                "unknown mode \"Enforce\"",
            ),
            (
                "version: STSv1\nmode enforce\nmx: a\nmax_age: 5\n",
                "policy line without a key: \"mode enforce\"",
            ),
            ("version: STSv1\nmx: a\nmax_age: 5\n", "no mode"),
            ("version: STSv1\nmode: enforce\nmx: a\n", "no max_age"),
            ("", "version is not STSv1"),
        ] {
            assert_eq!(refused(body).as_deref(), Some(reason), "{body:?}");
        }
        assert!(Policy::parse("1", "version: STSv1\nmode: enforce\nmx: a\nmax_age: 31557600\n").is_ok());
    }

    /// The detail and result type a failed fetch is reported with.
    #[test]
    fn fetch_failures_say_where_and_what() {
        let url = || "https://mta-sts.b.test/.well-known/mta-sts.txt".to_string();
        for (failure, detail, result_type) in [
            (
                FetchError::Status {
                    url: url(),
                    status: reqwest::StatusCode::NOT_FOUND,
                },
                "https://mta-sts.b.test/.well-known/mta-sts.txt: HTTP 404 Not Found",
                ResultType::StsPolicyFetchError,
            ),
            (
                FetchError::NotTextPlain { url: url() },
                "https://mta-sts.b.test/.well-known/mta-sts.txt: not text/plain",
                ResultType::StsPolicyInvalid,
            ),
            (
                FetchError::TooLarge { url: url() },
                "https://mta-sts.b.test/.well-known/mta-sts.txt: policy over 64 KiB",
                ResultType::StsPolicyInvalid,
            ),
            (
                FetchError::NotUtf8 { url: url() },
                "https://mta-sts.b.test/.well-known/mta-sts.txt: not UTF-8",
                ResultType::StsPolicyInvalid,
            ),
            (
                FetchError::Invalid {
                    url: url(),
                    error: PolicyError::NoMx,
                },
                "https://mta-sts.b.test/.well-known/mta-sts.txt: no mx",
                ResultType::StsPolicyInvalid,
            ),
        ] {
            assert_eq!(failure.to_string(), detail);
            assert_eq!(failure.result_type(), result_type, "{detail}");
        }
    }

    #[test]
    fn mx_patterns_match_one_label_under_a_wildcard() {
        let wildcard = MxPattern::parse("*.B.Net.");
        assert_eq!(wildcard, MxPattern::Wildcard("b.net".into()));
        assert!(wildcard.matches("mx.b.net"));
        assert!(!wildcard.matches("b.net") && !wildcard.matches(".b.net") && !wildcard.matches("a.mx.b.net"));
        let host = MxPattern::parse("mx.b.net");
        assert!(host.matches("mx.b.net") && !host.matches("x.mx.b.net"));
        // A value that is no host name is kept, and matches nothing real.
        assert_eq!(MxPattern::parse("*."), MxPattern::Host("*".into()));
        // Written back as the policy has it (the fuzz target feeds these to `allows`).
        assert_eq!(wildcard.to_string(), "*.b.net");
        assert_eq!(host.to_string(), "mx.b.net");
        let policy = Policy {
            id: "1".into(),
            mode: StsMode::Enforce,
            mx: vec![wildcard, host],
            max_age: 1,
        };
        // `*` is a label like any other to a wildcard.
        assert!(policy.mx.iter().all(|mx| policy.allows(&mx.to_string())));
    }
}
