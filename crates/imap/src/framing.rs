//! Reading one whole command off the connection: its lines and the literals between them
//! (RFC 3501 section 4.3 literals, RFC 7888 LITERAL+), within limits that depend on the
//! session's stage.
//!
//! imap-codec decodes a command only once all of it is in memory, so framing comes first, with
//! the limits: line length, literal size, literals per command, and the size of the whole
//! command (its lines and literals together). Before login only what LOGIN and AUTHENTICATE
//! need fits (a few KiB, see [`Limits`]) and APPEND is refused outright: a client that has not
//! logged in can never make the server hold a message. After login APPEND may carry a message
//! up to `max_append`, and every literal reserves its bytes from the server-wide
//! [`BodyBudget`] (shared with SMTP) as they arrive.
//!
//! A synchronizing literal `{n}` is agreed to with `+` only when it fits every limit and the
//! budget could cover it now; one that does not is refused before the client sends it. A
//! non-synchronizing literal `{n+}` arrives unasked: one that does not fit is read and thrown
//! away so the session stays in step. Nothing is allocated ahead of the bytes: the buffer grows
//! as data arrives (at most the connection's read buffer at a time), never past the announced
//! end of the literal.

use std::time::{Duration, Instant};

use sealmail_net::budget::{BodyBudget, Reservation};
use sealmail_net::{ConnError, Connection, Line};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest line of a command, without its literals.
    pub max_line: usize,
    /// Largest literal in an APPEND (a message), after login.
    pub max_append: u64,
    /// Largest literal in any other command after login (a search string, a mailbox name).
    pub max_literal: u64,
    /// Most literals in one command.
    pub max_literals: usize,
    /// Most bytes one command may hold after login, lines and literals together; APPEND may
    /// hold one message (`max_append`) more.
    pub max_command: u64,
    /// Largest literal before login (a user name, a password).
    pub max_unauthenticated_literal: u64,
    /// Most bytes one command may hold before login, lines and literals together.
    pub max_unauthenticated_command: u64,
    /// How long a logged-in client may wait before starting a command (RFC 3501 autologout:
    /// 30 min).
    pub idle: Duration,
    /// How long a client that has not logged in may take for each whole command, the wait for
    /// it included.
    pub unauthenticated_idle: Duration,
}

/// Where the session is, as far as framing cares (RFC 3501 section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    NotAuthenticated,
    Authenticated,
}

#[derive(Debug)]
pub enum Frame {
    /// The complete command, each line ending in CRLF, literals in place, and the share of
    /// the message budget its literals hold (given back when it is dropped, after the command).
    Command(Vec<u8>, Reservation),
    /// The command was read to its end (or refused before its literal was sent) but is not
    /// acceptable; reply with `tag` (when one could be read) and carry on.
    Refused { tag: Option<String>, reason: Refusal },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    LineTooLong,
    /// Lines and literals together exceed the command limit.
    CommandTooLarge,
    LiteralTooLarge,
    TooManyLiterals,
    /// APPEND before login: it may not even send its message.
    LoginFirst,
    /// The server-wide budget for message data cannot take the literal now.
    OverBudget,
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

/// What one command may hold, once its verb is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Allowance {
    per_literal: u64,
    per_command: u64,
    /// Whether literals reserve from the message budget. Before login they do not: they are
    /// bounded by a few KiB per connection, and a spent budget must not stop logins.
    budgeted: bool,
}

fn allowance(limits: &Limits, stage: Stage, append: bool) -> Allowance {
    match (stage, append) {
        (Stage::NotAuthenticated, _) => Allowance {
            per_literal: limits.max_unauthenticated_literal,
            per_command: limits.max_unauthenticated_command,
            budgeted: false,
        },
        (Stage::Authenticated, true) => Allowance {
            per_literal: limits.max_append,
            per_command: limits.max_command.saturating_add(limits.max_append),
            budgeted: true,
        },
        (Stage::Authenticated, false) => Allowance {
            per_literal: limits.max_literal,
            per_command: limits.max_command,
            budgeted: true,
        },
    }
}

