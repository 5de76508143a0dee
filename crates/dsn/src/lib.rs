//! Delivery status notifications (RFC 3464) as messages: a `multipart/report` with a
//! human-readable part, a `message/delivery-status` part, and the original headers (or the
//! whole message when the sender asked for RET=FULL and something failed, RFC 3461 4.3).
//! Which notices are due is the caller's to decide: the delivery queue (failed, delayed,
//! relayed) and submission (delivered to a local mailbox); [`Action::wanted_by`] applies the
//! recipient's NOTIFY. A notice goes to the sender's INBOX here ([`deliver_to_sender`]), the
//! one place that does so.

use sealmail_store::{NewMessage, Recipient, Store, StoreError};
use sealmail_types::EmailAddress;
use sealmail_types::clock::now_unix;
use sealmail_types::token::NoRandomness;

/// What happened to a recipient (RFC 3464 2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Given up.
    Failed,
    /// Not delivered yet, still being tried.
    Delayed,
    /// Handed to a server that does not offer DSN: no further notice will come.
    Relayed,
    /// Put into the recipient's mailbox here.
    Delivered,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Relayed => "relayed",
            Action::Delivered => "delivered",
        }
    }

    /// Whether the recipient's NOTIFY (RFC 3461 4.1; `None` when not given) asks for this
    /// notice: without NOTIFY, failures and delays are reported, successes are not.
    pub fn wanted_by(self, notify: Option<&str>) -> bool {
        let Some(notify) = notify else {
            return matches!(self, Action::Failed | Action::Delayed);
        };
        let notify = notify.to_ascii_uppercase();
        let keyword = match self {
            Action::Failed => "FAILURE",
            Action::Delayed => "DELAY",
            Action::Relayed | Action::Delivered => "SUCCESS",
        };
        notify.split(',').any(|k| k.trim() == keyword)
    }
}

/// One recipient the notification is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub address: String,
    pub orcpt: Option<String>,
    pub action: Action,
    /// RFC 3463 status, e.g. "5.1.1".
    pub status: String,
    /// What the receiving server said, or why we gave up or wait.
    pub diagnostic: String,
    /// The MX host that answered, if one did.
    pub remote_mta: Option<String>,
    /// For `Delayed`: Unix seconds when we will give up.
    pub will_retry_until: Option<i64>,
}

pub struct Report<'a> {
    pub hostname: &'a str,
    pub sender: &'a str,
    pub envid: Option<&'a str>,
    pub ret_full: bool,
    /// Unix seconds when the message was queued.
    pub arrival: i64,
    pub recipients: &'a [Notice],
    pub original: &'a [u8],
}

/// RFC 5322 date-time, as sealmail writes it elsewhere (`Date:` of submitted mail); also for
/// the other messages the server writes itself (TLS reports).
pub fn rfc5322_date(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc2822).ok())
        .unwrap_or_default()
}

/// Text for a header or a report field: one line, printable.
/// `text` on one line of at most 900 octets (RFC 5322 2.1.1 allows 998 with the field name).
fn one_line(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().map(|c| if c.is_control() { ' ' } else { c }) {
        if out.len() + c.len_utf8() > 900 {
            break;
        }
        out.push(c);
    }
    out
}

/// 24 random hex digits, for MIME boundaries and Message-IDs of generated messages.
pub fn random_token() -> Result<String, NoRandomness> {
    sealmail_types::token::random_hex(12)
}

