//! What happens to a message between its last byte and the store, as named stages: mail from
//! other servers (`mx`) goes through [`INBOUND`], mail from our users through [`SUBMISSION`].
//! A stage reads and adds to one [`Draft`], or refuses the message with the reply the client
//! gets. A new step (ARC sealing, encryption at rest) is one more [`Stage`] and one more entry
//! in a list; the session only runs the list, routes the recipients and stores the result.

use std::net::IpAddr;

use sealmail_mailauth::inbound::{
    Arrival, Disposition, InboundPolicy, InboundVerdicts, strip_forged_results,
};
use sealmail_mailauth::phishing;
use sealmail_mailauth::signing::MessageSigning;
use sealmail_store::Store;
use sealmail_types::EmailAddress;

use crate::message;
use crate::reply::Reply;

/// A message on its way to the store.
#[derive(Debug, Default)]
pub struct Draft {
    /// Our id for it: logs, the Received line, an added Message-ID.
    pub id: String,
    /// The message as the client sent it, as stages rewrite it (forged results stripped,
    /// warnings added).
    pub content: Vec<u8>,
    /// Header fields added on the author's behalf (Message-ID, Date): part of the message,
    /// signed with it.
    pub added: Vec<u8>,
    /// Our Authentication-Results field (inbound).
    pub authentication: Vec<u8>,
    /// DKIM-Signature fields (submission).
    pub signatures: Vec<u8>,
    /// DMARC asked for quarantine: local copies go to Junk.
    pub to_junk: bool,
    /// Keywords the local copies get (`$Phishing`).
    pub flags: Vec<String>,
    /// What sender authentication found, for the stages after it.
    pub verdict: Option<Found>,
}

/// What the sender-authentication stage found.
#[derive(Debug, Clone)]
pub struct Found {
    pub from_domain: String,
    pub dmarc: &'static str,
}

impl Draft {
    pub fn new(id: String, content: Vec<u8>) -> Draft {
        Draft {
            id,
            content,
            ..Draft::default()
        }
    }

    /// The message as stored or sent, after `first` (a Return-Path): our fields above the
    /// author's, in the order a reader of the trace expects (newest first: RFC 5321 4.4,
    /// RFC 8601 5), then the message. One allocation of the final size.
    pub fn assemble(&self, first: &[u8], received: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            first.len()
                + self.authentication.len()
                + received.len()
                + self.signatures.len()
                + self.added.len()
                + self.content.len(),
        );
        out.extend_from_slice(first);
        out.extend_from_slice(&self.authentication);
        out.extend_from_slice(received.as_bytes());
        out.extend_from_slice(&self.signatures);
        out.extend_from_slice(&self.added);
        out.extend_from_slice(&self.content);
        out
    }

    /// The message as its author's client would see it sent: the added fields and the content
    /// (what DKIM signs, what a "delivered" notice quotes).
    pub fn authored(&self) -> Vec<u8> {
        let mut out = self.added.clone();
        out.extend_from_slice(&self.content);
        out
    }
}

/// The envelope and session facts stages may read.
pub struct Envelope<'a> {
    pub client: IpAddr,
    pub helo: &'a str,
    /// MAIL FROM as text; empty for the null sender.
    pub sender: &'a str,
    /// The logged-in user (submission).
    pub account: Option<&'a EmailAddress>,
    /// Our host name: the authserv-id of Authentication-Results, the right side of added
    /// Message-IDs.
    pub hostname: &'a str,
}

impl<'a> Envelope<'a> {
    /// Where the message came from, as sender authentication reads it.
    pub fn arrival(&self) -> Arrival<'a> {
        Arrival {
            client: self.client,
            helo: self.helo,
            mail_from: self.sender,
        }
    }
}

/// What the stages may use besides the draft.
pub struct Services<'a> {
    pub store: &'a dyn Store,
    pub verdicts: &'a dyn InboundVerdicts,
    pub signer: &'a dyn MessageSigning,
    pub policy: &'a InboundPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Authentication-Results fields claiming to be ours are removed (RFC 8601 5).
    StripForgedResults,
    /// SPF, DKIM, ARC and DMARC; our policy decides accept, Junk, refuse or try later.
    AuthenticateSender,
    /// Look-alike sender domains and borrowed display names get a warning and `$Phishing`.
    MarkPhishing,
    /// The From must be the user's; a missing Message-ID or Date is added (RFC 6409 8).
    CheckSubmission,
    /// DKIM signatures as the user's domain, over what we send.
    SignDkim,
}

