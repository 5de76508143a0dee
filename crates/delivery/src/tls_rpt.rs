//! SMTP TLS reporting (RFC 8460): the daily report per recipient domain, built from the TLS
//! results delivery counted (`tls_results`), and its sending to the addresses the domain
//! publishes in `_smtp._tls.DOMAIN` (`v=TLSRPTv1; rua=...`): to `mailto:` ones as mail like any
//! other (queued, DKIM-signed by the caller, delivered under the same TLS policies), to
//! `https:` ones as a POST of the gzip-compressed JSON (RFC 8460 5.4) with the MTA-STS client
//! (certificate verified, no redirects, our resolver). The mail's MIME structure is
//! mail-builder's, in the frame of `sealmail_dsn::generated_message`.

use std::io::Write as _;

use mail_auth::common::parse::TxtRecordParser as _;
use mail_auth::mta_sts::{ReportUri, TlsRpt};
use mail_builder::headers::address::Address;
use mail_builder::headers::content_type::ContentType;
use mail_builder::mime::MimePart;
use sealmail_dns::Dns;
use sealmail_store::{Store, StoreError, TlsResultCount};

/// RFC 8460 4.4 `policy-type`: the policy a session was held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyType {
    /// MTA-STS (RFC 8461).
    Sts,
    /// DANE (RFC 7672).
    Tlsa,
    NoPolicyFound,
}

impl PolicyType {
    pub const ALL: [PolicyType; 3] = [PolicyType::Sts, PolicyType::Tlsa, PolicyType::NoPolicyFound];

    /// The RFC 8460 spelling, as stored and as the report's JSON carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyType::Sts => "sts",
            PolicyType::Tlsa => "tlsa",
            PolicyType::NoPolicyFound => "no-policy-found",
        }
    }

    /// The type a stored row names, if it is one of ours.
    pub fn parse(text: &str) -> Option<PolicyType> {
        PolicyType::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

impl std::fmt::Display for PolicyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// RFC 8460 4.3 `result-type`: why a session (or a policy fetch) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResultType {
    // 4.3.1: negotiation failures.
    StarttlsNotSupported,
    CertificateHostMismatch,
    CertificateExpired,
    CertificateNotTrusted,
    ValidationFailure,
    // 4.3.2.1: DANE.
    TlsaInvalid,
    DnssecInvalid,
    DaneRequired,
    // 4.3.2.2: MTA-STS.
    StsPolicyFetchError,
    StsPolicyInvalid,
    StsWebpkiInvalid,
}

impl ResultType {
    pub const ALL: [ResultType; 11] = [
        ResultType::StarttlsNotSupported,
        ResultType::CertificateHostMismatch,
        ResultType::CertificateExpired,
        ResultType::CertificateNotTrusted,
        ResultType::ValidationFailure,
        ResultType::TlsaInvalid,
        ResultType::DnssecInvalid,
        ResultType::DaneRequired,
        ResultType::StsPolicyFetchError,
        ResultType::StsPolicyInvalid,
        ResultType::StsWebpkiInvalid,
    ];

    /// The RFC 8460 spelling, as stored and as the report's JSON carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            ResultType::StarttlsNotSupported => "starttls-not-supported",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::ValidationFailure => "validation-failure",
            ResultType::TlsaInvalid => "tlsa-invalid",
            ResultType::DnssecInvalid => "dnssec-invalid",
            ResultType::DaneRequired => "dane-required",
            ResultType::StsPolicyFetchError => "sts-policy-fetch-error",
            ResultType::StsPolicyInvalid => "sts-policy-invalid",
            ResultType::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }

    pub fn parse(text: &str) -> Option<ResultType> {
        ResultType::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

impl std::fmt::Display for ResultType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one session counts as in the day's results. RFC 8460 names only failures; the store
/// keeps a success as `success` in the same column, so that one row kind counts both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Success,
    Failure(ResultType),
}

impl Outcome {
    const SUCCESS: &'static str = "success";

    /// The text the store keeps.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => Outcome::SUCCESS,
            Outcome::Failure(result_type) => result_type.as_str(),
        }
    }

    pub fn parse(text: &str) -> Option<Outcome> {
        match text {
            Outcome::SUCCESS => Some(Outcome::Success),
            _ => ResultType::parse(text).map(Outcome::Failure),
        }
    }
}

