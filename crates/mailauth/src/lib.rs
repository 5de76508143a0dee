//! Sender authentication. SPF (RFC 7208) is our own strict evaluator (`spf.rs`: mail-auth's
//! is lenient where the RFC says permerror); DKIM (RFC 6376 / RFC 8463), DMARC and ARC are
//! mail-auth's. This crate owns how sealmail runs them: always through the one resolver of
//! `sealmail-dns` (so tests and admins control every lookup), with sealmail's host name as the
//! SPF "host domain", and results in sealmail's own terms.

pub mod inbound;
pub mod phishing;
pub mod signing;
pub mod spf;

use std::borrow::Borrow;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use mail_auth::{MessageAuthenticator, ResolverCache, SpfOutput, SpfResult, Txt};
use sealmail_dns::Dns;
use sealmail_types::cache::ExpiringCache;

pub use mail_auth;

/// The checks, sharing the resolver (and its cache) with the rest of the server.
#[derive(Clone)]
pub struct Authenticator {
    inner: MessageAuthenticator,
    /// Our host name, used for SPF's %{r} macro.
    hostname: String,
    /// Parsed SPF, DKIM key and DMARC records, until their TTL ends.
    txt_cache: Arc<TxtCache>,
    /// `[dns] reverse_lookups`: add an `iprev` result (PTR, then forward-confirmed) to inbound
    /// mail's Authentication-Results. Off by default: a query per message that proves little.
    reverse_lookups: bool,
}

/// Most parsed TXT records kept; past it, the cache evicts the least used.
const TXT_CACHE_MAX: u64 = 10_000;

/// TXT records already parsed (SPF policies, DKIM keys, DMARC policies), kept until their DNS
/// TTL ends. The resolver caches the answer; this also saves parsing it (and, for DKIM, the
/// public key) for every message.
pub struct TxtCache(ExpiringCache<Box<str>, Txt>);

impl Default for TxtCache {
    fn default() -> TxtCache {
        TxtCache(ExpiringCache::new(TXT_CACHE_MAX))
    }
}

impl ResolverCache<Box<str>, Txt> for TxtCache {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.get(name)
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.remove(name)
    }

    fn insert(&self, key: Box<str>, value: Txt, valid_until: Instant) {
        self.0.insert(key, value, valid_until);
    }
}

/// An SPF result as Authentication-Results writes it (RFC 8601 2.7.2).
pub fn spf_result_name(result: SpfResult) -> &'static str {
    match result {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

impl Authenticator {
    pub fn new(dns: &Dns, hostname: &str) -> Authenticator {
        Authenticator {
            inner: MessageAuthenticator(dns.resolver().clone()),
            hostname: hostname.to_string(),
            txt_cache: Arc::new(TxtCache::default()),
            reverse_lookups: dns.reverse_lookups(),
        }
    }

    /// SPF for the HELO/EHLO identity (RFC 7208 2.3), by our evaluator (`spf.rs`).
    pub async fn spf_helo(&self, ip: IpAddr, helo: &str) -> SpfOutput {
        let dns = spf::ResolverDns(&self.inner.0);
        within_spf_deadline(helo, spf::check_helo(&dns, ip, helo, &self.hostname)).await
    }

    /// SPF for the MAIL FROM identity (RFC 7208 2.4); an empty reverse path is checked as
    /// postmaster@HELO, as the RFC says.
    pub async fn spf_mail_from(&self, ip: IpAddr, helo: &str, sender: &str) -> SpfOutput {
        let dns = spf::ResolverDns(&self.inner.0);
        let sender = if sender.is_empty() {
            format!("postmaster@{helo}")
        } else {
            sender.to_string()
        };
        let domain = sender
            .rsplit_once('@')
            .map_or(sender.as_str(), |(_, d)| d)
            .to_string();
        within_spf_deadline(
            &domain,
            spf::check_mail_from(&dns, ip, helo, &sender, &self.hostname),
        )
        .await
    }
}

/// RFC 7208 4.6.4: the whole evaluation gets a time limit, not only each query; past it the
/// result is temperror (the sender may try again).
pub const SPF_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

async fn within_spf_deadline(domain: &str, check: impl Future<Output = spf::SpfCheck>) -> SpfOutput {
    match tokio::time::timeout(SPF_DEADLINE, check).await {
        Ok(check) => check.to_output(),
        Err(_) => SpfOutput::new(domain.to_string()).with_result(SpfResult::TempError),
    }
}