/// When the command being read must be complete, if its whole reading is bounded (before
/// login); otherwise each part gets its own time.
struct Clock {
    whole_command: Option<Instant>,
    per_part: Duration,
}

impl Clock {
    fn new(limits: &Limits, stage: Stage) -> Clock {
        match stage {
            Stage::NotAuthenticated => Clock {
                whole_command: Some(Instant::now() + limits.unauthenticated_idle),
                per_part: limits.unauthenticated_idle,
            },
            // Only the first line may be slow in coming: the rest belongs to a command in progress.
            Stage::Authenticated => Clock {
                whole_command: None,
                per_part: limits.idle.min(Duration::from_secs(300)),
            },
        }
    }

    fn first_line(&self, limits: &Limits) -> Duration {
        match self.whole_command {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()),
            None => limits.idle,
        }
    }

    /// The deadline of the next line or literal.
    fn part_deadline(&self) -> Instant {
        self.whole_command
            .unwrap_or_else(|| Instant::now() + self.per_part)
    }
}

/// Appends a line (and its CRLF) without the spare capacity `Vec` growth would add.
fn push_line(command: &mut Vec<u8>, line: &[u8]) {
    command.reserve_exact(line.len() + 2);
    command.extend_from_slice(line);
    command.extend_from_slice(b"\r\n");
}

/// Reads and drops `n` bytes by the deadline, holding none of them.
async fn discard(conn: &mut Connection, mut n: u64, deadline: Instant) -> Result<(), ConnError> {
    while n > 0 {
        let input = conn
            .fill(deadline.saturating_duration_since(Instant::now()))
            .await?;
        let take = n.min(input.len() as u64) as usize;
        conn.consume(take);
        n -= take as u64;
    }
    Ok(())
}

/// Reads a literal of `length` bytes into `command` by the deadline, growing the buffer as the
/// bytes arrive (doubling, but never past the literal's end), and the reservation with it.
/// Returns false when the reservation could not grow: then the buffer is dropped and the rest
/// of the literal read and thrown away.
async fn receive_literal(
    conn: &mut Connection,
    command: &mut Vec<u8>,
    length: u64,
    deadline: Instant,
    mut reservation: Option<&mut Reservation>,
) -> Result<bool, ConnError> {
    // The caller checked `length` against limits that fit in memory.
    let end = command
        .len()
        .saturating_add(usize::try_from(length).unwrap_or(usize::MAX));
    let mut left = length;
    let mut keep = true;
    while left > 0 {
        let input = conn
            .fill(deadline.saturating_duration_since(Instant::now()))
            .await?;
        let take = left.min(input.len() as u64) as usize;
        let needed = command.len() + take;
        if keep && needed > command.capacity() {
            let target = needed.max(command.capacity().saturating_mul(2)).min(end);
            if reservation.as_mut().is_some_and(|r| !r.grow_to(target)) {
                keep = false;
                *command = Vec::new();
            } else {
                command.reserve_exact(target - command.len());
            }
        }
        if keep {
            command.extend_from_slice(&input[..take]);
        }
        conn.consume(take);
        left -= take as u64;
    }
    Ok(keep)
}

