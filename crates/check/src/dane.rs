//! The DANE check of an MX host (RFC 7672): its TLSA records at `_25._tcp.HOST`, whether the
//! resolver vouches for them (the AD bit: DNSSEC-validated), whether any is usable for SMTP,
//! and whether they match the certificate chain the host presented in the server check.
//!
//! The records are always looked up at port 25, whatever `--port smtp` says: that is where
//! sending servers look, and a test installation publishes what a real one would. The
//! matching itself is the delivery crate's (`dane_match`), so the check judges a host exactly
//! as our own outbound delivery would.

use std::sync::Arc;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sealmail_delivery::verify::{Tlsa, dane_match};
use sealmail_dns::Dns;
use sha2::{Digest, Sha256};

use crate::report::{Check, Pillar, Status};

/// What the TLSA lookup of one host found.
pub enum TlsaAnswer {
    /// NXDOMAIN or no TLSA record.
    None,
    /// The records, and whether the resolver said they are DNSSEC-validated (AD).
    Records { records: Vec<Tlsa>, validated: bool },
    /// SERVFAIL, another error code, or no answer in time.
    Failed(String),
    /// Not asked: no nameserver to ask with the AD bit (none configured, none in the system's
    /// configuration).
    Unasked(String),
}

/// TLSA records judged for one host; a real one has a few (current and next key).
const MAX_TLSA_RECORDS: usize = 16;
/// Certificates of a presented chain compared with them.
const MAX_CHAIN: usize = 10;

/// The TLSA records of `_25._tcp.host`, asked with the AD bit set (a validating resolver only
/// vouches for an answer to a client that asks: RFC 6840 5.7).
pub async fn lookup(dns: &Dns, host: &str) -> TlsaAnswer {
    let name = tlsa_name(host);
    let answer = match tokio::time::timeout(
        crate::dns::LOOKUP_TIMEOUT,
        dns.query_authenticated(&format!("{name}."), RecordType::TLSA),
    )
    .await
    {
        Ok(Ok(answer)) => answer,
        Ok(Err(e @ sealmail_dns::QueryError::NoServer)) => return TlsaAnswer::Unasked(e.to_string()),
        Ok(Err(e)) => return TlsaAnswer::Failed(e.to_string()),
        Err(_) => {
            return TlsaAnswer::Failed(format!(
                "no answer within {} s",
                crate::dns::LOOKUP_TIMEOUT.as_secs()
            ));
        }
    };
    match answer.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return TlsaAnswer::None,
        code => return TlsaAnswer::Failed(code.to_string()),
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
        .take(MAX_TLSA_RECORDS)
        .collect();
    if records.is_empty() {
        return TlsaAnswer::None;
    }
    TlsaAnswer::Records {
        records,
        validated: answer.metadata.authentic_data,
    }
}

fn tlsa_name(host: &str) -> String {
    format!("_25._tcp.{}", host.trim_end_matches('.').to_ascii_lowercase())
}

/// The `3 1 1` record (DANE-EE, the key's SHA-256) for a certificate: the record to publish,
/// and one that survives renewals as long as the key is kept (sealmail's ACME keeps it).
fn record_for(host: &str, leaf: &CertificateDer<'_>) -> Option<String> {
    let spki = sealmail_delivery::verify::spki(leaf.as_ref())?;
    let digest: String = Sha256::digest(&spki).iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("{}. IN TLSA 3 1 1 {digest}", tlsa_name(host)))
}

/// Whether the domain's MX answer was DNSSEC-validated: senders look up TLSA records only for
/// MX hosts from a validated answer (RFC 7672 2.2.1).
pub async fn mx_validated(dns: &Dns, domain: &str) -> Option<bool> {
    let asked = tokio::time::timeout(
        crate::dns::LOOKUP_TIMEOUT,
        dns.query_authenticated(&format!("{}.", domain.trim_end_matches('.')), RecordType::MX),
    )
    .await;
    match asked {
        Ok(Ok(answer)) if answer.metadata.response_code == ResponseCode::NoError => {
            Some(answer.metadata.authentic_data)
        }
        _ => None,
    }
}

