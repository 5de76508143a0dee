//! The checks of a domain's published records: MX (and null MX, RFC 7505), SPF (RFC 7208:
//! one record, valid terms, at most 10 DNS-querying terms, ending in `-all`), also for the MX
//! host names (their HELO names), DMARC (RFC 7489: policy, `pct`, `rua`), DKIM keys of given
//! selectors (RSA of 2048 bits or more, or Ed25519), the MTA-STS (RFC 8461) and TLS-RPT
//! (RFC 8460) records, and the client SRV records (RFC 6186, RFC 8314).
//!
//! SPF records are read term by term here rather than with mail-auth's parser: the check needs
//! the lookup count of every include and redirect, and mail-auth evaluates a record for one
//! sender without reporting that count.

use std::time::Duration;

use hickory_proto::rr::{RData, RecordType};
use sealmail_dns::Dns;

use crate::report::{Check, Pillar, Status};
use crate::servers::{ClientServer, Service};

/// The longest one lookup may take, whatever the resolver's own timeouts.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// DNS-querying SPF terms allowed in one evaluation (RFC 7208 4.6.4).
pub const SPF_LOOKUP_LIMIT: usize = 10;
/// MX hosts whose SPF (as HELO names) is checked.
const MAX_HELO_HOSTS: usize = 5;

/// What a lookup found.
enum Found<T> {
    Records(Vec<T>),
    /// NXDOMAIN or no record of the type.
    Nothing,
    /// The lookup failed or timed out: nothing can be said of the record.
    Failed(String),
}

async fn lookup(dns: &Dns, name: &str, kind: RecordType) -> Found<RData> {
    let name = format!("{}.", name.trim_end_matches('.'));
    match tokio::time::timeout(LOOKUP_TIMEOUT, dns.resolver().lookup(name.as_str(), kind)).await {
        Ok(Ok(lookup)) => Found::Records(lookup.answers().iter().map(|r| r.data.clone()).collect()),
        Ok(Err(e)) if e.is_nx_domain() || e.is_no_records_found() => Found::Nothing,
        Ok(Err(e)) => Found::Failed(e.to_string()),
        Err(_) => Found::Failed(format!("no answer within {} s", LOOKUP_TIMEOUT.as_secs())),
    }
}

/// The TXT records at `name`, each as its strings joined.
async fn txt(dns: &Dns, name: &str) -> Found<String> {
    match lookup(dns, name, RecordType::TXT).await {
        Found::Records(records) => {
            let texts: Vec<String> = records
                .iter()
                .filter_map(|data| match data {
                    RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .map(|part| String::from_utf8_lossy(part).into_owned())
                            .collect(),
                    ),
                    _ => None,
                })
                .collect();
            if texts.is_empty() {
                Found::Nothing
            } else {
                Found::Records(texts)
            }
        }
        Found::Nothing => Found::Nothing,
        Found::Failed(why) => Found::Failed(why),
    }
}

/// The records of `texts` that start with `tag` (case-insensitive), e.g. `v=DMARC1`, followed
/// by the end, spaces or `;` (an SPF record's version is followed by a space or nothing:
/// RFC 7208 4.5, so `v=spf1;` is no SPF record).
fn tagged<'a>(texts: &'a [String], tag: &str) -> Vec<&'a String> {
    let spf = tag.eq_ignore_ascii_case("v=spf1");
    texts
        .iter()
        .filter(|t| {
            let Some(rest) = t
                .get(..tag.len())
                .filter(|head| head.eq_ignore_ascii_case(tag))
                .map(|_| &t[tag.len()..])
            else {
                return false;
            };
            match rest.chars().next() {
                None | Some(' ') => true,
                Some(';') => !spf,
                Some(_) => false,
            }
        })
        .collect()
}

fn unchecked(id: &str, pillar: Pillar, what: &str, why: &str) -> Check {
    Check::new(
        id,
        pillar,
        Status::Warn,
        format!("{what} could not be looked up ({why})"),
    )
    .with_fix("check that the domain's nameservers answer, then run the check again")
    .incomplete()
}

/// What a check is asked to look at beyond the domain's own records.
#[derive(Default)]
pub struct Options {
    /// DKIM selectors whose keys to check.
    pub dkim_selectors: Vec<String>,
    /// A sample message sent from the domain (`--message`): its DKIM signatures are verified
    /// and their selectors' keys checked.
    pub message: Option<std::sync::Arc<[u8]>>,
    /// The port MTA-STS policies are fetched from (443 unless a test installation says).
    pub https_port: Option<u16>,
    /// The HTTPS client for the MTA-STS policy (certificates checked against the system's
    /// roots and `--ca-file`); `None` leaves the policy unfetched.
    pub http: Option<reqwest::Client>,
}