/// Mail from other servers.
pub const INBOUND: &[Stage] = &[
    Stage::StripForgedResults,
    Stage::AuthenticateSender,
    Stage::MarkPhishing,
];

/// Mail from our users.
pub const SUBMISSION: &[Stage] = &[Stage::CheckSubmission, Stage::SignDkim];

/// Runs `stages` in order; the first refusal ends the run.
pub async fn run(
    stages: &[Stage],
    services: &Services<'_>,
    envelope: &Envelope<'_>,
    draft: &mut Draft,
) -> Result<(), Reply> {
    for stage in stages {
        stage.run(services, envelope, draft).await?;
    }
    Ok(())
}

impl Stage {
    pub async fn run(
        self,
        services: &Services<'_>,
        envelope: &Envelope<'_>,
        draft: &mut Draft,
    ) -> Result<(), Reply> {
        match self {
            Stage::StripForgedResults => {
                strip_results(envelope, draft);
                Ok(())
            }
            Stage::AuthenticateSender => authenticate_sender(services, envelope, draft).await,
            Stage::MarkPhishing => mark_phishing(services, draft).await,
            Stage::CheckSubmission => check_submission(envelope, draft),
            Stage::SignDkim => sign_dkim(services, envelope, draft),
        }
    }
}

fn strip_results(envelope: &Envelope<'_>, draft: &mut Draft) {
    if let std::borrow::Cow::Owned(stripped) = strip_forged_results(&draft.content, envelope.hostname) {
        draft.content = stripped;
    }
}

async fn authenticate_sender(
    services: &Services<'_>,
    envelope: &Envelope<'_>,
    draft: &mut Draft,
) -> Result<(), Reply> {
    let verdict = services
        .verdicts
        .verdict(envelope.arrival(), &draft.content, services.policy)
        .await;
    tracing::info!(id = %draft.id, client = %envelope.client, from_domain = %verdict.from_domain, dmarc = verdict.dmarc, disposition = ?verdict.disposition, "sender authentication");
    match verdict.disposition {
        Disposition::Accept => {}
        Disposition::Junk => draft.to_junk = true,
        Disposition::Reject(why) => return Err(Reply::new(550, "5.7.1", why)),
        Disposition::TempFail(why) => return Err(Reply::new(451, "4.7.1", why)),
    }
    draft.authentication = verdict.header.into_bytes();
    draft.verdict = Some(Found {
        from_domain: verdict.from_domain,
        dmarc: verdict.dmarc,
    });
    Ok(())
}

async fn mark_phishing(services: &Services<'_>, draft: &mut Draft) -> Result<(), Reply> {
    if !services.policy.phishing_warnings {
        return Ok(());
    }
    let Some(found) = &draft.verdict else {
        return Ok(());
    };
    let ours: Vec<String> = match services.store.list_domains().await {
        Ok(domains) => domains.iter().map(|d| d.to_string()).collect(),
        Err(e) => {
            tracing::error!(error = %e, "store lookup failed");
            return Err(lookup_failure());
        }
    };
    let name = phishing::from_display_name(&draft.content);
    let warnings = phishing::warnings(&found.from_domain, name.as_deref(), found.dmarc, &ours);
    if !warnings.is_empty() {
        tracing::info!(id = %draft.id, warnings = ?warnings, "message marked as suspicious");
        let notice = services.policy.phishing_notice_in_body;
        draft.content = phishing::add_warnings(&draft.content, &warnings, notice);
        draft.flags.push(phishing::KEYWORD.to_string());
    }
    Ok(())
}

/// Submission stages need the logged-in user; without one (which MAIL already refuses) the
/// message is refused rather than passed unchecked.
fn no_user() -> Reply {
    Reply::new(530, "5.7.0", "Authentication required")
}