/// One domain's report for one UTC day.
#[derive(Debug, Clone)]
pub struct Report {
    pub domain: String,
    pub report_id: String,
    /// The RFC 8460 4.4 JSON document.
    pub json: serde_json::Value,
}

/// The reports of `day` (YYYY-MM-DD, UTC): one per recipient domain that had an MTA-STS or
/// DANE policy, or a failure that a policy would report.
pub async fn reports(store: &dyn Store, day: &str, hostname: &str) -> Result<Vec<Report>, StoreError> {
    let mut domains: std::collections::BTreeMap<String, Vec<TlsResultCount>> = Default::default();
    for row in store.tls_results().await? {
        if row.day == day {
            domains
                .entry(row.result.policy_domain.clone())
                .or_default()
                .push(row);
        }
    }
    // Rows stay text here: a row whose types this version does not know (written by another
    // version) is still counted and reported as it was stored.
    fn success(row: &TlsResultCount) -> bool {
        Outcome::parse(&row.result.result_type) == Some(Outcome::Success)
    }
    let mut reports = Vec::new();
    for (domain, rows) in domains {
        let mut policies = Vec::new();
        let mut types: Vec<&str> = rows.iter().map(|r| r.result.policy_type.as_str()).collect();
        types.sort();
        types.dedup();
        for policy_type in types {
            let rows: Vec<&TlsResultCount> = rows
                .iter()
                .filter(|r| r.result.policy_type == policy_type)
                .collect();
            let count = |wanted: bool| -> i64 {
                rows.iter()
                    .filter(|r| success(r) == wanted)
                    .map(|r| r.count)
                    .sum()
            };
            let failures: Vec<serde_json::Value> = rows
                .iter()
                .filter(|r| !success(r))
                .map(|r| {
                    serde_json::json!({
                        "result-type": r.result.result_type,
                        "receiving-mx-hostname": r.result.mx_host,
                        "failed-session-count": r.count,
                        "additional-information": r.result.detail,
                    })
                })
                .collect();
            let policy_string: Vec<String> = match PolicyType::parse(policy_type) {
                Some(PolicyType::Sts) => store
                    .mta_sts_policy(&domain)
                    .await?
                    .map(|policy| {
                        policy
                            .body
                            .lines()
                            .map(|l| l.trim_end().to_string())
                            .filter(|l| !l.is_empty())
                            .collect()
                    })
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            let mut mx: Vec<&str> = rows
                .iter()
                .map(|r| r.result.mx_host.as_str())
                .filter(|h| !h.is_empty())
                .collect();
            mx.sort();
            mx.dedup();
            policies.push(serde_json::json!({
                "policy": {
                    "policy-type": policy_type,
                    "policy-string": policy_string,
                    "policy-domain": domain,
                    "mx-host": mx,
                },
                "summary": {
                    "total-successful-session-count": count(true),
                    "total-failure-session-count": count(false),
                },
                "failure-details": failures,
            }));
        }
        let report_id = format!("{day}.{domain}@{hostname}");
        let json = serde_json::json!({
            "organization-name": hostname,
            "date-range": {
                "start-datetime": format!("{day}T00:00:00Z"),
                "end-datetime": format!("{day}T23:59:59Z"),
            },
            "contact-info": format!("postmaster@{hostname}"),
            "report-id": report_id,
            "policies": policies,
        });
        reports.push(Report {
            domain,
            report_id,
            json,
        });
    }
    Ok(reports)
}

/// Where a domain wants its reports.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Destinations {
    pub mail: Vec<String>,
    pub https: Vec<String>,
}

/// The TLSRPT record could not be looked up: the report waits for the next run.
#[derive(Debug, thiserror::Error)]
#[error("TXT lookup for {name} failed: {error}")]
pub struct LookupError {
    name: String,
    error: hickory_resolver::net::NetError,
}