/// The HTTPS client for MTA-STS policies: TLS 1.2 and 1.3 with our cipher suites, the
/// system's certificate authorities and those of `ca_file`, our resolver, no redirects.
pub fn https_client(dns: &Dns, ca_file: Option<&std::path::Path>) -> Result<reqwest::Client, String> {
    let roots = sealmail_delivery::trust_anchors(ca_file).map_err(|e| e.to_string())?;
    let tls =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(sealmail_tls::restricted_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    sealmail_delivery::mta_sts::policy_client(dns, tls).map_err(|e| e.to_string())
}

/// What the DNS checks found: the findings, and the servers for the server checks.
pub struct DomainFindings {
    pub checks: Vec<Check>,
    /// The MX host names, most preferred first; none for a null MX or a failed lookup.
    pub mx_hosts: Vec<String>,
    /// The submission and IMAP servers the SRV records name.
    pub client_servers: Vec<ClientServer>,
    /// Whether the resolver said the MX answer is DNSSEC-validated (`None`: it could not be
    /// asked), which decides whether DANE applies to the MX hosts.
    pub mx_validated: Option<bool>,
}

/// Every DNS check of `domain`, and the MTA-STS policy its record announces.
pub async fn check_domain(dns: &Dns, domain: &str, options: &Options) -> DomainFindings {
    let dkim_selectors = &options.dkim_selectors;
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let mut checks = Vec::new();
    let mut client_servers = Vec::new();
    let mx_hosts = check_mx(dns, &domain, &mut checks).await;
    let receives_mail = mx_hosts.as_ref().is_none_or(|hosts| !hosts.is_empty());
    checks.extend(check_spf(dns, &domain).await);
    for host in mx_hosts.iter().flatten().take(MAX_HELO_HOSTS) {
        checks.push(check_helo_spf(dns, host).await);
    }
    checks.extend(check_dmarc(dns, &domain).await);
    checks.push(check_caa(dns, &domain).await);
    let mut keys_checked: Vec<(String, String)> = Vec::new();
    for selector in dkim_selectors {
        let selector = selector.to_ascii_lowercase();
        if !keys_checked.contains(&(domain.clone(), selector.clone())) {
            checks.push(check_dkim(dns, &domain, &selector, &format!("dkim:{selector}")).await);
            keys_checked.push((domain.clone(), selector));
        }
    }
    if let Some(message) = &options.message {
        checks.extend(check_message(dns, &domain, message, &mut keys_checked).await);
    }
    if receives_mail {
        let (record, id) = check_mta_sts_record(dns, &domain).await;
        checks.push(record);
        if let (Some(id), Some(http)) = (id, &options.http) {
            let port = options.https_port.unwrap_or(443);
            checks.extend(check_mta_sts_policy(http, &domain, port, &id, mx_hosts.as_deref()).await);
        }
        checks.push(check_tls_rpt(dns, &domain).await);
        let (found, servers) = check_srv(dns, &domain).await;
        checks.extend(found);
        client_servers = servers;
    }
    let mx_validated = match &mx_hosts {
        Some(hosts) if !hosts.is_empty() => crate::dane::mx_validated(dns, &domain).await,
        _ => None,
    };
    DomainFindings {
        checks,
        mx_hosts: mx_hosts.unwrap_or_default(),
        client_servers,
        mx_validated,
    }
}

/// CAA (RFC 8659): which certificate authorities may issue certificates for the domain's
/// names. The relevant record set is the closest one walking up from the domain (3), so a
/// parent's records count; the walk stops above the domain's last two labels.
async fn check_caa(dns: &Dns, domain: &str) -> Check {
    let id = "caa";
    let labels: Vec<&str> = domain.split('.').collect();
    for start in 0..labels.len().saturating_sub(1).min(10) {
        let name = labels[start..].join(".");
        let records: Vec<hickory_proto::rr::rdata::CAA> = match lookup(dns, &name, RecordType::CAA).await {
            Found::Records(records) => records
                .into_iter()
                .filter_map(|data| match data {
                    RData::CAA(caa) => Some(caa),
                    _ => None,
                })
                .collect(),
            Found::Nothing => continue,
            Found::Failed(why) => {
                return unchecked(
                    id,
                    Pillar::Authentication,
                    &format!("the CAA records of {name}"),
                    &why,
                );
            }
        };
        if records.is_empty() {
            continue;
        }
        let at = if name == domain {
            format!("at {name}")
        } else {
            format!("inherited from {name}")
        };
        let known = [
            "issue",
            "issuewild",
            "iodef",
            "contactemail",
            "contactphone",
            "issuemail",
            "issuevmc",
        ];
        if let Some(unknown) = records
            .iter()
            .find(|r| r.issuer_critical && !known.iter().any(|k| r.tag.eq_ignore_ascii_case(k)))
        {
            return Check::new(
                id,
                Pillar::Authentication,
                Status::Warn,
                format!(
                    "CAA {at} has the critical tag {:?}, which CAs do not know: none will issue a certificate",
                    unknown.tag
                ),
            )
            .with_fix(format!("remove the critical flag (128) from the {} CAA record of {name}", unknown.tag));
        }
        let issuers: Vec<String> = records
            .iter()
            .filter(|r| r.tag.eq_ignore_ascii_case("issue"))
            .map(|r| {
                let value = String::from_utf8_lossy(&r.value);
                let issuer = value.split(';').next().unwrap_or("").trim();
                if issuer.is_empty() {
                    "nobody".to_string()
                } else {
                    issuer.to_string()
                }
            })
            .collect();
        if issuers.is_empty() {
            return Check::new(
                id,
                Pillar::Authentication,
                Status::Warn,
                format!("CAA {at} has no `issue` record: any certificate authority may issue"),
            )
            .with_fix(format!(
                "add `{name}. IN CAA 0 issue \"CA-DOMAIN\"` naming the CA of your certificates"
            ));
        }
        if issuers.iter().all(|issuer| issuer == "nobody") {
            return Check::new(
                id,
                Pillar::Authentication,
                Status::Warn,
                format!("CAA {at} lets no certificate authority issue: certificates for the mail host names cannot be renewed"),
            )
            .with_fix(format!(
                "replace `issue \";\"` with `{name}. IN CAA 0 issue \"CA-DOMAIN\"` naming the CA of your certificates (if the domain's own names need none, publish that at the mail host names)"
            ));
        }
        return Check::new(
            id,
            Pillar::Authentication,
            Status::Pass,
            format!("CAA {at}: certificates only from {}", issuers.join(", ")),
        );
    }
    Check::new(
        id,
        Pillar::Authentication,
        Status::Warn,
        format!("no CAA record for {domain}: any certificate authority may issue certificates for its names"),
    )
    .with_fix(format!(
        "publish `{domain}. IN CAA 0 issue \"CA-DOMAIN\"` naming the CA of your certificates, e.g. `{domain}. IN CAA 0 issue \"letsencrypt.org\"`"
    ))
}

/// The MX check; the MX host names, or `None` when they could not be looked up (an empty
/// list is a null MX: the domain takes no mail).
async fn check_mx(dns: &Dns, domain: &str, checks: &mut Vec<Check>) -> Option<Vec<String>> {
    // An answer without MX data (a CNAME, say) is no MX record either.
    let mut hosts: Vec<(u16, String)> = match lookup(dns, domain, RecordType::MX).await {
        Found::Records(records) => records
            .iter()
            .filter_map(|data| match data {
                RData::MX(mx) => Some((
                    mx.preference,
                    mx.exchange.to_ascii().trim_end_matches('.').to_ascii_lowercase(),
                )),
                _ => None,
            })
            .collect(),
        Found::Nothing => Vec::new(),
        Found::Failed(why) => {
            checks.push(unchecked("mx", Pillar::ProtocolSupport, "the MX records", &why));
            return None;
        }
    };
    if hosts.is_empty() {
        checks.push(
            Check::new(
                "mx",
                Pillar::ProtocolSupport,
                Status::Fail,
                "no MX record: senders fall back to the domain's address, if it has one",
            )
            .with_fix(format!(
                "publish `{domain}. MX 10 mail.{domain}.` (or `{domain}. MX 0 .` if the domain takes no mail)"
            )),
        );
        return None;
    }
    hosts.sort();
    if hosts.len() == 1 && hosts[0].1.is_empty() {
        checks.push(Check::new(
            "mx",
            Pillar::ProtocolSupport,
            Status::Info,
            "null MX (RFC 7505): the domain takes no mail",
        ));
        return Some(Vec::new());
    }
    if hosts.iter().any(|(_, host)| host.is_empty()) {
        checks.push(
            Check::new(
                "mx",
                Pillar::ProtocolSupport,
                Status::Fail,
                "a null MX (`0 .`) among other MX records",
            )
            .with_fix("remove the `MX 0 .` record, or all the others (RFC 7505 3)"),
        );
    } else {
        let listed: Vec<String> = hosts.iter().map(|(p, h)| format!("{p} {h}")).collect();
        checks.push(Check::new(
            "mx",
            Pillar::ProtocolSupport,
            Status::Pass,
            format!("MX: {}", listed.join(", ")),
        ));
    }
    Some(
        hosts
            .into_iter()
            .map(|(_, h)| h)
            .filter(|h| !h.is_empty())
            .collect(),
    )
}

/// What one SPF record says.
#[derive(Debug, Default, PartialEq, Eq)]
struct SpfRecord {
    /// Domains of `include:` terms.
    includes: Vec<String>,
    redirect: Option<String>,
    /// `a`, `mx`, `ptr`, `exists`, `include` and `redirect` terms: each costs a lookup.
    lookups: usize,
    /// The qualifier of `all` (`+`, `-`, `~`, `?`), if the record has an `all`.
    all: Option<char>,
    uses_ptr: bool,
}

/// The terms of an SPF record (after `v=spf1`), or the first term that is not valid.
fn parse_spf(record: &str) -> Result<SpfRecord, String> {
    let mut spf = SpfRecord::default();
    for term in record.split_ascii_whitespace().skip(1) {
        let lower = term.to_ascii_lowercase();
        if let Some((name, value)) = lower.split_once('=')
            && !name.contains(':')
            && !name.contains('/')
        {
            match name {
                "redirect" => {
                    spf.lookups += 1;
                    spf.redirect = Some(value.to_string());
                }
                "exp" => {}
                // Unknown modifiers are ignored (RFC 7208 6), if they are well formed.
                _ if name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) => {}
                _ => return Err(term.to_string()),
            }
            continue;
        }
        let (qualifier, mechanism) = match lower.chars().next() {
            Some(q @ ('+' | '-' | '~' | '?')) => (q, &lower[1..]),
            _ => ('+', lower.as_str()),
        };
        let (name, argument) = match mechanism.find([':', '/']) {
            Some(at) => (&mechanism[..at], Some(&mechanism[at..])),
            None => (mechanism, None),
        };
        match name {
            // Evaluation stops at the first `all` (RFC 7208 4.6.2): later terms never count.
            "all" if argument.is_none() => {
                if spf.all.is_none() {
                    spf.all = Some(qualifier);
                }
            }
            "include" => {
                let target = argument
                    .and_then(|a| a.strip_prefix(':'))
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| term.to_string())?;
                spf.lookups += 1;
                spf.includes.push(target.to_string());
            }
            "a" | "mx" => spf.lookups += 1,
            "ptr" => {
                spf.lookups += 1;
                spf.uses_ptr = true;
            }
            "exists" if argument.is_some_and(|a| a.len() > 1) => spf.lookups += 1,
            "ip4" | "ip6" if argument.is_some_and(|a| a.starts_with(':') && a.len() > 1) => {}
            _ => return Err(term.to_string()),
        }
    }
    Ok(spf)
}

