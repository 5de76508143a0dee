//! Inbound (role `mx`) sender authentication: SPF for HELO and MAIL FROM, every DKIM
//! signature, ARC, and DMARC, turned into an `Authentication-Results` header (RFC 8601) and a
//! decision: accept, deliver to Junk, refuse, or ask the sender to try again.
//!
//! Our policy on top of mail-auth's checks:
//! - rsa-sha1 signatures never pass (RFC 8301), whatever the cryptography says: they are
//!   reported as `dkim=policy` and left out of DMARC, and an ARC chain with an rsa-sha1 seal or
//!   message signature fails. RSA keys under 1024 bits already fail in the cryptography layer.
//! - At most [`MAX_DKIM_SIGNATURES`] DKIM signatures per message are checked.
//! - DMARC `p=reject` failures are refused (550 5.7.1), `p=quarantine` failures go to Junk.
//! - A temporary DNS failure that could change the outcome (the DMARC lookup itself, or SPF or
//!   DKIM when DMARC did not pass) asks the sender to retry (451 4.7.x): never a silent pass.

use std::borrow::Cow;
use std::net::IpAddr;

use mail_auth::ArcOutput;
use mail_auth::common::crypto::Algorithm;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcResult, Parameters, SpfResult,
};

use crate::Authenticator;

/// What to do with DMARC failures and DNS trouble; the defaults are the secure ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundPolicy {
    /// Refuse mail failing DMARC from a domain that publishes `p=reject`.
    pub dmarc_reject: bool,
    /// Deliver mail failing DMARC from a domain that publishes `p=quarantine` to Junk.
    pub dmarc_quarantine: bool,
    /// Answer 451 when a DNS failure could have changed the verdict.
    pub tempfail_on_dns_error: bool,
    /// Mark suspicious mail (DMARC failure, look-alike sender): an `X-Sealmail-Warning`
    /// header and the IMAP keyword `$Phishing`.
    pub phishing_warnings: bool,
    /// Also insert the warning as a line at the top of the text (alters the message, and so
    /// breaks the sender's DKIM signature for anyone who checks it later).
    pub phishing_notice_in_body: bool,
}

impl Default for InboundPolicy {
    fn default() -> Self {
        InboundPolicy {
            dmarc_reject: true,
            dmarc_quarantine: true,
            tempfail_on_dns_error: true,
            phishing_warnings: true,
            phishing_notice_in_body: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    Accept,
    /// Deliver, to the recipients' Junk mailboxes.
    Junk,
    /// Refuse with 550 5.7.1 and this text.
    Reject(String),
    /// Refuse with 451 4.7.x and this text.
    TempFail(String),
}

/// Where a message came from: the client's address, the name it gave in HELO/EHLO, and the
/// MAIL FROM address (empty for `<>`).
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    pub client: IpAddr,
    pub helo: &'a str,
    pub mail_from: &'a str,
}

/// The inbound verdict as an SMTP session needs it (its unit tests use a fake).
#[async_trait::async_trait]
pub trait InboundVerdicts: Send + Sync {
    async fn verdict(&self, arrival: Arrival<'_>, message: &[u8], policy: &InboundPolicy) -> Verdict;
}

#[async_trait::async_trait]
impl InboundVerdicts for Authenticator {
    async fn verdict(&self, arrival: Arrival<'_>, message: &[u8], policy: &InboundPolicy) -> Verdict {
        self.check_inbound(arrival, message, policy).await
    }
}

/// The outcome of the inbound checks.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The whole `Authentication-Results: ...\r\n` header to put on the message.
    pub header: String,
    pub disposition: Disposition,
    /// `pass`, `fail`, `none`, `temperror`, `permerror`, as in the header.
    pub dmarc: &'static str,
    /// The RFC 5322.From domain DMARC was evaluated for.
    pub from_domain: String,
}

/// The most DKIM signatures checked in one message (RFC 6376 6.1 lets a verifier limit them,
/// and 8.4 warns of messages that carry many): each costs a DNS lookup, perhaps a timeout, and
/// a public-key operation, and a message can carry thousands. The topmost ones, the most
/// recently added, are checked (chasquid also stops at five); the rest are reported together
/// as one `dkim=policy`. As many malformed signatures are reported, each as `neutral`.
pub const MAX_DKIM_SIGNATURES: usize = 5;

/// Leaves at most [`MAX_DKIM_SIGNATURES`] signatures, and as many malformed ones, in
/// `parsed`; returns how many it took out.
fn limit_dkim_signatures(parsed: &mut AuthenticatedMessage<'_>) -> usize {
    let mut dropped = parsed.dkim_headers.len().saturating_sub(MAX_DKIM_SIGNATURES);
    parsed.dkim_headers.truncate(MAX_DKIM_SIGNATURES);
    let mut malformed = 0;
    parsed.errors.retain(|h| {
        if !matches!(h.header, mail_auth::Error::Dkim(_)) {
            return true;
        }
        malformed += 1;
        if malformed > MAX_DKIM_SIGNATURES {
            dropped += 1;
            return false;
        }
        true
    });
    dropped
}

/// The most distinct author domains evaluated in one From field; more is refused (each costs
/// a DMARC tree walk of up to eight DNS lookups).
pub const MAX_FROM_DOMAINS: usize = 5;

/// How many header fields named From the header section holds (unfolded field names only).
fn from_field_count(message: &[u8]) -> usize {
    let mut count = 0;
    for line in message.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if line[..colon].trim_ascii_end().eq_ignore_ascii_case(b"From") {
            count += 1;
        }
    }
    count
}