/// The `dane:HOST` finding: `chain` is what the host presented on the SMTP port (end entity
/// first), `None` when no TLS handshake got that far; `mx_validated` whether the MX answer
/// naming the host was DNSSEC-validated (`None`: unknown). Where DANE cannot apply because the
/// MX answer is not validated, what the TLSA records would mean is said in a WARN.
pub fn check(
    host: &str,
    answer: TlsaAnswer,
    chain: Option<&[CertificateDer<'static>]>,
    mx_validated: Option<bool>,
    domain: &str,
) -> Check {
    let judged = judge(host, answer, chain);
    match mx_validated {
        Some(true) => judged,
        _ if judged.status == Status::Warn && judged.detail.starts_with("no TLSA record") => judged,
        Some(false) => Check::new(
            &judged.id,
            Pillar::Authentication,
            Status::Warn,
            format!(
                "the MX records of {domain} are not DNSSEC-validated, so senders do not use DANE for {host} (RFC 7672 2.2.1); its TLSA records: {}",
                judged.detail
            ),
        )
        .with_fix(format!(
            "sign the zone of {domain} with DNSSEC{}",
            judged.fix.as_deref().map(|f| format!("; then: {f}")).unwrap_or_default()
        )),
        None => Check::new(
            &judged.id,
            Pillar::Authentication,
            Status::Warn,
            format!(
                "whether the MX records of {domain} are DNSSEC-validated is unknown (the AD-bit query failed); its TLSA records: {}",
                judged.detail
            ),
        )
        .with_fix("check again with a validating resolver (--nameserver)")
        .incomplete(),
    }
}

fn judge(host: &str, answer: TlsaAnswer, chain: Option<&[CertificateDer<'static>]>) -> Check {
    let id = format!("dane:{host}");
    let name = tlsa_name(host);
    let publish = |why: &str| match chain
        .and_then(|c| c.first())
        .and_then(|leaf| record_for(host, leaf))
    {
        Some(record) => format!(
            "{why}publish `{record}` (the key of the certificate {host} presents) in a DNSSEC-signed zone"
        ),
        None => {
            format!("{why}publish a TLSA 3 1 1 record of the server's key at {name} in a DNSSEC-signed zone")
        }
    };
    let (records, validated) = match answer {
        TlsaAnswer::None => {
            return Check::new(
                &id,
                Pillar::Authentication,
                Status::Warn,
                format!("no TLSA record at {name}: DANE senders cannot authenticate {host}"),
            )
            .with_fix(publish(""));
        }
        TlsaAnswer::Failed(why) => {
            // A failed TLSA lookup makes DANE senders hold the mail (RFC 7672 2.2.1).
            return Check::new(
                &id,
                Pillar::Authentication,
                Status::Fail,
                format!("the TLSA lookup of {name} failed ({why}): senders that validate DNSSEC hold mail for {host}"),
            )
            .with_fix(format!(
                "make the nameservers of {host} answer TLSA queries (NOERROR or NXDOMAIN), signed"
            ));
        }
        TlsaAnswer::Unasked(why) => {
            return Check::new(
                &id,
                Pillar::Authentication,
                Status::Warn,
                format!("the TLSA records at {name} could not be asked for with their DNSSEC status ({why})"),
            )
            .with_fix("give a validating resolver with --nameserver (or [dns] nameservers)")
            .incomplete();
        }
        TlsaAnswer::Records { records, validated } => (records, validated),
    };
    let listed: Vec<String> = records
        .iter()
        .map(|r| format!("{} {} {}", r.usage, r.selector, r.matching))
        .collect();
    let usable: Vec<Tlsa> = records.iter().filter(|r| r.usable()).cloned().collect();
    let matched = chain.and_then(|chain| {
        let (leaf, intermediates) = chain[..chain.len().min(MAX_CHAIN)].split_first()?;
        let server_name = ServerName::try_from(host.trim_end_matches('.').to_string()).ok()?;
        let provider = Arc::new(sealmail_tls::restricted_provider());
        Some(
            dane_match(
                &usable,
                leaf,
                intermediates,
                &server_name,
                UnixTime::now(),
                &provider,
            )
            .map_err(|e| e.to_string()),
        )
    });
    if !validated {
        let matching = match &matched {
            Some(Ok(how)) => format!(" (they would match: {how})"),
            Some(Err(why)) => format!(" (and they would not match: {why})"),
            None => String::new(),
        };
        return Check::new(
            &id,
            Pillar::Authentication,
            Status::Warn,
            format!(
                "TLSA records at {name} ({}), but the resolver did not say they are DNSSEC-validated: senders ignore them{matching}",
                listed.join(", ")
            ),
        )
        .with_fix(format!(
            "sign the zone of {host} with DNSSEC (if it is signed, check with a validating resolver: --nameserver or [dns] nameservers with trust_ad_bit)"
        ));
    }
    if usable.is_empty() {
        return Check::new(
            &id,
            Pillar::Authentication,
            Status::Fail,
            format!(
                "no TLSA record at {name} is usable for SMTP ({}): only DANE-TA (2) and DANE-EE (3) are (RFC 7672 3.1.3); senders use TLS without checking the certificate",
                listed.join(", ")
            ),
        )
        .with_fix(publish("replace them: "));
    }
    match matched {
        Some(Ok(how)) => Check::new(
            &id,
            Pillar::Authentication,
            Status::Pass,
            format!(
                "DNSSEC-validated TLSA records at {name} ({}); the certificate {host} presents matches ({how})",
                listed.join(", ")
            ),
        ),
        Some(Err(why)) => Check::new(
            &id,
            Pillar::Authentication,
            Status::Fail,
            format!("the certificate {host} presents does not match its TLSA records ({why}): DANE senders will not deliver to it"),
        )
        .with_fix(publish(
            "publish the record of the served certificate beside the old ones, and remove those after two TTLs: ",
        )),
        None => Check::new(
            &id,
            Pillar::Authentication,
            Status::Warn,
            format!(
                "DNSSEC-validated TLSA records at {name} ({}), not compared: no TLS handshake with {host}",
                listed.join(", ")
            ),
        )
        .incomplete(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_nameserver_to_ask_leaves_the_check_incomplete_not_failed() {
        let check = check(
            "mx.example.org",
            TlsaAnswer::Unasked("no nameserver".into()),
            None,
            Some(true),
            "example.org",
        );
        assert_eq!(check.status, Status::Warn);
        assert!(check.incomplete, "{check:?}");
    }

    #[test]
    fn records_of_a_host_from_an_unvalidated_mx_answer_pass_nothing() {
        let records = TlsaAnswer::Records {
            records: vec![Tlsa {
                usage: 3,
                selector: 1,
                matching: 1,
                data: vec![7; 32],
            }],
            validated: true,
        };
        let check = check("mx.example.org", records, None, Some(false), "example.org");
        assert_eq!(check.status, Status::Warn);
        assert!(
            check
                .detail
                .starts_with("the MX records of example.org are not DNSSEC-validated")
        );
        // Unknown MX status: the grade cannot be an A.
        let unknown = check_unknown();
        assert!(
            unknown.incomplete && unknown.status == Status::Warn,
            "{unknown:?}"
        );
    }

    fn check_unknown() -> Check {
        check(
            "mx.example.org",
            TlsaAnswer::Failed("SERVFAIL".into()),
            None,
            None,
            "example.org",
        )
    }
}