/// The SPF record of `domain`, when it has exactly one.
async fn spf_record(dns: &Dns, domain: &str) -> Result<String, String> {
    match txt(dns, domain).await {
        Found::Records(texts) => {
            let spf = tagged(&texts, "v=spf1");
            match spf.as_slice() {
                [one] => Ok((*one).clone()),
                [] => Err("no SPF record".to_string()),
                more => Err(format!("{} SPF records", more.len())),
            }
        }
        Found::Nothing => Err("no SPF record".to_string()),
        Found::Failed(why) => Err(format!("lookup failed: {why}")),
    }
}

/// What following a record's includes and redirect found.
#[derive(Debug, Default)]
struct Followed {
    /// DNS lookups an evaluation may make (counting stops past the limit, so loops end).
    lookups: usize,
    /// The `all` qualifier the redirect chain ends in, when the record redirects.
    redirect_all: Option<char>,
    /// Included domains whose own record passes every host (`+all`): an include of one passes
    /// everyone too.
    permissive_includes: Vec<String>,
}

/// Follows `record`'s includes and redirect (RFC 7208 5.2, 6.1), counting lookups.
async fn follow(dns: &Dns, record: &SpfRecord) -> Result<Followed, FollowError> {
    let mut followed = Followed {
        lookups: record.lookups,
        ..Followed::default()
    };
    // (domain, reached by the top record's redirect chain, reached through an include)
    let mut pending: Vec<(String, bool)> = record.includes.iter().map(|d| (d.clone(), false)).collect();
    // A redirect is used only when the record has no `all` (RFC 7208 6.1).
    if record.all.is_none()
        && let Some(target) = &record.redirect
    {
        pending.push((target.clone(), true));
    }
    while let Some((target, via_redirect)) = pending.pop() {
        if followed.lookups > SPF_LOOKUP_LIMIT {
            break;
        }
        if target.contains('%') {
            // A macro is expanded per sender: its record cannot be followed here.
            continue;
        }
        let text = match spf_record(dns, &target).await {
            Ok(text) => text,
            Err(why) if why.starts_with("lookup failed") => {
                return Err(FollowError::Lookup(format!("{target}: {why}")));
            }
            Err(why) => return Err(FollowError::Broken(format!("{target}: {why}"))),
        };
        let inner = parse_spf(&text)
            .map_err(|term| FollowError::Broken(format!("{target}: `{term}` is not valid")))?;
        followed.lookups += inner.lookups;
        if via_redirect && inner.all.is_some() {
            followed.redirect_all = inner.all;
        }
        if !via_redirect && inner.all == Some('+') {
            followed.permissive_includes.push(target.clone());
        }
        pending.extend(inner.includes.iter().map(|d| (d.clone(), false)));
        if inner.all.is_none()
            && let Some(next) = inner.redirect
        {
            pending.push((next, via_redirect));
        }
    }
    Ok(followed)
}

#[derive(Debug)]
enum FollowError {
    /// A lookup failed: nothing can be said.
    Lookup(String),
    /// An included or redirected-to domain has no valid record: receivers give an error.
    Broken(String),
}