/// Each distinct author domain (lower-case A-label) with the first address that names it;
/// None when an address of the From field has no valid domain (mail-parser can leave control
/// characters in one, which would then reach our headers and replies).
fn author_domains(parsed: &AuthenticatedMessage<'_>) -> Option<Vec<(String, String)>> {
    let mut domains: Vec<(String, String)> = Vec::new();
    for address in parsed.froms() {
        let (_, domain) = address.rsplit_once('@')?;
        let domain = sealmail_types::Domain::parse(domain).ok()?.as_str().to_string();
        if domains.iter().any(|(d, _)| *d == domain) {
            continue;
        }
        domains.push((domain, address.clone()));
    }
    Some(domains)
}

/// How strict the handling of one author domain's DMARC outcome is: refusal over a retry over
/// Junk over a failure that is only marked over a pass.
fn severity(output: &mail_auth::DmarcOutput, policy: &InboundPolicy) -> u8 {
    match output.result() {
        DmarcResult::Fail(_) => match output.policy() {
            Policy::Reject if policy.dmarc_reject => 4,
            Policy::Quarantine | Policy::Reject if policy.dmarc_quarantine => 2,
            _ => 1,
        },
        DmarcResult::TempError(_) => 3,
        DmarcResult::PermError(_) => 1,
        DmarcResult::None => 0,
        DmarcResult::Pass => 0,
    }
}

fn dmarc_name(result: &DmarcResult) -> &'static str {
    match result {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    }
}

/// Removes `Authentication-Results` header fields (and their continuation lines) whose
/// authserv-id is ours (RFC 8601 5: a receiver must not trust, and should delete, results that
/// claim to be its own and that it did not add), and every `X-Sealmail-Warning` field: a
/// sender could otherwise write its own text into the header users are told to trust. Only
/// the header section is looked at.
pub fn strip_forged_results<'m>(message: &'m [u8], authserv_id: &str) -> Cow<'m, [u8]> {
    let mut out: Option<Vec<u8>> = None;
    let mut dropping = false;
    let mut offset = 0;
    for line in message.split_inclusive(|&b| b == b'\n') {
        let start = offset;
        offset += line.len();
        if line == b"\r\n" || line == b"\n" {
            // End of the header: the rest is copied unchanged.
            if let Some(out) = out.as_mut() {
                out.extend_from_slice(&message[start..]);
            }
            break;
        }
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            dropping = claims_our_id(line, authserv_id) || is_named(line, b"X-Sealmail-Warning");
        }
        if dropping {
            out.get_or_insert_with(|| message[..start].to_vec());
        } else if let Some(out) = out.as_mut() {
            out.extend_from_slice(line);
        }
    }
    match out {
        Some(out) => Cow::Owned(out),
        None => Cow::Borrowed(message),
    }
}