fn check_submission(envelope: &Envelope<'_>, draft: &mut Draft) -> Result<(), Reply> {
    let Some(account) = envelope.account else {
        return Err(no_user());
    };
    let missing = message::check_submission(&draft.content, account)?;
    if missing.message_id {
        draft
            .added
            .extend_from_slice(format!("Message-ID: <{}@{}>\r\n", draft.id, envelope.hostname).as_bytes());
    }
    if missing.date {
        draft
            .added
            .extend_from_slice(format!("Date: {}\r\n", message::rfc5322_now()).as_bytes());
    }
    Ok(())
}

fn sign_dkim(services: &Services<'_>, envelope: &Envelope<'_>, draft: &mut Draft) -> Result<(), Reply> {
    let Some(account) = envelope.account else {
        return Err(no_user());
    };
    let domain = account.domain().as_str();
    if !services.signer.signs_for(domain) {
        return Ok(());
    }
    match services.signer.sign(domain, &draft.authored()) {
        Ok(headers) => {
            draft.signatures = headers;
            Ok(())
        }
        Err(e) => {
            tracing::error!(id = %draft.id, error = %e, "DKIM signing failed");
            Err(Reply::new(
                451,
                "4.7.0",
                "Temporary failure signing the message; try again later",
            ))
        }
    }
}