async fn check_spf(dns: &Dns, domain: &str) -> Vec<Check> {
    let id = "spf";
    let auth = Pillar::Authentication;
    let fix_publish =
        format!("publish `{domain}. TXT \"v=spf1 mx -all\"` (the hosts that send for the domain, then -all)");
    let text = match spf_record(dns, domain).await {
        Ok(text) => text,
        Err(why) if why.starts_with("lookup failed") => {
            return vec![unchecked(id, auth, "the SPF record", &why)];
        }
        Err(why) if why == "no SPF record" => {
            return vec![
                Check::new(
                    id,
                    auth,
                    Status::Fail,
                    "no SPF record: anyone may send as the domain",
                )
                .with_fix(fix_publish),
            ];
        }
        Err(why) => {
            return vec![
                Check::new(
                    id,
                    auth,
                    Status::Fail,
                    format!("{why}: receivers treat that as a permanent error (RFC 7208 4.5)"),
                )
                .with_fix("merge them into one `v=spf1 ... -all` record"),
            ];
        }
    };
    let record = match parse_spf(&text) {
        Ok(record) => record,
        Err(term) => {
            return vec![
                Check::new(
                    id,
                    auth,
                    Status::Fail,
                    format!("`{text}`: `{term}` is not a valid term"),
                )
                .with_fix("correct or remove that term (RFC 7208 5, 6)"),
            ];
        }
    };
    let followed = follow(dns, &record).await;
    // A redirect's ending is the record's own when it has no `all` (RFC 7208 6.1).
    let redirected = match (&followed, record.all, &record.redirect) {
        (Ok(f), None, Some(target)) => f.redirect_all.map(|q| (q, target.as_str())),
        _ => None,
    };
    let all = record.all.or(redirected.map(|(q, _)| q));
    let through = redirected.map_or(String::new(), |(_, target)| {
        format!(" (through the redirect to {target})")
    });
    let mut checks = Vec::new();
    let ending = match (all, &record.redirect) {
        (Some('-'), _) => Check::new(id, auth, Status::Pass, format!("`{text}` ends in -all{through}")),
        (Some('~'), _) => Check::new(
            id,
            auth,
            Status::Warn,
            format!("`{text}` ends in ~all{through}: mail from other hosts is only marked"),
        )
        .with_fix("end the record in -all once every sending host is listed"),
        (Some(q), _) => Check::new(
            id,
            auth,
            Status::Fail,
            format!(
                "`{text}` ends in {}all{through}: any host may send as the domain",
                if q == '+' { "+" } else { "?" }
            ),
        )
        .with_fix(format!("replace `{q}all` by `-all`").replace("+all", "all")),
        (None, Some(target)) => Check::new(
            id,
            auth,
            Status::Warn,
            format!("`{text}` redirects to {target}, whose ending could not be read"),
        )
        .with_fix(format!("check the SPF record of {target}")),
        (None, None) => Check::new(
            id,
            auth,
            Status::Fail,
            format!("`{text}` has no `all`: other hosts get a neutral result"),
        )
        .with_fix("end the record in -all"),
    };
    checks.push(ending);
    if let Ok(f) = &followed
        && !f.permissive_includes.is_empty()
    {
        checks.push(
            Check::new(
                "spf-include",
                auth,
                Status::Fail,
                format!(
                    "included record(s) of {} end in +all: every host passes through them",
                    f.permissive_includes.join(", ")
                ),
            )
            .with_fix("remove those include: terms, or have their owners end them in -all"),
        );
    }
    if record.uses_ptr {
        checks.push(
            Check::new(
                "spf-ptr",
                auth,
                Status::Warn,
                "the record uses `ptr`, which is slow and unreliable (RFC 7208 5.5: SHOULD NOT)",
            )
            .with_fix("list the sending hosts with ip4:, ip6:, a or mx instead of ptr"),
        );
    }
    checks.push(match followed {
        Ok(f) if f.lookups > SPF_LOOKUP_LIMIT => Check::new(
            "spf-lookups",
            auth,
            Status::Fail,
            format!("evaluating the record takes more than {SPF_LOOKUP_LIMIT} DNS lookups ({} counted): receivers give a permanent error", f.lookups),
        )
        .with_fix("replace include: terms by the ip4:/ip6: ranges they stand for, or drop unused ones"),
        Ok(f) => Check::new(
            "spf-lookups",
            auth,
            Status::Pass,
            format!("{} of at most {SPF_LOOKUP_LIMIT} DNS lookups", f.lookups),
        ),
        Err(FollowError::Lookup(why)) => unchecked("spf-lookups", auth, "an included SPF record", &why),
        Err(FollowError::Broken(why)) => Check::new(
            "spf-lookups",
            auth,
            Status::Fail,
            format!("an included record does not work: {why}"),
        )
        .with_fix("correct or remove that include"),
    });
    checks
}

/// A mail host's own SPF record (its HELO name), which receivers check for bounces.
async fn check_helo_spf(dns: &Dns, host: &str) -> Check {
    let id = format!("spf-helo:{host}");
    match spf_record(dns, host).await {
        Ok(text) => match parse_spf(&text) {
            Ok(record) if record.all == Some('-') => {
                Check::new(&id, Pillar::Authentication, Status::Pass, format!("`{text}`"))
            }
            _ => Check::new(
                &id,
                Pillar::Authentication,
                Status::Warn,
                format!("`{text}` does not end in -all"),
            )
            .with_fix(format!("publish `{host}. TXT \"v=spf1 a -all\"`")),
        },
        Err(why) if why.starts_with("lookup failed") => {
            unchecked(&id, Pillar::Authentication, "the host's SPF record", &why)
        }
        Err(why) => Check::new(
            &id,
            Pillar::Authentication,
            Status::Warn,
            format!("{why} for the mail host {host} (its HELO name)"),
        )
        .with_fix(format!("publish `{host}. TXT \"v=spf1 a -all\"`")),
    }
}

/// The tags of a `k=v; k=v` record, names lower-cased.
fn tags(record: &str) -> Vec<(String, String)> {
    record
        .split(';')
        .filter_map(|part| part.split_once('='))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

fn tag<'a>(tags: &'a [(String, String)], name: &str) -> Option<&'a str> {
    tags.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

