//! Delivery status notifications (RFC 3464): a `multipart/report` with a human-readable part,
//! a `message/delivery-status` part, and the original headers (or the whole message when the
//! sender asked for RET=FULL).

/// One recipient the notification is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub address: String,
    pub orcpt: Option<String>,
    /// RFC 3463 status, e.g. "5.1.1".
    pub status: String,
    /// What the receiving server said, or why we gave up.
    pub diagnostic: String,
    /// The MX host that answered, if one did.
    pub remote_mta: Option<String>,
}

pub struct Report<'a> {
    pub hostname: &'a str,
    pub sender: &'a str,
    pub envid: Option<&'a str>,
    pub ret_full: bool,
    /// Unix seconds when the message was queued.
    pub arrival: i64,
    pub recipients: &'a [Failed],
    pub original: &'a [u8],
}

/// RFC 5322 date-time, as sealmail writes it elsewhere (`Date:` of submitted mail).
fn rfc5322_date(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc2822).ok())
        .unwrap_or_default()
}

/// Text for a header or a report field: one line, printable.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(900)
        .collect()
}

fn random_token() -> String {
    let mut bytes = [0u8; 12];
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The notification message, CRLF line ends.
pub fn build(report: &Report<'_>) -> Vec<u8> {
    let boundary = format!("sealmail-dsn-{}", random_token());
    let now = crate::now_unix();
    let mut out = String::new();
    out.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{}>\r\n",
        report.hostname
    ));
    out.push_str(&format!("To: <{}>\r\n", report.sender));
    out.push_str("Subject: Undelivered Mail Returned to Sender\r\n");
    out.push_str(&format!("Date: {}\r\n", rfc5322_date(now)));
    out.push_str(&format!(
        "Message-ID: <{}@{}>\r\n",
        random_token(),
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
        "This is the mail system at {}.\r\n\r\nYour message could not be delivered to the following recipients:\r\n\r\n",
        report.hostname
    ));
    for failed in report.recipients {
        out.push_str(&format!(
            "<{}>: {}\r\n",
            failed.address,
            one_line(&failed.diagnostic)
        ));
    }
    out.push_str("\r\n");

    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
    ));
    out.push_str(&format!("Reporting-MTA: dns; {}\r\n", report.hostname));
    if let Some(envid) = report.envid {
        out.push_str(&format!("Original-Envelope-Id: {}\r\n", one_line(envid)));
    }
    out.push_str(&format!("Arrival-Date: {}\r\n", rfc5322_date(report.arrival)));
    for failed in report.recipients {
        out.push_str("\r\n");
        if let Some(orcpt) = &failed.orcpt {
            out.push_str(&format!("Original-Recipient: {}\r\n", one_line(orcpt)));
        }
        out.push_str(&format!("Final-Recipient: rfc822; {}\r\n", failed.address));
        out.push_str("Action: failed\r\n");
        out.push_str(&format!("Status: {}\r\n", failed.status));
        if let Some(mta) = &failed.remote_mta {
            out.push_str(&format!("Remote-MTA: dns; {mta}\r\n"));
        }
        out.push_str(&format!(
            "Diagnostic-Code: smtp; {}\r\n",
            one_line(&failed.diagnostic)
        ));
        out.push_str(&format!("Last-Attempt-Date: {}\r\n", rfc5322_date(now)));
    }
    out.push_str("\r\n");

    let mut message = out.into_bytes();
    let (kind, original) = if report.ret_full {
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
    message
}

/// Offset just past the header section's last CRLF (before the blank line).
fn find_header_end(message: &[u8]) -> Option<usize> {
    message.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_parses_as_multipart_report_with_every_field() -> Result<(), String> {
        let original = b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: hello\r\n\r\nsecret body\r\n";
        let recipients = [Failed {
            address: "bob@b.test".into(),
            orcpt: Some("rfc822;bob@b.test".into()),
            status: "5.1.1".into(),
            diagnostic: "550 5.1.1 no such user\r\nInjected: header".into(),
            remote_mta: Some("mx.b.test".into()),
        }];
        let dsn = build(&Report {
            hostname: "mail.a.test",
            sender: "alice@a.test",
            envid: Some("env-1"),
            ret_full: false,
            arrival: 1_764_000_000,
            recipients: &recipients,
            original,
        });
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
}