/// Where `domain` wants its reports (RFC 8460 3): the `mailto:` and `https:` URIs of its TLSRPT
/// record (at most [`MAX_REPORT_ADDRESSES`] in all); none when it publishes no (valid) record.
pub async fn report_addresses(dns: &Dns, domain: &str) -> Result<Destinations, LookupError> {
    let name = format!("_smtp._tls.{}.", domain.trim_end_matches('.'));
    let lookup = match dns.resolver().txt_lookup(name.as_str()).await {
        Ok(lookup) => lookup,
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => return Ok(Destinations::default()),
        Err(error) => return Err(LookupError { name, error }),
    };
    for record in lookup.answers() {
        let hickory_proto::rr::RData::TXT(txt) = &record.data else {
            continue;
        };
        let text: Vec<u8> = txt.txt_data.iter().flat_map(|s| s.iter().copied()).collect();
        let Some(found) = destinations(domain, &text) else {
            continue;
        };
        // RFC 8460 3: more than one record is an error; the first valid one counts.
        return Ok(found);
    }
    Ok(Destinations::default())
}

/// The report destinations of one TLSRPT TXT record's text, or `None` when it is not a valid
/// record. `domain` is only for the log.
pub fn destinations(domain: &str, record: &[u8]) -> Option<Destinations> {
    let policy = TlsRpt::parse(record).ok()?;
    let mut found = Destinations::default();
    for uri in policy.rua {
        if found.mail.len() + found.https.len() >= MAX_REPORT_ADDRESSES {
            break;
        }
        match uri {
            ReportUri::Mail(address) if valid_address(&address) => found.mail.push(address),
            ReportUri::Http(url) if valid_url(&url) => found.https.push(url),
            ReportUri::Mail(uri) | ReportUri::Http(uri) => {
                tracing::info!(domain, uri = %uri.escape_debug(), "TLS report address skipped: not a mail address or https URL")
            }
        }
    }
    Some(found)
}

fn valid_url(url: &str) -> bool {
    url.len() <= 2048 && url.starts_with("https://") && reqwest::Url::parse(url).is_ok()
}

/// A published record may name any number of addresses; a report goes to the first few.
const MAX_REPORT_ADDRESSES: usize = 5;

fn valid_address(address: &str) -> bool {
    sealmail_types::EmailAddress::parse(address).is_ok() && !address.contains(['\r', '\n', '<', '>', ','])
}

/// The report's JSON, gzip-compressed (`application/tlsrpt+gzip`).
pub fn compressed(report: &Report) -> std::io::Result<Vec<u8>> {
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(report.json.to_string().as_bytes())?;
    gzip.finish()
}

/// The report as mail (RFC 8460 5.3): `multipart/report; report-type="tlsrpt"` with the JSON
/// gzip-compressed as `application/tlsrpt+gzip` (base64, named
/// `submitter!domain!begin!end.json.gz`), and the TLS-Report-Domain and TLS-Report-Submitter
/// fields. No trailing signature: the caller signs it.
pub fn message(report: &Report, from: &str, to: &[String], submitter: &str) -> std::io::Result<Vec<u8>> {
    let compressed = compressed(report)?;
    let token = sealmail_dsn::random_token().map_err(std::io::Error::other)?;
    let day = report
        .json
        .pointer("/date-range/start-datetime")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .get(..10)
        .unwrap_or_default()
        .to_string();
    // The file name (RFC 8460 5.3): submitter!domain!begin!end, in Unix seconds.
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let begin = time::Date::parse(&day, &format)
        .map(|d| d.midnight().assume_utc().unix_timestamp())
        .unwrap_or_default();
    let end = begin + 86_399;
    let filename = format!("{submitter}!{}!{begin}!{end}.json.gz", report.domain);
    // Short lines: mail-builder sends them as they are (7bit) rather than quoted-printable.
    let text = format!(
        "This is an SMTP TLS report (RFC 8460).\r\n\r\nPolicy domain: {}\r\nSubmitter: {submitter}\r\nDay (UTC): {day}\r\n",
        report.domain
    );
    // Our random boundary: mail-builder's own is derived from the clock.
    let body = MimePart::new(
        ContentType::new("multipart/report")
            .attribute("report-type", "tlsrpt")
            .attribute("boundary", format!("sealmail-tlsrpt-{token}")),
        vec![
            MimePart::new("text/plain", text),
            MimePart::new("application/tlsrpt+gzip", compressed).attachment(filename),
        ],
    );
    let to = Address::new_list(to.iter().map(|a| Address::from(a.as_str())).collect());
    sealmail_dsn::generated_message(
        sealmail_dsn::Generated {
            from: Address::from(from),
            to,
            subject: format!(
                "Report Domain: {} Submitter: {submitter} Report-ID: <{}>",
                report.domain, report.report_id
            ),
            id_domain: submitter,
            auto_submitted: "auto-generated",
        },
        vec![
            ("TLS-Report-Domain", report.domain.clone()),
            ("TLS-Report-Submitter", submitter.to_string()),
        ],
        body,
    )
    .map_err(std::io::Error::other)
}