async fn check_dmarc(dns: &Dns, domain: &str) -> Vec<Check> {
    let auth = Pillar::Authentication;
    let name = format!("_dmarc.{domain}");
    let publish = format!("publish `{name}. TXT \"v=DMARC1; p=reject; rua=mailto:dmarc-reports@{domain}\"`");
    let (texts, inherited) = match txt(dns, &name).await {
        Found::Records(texts) => (texts, None),
        Found::Nothing => match parent_dmarc(dns, domain).await {
            Ok(Some((parent, texts))) => (texts, Some(parent)),
            Ok(None) => {
                return vec![
                    Check::new(
                        "dmarc",
                        auth,
                        Status::Fail,
                        "no DMARC record: receivers apply no policy to mail that fails SPF and DKIM",
                    )
                    .with_fix(publish),
                ];
            }
            Err(why) => return vec![unchecked("dmarc", auth, "the DMARC record", &why)],
        },
        Found::Failed(why) => return vec![unchecked("dmarc", auth, "the DMARC record", &why)],
    };
    // A subdomain without a record of its own gets its parent's subdomain policy (`sp=`,
    // else `p=`): RFC 7489 6.6.3.
    let (policy_tag, name) = match &inherited {
        Some(parent) => ("sp", format!("_dmarc.{parent}")),
        None => ("p", name),
    };
    let from = match &inherited {
        Some(parent) => format!(" (inherited from _dmarc.{parent}: its subdomain policy applies)"),
        None => String::new(),
    };
    let records = tagged(&texts, "v=DMARC1");
    let text = match records.as_slice() {
        [one] => *one,
        [] => {
            return vec![
                Check::new(
                    "dmarc",
                    auth,
                    Status::Fail,
                    format!("no valid DMARC record at {name}"),
                )
                .with_fix(publish),
            ];
        }
        more => {
            return vec![
                Check::new(
                    "dmarc",
                    auth,
                    Status::Fail,
                    format!(
                        "{} DMARC records: receivers use none (RFC 7489 6.6.3)",
                        more.len()
                    ),
                )
                .with_fix("keep one"),
            ];
        }
    };
    let tags = tags(text);
    let (used, policy) = match tag(&tags, policy_tag) {
        Some(policy) => (policy_tag, Some(policy)),
        None => ("p", tag(&tags, "p")),
    };
    let mut checks = vec![match policy.map(str::to_ascii_lowercase).as_deref() {
        Some("reject") => Check::new("dmarc", auth, Status::Pass, format!("`{text}`: {used}=reject{from}")),
        Some("quarantine") => Check::new(
            "dmarc",
            auth,
            Status::Pass,
            format!("`{text}`: {used}=quarantine (failing mail goes to spam){from}"),
        ),
        Some("none") => Check::new(
            "dmarc",
            auth,
            Status::Warn,
            format!("`{text}`: {used}=none only monitors; forged mail is delivered{from}"),
        )
        .with_fix(format!(
            "once the reports show only your own mail passing, publish `{name}. TXT \"v=DMARC1; p=reject; rua=mailto:dmarc-reports@{domain}\"`"
        )),
        _ => Check::new(
            "dmarc",
            auth,
            Status::Fail,
            format!("`{text}` has no valid p= policy"),
        )
        .with_fix(publish.clone()),
    }];
    if let Some(pct) = tag(&tags, "pct")
        && pct.parse::<u8>().map_or(true, |p| p < 100)
    {
        checks.push(
            Check::new(
                "dmarc-pct",
                auth,
                Status::Warn,
                format!("pct={pct}: the policy applies to part of the failing mail only"),
            )
            .with_fix("remove pct= (the default is 100)"),
        );
    }
    checks.push(match tag(&tags, "rua") {
        Some(rua) if rua.to_ascii_lowercase().contains("mailto:") => Check::new(
            "dmarc-reports",
            auth,
            Status::Pass,
            format!("aggregate reports go to {rua}"),
        ),
        _ => Check::new(
            "dmarc-reports",
            auth,
            Status::Warn,
            "no rua=: nobody learns who sends as the domain",
        )
        .with_fix(format!(
            "add `rua=mailto:dmarc-reports@{domain}` to the DMARC record"
        )),
    });
    checks
}

/// The DMARC record of the closest parent of `domain` that has one (below the top-level
/// domain, at most 5 levels up): receivers use a parent's record for a subdomain without its
/// own (RFC 7489 6.6.3 by organizational domain; the DMARCbis tree walk likewise).
async fn parent_dmarc(dns: &Dns, domain: &str) -> Result<Option<(String, Vec<String>)>, String> {
    let labels: Vec<&str> = domain.split('.').collect();
    for start in 1..labels.len().saturating_sub(1).min(6) {
        let parent = labels[start..].join(".");
        match txt(dns, &format!("_dmarc.{parent}")).await {
            Found::Records(texts) if !tagged(&texts, "v=DMARC1").is_empty() => {
                return Ok(Some((parent, texts)));
            }
            Found::Records(_) | Found::Nothing => {}
            Found::Failed(why) => return Err(why),
        }
    }
    Ok(None)
}

/// The bits of an RSA key published in a DKIM record (`p=`): SubjectPublicKeyInfo or bare
/// RSAPublicKey DER. A few DER lengths and tags are all that is read; a crate for two
/// INTEGERs would be more than the reading.
fn rsa_bits(der: &[u8]) -> Option<usize> {
    fn element(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = data.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (length, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 3 || rest.len() < count {
                return None;
            }
            let length = rest[..count].iter().fold(0usize, |n, b| n << 8 | usize::from(*b));
            (length, &rest[count..])
        };
        (rest.len() >= length).then(|| (tag, &rest[..length], &rest[length..]))
    }
    let (tag, body, _) = element(der)?;
    if tag != 0x30 {
        return None;
    }
    let (first_tag, first, rest) = element(body)?;
    let modulus = if first_tag == 0x30 {
        // SubjectPublicKeyInfo: algorithm, then a BIT STRING holding RSAPublicKey.
        let (bits_tag, bits, _) = element(rest)?;
        let (&unused, key) = bits.split_first()?;
        if bits_tag != 0x03 || unused != 0 {
            return None;
        }
        let (tag, sequence, _) = element(key)?;
        let (n_tag, n, _) = element(sequence).filter(|_| tag == 0x30)?;
        (n_tag == 0x02).then_some(n)?
    } else if first_tag == 0x02 {
        first
    } else {
        return None;
    };
    let significant: &[u8] = match modulus.iter().position(|b| *b != 0) {
        Some(at) => &modulus[at..],
        None => return Some(0),
    };
    Some(significant.len() * 8 - significant[0].leading_zeros() as usize)
}