pub fn lookup_failure() -> Reply {
    Reply::new(451, "4.3.0", "Temporary lookup failure; try again later")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{self, FakeSigner, FakeVerdicts, TestResult, ctx};

    const FORGED: &str = "Authentication-Results: mx.a.test; dmarc=pass (forged)\r\n";

    fn envelope<'a>(account: Option<&'a EmailAddress>) -> Envelope<'a> {
        Envelope {
            client: IpAddr::from([192, 0, 2, 7]),
            helo: "client.b.test",
            sender: "bob@b.test",
            account,
            hostname: "mx.a.test",
        }
    }

    async fn run_with(
        stages: &[Stage],
        verdicts: &FakeVerdicts,
        signer: &FakeSigner,
        account: Option<&EmailAddress>,
        content: &str,
    ) -> TestResult<(Result<(), Reply>, Draft)> {
        let dir = ctx(tempfile::tempdir(), "tempdir")?;
        let store = fakes::store(dir.path()).await?;
        let policy = InboundPolicy::default();
        let services = Services {
            store: store.as_ref(),
            verdicts,
            signer,
            policy: &policy,
        };
        let mut draft = Draft::new("id1".into(), content.as_bytes().to_vec());
        let result = run(stages, &services, &envelope(account), &mut draft).await;
        Ok((result, draft))
    }

    #[tokio::test]
    async fn inbound_strips_forged_results_before_the_verdict_and_puts_ours_on_top() -> TestResult {
        let verdicts = FakeVerdicts::new(Disposition::Accept);
        let content = format!("{FORGED}From: bob@b.test\r\nSubject: hi\r\n\r\nbody\r\n");
        let (result, draft) = run_with(INBOUND, &verdicts, &FakeSigner::default(), None, &content).await?;
        assert!(result.is_ok());
        let seen = verdicts.seen.lock().map_err(|e| e.to_string())?.clone();
        assert_eq!(seen.len(), 1);
        assert!(!String::from_utf8_lossy(&seen[0]).contains("(forged)"));
        let stored = String::from_utf8_lossy(&draft.assemble(b"", "Received: x\r\n")).into_owned();
        assert!(
            stored.starts_with("Authentication-Results: mx.a.test; dmarc=pass (fake)\r\nReceived: x\r\n")
        );
        assert!(!stored.contains("(forged)"));
        assert!(!draft.to_junk);
        Ok(())
    }

    #[tokio::test]
    async fn inbound_dispositions_become_replies_or_junk() -> TestResult {
        let content = "From: bob@b.test\r\n\r\nbody\r\n";
        for (disposition, code, junk) in [
            (Disposition::Reject("DMARC says reject".into()), Some(550), false),
            (Disposition::TempFail("DNS trouble".into()), Some(451), false),
            (Disposition::Junk, None, true),
        ] {
            let verdicts = FakeVerdicts::new(disposition);
            let (result, draft) = run_with(INBOUND, &verdicts, &FakeSigner::default(), None, content).await?;
            assert_eq!(result.err().map(|reply| reply.code), code);
            assert_eq!(draft.to_junk, junk);
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_look_alike_of_our_domain_is_marked_as_phishing() -> TestResult {
        let mut verdicts = FakeVerdicts::new(Disposition::Accept);
        // a.test is ours; a look-alike with one character changed would need a longer name,
        // so the display name borrows ours instead.
        verdicts.from_domain = "evil.test".into();
        verdicts.dmarc = "none";
        let content = "From: \"a.test Support\" <help@evil.test>\r\nSubject: hi\r\n\r\nbody\r\n";
        let (result, draft) = run_with(INBOUND, &verdicts, &FakeSigner::default(), None, content).await?;
        assert!(result.is_ok());
        assert_eq!(draft.flags, vec![phishing::KEYWORD.to_string()]);
        Ok(())
    }

    #[tokio::test]
    async fn submission_completes_headers_and_signs_what_is_sent() -> TestResult {
        let alice = ctx(EmailAddress::parse(fakes::ALICE), "address")?;
        let signer = FakeSigner::default();
        let verdicts = FakeVerdicts::new(Disposition::Accept);
        let content = "From: alice@a.test\r\nTo: bob@b.test\r\n\r\nbody\r\n";
        let (result, draft) = run_with(SUBMISSION, &verdicts, &signer, Some(&alice), content).await?;
        assert!(result.is_ok());
        let added = String::from_utf8_lossy(&draft.added).into_owned();
        assert!(
            added.starts_with("Message-ID: <id1@mx.a.test>\r\nDate: "),
            "{added}"
        );
        let signed = signer.signed.lock().map_err(|e| e.to_string())?.clone();
        assert_eq!(
            signed,
            vec![draft.authored()],
            "the signature covers the added fields"
        );
        assert!(
            verdicts.seen.lock().map_err(|e| e.to_string())?.is_empty(),
            "submission is not checked like mail from strangers"
        );
        let sent = String::from_utf8_lossy(&draft.assemble(b"", "Received: x\r\n")).into_owned();
        assert!(sent.starts_with("Received: x\r\nDKIM-Signature: v=1; d=a.test; fake\r\nMessage-ID: "));
        Ok(())
    }

    #[tokio::test]
    async fn submission_without_a_user_is_refused_not_passed_unchecked() -> TestResult {
        let verdicts = FakeVerdicts::new(Disposition::Accept);
        let signer = FakeSigner::default();
        let content = "From: ceo@a.test\r\n\r\nbody\r\n";
        let (result, _) = run_with(SUBMISSION, &verdicts, &signer, None, content).await?;
        let reply = result
            .err()
            .ok_or("a submission without a user must be refused")?;
        assert_eq!((reply.code, reply.status), (530, Some("5.7.0")));
        for stage in SUBMISSION {
            let (result, _) = run_with(&[*stage], &verdicts, &signer, None, content).await?;
            assert!(result.is_err(), "{stage:?} passed a message without a user");
        }
        assert!(signer.signed.lock().map_err(|e| e.to_string())?.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn submission_refuses_another_author_and_a_failed_signature() -> TestResult {
        let alice = ctx(EmailAddress::parse(fakes::ALICE), "address")?;
        let verdicts = FakeVerdicts::new(Disposition::Accept);
        let forged = "From: ceo@a.test\r\nMessage-ID: <x@a.test>\r\nDate: Thu, 3 Dec 2026 10:00:00 +0000\r\n\r\nbody\r\n";
        let signer = FakeSigner::default();
        let (result, _) = run_with(SUBMISSION, &verdicts, &signer, Some(&alice), forged).await?;
        assert_eq!(result.err().map(|reply| reply.code), Some(553));
        assert!(signer.signed.lock().map_err(|e| e.to_string())?.is_empty());

        let failing = FakeSigner {
            fail: true,
            ..FakeSigner::default()
        };
        let own = "From: alice@a.test\r\n\r\nbody\r\n";
        let (result, _) = run_with(SUBMISSION, &verdicts, &failing, Some(&alice), own).await?;
        let reply = result.err().ok_or("a failed signature must refuse the message")?;
        assert_eq!((reply.code, reply.status), (451, Some("4.7.0")));
        Ok(())
    }
}
