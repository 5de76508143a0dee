//! Where mail for a domain goes (RFC 5321 5.1): a static route, or the MX records in
//! preference order (equal preferences shuffled), or the domain itself when it has no MX
//! (implicit MX); a null MX (RFC 7505) or a domain that does not exist is a permanent failure.
//! Also the TLSA lookup for DANE, with the AD bit of a trusted resolver as DNSSEC status.
//!
//! DANE applies only to MX host names that DNSSEC vouches for (RFC 7672 2.2.1): with
//! `[dns] trust_ad_bit` the MX query goes to the trusted resolver with the AD bit asked for,
//! and a host from an unvalidated answer gets no TLSA lookup. Otherwise whoever forges the MX
//! answer could name a host of their own with TLSA records in their own signed zone, and DANE,
//! which comes before MTA-STS, would hand them the mail that MTA-STS exists to protect.

use std::net::{IpAddr, SocketAddr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use sealmail_config::DeliveryConfig;
use sealmail_dns::Dns;

use crate::verify::Tlsa;

/// MX hosts tried per attempt, and addresses per host: a domain publishing hundreds (or a
/// hostile DNS answer) must not make one attempt last hundreds of timeouts. Postfix tries 5
/// addresses in all by default.
const MAX_MX_HOSTS: usize = 10;
const MAX_ADDRESSES_PER_HOST: usize = 4;

/// One host to try, with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The MX host name (lower case, no trailing dot), or an address for an IP route.
    pub name: String,
    pub port: u16,
    pub addrs: Vec<SocketAddr>,
    /// The name comes from our configuration or from a DNSSEC-validated MX answer (or a
    /// validated "no MX" for an implicit MX): only then may DANE apply to it.
    pub name_validated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// No delivery is possible: bounce (with an RFC 3463 status).
    Permanent { status: &'static str, text: String },
    /// Try again later.
    Temporary(String),
}

/// The hosts for `domain`, best first. Hosts whose addresses cannot be found are left out;
/// when none is left the error says why.
pub async fn hosts(dns: &Dns, config: &DeliveryConfig, domain: &str) -> Result<Vec<Host>, RouteError> {
    if let Some((host, port)) = config.routes.get(domain) {
        let addrs = addresses(dns, host, *port).await?;
        return Ok(vec![Host {
            name: host.clone(),
            port: *port,
            addrs,
            name_validated: true,
        }]);
    }
    let port = config.smtp_port;
    let (mx, name_validated) = mx_records(dns, domain).await?;
    let names = if mx.is_empty() {
        // No MX record: the domain itself is the implicit MX (RFC 5321 5.1).
        vec![domain.to_string()]
    } else {
        let mut mx = mx;
        if mx.len() == 1 && mx[0].1.is_empty() {
            return Err(RouteError::Permanent {
                status: "5.1.10",
                text: format!("{domain} does not accept mail (null MX, RFC 7505)"),
            });
        }
        // A name that is not a valid host name (control characters, underscores, ...) is
        // skipped: it would end up in TLS names, logs and DSNs.
        mx.retain(|(_, host)| !host.is_empty() && sealmail_types::Domain::parse(host).is_ok());
        shuffle_equal_preferences(&mut mx);
        mx.into_iter()
            .map(|(_, host)| host)
            .take(MAX_MX_HOSTS)
            .collect::<Vec<_>>()
    };
    let mut hosts = Vec::new();
    let mut last = None;
    for name in names {
        match addresses(dns, &name, port).await {
            Ok(addrs) => hosts.push(Host {
                name,
                port,
                addrs,
                name_validated,
            }),
            Err(e) => last = Some(e),
        }
    }
    match (hosts.is_empty(), last) {
        (true, Some(e)) => Err(e),
        (true, None) => Err(RouteError::Permanent {
            status: "5.1.2",
            text: format!("{domain} has no mail host"),
        }),
        _ => Ok(hosts),
    }
}

/// The MX records of `domain` as (preference, host) (empty: there are none), and whether the
/// answer was DNSSEC-validated. With a trusted resolver the query asks it for the AD bit;
/// otherwise it goes through the cached resolver and is never taken as validated.
async fn mx_records(dns: &Dns, domain: &str) -> Result<(Vec<(u16, String)>, bool), RouteError> {
    let mx_of = |records: &[hickory_proto::rr::Record]| -> Vec<(u16, String)> {
        records
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(mx) => Some((mx.preference, name(&mx.exchange.to_string()))),
                _ => None,
            })
            .collect()
    };
    let does_not_exist = || RouteError::Permanent {
        status: "5.1.2",
        text: format!("the domain {domain} does not exist"),
    };
    let failed =
        |e: &dyn std::fmt::Display| RouteError::Temporary(format!("MX lookup for {domain} failed: {e}"));
    if dns.trust_ad_bit() {
        let answer = dns
            .query_authenticated(&fqdn(domain), RecordType::MX)
            .await
            .map_err(|e| failed(&e))?;
        return match answer.metadata.response_code {
            ResponseCode::NoError => Ok((mx_of(&answer.answers), answer.metadata.authentic_data)),
            ResponseCode::NXDomain => Err(does_not_exist()),
            code => Err(failed(&code)),
        };
    }
    match dns.resolver().mx_lookup(fqdn(domain)).await {
        Ok(lookup) => Ok((mx_of(lookup.answers()), false)),
        Err(e) if e.is_nx_domain() => Err(does_not_exist()),
        Err(e) if e.is_no_records_found() => Ok((Vec::new(), false)),
        Err(e) => Err(failed(&e)),
    }
}