pub async fn read_command(
    conn: &mut Connection,
    limits: &Limits,
    stage: Stage,
    budget: &BodyBudget,
) -> Result<Frame, ConnError> {
    let clock = Clock::new(limits, stage);
    let mut command = Vec::new();
    let client = conn.info().peer.ip();
    let mut reservation = budget.reservation_for(client);
    let mut tag = None;
    let mut allowed = allowance(limits, stage, false);
    let mut append = false;
    let mut refused: Option<Refusal> = None;
    let mut literals = 0usize;
    let mut first = true;
    loop {
        let wait = if first {
            clock.first_line(limits)
        } else {
            clock.part_deadline().saturating_duration_since(Instant::now())
        };
        // A line may use what is left of the command's allowance (nothing is kept once the
        // command is refused, so then only the line limit applies).
        let room = allowed.per_command.saturating_sub(command.len() as u64);
        let max = match refused {
            Some(_) => limits.max_line,
            None => limits.max_line.min(usize::try_from(room).unwrap_or(usize::MAX)),
        };
        let line = match conn.read_line_within(max, wait).await? {
            Line::Complete(line) => line,
            Line::TooLong(start) => {
                let reason = if max < limits.max_line {
                    Refusal::CommandTooLarge
                } else {
                    Refusal::LineTooLong
                };
                return Ok(Frame::Refused {
                    tag: if first { tag_of(&start) } else { tag },
                    reason: refused.unwrap_or(reason),
                });
            }
        };
        if first {
            tag = tag_of(&line);
            append = is_append(&line);
            allowed = allowance(limits, stage, append);
            first = false;
        }
        let announced = literal_announcement(&line);
        if refused.is_none() {
            push_line(&mut command, &line);
        }
        let Some((length, synchronizing)) = announced else {
            return Ok(match refused {
                None => Frame::Command(command, reservation),
                Some(reason) => Frame::Refused { tag, reason },
            });
        };
        literals += 1;
        let problem = if append && stage == Stage::NotAuthenticated {
            Some(Refusal::LoginFirst)
        } else if literals > limits.max_literals {
            Some(Refusal::TooManyLiterals)
        } else if length > allowed.per_literal {
            Some(Refusal::LiteralTooLarge)
        } else if (command.len() as u64).saturating_add(length) > allowed.per_command {
            Some(Refusal::CommandTooLarge)
        } else if allowed.budgeted && length > budget.available() as u64 {
            Some(Refusal::OverBudget)
        } else {
            None
        };
        let deadline = clock.part_deadline();
        if let Some(problem) = refused.or(problem) {
            if refused.is_none() {
                // Nothing of a refused command is kept.
                command = Vec::new();
                reservation = budget.reservation_for(client);
            }
            refused = Some(problem);
            if synchronizing {
                // Without our "+" the client sends neither the literal nor the rest.
                return Ok(Frame::Refused { tag, reason: problem });
            }
            discard(conn, length, deadline).await?;
            continue;
        }
        if synchronizing {
            conn.write_all(b"+ Ready for literal data\r\n").await?;
        }
        let held = allowed.budgeted.then_some(&mut reservation);
        if !receive_literal(conn, &mut command, length, deadline, held).await? {
            reservation = budget.reservation_for(client);
            refused = Some(Refusal::OverBudget);
        }
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
    fn before_login_every_command_gets_the_small_allowance() {
        let limits = Limits {
            max_line: 64 * 1024,
            max_append: 50 << 20,
            max_literal: 64 * 1024,
            max_literals: 64,
            max_command: 1 << 20,
            max_unauthenticated_literal: 4096,
            max_unauthenticated_command: 16384,
            idle: Duration::from_secs(1800),
            unauthenticated_idle: Duration::from_secs(60),
        };
        let small = Allowance {
            per_literal: 4096,
            per_command: 16384,
            budgeted: false,
        };
        assert_eq!(allowance(&limits, Stage::NotAuthenticated, true), small);
        assert_eq!(allowance(&limits, Stage::NotAuthenticated, false), small);
        let append = allowance(&limits, Stage::Authenticated, true);
        assert_eq!(
            (append.per_literal, append.per_command),
            (50 << 20, (50 << 20) + (1 << 20))
        );
        assert!(append.budgeted);
        let other = allowance(&limits, Stage::Authenticated, false);
        assert_eq!((other.per_literal, other.per_command), (64 * 1024, 1 << 20));
        assert!(is_append(b"a append INBOX {5}") && !is_append(b"a LOGIN {5}"));
    }

    #[test]
    fn tags_follow_rfc_3501() {
        assert_eq!(tag_of(b"A001 NOOP").as_deref(), Some("A001"));
        assert_eq!(tag_of(b"+ NOOP"), None);
        assert_eq!(tag_of(b"NOOP"), None);
        assert_eq!(tag_of(b"a{ NOOP"), None);
    }
}