/// The notification message, CRLF line ends.
pub fn build(report: &Report<'_>) -> Result<Vec<u8>, NoRandomness> {
    let boundary = format!("sealmail-dsn-{}", random_token()?);
    let now = now_unix();
    let mut out = String::new();
    out.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{}>\r\n",
        report.hostname
    ));
    out.push_str(&format!("To: <{}>\r\n", report.sender));
    let any = |action| report.recipients.iter().any(|n| n.action == action);
    let subject = if any(Action::Failed) {
        "Undelivered Mail Returned to Sender"
    } else if any(Action::Delayed) {
        "Delayed Mail (still being retried)"
    } else {
        "Successful Mail Delivery Report"
    };
    out.push_str(&format!("Subject: {subject}\r\n"));
    out.push_str(&format!("Date: {}\r\n", rfc5322_date(now)));
    out.push_str(&format!(
        "Message-ID: <{}@{}>\r\n",
        random_token()?,
        report.hostname
    ));
    out.push_str("Auto-Submitted: auto-replied\r\n");
    out.push_str("MIME-Version: 1.0\r\n");
    out.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"
    ));

    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    ));
    out.push_str(&format!(
        "This is the mail system at {}.\r\n\r\nHere is the status of your message:\r\n\r\n",
        report.hostname
    ));
    for notice in report.recipients {
        let what = match notice.action {
            Action::Failed => "could not be delivered".to_string(),
            Action::Delayed => format!(
                "not delivered yet; still trying until {}",
                rfc5322_date(notice.will_retry_until.unwrap_or_default())
            ),
            Action::Relayed => {
                "delivered to the receiving server, which sends no further notices".to_string()
            }
            Action::Delivered => "delivered to the mailbox".to_string(),
        };
        out.push_str(&format!(
            "<{}>: {what}: {}\r\n",
            notice.address,
            one_line(&notice.diagnostic)
        ));
    }
    out.push_str("\r\n");

    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
    ));
    out.push_str(&format!("Reporting-MTA: dns; {}\r\n", report.hostname));
    if let Some(envid) = report.envid {
        // Kept as xtext in the queue; shown decoded, as Postfix does (RFC 3464 2.2.1 *text).
        let envid = sealmail_types::xtext::decode(envid);
        out.push_str(&format!("Original-Envelope-Id: {}\r\n", one_line(&envid)));
    }
    out.push_str(&format!("Arrival-Date: {}\r\n", rfc5322_date(report.arrival)));
    for notice in report.recipients {
        out.push_str("\r\n");
        if let Some(orcpt) = &notice.orcpt {
            let orcpt = sealmail_types::xtext::decode(orcpt);
            out.push_str(&format!("Original-Recipient: {}\r\n", one_line(&orcpt)));
        }
        out.push_str(&format!("Final-Recipient: rfc822; {}\r\n", notice.address));
        out.push_str(&format!("Action: {}\r\n", notice.action.name()));
        out.push_str(&format!("Status: {}\r\n", one_line(&notice.status)));
        if let Some(mta) = &notice.remote_mta {
            out.push_str(&format!("Remote-MTA: dns; {}\r\n", one_line(mta)));
        }
        out.push_str(&format!(
            "Diagnostic-Code: smtp; {}\r\n",
            one_line(&notice.diagnostic)
        ));
        out.push_str(&format!("Last-Attempt-Date: {}\r\n", rfc5322_date(now)));
        if let Some(until) = notice.will_retry_until {
            out.push_str(&format!("Will-Retry-Until: {}\r\n", rfc5322_date(until)));
        }
    }
    out.push_str("\r\n");

    let mut message = out.into_bytes();
    // RFC 3461 4.3: RET=FULL asks for the whole message in a failure notice only.
    let (kind, original) = if report.ret_full && any(Action::Failed) {
        ("message/rfc822", report.original)
    } else {
        let end = find_header_end(report.original).unwrap_or(report.original.len());
        ("text/rfc822-headers", &report.original[..end])
    };
    message.extend_from_slice(format!("--{boundary}\r\nContent-Type: {kind}\r\n\r\n").as_bytes());
    message.extend_from_slice(original);
    if !original.ends_with(b"\r\n") {
        message.extend_from_slice(b"\r\n");
    }
    message.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    Ok(message)
}

