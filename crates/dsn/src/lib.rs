//! Delivery status notifications (RFC 3464) as messages: a `multipart/report` with a
//! human-readable part, a `message/delivery-status` part, and the original headers (or the
//! whole message when the sender asked for RET=FULL and something failed, RFC 3461 4.3).
//! Which notices are due is the caller's to decide: the delivery queue (failed, delayed,
//! relayed) and submission (delivered to a local mailbox); [`Action::wanted_by`] applies the
//! recipient's NOTIFY. A notice goes to the sender's INBOX here ([`deliver_to_sender`]), the
//! one place that does so.
//!
//! Also owns the frame of every message the server writes itself ([`generated_message`]: the
//! header fields, the MIME structure through mail-builder), which the TLS reports of the
//! delivery crate use too.

use std::borrow::Cow;

use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::date::Date;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::{BodyPart, MimePart};
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

/// RFC 5322 date-time, as sealmail writes it elsewhere (`Date:` of submitted mail): the dates
/// of a notice's report fields (RFC 3464 2.2.5, 2.3.7).
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

/// What a message the server writes itself says about itself: see [`generated_message`].
pub struct Generated<'x> {
    pub from: Address<'x>,
    pub to: Address<'x>,
    pub subject: String,
    /// The right-hand side of the Message-ID.
    pub id_domain: &'x str,
    /// RFC 3834 5: `auto-replied` (a notice about a message) or `auto-generated` (a report).
    pub auto_submitted: &'static str,
}

/// A message the server writes itself (a notice, a TLS report), CRLF line ends: From, To,
/// Subject, Date (now), Message-ID (random digits at `id_domain`), Auto-Submitted and
/// `extra` header fields, then `body` (whose Content-Type field comes with it).
///
/// The Subject goes out as a raw field, only folded: mail-builder's `Text` turns any value
/// longer than 77 octets into RFC 2047 encoded-words, and a report's subject (RFC 8460 5.3)
/// is longer and meant to be read as it is.
pub fn generated_message<'x>(
    head: Generated<'x>,
    extra: Vec<(&'x str, String)>,
    body: MimePart<'x>,
) -> Result<Vec<u8>, NoRandomness> {
    let mut message = MessageBuilder::new()
        .from(head.from)
        .to(head.to)
        .header("Subject", Raw::new(head.subject))
        .date(Date::new(now_unix()))
        .message_id(format!("{}@{}", random_token()?, head.id_domain))
        .header("Auto-Submitted", Raw::new(head.auto_submitted));
    for (name, value) in extra {
        // Raw: not encoded; a line break in `value` becomes a fold, never a field of its own.
        message = message.header(name, Raw::new(value));
    }
    let mut out = Vec::new();
    message.body(body).serialize(&mut out);
    Ok(out)
}

/// A part whose body goes out byte for byte, with the transfer encoding that says what it
/// holds (7bit, or 8bit for UTF-8). mail-builder would pick quoted-printable or base64 for
/// lines past 77 octets; `message/rfc822` may not be encoded that way (RFC 2046 5.2.1),
/// `message/delivery-status` is registered as 7bit (RFC 3464 6.2), and `text/rfc822-headers`
/// is the header section as it was (RFC 6522). A declared encoding makes mail-builder write
/// the body as given.
fn verbatim_part<'x>(content_type: &'x str, body: impl Into<Cow<'x, [u8]>>) -> MimePart<'x> {
    // Borrowed where it can be: the returned original may be as large as any message.
    let body = body.into();
    let encoding = if body.is_ascii() { "7bit" } else { "8bit" };
    MimePart::new(content_type, BodyPart::Binary(body)).transfer_encoding(encoding)
}

