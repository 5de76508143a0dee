//! SMTP replies (RFC 5321 section 4.2) with enhanced status codes (RFC 3463, RFC 2034).
//! Every reply the server sends is built here.

use std::fmt::Write as _;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code, e.g. "5.7.1"; none for 220/221 greetings and 354/334 prompts.
    pub status: Option<&'static str>,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, status: &'static str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            status: Some(status),
            lines: vec![text.into()],
        }
    }

    /// A reply without an enhanced status code.
    pub fn bare(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            status: None,
            lines: vec![text.into()],
        }
    }

    pub fn multiline(code: u16, lines: Vec<String>) -> Reply {
        Reply {
            code,
            status: None,
            lines,
        }
    }

    pub fn is_error(&self) -> bool {
        self.code >= 500
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::new();
        let count = self.lines.len().max(1);
        for i in 0..count {
            let separator = if i + 1 == count { ' ' } else { '-' };
            // A reply may quote what a client or a message said: no control character of it
            // reaches the wire (a CR LF would start a reply of its own).
            let text: String = self
                .lines
                .get(i)
                .map(String::as_str)
                .unwrap_or("")
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect();
            let _ = match self.status {
                Some(status) => write!(out, "{}{separator}{status} {text}\r\n", self.code),
                None => write!(out, "{}{separator}{text}\r\n", self.code),
            };
        }
        out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_formatted_per_rfc_5321() {
        assert_eq!(
            Reply::new(250, "2.1.0", "Sender OK").to_bytes(),
            b"250 2.1.0 Sender OK\r\n"
        );
        assert_eq!(
            Reply::multiline(250, vec!["mx.test".into(), "PIPELINING".into()]).to_bytes(),
            b"250-mx.test\r\n250 PIPELINING\r\n"
        );
        assert_eq!(Reply::bare(354, "Go ahead").to_bytes(), b"354 Go ahead\r\n");
    }

    #[test]
    fn quoted_control_characters_never_reach_the_wire() {
        assert_eq!(
            Reply::new(555, "5.5.4", "Unsupported parameter X\0\x1b\r\n250 OK").to_bytes(),
            b"555 5.5.4 Unsupported parameter X????250 OK\r\n"
        );
    }
}