/// The smarthost, the one host for every destination.
pub async fn relay(dns: &Dns, relay: &sealmail_config::Relay) -> Result<Vec<Host>, RouteError> {
    let addrs = addresses(dns, &relay.host, relay.port)
        .await
        .map_err(|e| match e {
            // A smarthost that cannot be found is the admin's to fix, not the recipient's fault.
            RouteError::Permanent { text, .. } => RouteError::Temporary(text),
            temporary => temporary,
        })?;
    Ok(vec![Host {
        name: relay.host.clone(),
        port: relay.port,
        addrs,
        name_validated: true,
    }])
}

async fn addresses(dns: &Dns, host: &str, port: u16) -> Result<Vec<SocketAddr>, RouteError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    match dns.resolver().lookup_ip(fqdn(host)).await {
        Ok(ips) => {
            let addrs: Vec<SocketAddr> = ips
                .iter()
                .map(|ip| SocketAddr::new(ip, port))
                .take(MAX_ADDRESSES_PER_HOST)
                .collect();
            if addrs.is_empty() {
                Err(RouteError::Permanent {
                    status: "5.1.2",
                    text: format!("the mail host {host} has no address"),
                })
            } else {
                Ok(addrs)
            }
        }
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => Err(RouteError::Permanent {
            status: "5.1.2",
            text: format!("the mail host {host} has no address"),
        }),
        Err(e) => Err(RouteError::Temporary(format!(
            "address lookup for {host} failed: {e}"
        ))),
    }
}

/// The DANE answer for a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dane {
    /// No DNSSEC-validated TLSA records: DANE does not apply.
    None,
    /// Validated records; TLS is mandatory and the chain must match one of them.
    Records(Vec<Tlsa>),
    /// Validated records exist, but none is usable for SMTP: TLS is mandatory, unauthenticated
    /// (RFC 7672 2.2).
    Unusable,
    /// The lookup failed: delivery to this host must wait (RFC 7672 2.2.1).
    Failed(String),
}

/// The TLSA records of `_port._tcp.host`, if the resolver is trusted and says they are secure,
/// and the host's name is one DNSSEC vouched for (or ours).
pub async fn dane(dns: &Dns, host: &Host) -> Dane {
    if !dns.trust_ad_bit() || !host.name_validated || host.name.parse::<IpAddr>().is_ok() {
        return Dane::None;
    }
    let name = format!("_{}._tcp.{}.", host.port, host.name);
    let answer = match dns.query_authenticated(&name, RecordType::TLSA).await {
        Ok(answer) => answer,
        Err(e) => return Dane::Failed(format!("TLSA lookup for {name} failed: {e}")),
    };
    match answer.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Dane::None,
        code => return Dane::Failed(format!("TLSA lookup for {name} failed: {code}")),
    }
    // RFC 7672 2.2: only validated (secure) TLSA records are DANE.
    if !answer.metadata.authentic_data {
        return Dane::None;
    }
    let records: Vec<Tlsa> = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TLSA(t) => Some(Tlsa {
                usage: u8::from(t.cert_usage),
                selector: u8::from(t.selector),
                matching: u8::from(t.matching),
                data: t.cert_data.clone(),
            }),
            _ => None,
        })
        .collect();
    let usable: Vec<Tlsa> = records.iter().filter(|t| t.usable()).cloned().collect();
    match (records.is_empty(), usable.is_empty()) {
        (true, _) => Dane::None,
        (false, true) => Dane::Unusable,
        (false, false) => Dane::Records(usable),
    }
}

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

