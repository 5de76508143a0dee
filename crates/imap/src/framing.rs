//! Reading one whole command off the connection: its lines and the literals between them.
//!
//! imap-codec decodes a command only once all of it is in memory, so framing comes first, with
//! the limits: line length, literal size (APPEND may carry a whole message, anything else only
//! a small string), literals per command. A synchronizing literal `{n}` is agreed to with `+`
//! only when it fits; one that does not is refused before the client sends it. A
//! non-synchronizing literal `{n+}` (RFC 7888) arrives unasked: an oversized one is read and
//! thrown away so the session stays in step.

use std::time::Duration;

use sealmail_net::{ConnError, Connection, Line};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest line of a command, without its literals.
    pub max_line: usize,
    /// Largest literal in an APPEND (a message).
    pub max_append: u64,
    /// Largest literal in any other command (a password, a search string, a mailbox name).
    pub max_literal: u64,
    pub max_literals: usize,
    /// How long the client may wait before starting a command (RFC 3501 autologout: 30 min).
    pub idle: Duration,
}

#[derive(Debug)]
pub enum Frame {
    /// The complete command, each line ending in CRLF, literals in place.
    Command(Vec<u8>),
    /// The command was read to its end but is not acceptable; reply BAD/NO with `tag` (when
    /// one could be read) and carry on.
    Refused { tag: Option<String>, reason: Refusal },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    LineTooLong,
    LiteralTooLarge,
    TooManyLiterals,
}

/// A tag as RFC 3501 defines it: astring characters except "+".
pub fn tag_of(line: &[u8]) -> Option<String> {
    let end = line.iter().position(|&b| b == b' ')?;
    let tag = &line[..end];
    let valid = !tag.is_empty()
        && tag
            .iter()
            .all(|&b| b.is_ascii_graphic() && !b"(){%*\"\\+]".contains(&b));
    valid.then(|| String::from_utf8_lossy(tag).into_owned())
}

/// `{n}` or `{n+}` at the end of a line: the literal's length and whether it synchronizes.
fn literal_announcement(line: &[u8]) -> Option<(u64, bool)> {
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let mut digits = &inner[open + 1..];
    let synchronizing = match digits.strip_suffix(b"+") {
        Some(d) => {
            digits = d;
            false
        }
        None => true,
    };
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((n, synchronizing))
}

fn is_append(first_line: &[u8]) -> bool {
    let mut words = first_line.split(|&b| b == b' ');
    let _tag = words.next();
    words
        .next()
        .is_some_and(|verb| verb.eq_ignore_ascii_case(b"APPEND"))
}

async fn discard(conn: &mut Connection, mut n: u64) -> Result<(), ConnError> {
    let mut sink = vec![0u8; 64 * 1024];
    while n > 0 {
        let take = n.min(sink.len() as u64) as usize;
        conn.read_exact(&mut sink[..take]).await?;
        n -= take as u64;
    }
    Ok(())
}

pub async fn read_command(conn: &mut Connection, limits: &Limits) -> Result<Frame, ConnError> {
    let mut command = Vec::new();
    let mut tag = None;
    let mut append = false;
    let mut refused: Option<Refusal> = None;
    let mut literals = 0usize;
    let mut first = true;
    loop {
        // Only the first line may be slow in coming: the rest belongs to a command in progress.
        let wait = if first {
            limits.idle
        } else {
            limits.idle.min(Duration::from_secs(300))
        };
        let line = match conn.read_line_within(limits.max_line, wait).await? {
            Line::Complete(line) => line,
            Line::TooLong(start) => {
                return Ok(Frame::Refused {
                    tag: if first { tag_of(&start) } else { tag },
                    reason: Refusal::LineTooLong,
                });
            }
        };
        if first {
            tag = tag_of(&line);
            append = is_append(&line);
            first = false;
        }
        let announced = literal_announcement(&line);
        if refused.is_none() {
            command.extend_from_slice(&line);
            command.extend_from_slice(b"\r\n");
        }
        let Some((length, synchronizing)) = announced else {
            return Ok(match refused {
                None => Frame::Command(command),
                Some(reason) => Frame::Refused { tag, reason },
            });
        };
        literals += 1;
        let limit = if append {
            limits.max_append
        } else {
            limits.max_literal
        };
        let problem = if literals > limits.max_literals {
            Some(Refusal::TooManyLiterals)
        } else if length > limit {
            Some(Refusal::LiteralTooLarge)
        } else {
            None
        };
        if let Some(problem) = problem.or(refused) {
            refused = Some(problem);
            if synchronizing {
                // Without our "+" the client sends neither the literal nor the rest.
                return Ok(Frame::Refused { tag, reason: problem });
            }
            discard(conn, length).await?;
            continue;
        }
        if synchronizing {
            conn.write_all(b"+ Ready for literal data\r\n").await?;
        }
        let start = command.len();
        command.resize(start + length as usize, 0);
        conn.read_exact(&mut command[start..]).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_announcements_are_recognised_only_at_the_end() {
        assert_eq!(literal_announcement(b"a LOGIN {5}"), Some((5, true)));
        assert_eq!(literal_announcement(b"a APPEND INBOX {310+}"), Some((310, false)));
        assert_eq!(literal_announcement(b"a LOGIN {5} x"), None);
        assert_eq!(literal_announcement(b"a LOGIN {}"), None);
        assert_eq!(literal_announcement(b"a LOGIN {99999999999}"), None);
        assert_eq!(literal_announcement(b"a LOGIN {-1}"), None);
    }

    #[test]
    fn tags_follow_rfc_3501() {
        assert_eq!(tag_of(b"A001 NOOP").as_deref(), Some("A001"));
        assert_eq!(tag_of(b"+ NOOP"), None);
        assert_eq!(tag_of(b"NOOP"), None);
        assert_eq!(tag_of(b"a{ NOOP"), None);
    }
}