/// The notification message, CRLF line ends.
pub fn build(report: &Report<'_>) -> Result<Vec<u8>, NoRandomness> {
    let boundary = format!("sealmail-dsn-{}", random_token()?);
    let now = now_unix();
    let any = |action| report.recipients.iter().any(|n| n.action == action);
    let subject = if any(Action::Failed) {
        "Undelivered Mail Returned to Sender"
    } else if any(Action::Delayed) {
        "Delayed Mail (still being retried)"
    } else {
        "Successful Mail Delivery Report"
    };

    let mut text = format!(
        "This is the mail system at {}.\r\n\r\nHere is the status of your message:\r\n\r\n",
        report.hostname
    );
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
        text.push_str(&format!(
            "<{}>: {what}: {}\r\n",
            notice.address,
            one_line(&notice.diagnostic)
        ));
    }

    let mut status = format!("Reporting-MTA: dns; {}\r\n", report.hostname);
    if let Some(envid) = report.envid {
        // Kept as xtext in the queue; shown decoded, as Postfix does (RFC 3464 2.2.1 *text).
        let envid = sealmail_types::xtext::decode(envid);
        status.push_str(&format!("Original-Envelope-Id: {}\r\n", one_line(&envid)));
    }
    status.push_str(&format!("Arrival-Date: {}\r\n", rfc5322_date(report.arrival)));
    for notice in report.recipients {
        status.push_str("\r\n");
        if let Some(orcpt) = &notice.orcpt {
            let orcpt = sealmail_types::xtext::decode(orcpt);
            status.push_str(&format!("Original-Recipient: {}\r\n", one_line(&orcpt)));
        }
        status.push_str(&format!("Final-Recipient: rfc822; {}\r\n", notice.address));
        status.push_str(&format!("Action: {}\r\n", notice.action.name()));
        status.push_str(&format!("Status: {}\r\n", one_line(&notice.status)));
        if let Some(mta) = &notice.remote_mta {
            status.push_str(&format!("Remote-MTA: dns; {}\r\n", one_line(mta)));
        }
        status.push_str(&format!(
            "Diagnostic-Code: smtp; {}\r\n",
            one_line(&notice.diagnostic)
        ));
        status.push_str(&format!("Last-Attempt-Date: {}\r\n", rfc5322_date(now)));
        if let Some(until) = notice.will_retry_until {
            status.push_str(&format!("Will-Retry-Until: {}\r\n", rfc5322_date(until)));
        }
    }

    // RFC 3461 4.3: RET=FULL asks for the whole message in a failure notice only.
    let (kind, original) = if report.ret_full && any(Action::Failed) {
        ("message/rfc822", report.original)
    } else {
        let end = find_header_end(report.original).unwrap_or(report.original.len());
        ("text/rfc822-headers", &report.original[..end])
    };

    // A raw Content-Type: mail-builder quotes every parameter value, and the field is written
    // as Postfix writes it, `report-type=delivery-status` (a token needs no quotes). The
    // boundary is ours, random: mail-builder's own is derived from the clock, and the original
    // message (the sender's text) goes inside this one.
    let content_type = format!("multipart/report; report-type=delivery-status; boundary=\"{boundary}\"");
    let body = MimePart::raw(vec![
        MimePart::new("text/plain", text),
        verbatim_part("message/delivery-status", status.into_bytes()),
        verbatim_part(kind, original),
    ])
    .header("Content-Type", Raw::new(content_type));
    generated_message(
        Generated {
            from: Address::new_address(
                Some("Mail Delivery System"),
                format!("MAILER-DAEMON@{}", report.hostname),
            ),
            to: Address::new_address(None::<&str>, report.sender),
            subject: subject.to_string(),
            id_domain: report.hostname,
            auto_submitted: "auto-replied",
        },
        Vec::new(),
        body,
    )
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

    /// Every line ends in CRLF and is at most 998 octets long (RFC 5322 2.1.1, 2.3).
    fn assert_wire_form(message: &[u8]) {
        assert!(message.ends_with(b"\r\n"));
        for line in message.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            assert!(!line.contains(&b'\r'), "a bare CR");
            assert!(line.len() <= 998, "a line of {} octets", line.len());
        }
        let bare_lf = message
            .iter()
            .enumerate()
            .any(|(i, &b)| b == b'\n' && (i == 0 || message[i - 1] != b'\r'));
        assert!(!bare_lf, "a bare LF");
    }

    /// The parts of a parsed multipart message: content type and subtype, and the part.
    fn parts<'m>(
        parsed: &'m mail_parser::Message<'m>,
    ) -> Result<Vec<(String, &'m mail_parser::MessagePart<'m>)>, String> {
        use mail_parser::MimeHeaders as _;
        let ids = parsed.root_part().sub_parts().ok_or("not multipart")?;
        let mut parts = Vec::new();
        for &id in ids {
            let part = parsed.part(id).ok_or("a missing part")?;
            let kind = part.content_type().ok_or("a part without a type")?;
            let kind = format!("{}/{}", kind.ctype(), kind.subtype().unwrap_or_default());
            parts.push((kind, part));
        }
        Ok(parts)
    }

    fn report<'a>(recipients: &'a [Notice], original: &'a [u8], ret_full: bool) -> Report<'a> {
        Report {
            hostname: "mail.a.test",
            sender: "alice@a.test",
            envid: Some("env-1"),
            ret_full,
            arrival: 1_764_000_000,
            recipients,
            original,
        }
    }

    fn notice(address: &str, action: Action, status: &str, diagnostic: &str) -> Notice {
        Notice {
            address: address.into(),
            orcpt: None,
            action,
            status: status.into(),
            diagnostic: diagnostic.into(),
            remote_mta: None,
            will_retry_until: (action == Action::Delayed).then_some(1_764_432_000),
        }
    }

    /// RFC 3464 2 and RFC 6522: `multipart/report; report-type=delivery-status` of three parts,
    /// the human-readable text, the `message/delivery-status` fields (per message, then one
    /// group per recipient) and the original header section; with the header fields of a
    /// message the server writes itself (RFC 3834 5 Auto-Submitted).
    #[test]
    fn the_notice_is_a_three_part_report_with_a_field_group_per_recipient() -> Result<(), String> {
        use mail_parser::MimeHeaders as _;
        let original = b"From: alice@a.test\r\nSubject: hello\r\n\r\nsecret body\r\n";
        let recipients = [
            Notice {
                orcpt: Some("rfc822;bob@b.test".into()),
                remote_mta: Some("mx.b.test".into()),
                ..notice("bob@b.test", Action::Failed, "5.1.1", "550 5.1.1 no such user")
            },
            notice("carol@c.test", Action::Delayed, "4.4.1", "connection refused"),
        ];
        let dsn = build(&report(&recipients, original, false)).map_err(|e| e.to_string())?;
        assert_wire_form(&dsn);
        let parsed = mail_parser::MessageParser::default()
            .parse(&dsn)
            .ok_or("the DSN does not parse")?;
        let content_type = parsed.content_type().ok_or("no content type")?;
        assert_eq!(
            (content_type.ctype(), content_type.subtype()),
            ("multipart", Some("report"))
        );
        assert_eq!(content_type.attribute("report-type"), Some("delivery-status"));
        assert_eq!(
            parsed.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-replied")
        );
        assert_eq!(parsed.subject(), Some("Undelivered Mail Returned to Sender"));
        let from = parsed.from().and_then(|a| a.first()).ok_or("no From")?;
        assert_eq!(from.address(), Some("MAILER-DAEMON@mail.a.test"));
        assert_eq!(from.name(), Some("Mail Delivery System"));
        let to = parsed.to().and_then(|a| a.first()).ok_or("no To")?;
        assert_eq!(to.address(), Some("alice@a.test"));
        assert!(
            parsed.message_id().is_some_and(|id| id.ends_with("@mail.a.test")),
            "{:?}",
            parsed.message_id()
        );
        let date = parsed.date().ok_or("no Date")?.to_timestamp();
        assert!((now_unix() - date).abs() < 60, "{date}");

        let parts = parts(&parsed)?;
        let kinds: Vec<&str> = parts.iter().map(|(kind, _)| kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["text/plain", "message/delivery-status", "text/rfc822-headers"]
        );
        let text = parts[0].1.text_contents().ok_or("no text")?;
        assert!(text.contains("<bob@b.test>: could not be delivered: 550 5.1.1 no such user"));
        assert!(text.contains("<carol@c.test>: not delivered yet"), "{text}");

        // The fields, as a machine reads them: 7bit, one group per recipient (RFC 3464 2.1).
        let status = parts[1].1;
        assert_eq!(status.content_transfer_encoding(), Some("7bit"));
        let status = std::str::from_utf8(status.contents()).map_err(|e| e.to_string())?;
        let groups: Vec<&str> = status.trim_end().split("\r\n\r\n").collect();
        let [message, bob, carol] = groups[..] else {
            return Err(format!("three field groups expected:\n{status}"));
        };
        assert!(
            message.starts_with("Reporting-MTA: dns; mail.a.test\r\n"),
            "{message}"
        );
        assert!(message.contains("Original-Envelope-Id: env-1\r\n"), "{message}");
        assert!(
            message.contains("Arrival-Date: Mon, 24 Nov 2025 16:00:00 +0000"),
            "{message}"
        );
        for (group, fields) in [
            (
                bob,
                &[
                    "Original-Recipient: rfc822;bob@b.test",
                    "Final-Recipient: rfc822; bob@b.test",
                    "Action: failed",
                    "Status: 5.1.1",
                    "Remote-MTA: dns; mx.b.test",
                    "Diagnostic-Code: smtp; 550 5.1.1 no such user",
                    "Last-Attempt-Date: ",
                ][..],
            ),
            (
                carol,
                &[
                    "Final-Recipient: rfc822; carol@c.test",
                    "Action: delayed",
                    "Status: 4.4.1",
                    "Diagnostic-Code: smtp; connection refused",
                    "Will-Retry-Until: Sat, 29 Nov 2025 16:00:00 +0000",
                ][..],
            ),
        ] {
            let lines: Vec<&str> = group.split("\r\n").collect();
            for field in fields {
                assert!(
                    lines.iter().any(|l| l.starts_with(field)),
                    "{field} missing:\n{group}"
                );
            }
        }

        let headers = parts[2].1;
        assert_eq!(headers.contents(), b"From: alice@a.test\r\nSubject: hello\r\n");
        Ok(())
    }

    /// RET=FULL and a failure: the whole message comes back as `message/rfc822`, byte for byte
    /// and never encoded (RFC 2046 5.2.1), 8bit when it is UTF-8.
    #[test]
    fn ret_full_returns_the_message_itself_unencoded() -> Result<(), String> {
        use mail_parser::MimeHeaders as _;
        let original =
            "Subject: héllo\r\n\r\nsecret bödy, a long line: ".to_string() + &"x".repeat(200) + "\r\n";
        let recipients = [notice("bob@b.test", Action::Failed, "5.1.1", "no such user")];
        let dsn = build(&report(&recipients, original.as_bytes(), true)).map_err(|e| e.to_string())?;
        assert_wire_form(&dsn);
        let parsed = mail_parser::MessageParser::default()
            .parse(&dsn)
            .ok_or("the DSN does not parse")?;
        let parts = parts(&parsed)?;
        let (kind, returned) = parts.get(2).ok_or("no third part")?;
        assert_eq!(kind, "message/rfc822");
        assert_eq!(returned.content_transfer_encoding(), Some("8bit"));
        assert_eq!(returned.contents(), original.as_bytes());
        let inner = returned.message().ok_or("not a message")?;
        assert_eq!(inner.subject(), Some("héllo"));
        Ok(())
    }

    /// A diagnostic at its longest (bounded by `one_line`) keeps every line within 998
    /// octets; the fields stay unencoded and say 8bit when the server answered in UTF-8.
    #[test]
    fn long_and_utf8_diagnostics_stay_readable_within_the_line_limit() -> Result<(), String> {
        use mail_parser::MimeHeaders as _;
        let diagnostic = "550 ".to_string() + &"ü".repeat(3000);
        let recipients = [notice("bob@b.test", Action::Failed, "5.0.0", &diagnostic)];
        let dsn = build(&report(&recipients, b"Subject: x\r\n\r\n", false)).map_err(|e| e.to_string())?;
        assert_wire_form(&dsn);
        let parsed = mail_parser::MessageParser::default()
            .parse(&dsn)
            .ok_or("the DSN does not parse")?;
        let parts = parts(&parsed)?;
        let status = parts.get(1).ok_or("no status part")?.1;
        assert_eq!(status.content_transfer_encoding(), Some("8bit"));
        let status = std::str::from_utf8(status.contents()).map_err(|e| e.to_string())?;
        assert!(status.contains("Diagnostic-Code: smtp; 550 üüü"), "{status}");
        // The text part is mail-builder's to encode; it reads back as written.
        let text = parts[0].1.text_contents().ok_or("no text")?;
        assert!(text.contains(&one_line(&diagnostic)), "{text}");
        Ok(())
    }
}
