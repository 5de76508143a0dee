//! What the server reads in and adds to a message: the submission checks on the From header
//! (RFC 5322 section 3.6.2, RFC 6409 section 8), the headers added when missing (Message-ID,
//! Date: RFC 6409 section 8.2/8.3), and the Received trace line (RFC 5321 section 4.4) with
//! the TLS clause of RFC 8314 section 4.3.

use std::net::SocketAddr;

use mail_parser::{HeaderName, HeaderValue, MessageParser};

use sealmail_net::TlsActive;
use sealmail_types::EmailAddress;

use crate::reply::Reply;

/// A random message id for logs, the Received line and added Message-IDs.
pub fn new_id() -> Result<String, sealmail_types::token::NoRandomness> {
    sealmail_types::token::random_hex(9)
}

/// The current time as an RFC 5322 date-time.
pub fn rfc5322_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 +0000".to_string())
}

/// Headers a submitted message lacks and the server adds.
#[derive(Debug, PartialEq, Eq)]
pub struct Missing {
    pub message_id: bool,
    pub date: bool,
}

/// On submission, every From address must be the user's own, and there must be exactly one
/// From header (RFC 5322 3.6: "from" occurs exactly once).
pub fn check_submission(content: &[u8], user: &EmailAddress) -> Result<Missing, Reply> {
    let Some(parsed) = MessageParser::new().parse_headers(content) else {
        return Err(Reply::new(
            550,
            "5.6.0",
            "Message refused: the header cannot be parsed",
        ));
    };
    let headers = parsed.headers();
    let from_headers: Vec<&HeaderValue<'_>> = headers
        .iter()
        .filter(|h| h.name == HeaderName::From)
        .map(|h| &h.value)
        .collect();
    let [from] = from_headers.as_slice() else {
        return Err(Reply::new(
            550,
            "5.6.0",
            "Message refused: it must have exactly one From header (RFC 5322 section 3.6)",
        ));
    };
    let addresses: Vec<String> = match from {
        HeaderValue::Address(address) => address
            .iter()
            .filter_map(|a| a.address.as_deref().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    if addresses.is_empty() {
        return Err(Reply::new(
            550,
            "5.6.0",
            "Message refused: the From header holds no address",
        ));
    }
    for address in &addresses {
        if EmailAddress::parse(address).ok().as_ref() != Some(user) {
            return Err(Reply::new(
                553,
                "5.7.1",
                format!("Message refused: From {address} is not your address"),
            ));
        }
    }
    let has = |name: HeaderName<'_>| headers.iter().any(|h| h.name == name);
    Ok(Missing {
        message_id: !has(HeaderName::MessageId),
        date: !has(HeaderName::Date),
    })
}

/// What the Received line records.
pub struct Trace<'a> {
    pub helo: &'a str,
    pub peer: SocketAddr,
    pub hostname: &'a str,
    pub esmtp: bool,
    pub tls: Option<&'a TlsActive>,
    pub authenticated: bool,
    pub smtputf8: bool,
    pub id: &'a str,
    pub single_recipient: Option<&'a EmailAddress>,
    /// `server.node_name`: which node of a cluster took the message, for whoever traces it.
    pub node: &'a str,
}

/// The Received header, folded, ending with CRLF.
pub fn received_header(trace: &Trace<'_>) -> String {
    // RFC 3848 and RFC 6531 section 3.7.3 protocol names.
    let mut protocol = String::from(if trace.smtputf8 {
        "UTF8SMTP"
    } else if trace.esmtp {
        "ESMTP"
    } else {
        "SMTP"
    });
    if trace.tls.is_some() {
        protocol.push('S');
    }
    if trace.authenticated {
        protocol.push('A');
    }
    let helo: String = trace
        .helo
        .chars()
        .filter(|c| !c.is_control() && *c != '(' && *c != ')')
        .take(255)
        .collect();
    let literal = match trace.peer.ip() {
        std::net::IpAddr::V4(ip) => format!("[{ip}]"),
        std::net::IpAddr::V6(ip) => format!("[IPv6:{ip}]"),
    };
    let mut header = format!(
        "Received: from {helo} ({literal})\r\n\tby {} (sealmail node {}) with {protocol}",
        trace.hostname, trace.node
    );
    if let Some(tls) = trace.tls {
        // RFC 8314 section 4.3: the "tls" clause names the cipher suite (IANA name).
        let suite = tls.cipher.replacen("TLS13_", "TLS_", 1);
        header.push_str(&format!(" ({}) tls {suite}", tls.version));
    }
    header.push_str(&format!("\r\n\tid {}", trace.id));
    if let Some(rcpt) = trace.single_recipient {
        header.push_str(&format!("\r\n\tfor <{rcpt}>"));
    }
    header.push_str(&format!(";\r\n\t{}\r\n", rfc5322_now()));
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> EmailAddress {
        match EmailAddress::parse("alice@example.test") {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn submission_checks_from_and_reports_missing_headers() {
        let ok = b"From: Alice <Alice@Example.test>\r\nSubject: hi\r\n\r\nbody\r\n";
        assert_eq!(
            check_submission(ok, &alice()),
            Ok(Missing {
                message_id: true,
                date: true
            })
        );
        let complete = b"From: alice@example.test\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <a@b>\r\n\r\nx\r\n";
        assert_eq!(
            check_submission(complete, &alice()),
            Ok(Missing {
                message_id: false,
                date: false
            })
        );

        let refusals: [(&[u8], u16); 5] = [
            (b"From: bob@example.test\r\n\r\nx\r\n", 553),
            (b"From: alice@example.test, bob@example.test\r\n\r\nx\r\n", 553),
            (
                b"From: alice@example.test\r\nFrom: bob@example.test\r\n\r\nx\r\n",
                550,
            ),
            (b"Subject: no from\r\n\r\nx\r\n", 550),
            (
                b"From: \"Alice\" <alice@example.test.evil.test>\r\n\r\nx\r\n",
                553,
            ),
        ];
        for (message, code) in refusals {
            match check_submission(message, &alice()) {
                Err(reply) => assert_eq!(reply.code, code, "{}", String::from_utf8_lossy(message)),
                Ok(m) => panic!("accepted {:?}: {m:?}", String::from_utf8_lossy(message)),
            }
        }
    }

    #[test]
    fn received_names_tls_version_and_suite() {
        let header = received_header(&Trace {
            helo: "client (evil)\r\nX-Injected: 1",
            peer: SocketAddr::from(([127, 0, 0, 2], 5000)),
            hostname: "mail.example.test",
            esmtp: true,
            tls: None,
            authenticated: false,
            smtputf8: false,
            id: "abc",
            single_recipient: Some(&alice()),
            node: "mail1",
        });
        assert!(header.starts_with("Received: from client evilX-Injected: 1 ([127.0.0.2])\r\n\tby mail.example.test (sealmail node mail1) with ESMTP\r\n\tid abc\r\n\tfor <alice@example.test>;\r\n\t"), "{header}");
        assert_eq!(
            header.matches("\r\n").count(),
            5,
            "no header injection through HELO"
        );
    }
}