/// The `dkim:SELECTOR` finding of the key at `SELECTOR._domainkey.DOMAIN`, with `id`
/// naming the signing domain too when it is not the checked domain.
async fn check_dkim(dns: &Dns, domain: &str, selector: &str, id: &str) -> Check {
    let name = format!("{selector}._domainkey.{domain}");
    let texts = match txt(dns, &name).await {
        Found::Records(texts) => texts,
        Found::Nothing => {
            return Check::new(
                id,
                Pillar::Integrity,
                Status::Fail,
                format!("no DKIM key at {name}"),
            )
            .with_fix(format!(
                "publish the selector's key (for a sealmail domain: `sealmail domain dns {domain}` prints it)"
            ));
        }
        Found::Failed(why) => return unchecked(id, Pillar::Integrity, "the DKIM key", &why),
    };
    let Some(text) = texts.iter().find(|t| t.contains("p=")) else {
        return Check::new(
            id,
            Pillar::Integrity,
            Status::Fail,
            format!("{name} holds no DKIM key (p=)"),
        )
        .with_fix("publish `v=DKIM1; k=rsa; p=BASE64-KEY` there");
    };
    let tags = tags(text);
    let key_type = tag(&tags, "k").unwrap_or("rsa").to_ascii_lowercase();
    let key: String = tag(&tags, "p")
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    if key.is_empty() {
        return Check::new(
            id,
            Pillar::Integrity,
            Status::Info,
            "the key is revoked (empty p=)",
        );
    }
    use base64::Engine;
    let Ok(der) = base64::engine::general_purpose::STANDARD.decode(&key) else {
        return Check::new(id, Pillar::Integrity, Status::Fail, "p= is not base64")
            .with_fix("publish the key's base64 text");
    };
    match key_type.as_str() {
        "ed25519" if der.len() == 32 => {
            Check::new(id, Pillar::Integrity, Status::Pass, "Ed25519 key (RFC 8463)")
        }
        "rsa" => match rsa_bits(&der) {
            Some(bits) if bits >= 2048 => {
                Check::new(id, Pillar::Integrity, Status::Pass, format!("RSA key of {bits} bits"))
            }
            Some(bits) => Check::new(
                id,
                Pillar::Integrity,
                Status::Fail,
                format!("RSA key of {bits} bits: under 2048 bits, signatures can be forged"),
            )
            .with_fix(format!(
                "make a 2048-bit key (for a sealmail domain: `sealmail dkim rotate {domain}`) and publish it under a new selector"
            )),
            None => Check::new(id, Pillar::Integrity, Status::Fail, "p= is not an RSA public key")
                .with_fix("publish the key as base64 DER (SubjectPublicKeyInfo)"),
        },
        other => Check::new(
            id,
            Pillar::Integrity,
            Status::Fail,
            format!("key type k={other} with a key of {} bytes is not one receivers check", der.len()),
        )
        .with_fix("publish an RSA (2048 bits or more) or Ed25519 key"),
    }
}

/// The MTA-STS record check, and the record's id when there is a valid one.
async fn check_mta_sts_record(dns: &Dns, domain: &str) -> (Check, Option<String>) {
    let name = format!("_mta-sts.{domain}");
    match txt(dns, &name).await {
        Found::Records(texts) => match tagged(&texts, "v=STSv1").as_slice() {
            [one] => match tag(&tags(one), "id").filter(|id| !id.is_empty()) {
                Some(id) => (
                    Check::new("mta-sts-record", Pillar::Encryption, Status::Pass, format!("`{one}`")),
                    Some(id.to_string()),
                ),
                None => (
                    Check::new(
                        "mta-sts-record",
                        Pillar::Encryption,
                        Status::Fail,
                        format!("`{one}` has no id"),
                    )
                    .with_fix(format!("publish `{name}. TXT \"v=STSv1; id=20260101\"`")),
                    None,
                ),
            },
            _ => (
                Check::new(
                    "mta-sts-record",
                    Pillar::Encryption,
                    Status::Fail,
                    format!("{name} holds no single valid `v=STSv1; id=...` record"),
                )
                .with_fix(format!("publish one `{name}. TXT \"v=STSv1; id=20260101\"`")),
                None,
            ),
        },
        Found::Nothing => (
            Check::new(
                "mta-sts-record",
                Pillar::Encryption,
                Status::Warn,
                "no MTA-STS: senders fall back to plaintext when STARTTLS is stripped",
            )
            .with_fix(format!(
                "serve a policy at https://mta-sts.{domain}/.well-known/mta-sts.txt and publish `{name}. TXT \"v=STSv1; id=20260101\"` (sealmail serves the policy: docs/WEB.md)"
            )),
            None,
        ),
        Found::Failed(why) => (
            unchecked("mta-sts-record", Pillar::Encryption, "the MTA-STS record", &why),
            None,
        ),
    }
}

/// A policy's `max_age` under this is too short to protect anything between visits.
const MIN_MAX_AGE: u64 = 86_400;