/// Signs a report message: returns the DKIM-Signature header fields to put before it (empty
/// when the sending domain has no key).
pub type SignReport = dyn Fn(&[u8]) -> Vec<u8> + Send + Sync;

/// What one [`send`] did, by domain.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sent {
    /// Queued to these addresses.
    pub queued: Vec<(String, Vec<String>)>,
    /// Accepted (2xx) by this HTTPS address.
    pub posted: Vec<(String, String)>,
    /// The domain publishes no report address.
    pub no_address: Vec<String>,
    /// Sent before (by an earlier run or another node).
    pub already_sent: Vec<String>,
    /// The report address lookup failed (tried again by the next run), or an HTTPS address
    /// refused the report.
    pub failed: Vec<(String, String)>,
}

/// Queues the reports of `day` (YYYY-MM-DD, UTC) to each domain's `mailto:` addresses, once
/// per day and domain, from `from` (which should be an address of a domain `sign` signs for,
/// so that the report passes DMARC).
pub async fn send(
    store: &dyn Store,
    dns: &Dns,
    http: &reqwest::Client,
    hostname: &str,
    day: &str,
    from: &sealmail_types::EmailAddress,
    sign: &SignReport,
) -> Result<Sent, StoreError> {
    let mut sent = Sent::default();
    for report in reports(store, day, hostname).await? {
        let domain = report.domain.clone();
        let destinations = match report_addresses(dns, &domain).await {
            Ok(destinations) => destinations,
            Err(e) => {
                sent.failed.push((domain, e.to_string()));
                continue;
            }
        };
        // Claimed before it is sent: a crash in between loses one report rather than
        // sending it twice.
        if !store.claim_tls_report(day, &domain).await? {
            sent.already_sent.push(domain);
            continue;
        }
        if destinations.mail.is_empty() && destinations.https.is_empty() {
            sent.no_address.push(domain);
            continue;
        }
        for url in &destinations.https {
            match post(http, url, &report).await {
                Ok(()) => sent.posted.push((domain.clone(), url.clone())),
                Err(e) => sent.failed.push((domain.clone(), format!("{url}: {e}"))),
            }
        }
        let addresses = destinations.mail;
        if addresses.is_empty() {
            continue;
        }
        let message = match message(&report, &from.to_string(), &addresses, hostname) {
            Ok(message) => message,
            Err(e) => {
                sent.failed.push((domain, e.to_string()));
                continue;
            }
        };
        let mut content = sign(&message);
        content.extend_from_slice(&message);
        let recipients = addresses
            .iter()
            .filter_map(|a| sealmail_types::EmailAddress::parse(a).ok())
            .map(|address| sealmail_store::QueueRecipient {
                address,
                // Nobody reads a bounce of a report.
                dsn_notify: Some("NEVER".into()),
                dsn_orcpt: None,
            })
            .collect();
        store
            .accept_message(sealmail_store::AcceptedMessage {
                local: None,
                outbound: Some(sealmail_store::OutboundCopy {
                    content,
                    sender: from.to_string(),
                    recipients,
                    dsn_envid: None,
                    dsn_ret: None,
                    require_tls: false,
                }),
            })
            .await?;
        tracing::info!(domain, day, to = ?addresses, "TLS report queued");
        sent.queued.push((domain, addresses));
    }
    Ok(sent)
}