#[derive(Debug, thiserror::Error)]
pub enum DsnError {
    #[error(transparent)]
    Randomness(#[from] NoRandomness),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Builds the notice and stores it in the sender's INBOX, if the sender is one of our
/// accounts; returns whether it was stored. A notice to any other address is not sent: mail
/// that gets notices here comes from our own users (submission), and notices mailed to an
/// address someone else wrote into MAIL FROM would be backscatter.
pub async fn deliver_to_sender(store: &dyn Store, report: &Report<'_>) -> Result<bool, DsnError> {
    let Ok(sender) = EmailAddress::parse(report.sender) else {
        return Ok(false);
    };
    let Recipient::Local { inbox, .. } = store.resolve_recipient(&sender).await? else {
        return Ok(false);
    };
    let content = build(report)?;
    store
        .store_message(NewMessage {
            content,
            mailboxes: vec![inbox],
            internal_date: now_unix(),
            flags: Vec::new(),
        })
        .await?;
    Ok(true)
}

/// Offset just past the header section's last CRLF (before the blank line).
fn find_header_end(message: &[u8]) -> Option<usize> {
    message.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_is_bounded_in_octets_and_has_no_controls() {
        let long = "é".repeat(2000);
        assert!(one_line(&long).len() <= 900);
        assert_eq!(one_line("a\r\nb\0c"), "a  b c");
    }

    #[test]
    fn a_report_parses_as_multipart_report_with_every_field() -> Result<(), String> {
        let original = b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: hello\r\n\r\nsecret body\r\n";
        let recipients = [Notice {
            address: "bob@b.test".into(),
            orcpt: Some("rfc822;bob@b.test".into()),
            action: Action::Failed,
            status: "5.1.1".into(),
            diagnostic: "550 5.1.1 no such user\r\nInjected: header".into(),
            remote_mta: Some("mx.b.test".into()),
            will_retry_until: None,
        }];
        let dsn = build(&Report {
            hostname: "mail.a.test",
            sender: "alice@a.test",
            envid: Some("env-1"),
            ret_full: false,
            arrival: 1_764_000_000,
            recipients: &recipients,
            original,
        })
        .map_err(|e| e.to_string())?;
        use mail_parser::MimeHeaders;
        let parsed = mail_parser::MessageParser::default()
            .parse(&dsn)
            .ok_or("the DSN does not parse")?;
        let content_type = parsed.content_type().ok_or("no content type")?;
        assert_eq!(content_type.ctype(), "multipart");
        assert_eq!(content_type.subtype(), Some("report"));
        assert_eq!(content_type.attribute("report-type"), Some("delivery-status"));
        let text = String::from_utf8_lossy(&dsn);
        for needed in [
            "Reporting-MTA: dns; mail.a.test",
            "Original-Envelope-Id: env-1",
            "Final-Recipient: rfc822; bob@b.test",
            "Action: failed",
            "Status: 5.1.1",
            "Remote-MTA: dns; mx.b.test",
            "Diagnostic-Code: smtp; 550 5.1.1 no such user  Injected: header",
            "Subject: hello",
        ] {
            assert!(text.contains(needed), "{needed} missing:\n{text}");
        }
        assert!(!text.contains("\r\nInjected: header"), "{text}");
        assert!(!text.contains("secret body"), "headers only unless RET=FULL");
        Ok(())
    }

    #[test]
    fn notify_decides_which_notices_are_sent() {
        use Action::*;
        for (notify, failed, delayed, relayed) in [
            (None, true, true, false),
            (Some("NEVER"), false, false, false),
            (Some("SUCCESS"), false, false, true),
            (Some("failure,delay"), true, true, false),
            (Some("SUCCESS,FAILURE"), true, false, true),
        ] {
            assert_eq!(Failed.wanted_by(notify), failed, "{notify:?}");
            assert_eq!(Delayed.wanted_by(notify), delayed, "{notify:?}");
            assert_eq!(Relayed.wanted_by(notify), relayed, "{notify:?}");
            assert_eq!(Delivered.wanted_by(notify), relayed, "{notify:?}");
        }
    }

    #[test]
    fn delay_and_relay_notices_carry_their_fields_and_never_the_body() -> Result<(), String> {
        let original = b"Subject: hello\r\n\r\nsecret body\r\n";
        let notice = |action, status: &str, until| Notice {
            address: "bob@b.test".into(),
            orcpt: None,
            action,
            status: status.into(),
            diagnostic: "mx.b.test: 451 4.3.0 try later".into(),
            remote_mta: Some("mx.b.test".into()),
            will_retry_until: until,
        };
        let delayed = [notice(Action::Delayed, "4.3.0", Some(1_764_432_000))];
        let relayed = [notice(Action::Relayed, "2.0.0", None)];
        for (recipients, subject, fields) in [
            (
                &delayed[..],
                "Subject: Delayed Mail (still being retried)",
                &["Action: delayed", "Status: 4.3.0", "Will-Retry-Until: "][..],
            ),
            (
                &relayed[..],
                "Subject: Successful Mail Delivery Report",
                &["Action: relayed", "Status: 2.0.0", "Remote-MTA: dns; mx.b.test"][..],
            ),
        ] {
            let dsn = build(&Report {
                hostname: "mail.a.test",
                sender: "alice@a.test",
                envid: None,
                ret_full: true,
                arrival: 1_764_000_000,
                recipients,
                original,
            })
            .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&dsn);
            assert!(text.contains(subject), "{text}");
            for field in fields {
                assert!(text.contains(field), "{field} missing:\n{text}");
            }
            assert!(
                !text.contains("secret body"),
                "RET=FULL returns the body with failures only:\n{text}"
            );
        }
        Ok(())
    }
}