/// The MTA-STS policy (RFC 8461 3.2, 3.3): fetched over HTTPS with a valid certificate, its
/// mode, whether its `mx` patterns cover every MX host, and its max_age.
async fn check_mta_sts_policy(
    http: &reqwest::Client,
    domain: &str,
    port: u16,
    id: &str,
    mx_hosts: Option<&[String]>,
) -> Vec<Check> {
    use sealmail_delivery::mta_sts::{StsMode, fetch_policy};
    let enc = Pillar::Encryption;
    let policy = match fetch_policy(http, domain, port, id).await {
        Ok((policy, _)) => policy,
        Err(error) => {
            let why = match error.result_type() {
                sealmail_delivery::tls_rpt::ResultType::StsWebpkiInvalid => {
                    format!("its server's certificate is not valid or not trusted ({error})")
                }
                _ => error.to_string(),
            };
            return vec![
                Check::new(
                    "mta-sts-policy",
                    enc,
                    Status::Fail,
                    format!("the policy announced by the record cannot be used: {why}"),
                )
                .with_fix(format!(
                    "serve `version: STSv1`, `mode: enforce`, one `mx:` line per MX host and `max_age: 604800` as text/plain at https://mta-sts.{domain}/.well-known/mta-sts.txt, with a certificate valid for mta-sts.{domain}"
                )),
            ];
        }
    };
    let mut checks = vec![match policy.mode {
        StsMode::Enforce => Check::new("mta-sts-policy", enc, Status::Pass, "mode: enforce"),
        StsMode::Testing => Check::new(
            "mta-sts-policy",
            enc,
            Status::Warn,
            "mode: testing: senders report failures but still deliver without TLS",
        )
        .with_fix("set `mode: enforce` once the TLS reports show no failures (sealmail: `[mta_sts] mode = \"enforce\"`)"),
        StsMode::None => Check::new(
            "mta-sts-policy",
            enc,
            Status::Warn,
            "mode: none: the policy is withdrawn",
        )
        .with_fix("set `mode: enforce`"),
    }];
    if policy.mode != StsMode::None
        && let Some(mx_hosts) = mx_hosts
    {
        let uncovered: Vec<&String> = mx_hosts.iter().filter(|host| !policy.allows(host)).collect();
        checks.push(if uncovered.is_empty() {
            Check::new("mta-sts-mx", enc, Status::Pass, "the policy's mx lines cover every MX host")
        } else {
            let names: Vec<&str> = uncovered.iter().map(|h| h.as_str()).collect();
            Check::new(
                "mta-sts-mx",
                enc,
                Status::Fail,
                format!("the policy does not name the MX host(s) {}: senders that enforce it cannot deliver there", names.join(", ")),
            )
            .with_fix(
                names
                    .iter()
                    .map(|host| format!("add `mx: {host}` to the policy"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        });
    }
    checks.push(if policy.max_age < MIN_MAX_AGE {
        Check::new(
            "mta-sts-max-age",
            enc,
            Status::Warn,
            format!(
                "max_age: {} s: senders forget the policy within a day",
                policy.max_age
            ),
        )
        .with_fix("set `max_age: 604800` (a week) or more")
    } else {
        Check::new(
            "mta-sts-max-age",
            enc,
            Status::Pass,
            format!("max_age: {} s", policy.max_age),
        )
    });
    checks
}

async fn check_tls_rpt(dns: &Dns, domain: &str) -> Check {
    let name = format!("_smtp._tls.{domain}");
    let fix = format!("publish `{name}. TXT \"v=TLSRPTv1; rua=mailto:tls-reports@{domain}\"`");
    match txt(dns, &name).await {
        Found::Records(texts) => match tagged(&texts, "v=TLSRPTv1").as_slice() {
            [one] if tag(&tags(one), "rua").is_some() => {
                Check::new("tls-rpt", Pillar::Encryption, Status::Pass, format!("`{one}`"))
            }
            _ => Check::new(
                "tls-rpt",
                Pillar::Encryption,
                Status::Warn,
                format!("{name} holds no single valid TLS-RPT record"),
            )
            .with_fix(fix),
        },
        Found::Nothing => Check::new(
            "tls-rpt",
            Pillar::Encryption,
            Status::Warn,
            "no TLS-RPT record: senders cannot report TLS failures to you",
        )
        .with_fix(fix),
        Found::Failed(why) => unchecked("tls-rpt", Pillar::Encryption, "the TLS-RPT record", &why),
    }
}

/// RFC 6186 SRV records for mail clients: one for submission and one for IMAP (implicit TLS
/// preferred, RFC 8314).
/// The (d=, s=) of every DKIM-Signature header of `message` that parses, lowercased, at most
/// [`MAX_MESSAGE_SIGNATURES`]; mail-auth reads the headers (unfolding, tag lists).
pub fn dkim_signers(message: &[u8]) -> Result<Vec<(String, String)>, String> {
    let parsed = mail_auth::AuthenticatedMessage::parse(message)
        .ok_or("not a message: no header section could be read")?;
    let mut signers: Vec<(String, String)> = Vec::new();
    for header in &parsed.dkim_headers {
        let signer = (
            header.header.d.trim_end_matches('.').to_ascii_lowercase(),
            header.header.s.to_ascii_lowercase(),
        );
        if !signers.contains(&signer) {
            signers.push(signer);
        }
        if signers.len() == MAX_MESSAGE_SIGNATURES {
            break;
        }
    }
    Ok(signers)
}

/// DKIM signatures of a sample message whose keys are checked.
pub const MAX_MESSAGE_SIGNATURES: usize = 10;

/// Whether `signer` (a DKIM `d=`) is aligned with `domain` for DMARC in relaxed mode (RFC 7489
/// 3.1.1): the same name, a subdomain of it, or a parent of it that publishes the DMARC record
/// `domain` is judged by (`dmarc_at`: so a public suffix like `co.uk` never counts, as it
/// publishes none). Organizational domains are not computed from the public suffix list.
fn aligned(signer: &str, domain: &str, dmarc_at: Option<&str>) -> bool {
    signer == domain
        || signer.ends_with(&format!(".{domain}"))
        || dmarc_at.is_some_and(|at| at == signer && domain.ends_with(&format!(".{signer}")))
}

/// The `dkim-message` finding (does the sample message carry a signature that verifies, by a
/// domain DMARC aligns with `domain`?) and the key of every aligned signer's selector not
/// checked already. Verification is mail-auth's, as for inbound mail.
async fn check_message(
    dns: &Dns,
    domain: &str,
    message: &[u8],
    keys_checked: &mut Vec<(String, String)>,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let signers = match dkim_signers(message) {
        Ok(signers) => signers,
        Err(why) => {
            return vec![
                Check::new(
                    "dkim-message",
                    Pillar::Integrity,
                    Status::Fail,
                    format!("the sample message: {why}"),
                )
                .with_fix("give the whole message as received, headers first"),
            ];
        }
    };
    let dmarc_at = dmarc_location(dns, domain).await;
    let authenticator = sealmail_mailauth::Authenticator::new(dns, "check.sealmail.invalid");
    let Ok(results) = tokio::time::timeout(LOOKUP_TIMEOUT * 2, authenticator.dkim_results(message)).await
    else {
        return vec![unchecked(
            "dkim-message",
            Pillar::Integrity,
            "the keys of the sample message's signatures",
            &format!("no answer within {} s", (LOOKUP_TIMEOUT * 2).as_secs()),
        )];
    };
    let listed: Vec<String> = results
        .iter()
        .filter(|(d, _)| !d.is_empty())
        .map(|(d, result)| format!("d={d} {result}"))
        .collect();
    let is_aligned = |d: &str| aligned(d, domain, dmarc_at.as_deref());
    let passing = results
        .iter()
        .any(|(d, result)| *result == "pass" && is_aligned(d));
    let aligned_present = signers.iter().any(|(d, _)| is_aligned(d));
    checks.push(if signers.is_empty() {
        Check::new(
            "dkim-message",
            Pillar::Integrity,
            Status::Fail,
            "the sample message carries no DKIM signature (none that could be read)",
        )
        .with_fix(format!(
            "sign outgoing mail of {domain} with DKIM (sealmail signs by itself: `sealmail domain dns {domain}` prints the key to publish)"
        ))
    } else if passing {
        Check::new(
            "dkim-message",
            Pillar::Integrity,
            Status::Pass,
            format!("the sample message's DKIM signatures: {}", listed.join(", ")),
        )
    } else if results
        .iter()
        .any(|(d, result)| *result == "temperror" && is_aligned(d))
    {
        // A key that could not be looked up says nothing of the signature.
        unchecked(
            "dkim-message",
            Pillar::Integrity,
            "the key of an aligned signature of the sample message",
            "temperror",
        )
    } else if aligned_present {
        Check::new(
            "dkim-message",
            Pillar::Integrity,
            Status::Fail,
            format!(
                "no DKIM signature of the sample message by {domain} verifies ({}): receivers treat it as unsigned",
                listed.join(", ")
            ),
        )
        .with_fix("give the message exactly as received (nothing re-encoded after signing), and check that the published key is the signing key")
    } else {
        Check::new(
            "dkim-message",
            Pillar::Integrity,
            Status::Warn,
            format!(
                "the sample message is signed only by other domains ({}): no signature DMARC aligns with {domain}",
                listed.join(", ")
            ),
        )
        .with_fix(format!("sign the mail of {domain} with d={domain}"))
    });
    for (signer, selector) in &signers {
        if !is_aligned(signer) || keys_checked.contains(&(signer.clone(), selector.clone())) {
            continue;
        }
        let id = if signer == domain {
            format!("dkim:{selector}")
        } else {
            format!("dkim:{selector}@{signer}")
        };
        checks.push(check_dkim(dns, signer, selector, &id).await);
        keys_checked.push((signer.clone(), selector.clone()));
    }
    checks
}

/// Where `domain`'s DMARC record is: the domain itself or the closest parent with one.
async fn dmarc_location(dns: &Dns, domain: &str) -> Option<String> {
    match txt(dns, &format!("_dmarc.{domain}")).await {
        Found::Records(texts) if !tagged(&texts, "v=DMARC1").is_empty() => Some(domain.to_string()),
        _ => parent_dmarc(dns, domain)
            .await
            .ok()
            .flatten()
            .map(|(parent, _)| parent),
    }
}

/// SRV records of one name looked at; a real one has one or two.
const MAX_SRV_RECORDS: usize = 8;

/// The RFC 6186 / RFC 8314 SRV records of the client services; with the servers they name
/// (a target of `.` says the service is not offered: RFC 6186 3.4), for the server checks.
async fn check_srv(dns: &Dns, domain: &str) -> (Vec<Check>, Vec<ClientServer>) {
    let mut checks = Vec::new();
    let mut servers = Vec::new();
    for (id, names) in [
        (
            "srv-submission",
            [
                ("_submissions._tcp", Service::Submissions),
                ("_submission._tcp", Service::Submission),
            ],
        ),
        (
            "srv-imap",
            [("_imaps._tcp", Service::Imaps), ("_imap._tcp", Service::Imap)],
        ),
    ] {
        let mut found = Vec::new();
        let mut failed = None;
        for (prefix, service) in names {
            let name = format!("{prefix}.{domain}");
            match lookup(dns, &name, RecordType::SRV).await {
                Found::Records(records) => {
                    for data in records.into_iter().take(MAX_SRV_RECORDS) {
                        if let RData::SRV(srv) = data {
                            let host = srv.target.to_ascii().trim_end_matches('.').to_ascii_lowercase();
                            if host.is_empty() {
                                found.push(format!("{prefix} not offered"));
                                continue;
                            }
                            found.push(format!("{prefix} {host}:{}", srv.port));
                            servers.push(ClientServer {
                                service,
                                host,
                                port: srv.port,
                                published: true,
                            });
                        }
                    }
                }
                Found::Nothing => {}
                Found::Failed(why) => failed = Some(why),
            }
        }
        checks.push(match (found.is_empty(), failed) {
            (false, _) => Check::new(id, Pillar::ProtocolSupport, Status::Pass, found.join(", ")),
            (true, Some(why)) => unchecked(id, Pillar::ProtocolSupport, "the SRV records", &why),
            (true, None) => Check::new(
                id,
                Pillar::ProtocolSupport,
                Status::Warn,
                format!(
                    "no {} SRV record: mail clients must be told the server by hand",
                    names[0].0
                ),
            )
            .with_fix(format!(
                "publish `{}.{domain}. SRV 0 1 {} mail.{domain}.`",
                names[0].0,
                if id == "srv-imap" { 993 } else { 465 }
            )),
        });
    }
    (checks, servers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spf_terms_are_read_and_counted() {
        let record = parse_spf(
            "v=spf1 ip4:192.0.2.0/24 a mx:example.org include:_spf.example.net ptr exists:%{i}.x.example redirect=other.example -all",
        );
        assert_eq!(
            record,
            Ok(SpfRecord {
                includes: vec!["_spf.example.net".to_string()],
                redirect: Some("other.example".to_string()),
                lookups: 6,
                all: Some('-'),
                uses_ptr: true,
            })
        );
        assert_eq!(parse_spf("v=spf1 ~all").map(|r| r.all), Ok(Some('~')));
        assert_eq!(parse_spf("v=spf1 +all").map(|r| r.all), Ok(Some('+')));
        assert_eq!(parse_spf("v=spf1 all").map(|r| r.all), Ok(Some('+')));
        assert_eq!(parse_spf("v=spf1 ip4 -all"), Err("ip4".to_string()));
        assert_eq!(parse_spf("v=spf1 include: -all"), Err("include:".to_string()));
        assert_eq!(parse_spf("v=spf1 foo:bar -all"), Err("foo:bar".to_string()));
        assert!(parse_spf("v=spf1 unknown-mod=1 -all").is_ok());
        // Evaluation stops at the first `all`.
        assert_eq!(parse_spf("v=spf1 +all -all").map(|r| r.all), Ok(Some('+')));
        let texts = ["v=spf1; -all", "v=spf10 -all", "V=SPF1 -all", "v=DMARC1;p=none"].map(String::from);
        assert_eq!(tagged(&texts, "v=spf1"), [&texts[2]]);
        assert_eq!(tagged(&texts, "v=DMARC1"), [&texts[3]]);
    }

    #[test]
    fn a_signer_is_aligned_when_it_is_the_domain_below_it_or_where_its_dmarc_record_is() {
        assert!(aligned("example.org", "example.org", Some("example.org")));
        assert!(aligned("news.example.org", "example.org", Some("example.org")));
        assert!(aligned("example.org", "shop.example.org", Some("example.org")));
        // A parent that is not where the DMARC record is: a public suffix, say.
        assert!(!aligned("co.uk", "shop.co.uk", Some("shop.co.uk")));
        assert!(!aligned("co.uk", "shop.co.uk", None));
        assert!(!aligned("example.net", "example.org", Some("example.org")));
        assert!(!aligned("evilexample.org", "example.org", Some("example.org")));
    }

    #[test]
    fn rsa_key_sizes_are_read_from_either_encoding() {
        fn spki_of(modulus_bytes: usize) -> Vec<u8> {
            // RSAPublicKey { n (with a leading 0), e }, in a SubjectPublicKeyInfo.
            let mut n = vec![0x02, 0x82];
            n.extend_from_slice(&((modulus_bytes + 1) as u16).to_be_bytes());
            n.push(0);
            n.push(0xc1);
            n.extend(std::iter::repeat_n(0x55, modulus_bytes - 1));
            let e = [0x02, 0x03, 0x01, 0x00, 0x01];
            let mut rsa = vec![0x30, 0x82];
            rsa.extend_from_slice(&((n.len() + e.len()) as u16).to_be_bytes());
            rsa.extend(n);
            rsa.extend(e);
            let mut bits = vec![0x03, 0x82];
            bits.extend_from_slice(&((rsa.len() + 1) as u16).to_be_bytes());
            bits.push(0);
            bits.extend(&rsa);
            let algorithm = [
                0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
            ];
            let mut spki = vec![0x30, 0x82];
            spki.extend_from_slice(&((algorithm.len() + bits.len()) as u16).to_be_bytes());
            spki.extend(algorithm);
            spki.extend(bits);
            spki
        }
        assert_eq!(rsa_bits(&spki_of(256)), Some(2048));
        assert_eq!(rsa_bits(&spki_of(128)), Some(1024));
        assert_eq!(rsa_bits(b"\x30\x05\x02\x03\x01\x00"), None);
        assert_eq!(rsa_bits(b"\x30\x82\xff\xff"), None);
        assert_eq!(rsa_bits(b""), None);
    }
}