/// Why an HTTPS address did not take a report; told after the URL in [`Sent::failed`].
#[derive(Debug, thiserror::Error)]
enum PostError {
    #[error("{0}")]
    Compress(std::io::Error),
    #[error("{0}")]
    Request(reqwest::Error),
    /// Anything but 2xx.
    #[error("answered {0}")]
    Refused(reqwest::StatusCode),
}

/// POSTs the report to `url` (RFC 8460 5.4); a 2xx answer is success.
async fn post(http: &reqwest::Client, url: &str, report: &Report) -> Result<(), PostError> {
    let body = compressed(report).map_err(PostError::Compress)?;
    let response = http
        .post(url)
        .header("Content-Type", "application/tlsrpt+gzip")
        .body(body)
        .send()
        .await
        .map_err(PostError::Request)?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(PostError::Refused(response.status()))
    }
}

/// Yesterday (UTC) as YYYY-MM-DD: the day a daily run reports on.
pub fn yesterday() -> String {
    time::OffsetDateTime::now_utc()
        .date()
        .previous_day()
        .map(|d| d.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealmail_store::ReportStore;
    use sealmail_testkit::dns::DnsServer;

    #[test]
    fn types_are_spelt_as_rfc_8460_and_read_back() {
        let policy_types: Vec<&str> = PolicyType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(policy_types, ["sts", "tlsa", "no-policy-found"]);
        let result_types: Vec<&str> = ResultType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(
            result_types,
            [
                "starttls-not-supported",
                "certificate-host-mismatch",
                "certificate-expired",
                "certificate-not-trusted",
                "validation-failure",
                "tlsa-invalid",
                "dnssec-invalid",
                "dane-required",
                "sts-policy-fetch-error",
                "sts-policy-invalid",
                "sts-webpki-invalid",
            ]
        );
        for t in PolicyType::ALL {
            assert_eq!(PolicyType::parse(t.as_str()), Some(t));
            assert_eq!(t.to_string(), t.as_str());
        }
        for t in ResultType::ALL {
            assert_eq!(ResultType::parse(t.as_str()), Some(t));
            assert_eq!(Outcome::parse(t.as_str()), Some(Outcome::Failure(t)));
            assert_eq!(t.to_string(), t.as_str());
        }
        assert_eq!(Outcome::Success.as_str(), "success");
        assert_eq!(Outcome::parse("success"), Some(Outcome::Success));
        // Exact spellings only, as stored.
        for unknown in ["STS", "sts ", "no_policy_found", ""] {
            assert_eq!(PolicyType::parse(unknown), None, "{unknown:?}");
        }
        for unknown in ["Success", "success ", "certificate_expired", "sts"] {
            assert_eq!(Outcome::parse(unknown), None, "{unknown:?}");
        }
    }

    /// Rows are read back as stored: the types this version writes, and any other text.
    #[tokio::test]
    async fn reports_count_stored_rows_by_their_text() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = sealmail_store::SqliteStore::open(dir.path(), 16).await?;
        let row = |policy_type: &str, result_type: &str| sealmail_store::TlsResult {
            policy_domain: "b.test".into(),
            policy_type: policy_type.into(),
            mx_host: "mx.b.test".into(),
            result_type: result_type.into(),
            detail: "why".into(),
        };
        for outcome in [
            Outcome::Success,
            Outcome::Success,
            Outcome::Failure(ResultType::CertificateExpired),
        ] {
            store
                .record_tls_result(row(PolicyType::Sts.as_str(), outcome.as_str()))
                .await?;
        }
        // Types that some other version wrote.
        store
            .record_tls_result(row("future-policy", "future-failure"))
            .await?;
        let day = store.tls_results().await?.first().ok_or("no row")?.day.clone();
        let reports = reports(&store, &day, "mail.a.test").await?;
        let [report] = reports.as_slice() else {
            return Err(format!("one report expected: {reports:?}").into());
        };
        let policies = &report.json["policies"];
        assert_eq!(policies[0]["policy"]["policy-type"], "future-policy");
        assert_eq!(policies[0]["summary"]["total-failure-session-count"], 1);
        assert_eq!(policies[0]["failure-details"][0]["result-type"], "future-failure");
        assert_eq!(policies[1]["policy"]["policy-type"], "sts");
        assert_eq!(policies[1]["summary"]["total-successful-session-count"], 2);
        assert_eq!(policies[1]["summary"]["total-failure-session-count"], 1);
        assert_eq!(
            policies[1]["failure-details"][0]["result-type"],
            "certificate-expired"
        );
        Ok(())
    }

    #[test]
    fn a_refused_post_says_what_the_server_answered() {
        assert_eq!(
            PostError::Refused(reqwest::StatusCode::FORBIDDEN).to_string(),
            "answered 403 Forbidden"
        );
    }

    #[test]
    fn destinations_of_one_record() {
        let found = destinations(
            "example.org",
            b"v=TLSRPTv1; rua=mailto:tls@example.org,https://r.example.org/v1",
        );
        assert_eq!(
            found,
            Some(Destinations {
                mail: vec!["tls@example.org".into()],
                https: vec!["https://r.example.org/v1".into()],
            })
        );
        assert_eq!(destinations("example.org", b"v=spf1 -all"), None);
        assert_eq!(
            destinations("example.org", b"v=TLSRPTv1; rua=mailto:a@b>,http://x.example/"),
            Some(Destinations::default())
        );
    }

    #[tokio::test]
    async fn report_addresses_are_the_record_s_valid_mailto_uris() -> Result<(), Box<dyn std::error::Error>> {
        let server = DnsServer::start().await?;
        let many: Vec<String> = (0..8).map(|i| format!("mailto:r{i}@many.test")).collect();
        server.add_txt(
            "_smtp._tls.many.test",
            &format!("v=TLSRPTv1; rua={}", many.join(",")),
        );
        server.add_txt(
            "_smtp._tls.mixed.test",
            "v=TLSRPTv1; rua=https://reports.mixed.test/v1,mailto:tls@mixed.test,mailto:not an address,http://plain.mixed.test/",
        );
        server.add_txt("_smtp._tls.broken.test", "v=TLSRPTv2; rua=mailto:x@broken.test");
        let dns = crate::test_dns(&server)?;
        let many = report_addresses(&dns, "many.test").await?;
        assert_eq!(many.mail.len(), MAX_REPORT_ADDRESSES);
        assert_eq!(many.mail[0], "r0@many.test");
        assert_eq!(
            report_addresses(&dns, "mixed.test").await?,
            Destinations {
                mail: vec!["tls@mixed.test".into()],
                https: vec!["https://reports.mixed.test/v1".into()],
            }
        );
        assert_eq!(
            report_addresses(&dns, "broken.test").await?,
            Destinations::default()
        );
        assert_eq!(
            report_addresses(&dns, "none.test").await?,
            Destinations::default()
        );
        Ok(())
    }

    #[test]
    fn the_report_mail_carries_the_json_gzip_compressed() -> Result<(), Box<dyn std::error::Error>> {
        use mail_parser::MimeHeaders as _;
        let report = Report {
            domain: "b.test".into(),
            report_id: "2026-11-28.b.test@mail.a.test".into(),
            json: serde_json::json!({"report-id": "2026-11-28.b.test@mail.a.test",
                "date-range": {"start-datetime": "2026-11-28T00:00:00Z"}}),
        };
        let mail = message(&report, "tls-reports@a.test", &["r@b.test".into()], "mail.a.test")?;
        let parsed = mail_parser::MessageParser::default()
            .parse(&mail)
            .ok_or("does not parse")?;
        assert_eq!(
            parsed.subject(),
            Some("Report Domain: b.test Submitter: mail.a.test Report-ID: <2026-11-28.b.test@mail.a.test>")
        );
        let attachment = parsed.attachment(0).ok_or("no attachment")?;
        let mut json = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(attachment.contents()),
            &mut json,
        )?;
        assert_eq!(json, report.json.to_string());
        assert_eq!(
            attachment.attachment_name(),
            Some("mail.a.test!b.test!1795824000!1795910399.json.gz")
        );
        Ok(())
    }

    /// RFC 8460 5.3: a `multipart/report; report-type="tlsrpt"` of a text part and the
    /// base64 `application/tlsrpt+gzip` report, with TLS-Report-Domain, TLS-Report-Submitter
    /// and the fields of a message the server writes itself; CRLF lines of at most 998 octets.
    #[test]
    fn the_report_mail_is_a_tlsrpt_report_with_the_rfc_8460_fields() -> Result<(), Box<dyn std::error::Error>>
    {
        use mail_parser::MimeHeaders as _;
        let domain = format!("{}.b.test", "long-label".repeat(5));
        let report = Report {
            domain: domain.clone(),
            report_id: format!("2026-11-28.{domain}@mail.a.test"),
            json: serde_json::json!({"date-range": {"start-datetime": "2026-11-28T00:00:00Z"},
                "policies": [{"summary": {"total-successful-session-count": 3}}]}),
        };
        let to = ["r@b.test".to_string(), "s@b.test".to_string()];
        let mail = message(&report, "tls-reports@a.test", &to, "mail.a.test")?;
        assert!(mail.ends_with(b"\r\n"));
        for line in mail.split_inclusive(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r\n").ok_or("a line without CRLF")?;
            assert!(!line.contains(&b'\r') && line.len() <= 998, "{line:?}");
        }
        let parsed = mail_parser::MessageParser::default()
            .parse(&mail)
            .ok_or("does not parse")?;
        let kind = parsed.content_type().ok_or("no content type")?;
        let kind = (kind.ctype(), kind.subtype(), kind.attribute("report-type"));
        assert_eq!(kind, ("multipart", Some("report"), Some("tlsrpt")));
        let field = |name| parsed.header_raw(name).map(str::trim);
        assert_eq!(field("TLS-Report-Domain"), Some(domain.as_str()));
        assert_eq!(field("TLS-Report-Submitter"), Some("mail.a.test"));
        assert_eq!(field("Auto-Submitted"), Some("auto-generated"));
        assert_eq!(
            parsed.subject(),
            Some(
                format!(
                    "Report Domain: {domain} Submitter: mail.a.test Report-ID: <{}>",
                    report.report_id
                )
                .as_str()
            )
        );
        let from = parsed.from().and_then(|a| a.first()).ok_or("no From")?;
        assert_eq!(from.address(), Some("tls-reports@a.test"));
        let recipients: Vec<Option<&str>> = parsed.to().ok_or("no To")?.iter().map(|a| a.address()).collect();
        assert_eq!(recipients, [Some("r@b.test"), Some("s@b.test")]);
        assert!(
            parsed.message_id().is_some_and(|id| id.ends_with("@mail.a.test")),
            "{:?}",
            parsed.message_id()
        );
        let date = parsed.date().ok_or("no Date")?.to_timestamp();
        assert!((time::OffsetDateTime::now_utc().unix_timestamp() - date).abs() < 60);

        let ids = parsed.root_part().sub_parts().ok_or("not multipart")?;
        let [text, gzip] = ids else {
            return Err(format!("two parts expected: {ids:?}").into());
        };
        let text = parsed.part(*text).ok_or("no text part")?;
        assert_eq!(text.content_type().map(|t| t.ctype()), Some("text"));
        assert!(
            text.text_contents()
                .is_some_and(|t| t.contains("SMTP TLS report"))
        );
        // Short lines: sent as they are, and saying so.
        assert_eq!(text.content_transfer_encoding(), Some("7bit"));
        let gzip = parsed.part(*gzip).ok_or("no report part")?;
        let kind = gzip.content_type().ok_or("no type")?;
        assert_eq!(
            (kind.ctype(), kind.subtype()),
            ("application", Some("tlsrpt+gzip"))
        );
        assert_eq!(gzip.content_transfer_encoding(), Some("base64"));
        assert_eq!(gzip.content_disposition().map(|d| d.ctype()), Some("attachment"));
        assert_eq!(
            gzip.attachment_name(),
            Some(format!("mail.a.test!{domain}!1795824000!1795910399.json.gz").as_str())
        );
        let mut json = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(gzip.contents()), &mut json)?;
        assert_eq!(serde_json::from_str::<serde_json::Value>(&json)?, report.json);
        Ok(())
    }
}
