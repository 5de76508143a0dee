//! Protocol lines built from values that were stored or received: the one place that refuses
//! CR, LF and NUL inside such a line.
//!
//! A line sent to a peer (an SMTP command, a reply, a header) that carries a value from outside
//! must go through [`ProtocolLine::new`]: a value holding a line break would end the line early
//! and let the rest be read as a command of its own (SMTP command injection). The check is
//! made once, where the line is put together, so no caller can forget it.

use std::fmt;

/// A single protocol line, without its CRLF, known to hold no CR, LF or NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolLine(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refusing to send a protocol line with a CR, LF or NUL in it: {0:?}")]
pub struct UnsafeLine(pub String);

impl ProtocolLine {
    pub fn new(line: impl Into<String>) -> Result<ProtocolLine, UnsafeLine> {
        let line = line.into();
        if line.contains(['\r', '\n', '\0']) {
            let shown: String = line.chars().take(120).collect();
            return Err(UnsafeLine(shown));
        }
        Ok(ProtocolLine(line))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The line with its CRLF, as it goes on the wire.
    pub fn to_wire(&self) -> String {
        format!("{}\r\n", self.0)
    }
}

impl fmt::Display for ProtocolLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What makes `content` unfit to be sent as SMTP DATA or BDAT without BINARYMIME: a CR not
/// followed by LF, an LF not preceded by CR, or a NUL (RFC 5321 2.3.8 and 4.1.4). A receiver
/// that reads such line ends (or drops NULs) differently could end the message early: the
/// rest would be read as commands (SMTP smuggling).
pub fn unsafe_content(content: &[u8]) -> Option<&'static str> {
    let mut previous = 0u8;
    for (i, &byte) in content.iter().enumerate() {
        match byte {
            0 => return Some("a NUL byte"),
            b'\r' if content.get(i + 1) != Some(&b'\n') => return Some("a bare CR"),
            b'\n' if previous != b'\r' => return Some("a bare LF"),
            _ => {}
        }
        previous = byte;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_with_bare_line_ends_or_nul_are_unsafe() {
        assert_eq!(unsafe_content(b"Subject: x\r\n\r\nbody\r\n"), None);
        assert_eq!(unsafe_content(b""), None);
        assert_eq!(unsafe_content(b"a\rb\r\n"), Some("a bare CR"));
        assert_eq!(unsafe_content(b"a\r\n.\r\r\n"), Some("a bare CR"));
        assert_eq!(unsafe_content(b"a\r"), Some("a bare CR"));
        assert_eq!(unsafe_content(b"a\nb\r\n"), Some("a bare LF"));
        assert_eq!(unsafe_content(b"\n"), Some("a bare LF"));
        assert_eq!(unsafe_content(b"a\0b\r\n"), Some("a NUL byte"));
    }

    #[test]
    fn line_breaks_and_nul_are_refused() {
        assert_eq!(
            ProtocolLine::new("MAIL FROM:<a@b.test> ENVID=x").map(|l| l.to_wire()),
            Ok("MAIL FROM:<a@b.test> ENVID=x\r\n".to_string())
        );
        for bad in ["a\r\nRCPT TO:<x@y>", "a\nb", "a\rb", "a\0b"] {
            assert!(ProtocolLine::new(bad).is_err(), "{bad:?}");
        }
    }
}