fn name(dns_name: &str) -> String {
    dns_name.trim_end_matches('.').to_ascii_lowercase()
}

fn shuffle_equal_preferences(mx: &mut [(u16, String)]) {
    // RFC 5321 5.1: hosts of equal preference are tried in random order, spreading load.
    let mut seed = [0u8; 8];
    let _ = getrandom::fill(&mut seed);
    let mut state = u64::from_le_bytes(seed) | 1;
    let mut keyed: Vec<(u16, u64, String)> = mx
        .iter()
        .map(|(pref, host)| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (*pref, state, host.clone())
        })
        .collect();
    keyed.sort();
    for (slot, (pref, _, host)) in mx.iter_mut().zip(keyed) {
        *slot = (pref, host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealmail_testkit::dns::DnsServer;

    #[tokio::test]
    async fn many_mx_hosts_and_addresses_are_cut_to_the_best_few() -> Result<(), Box<dyn std::error::Error>> {
        let server = DnsServer::start().await?;
        for i in 0..30u8 {
            // Listed worst first: the order must come from the preferences.
            server.add_mx("big.test", 100 - u16::from(i), &format!("mx{i}.big.test"));
            server.add_a(&format!("mx{i}.big.test"), [192, 0, 2, i].into());
        }
        for i in 0..10u8 {
            server.add_a("mx29.big.test", [198, 51, 100, i].into());
        }
        let dns = crate::test_dns(&server)?;
        let hosts = hosts(&dns, &DeliveryConfig::default(), "big.test")
            .await
            .map_err(|e| format!("{e:?}"))?;
        assert_eq!(hosts.len(), MAX_MX_HOSTS);
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names[0], "mx29.big.test", "{names:?}");
        assert_eq!(names[9], "mx20.big.test", "{names:?}");
        assert_eq!(hosts[0].addrs.len(), MAX_ADDRESSES_PER_HOST);
        Ok(())
    }

    /// RFC 7672 2.2.1: TLSA records are looked up only for MX hosts from a validated answer.
    #[tokio::test]
    async fn dane_applies_only_to_mx_hosts_dnssec_vouches_for() -> Result<(), Box<dyn std::error::Error>> {
        let server = DnsServer::start().await?;
        server.add_mx("signed.test", 10, "mx.signed.test");
        server.add_mx("unsigned.test", 10, "mx.signed.test");
        server.add_a("mx.signed.test", [192, 0, 2, 1].into());
        server.add(
            "_25._tcp.mx.signed.test",
            sealmail_testkit::dns::Rec::Tlsa(3, 1, 1, vec![7; 32]),
        );
        for secure in ["signed.test", "_25._tcp.mx.signed.test"] {
            server.secure(secure);
        }
        let config = |trust_ad_bit| sealmail_config::DnsConfig {
            nameservers: vec![server.addr()],
            timeout: std::time::Duration::from_millis(500),
            attempts: 1,
            trust_ad_bit,
            ..sealmail_config::DnsConfig::default()
        };
        let route = |domain| DeliveryConfig {
            routes: [(domain, ("mx.signed.test".to_string(), 25))]
                .into_iter()
                .collect(),
            ..DeliveryConfig::default()
        };
        let trusted = Dns::new(&config(true))?;
        let untrusted = Dns::new(&config(false))?;
        for (dns, domain, config, expect_dane) in [
            (&trusted, "signed.test", DeliveryConfig::default(), true),
            // The same host and TLSA records, named by an MX answer DNSSEC did not vouch for.
            (&trusted, "unsigned.test", DeliveryConfig::default(), false),
            // A host named by our own configuration is ours to trust.
            (
                &trusted,
                "unsigned.test",
                route("unsigned.test".to_string()),
                true,
            ),
            // Without a trusted resolver nothing is validated.
            (&untrusted, "signed.test", DeliveryConfig::default(), false),
        ] {
            let hosts = hosts(dns, &config, domain).await.map_err(|e| format!("{e:?}"))?;
            let host = hosts.first().ok_or("no host")?;
            assert_eq!(host.name, "mx.signed.test");
            let dane = dane(dns, host).await;
            assert_eq!(
                matches!(dane, Dane::Records(_)),
                expect_dane,
                "{domain} (trusted resolver: {}): {dane:?}",
                dns.trust_ad_bit()
            );
        }
        Ok(())
    }
}
