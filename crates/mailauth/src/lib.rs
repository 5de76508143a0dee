//! Sender authentication. The checks themselves are mail-auth's (SPF RFC 7208, DKIM RFC 6376 /
//! RFC 8463, DMARC, ARC); this crate owns how sealmail calls them: always through the one
//! resolver of `sealmail-dns` (so tests and admins control every lookup), with sealmail's host
//! name as the SPF "host domain", and results in sealmail's own terms.

pub mod inbound;
pub mod phishing;
pub mod signing;

use std::net::IpAddr;

use mail_auth::spf::verify::SpfParameters;
use mail_auth::{MessageAuthenticator, SpfOutput, SpfResult};
use sealmail_dns::Dns;

pub use mail_auth;

/// The checks, sharing the resolver (and its cache) with the rest of the server.
#[derive(Clone)]
pub struct Authenticator {
    inner: MessageAuthenticator,
    /// Our host name, used for SPF's %{r} macro.
    hostname: String,
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
        }
    }

    /// SPF for the HELO/EHLO identity (RFC 7208 2.3).
    pub async fn spf_helo(&self, ip: IpAddr, helo: &str) -> SpfOutput {
        self.inner
            .verify_spf(SpfParameters::verify_ehlo(ip, helo, &self.hostname))
            .await
    }

    /// SPF for the MAIL FROM identity (RFC 7208 2.4); an empty reverse path is checked as
    /// postmaster@HELO, as the RFC says.
    pub async fn spf_mail_from(&self, ip: IpAddr, helo: &str, sender: &str) -> SpfOutput {
        if sender.is_empty() {
            let postmaster = format!("postmaster@{helo}");
            return self
                .inner
                .verify_spf(SpfParameters::verify_mail_from(
                    ip,
                    helo,
                    &self.hostname,
                    &postmaster,
                ))
                .await;
        }
        self.inner
            .verify_spf(SpfParameters::verify_mail_from(ip, helo, &self.hostname, sender))
            .await
    }
}