fn is_named(line: &[u8], name: &[u8]) -> bool {
    line.iter()
        .position(|&b| b == b':')
        .is_some_and(|colon| line[..colon].trim_ascii().eq_ignore_ascii_case(name))
}

fn claims_our_id(line: &[u8], authserv_id: &str) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    if !line[..colon]
        .trim_ascii()
        .eq_ignore_ascii_case(b"Authentication-Results")
    {
        return false;
    }
    // The authserv-id is the first token of the value (before ';' or whitespace).
    let value = line[colon + 1..].trim_ascii_start();
    let end = value
        .iter()
        .position(|&b| b == b';' || b.is_ascii_whitespace())
        .unwrap_or(value.len());
    value[..end].eq_ignore_ascii_case(authserv_id.as_bytes())
}

impl Authenticator {
    /// ARC validation with our RFC 8301 rule: a chain with any rsa-sha1 seal or message
    /// signature does not pass.
    async fn verify_arc<'x>(&'x self, parsed: &'x AuthenticatedMessage<'x>) -> ArcOutput<'x> {
        let arc = self
            .inner
            .verify_arc(Parameters::new(parsed).with_txt_cache(&*self.txt_cache))
            .await;
        let weak = parsed
            .ams_headers
            .iter()
            .any(|h| h.header.a == Algorithm::RsaSha1)
            || parsed.as_headers.iter().any(|h| h.header.a == Algorithm::RsaSha1);
        if weak && matches!(arc.result(), DkimResult::Pass) {
            return arc.with_result(DkimResult::Fail(mail_auth::Error::Crypto(
                mail_auth::common::crypto::CryptoError::Library("rsa-sha1 is not accepted (RFC 8301)".into()),
            )));
        }
        arc
    }

    /// Every DKIM signature's result, with our RFC 8301 rule: valid rsa-sha1 signatures come
    /// back separately (second list) and must not count as a pass.
    async fn verify_dkim<'x>(
        &'x self,
        parsed: &'x AuthenticatedMessage<'x>,
    ) -> (Vec<DkimOutput<'x>>, Vec<DkimOutput<'x>>) {
        let dkim = self
            .inner
            .verify_dkim(Parameters::new(parsed).with_txt_cache(&*self.txt_cache))
            .await;
        let (weak, dkim) = dkim.into_iter().partition(|d| {
            matches!(d.result(), DkimResult::Pass) && d.signature().is_some_and(|s| s.a == Algorithm::RsaSha1)
        });
        (dkim, weak)
    }

    /// Each DKIM signature's result as Authentication-Results names it (RFC 8601 2.7.1), with
    /// its `d=` (empty when the signature could not be parsed); rsa-sha1 ones last. Signatures
    /// with `l=` never pass (`neutral`): content could be appended after the signed part.
    /// Past [`MAX_DKIM_SIGNATURES`], one `("", "policy")` stands for the signatures not checked.
    pub async fn dkim_results(&self, message: &[u8]) -> Vec<(String, &'static str)> {
        let Some(mut parsed) = AuthenticatedMessage::parse(message) else {
            return Vec::new();
        };
        let unchecked = limit_dkim_signatures(&mut parsed);
        let (dkim, weak) = self.verify_dkim(&parsed).await;
        let mut results: Vec<(String, &'static str)> = dkim
            .iter()
            .map(|d| {
                let domain = d
                    .signature()
                    .map(|s| s.d.to_ascii_lowercase())
                    .unwrap_or_default();
                let result = match d.result() {
                    DkimResult::Pass => "pass",
                    DkimResult::Neutral(_) => "neutral",
                    DkimResult::Fail(_) => "fail",
                    DkimResult::PermError(_) => "permerror",
                    DkimResult::TempError(_) => "temperror",
                    DkimResult::None => "none",
                };
                (domain, result)
            })
            .collect();
        results.extend(
            weak.iter()
                .filter_map(|d| d.signature())
                .map(|s| (s.d.to_ascii_lowercase(), "policy")),
        );
        if unchecked > 0 {
            results.push((String::new(), "policy"));
        }
        results
    }

    /// The ARC chain's validation state (RFC 8617 5.2): "pass", "fail" or "none" (no chain).
    pub async fn arc_chain(&self, message: &[u8]) -> &'static str {
        let Some(parsed) = AuthenticatedMessage::parse(message) else {
            return "none";
        };
        let arc = self.verify_arc(&parsed).await;
        match arc.result() {
            DkimResult::Pass => "pass",
            DkimResult::None => "none",
            _ => "fail",
        }
    }

    /// Runs every check on a message received on `mx` (see [`Arrival`]). `message` is the
    /// message as received, without our trace headers, with forged results already stripped.
    pub async fn check_inbound(
        &self,
        arrival: Arrival<'_>,
        message: &[u8],
        policy: &InboundPolicy,
    ) -> Verdict {
        let Arrival {
            client: ip,
            helo,
            mail_from,
        } = arrival;
        let spf_helo = self.spf_helo(ip, helo).await;
        let spf_mail = self.spf_mail_from(ip, helo, mail_from).await;
        let mail_from_domain = match mail_from.rsplit_once('@') {
            Some((_, domain)) => domain.to_string(),
            None => helo.to_string(),
        };
        // Refused before DKIM and DMARC ran: the header has the SPF results.
        let refused = |why: String| Verdict {
            header: AuthenticationResults::new(&self.hostname)
                .with_spf_ehlo_result(&spf_helo, ip, helo)
                .with_spf_mailfrom_result(&spf_mail, ip, mail_from, helo)
                .to_header(),
            disposition: Disposition::Reject(why),
            dmarc: "permerror",
            from_domain: String::new(),
        };
        let Some(mut parsed) = AuthenticatedMessage::parse(message) else {
            return refused("The message header cannot be parsed".into());
        };
        // RFC 5322 3.6: exactly one From field, naming at least one mailbox. mail-auth exempts
        // a From of several domains from DMARC (and one without an address has nothing to
        // check), which would let `From: ceo@bank.test, x@evil.test` through unchecked.
        // A message without any From is left to DMARC's "none" (RFC 7489 6.6.1 lets receivers
        // choose; many automated senders omit it), so nothing is claimed that needs checking.
        let authors = author_domains(&parsed);
        let malformed_from = match from_field_count(message) {
            0 => None,
            1 if authors.is_none() => {
                Some("its From header field has an address without a valid domain".to_string())
            }
            1 if authors.as_ref().is_some_and(Vec::is_empty) => {
                Some("its From header field names no address".to_string())
            }
            1 if authors.as_ref().is_some_and(|a| a.len() > MAX_FROM_DOMAINS) => Some(format!(
                "its From header field names more than {MAX_FROM_DOMAINS} domains"
            )),
            1 => None,
            _ => Some("it has more than one From header field".to_string()),
        };
        if let Some(why) = malformed_from {
            return refused(format!(
                "Message rejected: {why} (RFC 5322 3.6), so its author cannot be verified"
            ));
        }
        let unchecked = limit_dkim_signatures(&mut parsed);
        let (dkim, weak) = self.verify_dkim(&parsed).await;
        let arc = self.verify_arc(&parsed).await;
        // RFC 7489 6.6.1: with several author domains each is evaluated on its own and the
        // strictest outcome applies.
        // No From field: DMARC's own answer (none) for the message as it is.
        let evaluate: Vec<(String, AuthenticatedMessage<'_>)> = match authors {
            Some(authors) if !authors.is_empty() => authors
                .into_iter()
                .map(|(domain, address)| {
                    let mut single = parsed.clone();
                    single.from = vec![address];
                    (domain, single)
                })
                .collect(),
            _ => vec![(String::new(), parsed.clone())],
        };
        let mut evaluated = Vec::with_capacity(evaluate.len());
        for (domain, message) in &evaluate {
            let output = self
                .inner
                .verify_dmarc(
                    Parameters::new(DmarcParameters::new(message, &dkim, &mail_from_domain, &spf_mail))
                        .with_txt_cache(&*self.txt_cache),
                )
                .await;
            evaluated.push((domain.clone(), output));
        }
        let strictest = evaluated
            .iter()
            .enumerate()
            .max_by_key(|(i, (_, output))| (severity(output, policy), std::cmp::Reverse(*i)))
            .map(|(i, _)| i)
            .unwrap_or(0);
        let (from_domain, dmarc) = evaluated.swap_remove(strictest);

        let mut results = AuthenticationResults::new(&self.hostname);
        if self.reverse_lookups {
            // RFC 8601 3: iprev is informational here; it never decides delivery.
            let iprev = self.inner.verify_iprev(ip).await;
            results = results.with_iprev_result(&iprev, ip);
        }
        let mut results = results
            .with_dkim_results(&dkim, parsed.from())
            .with_spf_ehlo_result(&spf_helo, ip, helo)
            .with_spf_mailfrom_result(&spf_mail, ip, mail_from, helo)
            .with_arc_result(&arc, ip);
        results = results.with_dmarc_result(&dmarc);
        for (_, other) in &evaluated {
            results = results.with_dmarc_result(other);
        }
        let mut results = results.to_header();
        if !weak.is_empty() || unchecked > 0 {
            // Insert before the final CRLF: one `dkim=policy` per rsa-sha1 signature, one for
            // the signatures past the limit.
            results.truncate(results.trim_end_matches("\r\n").len());
            for signature in weak.iter().filter_map(|d| d.signature()) {
                // Written by us, not by mail-auth: only a valid domain goes into our header.
                let domain = sealmail_types::Domain::parse(&signature.d)
                    .map(String::from)
                    .unwrap_or_else(|_| "invalid".to_string());
                results.push_str(&format!(
                    ";\r\n\tdkim=policy reason=\"rsa-sha1 is not accepted (RFC 8301)\" header.d={domain}"
                ));
            }
            if unchecked > 0 {
                results.push_str(&format!(
                    ";\r\n\tdkim=policy reason=\"{unchecked} more DKIM signatures not checked (limit {MAX_DKIM_SIGNATURES})\""
                ));
            }
            results.push_str("\r\n");
        }

        let result = dmarc.result();
        let dns_trouble = matches!(result, DmarcResult::TempError(_))
            || (!matches!(result, DmarcResult::Pass)
                && (spf_mail.result() == SpfResult::TempError
                    || dkim
                        .iter()
                        .any(|d| matches!(d.result(), DkimResult::TempError(_)))));
        let disposition = if dns_trouble && policy.tempfail_on_dns_error {
            Disposition::TempFail(format!(
                "Sender authentication for {from_domain} could not be completed (temporary DNS failure); try again later"
            ))
        } else if matches!(result, DmarcResult::Fail(_)) {
            match dmarc.policy() {
                Policy::Reject if policy.dmarc_reject => Disposition::Reject(format!(
                    "Message rejected: {from_domain} publishes a DMARC reject policy and this message fails it"
                )),
                Policy::Quarantine | Policy::Reject if policy.dmarc_quarantine => Disposition::Junk,
                _ => Disposition::Accept,
            }
        } else {
            Disposition::Accept
        };
        Verdict {
            header: results,
            disposition,
            dmarc: dmarc_name(&result),
            from_domain,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_results_claiming_our_id_are_stripped() {
        let message = b"Received: x\r\nAuthentication-Results: mx.ours.test; dkim=pass\r\n\theader.d=bank.test\r\nAuthentication-Results: other.test; spf=fail\r\nauthentication-results:MX.OURS.TEST;spf=pass\r\nSubject: hi\r\n\r\nAuthentication-Results: mx.ours.test; body text\r\n";
        let stripped = strip_forged_results(message, "mx.ours.test");
        assert_eq!(
            String::from_utf8_lossy(&stripped),
            "Received: x\r\nAuthentication-Results: other.test; spf=fail\r\nSubject: hi\r\n\r\nAuthentication-Results: mx.ours.test; body text\r\n"
        );
        let forged = b"X-Sealmail-Warning: none, this sender is verified\r\n\tand trusted\r\nx-sealmail-warning:x\r\nSubject: hi\r\n\r\nX-Sealmail-Warning: in the body\r\n";
        assert_eq!(
            String::from_utf8_lossy(&strip_forged_results(forged, "mx.ours.test")),
            "Subject: hi\r\n\r\nX-Sealmail-Warning: in the body\r\n"
        );
        let clean = b"Subject: hi\r\n\r\nbody\r\n";
        assert!(matches!(
            strip_forged_results(clean, "mx.ours.test"),
            Cow::Borrowed(_)
        ));
    }
}
