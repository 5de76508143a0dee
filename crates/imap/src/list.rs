//! LIST and LSUB (RFC 3501 6.3.8-9) with what clients rely on around them: SPECIAL-USE
//! attributes (RFC 6154), CHILDREN attributes (RFC 3348), and the basics of the extended
//! syntax (RFC 5258: selection options SUBSCRIBED and SPECIAL-USE, return options SUBSCRIBED,
//! CHILDREN, SPECIAL-USE and STATUS from RFC 5819).
//!
//! imap-codec decodes only the RFC 3501 form of LIST, so the extended form is parsed here by a
//! small tokenizer; it is tried only after imap-codec has refused a LIST command.

use std::collections::BTreeSet;

use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox as WireMailbox};
use imap_codec::imap_types::status::StatusDataItemName;

use sealmail_store::Mailbox;

use crate::wire;

#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    pub reference: Vec<u8>,
    pub patterns: Vec<Vec<u8>>,
    pub lsub: bool,
    pub subscribed_only: bool,
    pub special_use_only: bool,
    pub return_subscribed: bool,
    pub status: Option<Vec<StatusDataItemName>>,
}

impl ListRequest {
    pub fn plain(reference: &WireMailbox<'_>, pattern: &ListMailbox<'_>, lsub: bool) -> ListRequest {
        let reference = match reference {
            WireMailbox::Inbox => b"INBOX".to_vec(),
            WireMailbox::Other(other) => other.as_ref().to_vec(),
        };
        let pattern = match pattern {
            ListMailbox::Token(t) => t.as_ref().to_vec(),
            ListMailbox::String(s) => s.as_ref().to_vec(),
        };
        ListRequest {
            reference,
            patterns: vec![pattern],
            lsub,
            ..ListRequest::default()
        }
    }
}

/// One response line and, for a mailbox that exists, the mailbox (for RETURN STATUS).
pub struct ListLine {
    pub line: Vec<u8>,
    pub mailbox: Option<Mailbox>,
}

/// Longest reference, and longest pattern (reference included), in bytes.
pub const MAX_PATTERN: usize = 1024;
/// Most wildcards (`*`, `%`) in one pattern.
pub const MAX_WILDCARDS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(Vec<u8>),
    /// `*`: anything, delimiters included.
    Any,
    /// `%`: anything but the hierarchy delimiter.
    AnyInLevel,
}

/// A LIST pattern compiled once per command: literal runs and wildcards (consecutive
/// wildcards merged). Matching works on bytes, which for UTF-8 is the same as on characters:
/// a literal run starts with a whole character, so it can only match where one starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    tokens: Vec<Piece>,
    /// Bytes the literal runs need together: a longer name is needed for any match.
    literal_len: usize,
}

impl Pattern {
    /// `None` when the pattern is too long or has too many wildcards.
    pub fn new(pattern: &str) -> Option<Pattern> {
        let wildcards = pattern.bytes().filter(|&b| b == b'*' || b == b'%').count();
        if pattern.len() > MAX_PATTERN || wildcards > MAX_WILDCARDS {
            return None;
        }
        let mut tokens: Vec<Piece> = Vec::new();
        for b in pattern.bytes() {
            let wildcard = match b {
                b'*' => Some(Piece::Any),
                b'%' => Some(Piece::AnyInLevel),
                _ => None,
            };
            match (wildcard, tokens.last_mut()) {
                (None, Some(Piece::Literal(run))) => run.push(b),
                (None, _) => tokens.push(Piece::Literal(vec![b])),
                // "*%", "%*" and "**" mean "*"; "%%" means "%".
                (Some(Piece::Any), Some(last @ (Piece::Any | Piece::AnyInLevel))) => *last = Piece::Any,
                (Some(Piece::AnyInLevel), Some(Piece::Any | Piece::AnyInLevel)) => {}
                (Some(w), _) => tokens.push(w),
            }
        }
        let literal_len = tokens
            .iter()
            .map(|t| match t {
                Piece::Literal(run) => run.len(),
                _ => 0,
            })
            .sum();
        Some(Pattern { tokens, literal_len })
    }

    /// Whether `name` matches. `reach` is scratch space kept by the caller across calls, so
    /// matching allocates nothing once it has grown to the longest name. The work is the set of
    /// name positions each token can reach: at most (tokens + literal bytes) x name length
    /// steps, never exponential, whatever the pattern.
    pub fn matches(&self, name: &[u8], reach: &mut Vec<bool>) -> bool {
        let n = name.len();
        if self.literal_len > n {
            return false;
        }
        reach.clear();
        reach.resize(n + 1, false);
        reach[0] = true;
        for token in &self.tokens {
            match token {
                Piece::Literal(run) => {
                    // Right to left, so a position set now is not read again for this token.
                    for j in (0..=n).rev() {
                        let next = reach[j] && name[j..].starts_with(run);
                        reach[j] = false;
                        if next {
                            reach[j + run.len()] = true;
                        }
                    }
                }
                Piece::Any | Piece::AnyInLevel => {
                    let mut reachable = false;
                    for j in 0..=n {
                        reachable = reachable || reach[j];
                        reach[j] = reachable;
                        // '%' may stop before a delimiter but never span one.
                        if matches!(token, Piece::AnyInLevel) && j < n && name[j] == b'/' {
                            reachable = false;
                        }
                    }
                }
            }
        }
        reach[n]
    }
}

/// A pattern with INBOX's case-insensitive spelling: INBOX is matched against the pattern in
/// upper case (RFC 3501 5.1: "INBOX" in any case means INBOX).
struct Matcher {
    pattern: Pattern,
    upper: Pattern,
}

impl Matcher {
    fn new(pattern: &str) -> Option<Matcher> {
        Some(Matcher {
            pattern: Pattern::new(pattern)?,
            upper: Pattern::new(&pattern.to_ascii_uppercase())?,
        })
    }

    fn matches(&self, name: &str, reach: &mut Vec<bool>) -> bool {
        if name == "INBOX" {
            return self.upper.matches(name.as_bytes(), reach);
        }
        self.pattern.matches(name.as_bytes(), reach)
    }
}

fn decode(bytes: &[u8]) -> String {
    wire::decode_mailbox_name(bytes).unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned())
}

/// The LIST response lines, or why the request is refused (a pattern too long or with too
/// many wildcards).
pub fn respond(request: &ListRequest, mailboxes: &[Mailbox]) -> Result<Vec<ListLine>, String> {
    let verb = if request.lsub { "LSUB" } else { "LIST" };
    if request.patterns.iter().all(|p| p.is_empty()) && !request.lsub {
        // RFC 3501: an empty pattern asks for the hierarchy delimiter.
        return Ok(vec![ListLine {
            line: b"* LIST (\\Noselect) \"/\" \"\"\r\n".to_vec(),
            mailbox: None,
        }]);
    }
    let too_complex = || {
        format!(
            "The reference and pattern may have at most {MAX_PATTERN} bytes and {MAX_WILDCARDS} wildcards together"
        )
    };
    if request.reference.len() > MAX_PATTERN {
        return Err(too_complex());
    }
    let reference = decode(&request.reference);
    let mut patterns = Vec::with_capacity(request.patterns.len());
    for pattern in &request.patterns {
        if pattern.len() > MAX_PATTERN {
            return Err(too_complex());
        }
        let full = format!("{reference}{}", decode(pattern));
        patterns.push(Matcher::new(&full).ok_or_else(too_complex)?);
    }
    let mut reach = Vec::new();
    let names: BTreeSet<&str> = mailboxes.iter().map(|m| m.name.as_str()).collect();
    // Levels above an existing mailbox that are not mailboxes themselves.
    let mut ancestors = BTreeSet::new();
    for name in &names {
        let mut end = 0;
        while let Some(i) = name[end..].find('/') {
            let prefix = &name[..end + i];
            if !names.contains(prefix) {
                ancestors.insert(prefix.to_string());
            }
            end += i + 1;
        }
    }
    let has_children = |name: &str| {
        let prefix = format!("{name}/");
        names.iter().any(|n| n.starts_with(&prefix))
    };
    let mut lines = Vec::new();
    let mut candidates: Vec<(String, Option<&Mailbox>)> =
        mailboxes.iter().map(|m| (m.name.clone(), Some(m))).collect();
    if !request.subscribed_only && !request.special_use_only && !request.lsub {
        candidates.extend(ancestors.into_iter().map(|a| (a, None)));
    }
    candidates.sort_by(|a, b| (a.0 != "INBOX", &a.0).cmp(&(b.0 != "INBOX", &b.0)));
    for (name, mailbox) in candidates {
        if !patterns.iter().any(|p| p.matches(&name, &mut reach)) {
            continue;
        }
        let subscribed = mailbox.is_some_and(|m| m.subscribed);
        if (request.lsub || request.subscribed_only) && !subscribed {
            continue;
        }
        let special = mailbox.and_then(|m| m.special_use.as_deref());
        if request.special_use_only && special.is_none() {
            continue;
        }
        let mut attributes: Vec<&str> = Vec::new();
        if mailbox.is_none() {
            attributes.push("\\Noselect");
        }
        attributes.push(if has_children(&name) {
            "\\HasChildren"
        } else {
            "\\HasNoChildren"
        });
        if (request.return_subscribed || request.subscribed_only) && subscribed {
            attributes.push("\\Subscribed");
        }
        if let Some(special) = special {
            attributes.push(special);
        }
        let mut line = format!("* {verb} ({}) \"/\" ", attributes.join(" ")).into_bytes();
        wire::string(&mut line, wire::encode_mailbox_name(&name).as_bytes());
        line.extend_from_slice(b"\r\n");
        lines.push(ListLine {
            line,
            mailbox: mailbox.cloned(),
        });
    }
    Ok(lines)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Atom(String),
    Str(Vec<u8>),
    List(Vec<Token>),
}

fn tokenize(input: &[u8], pos: &mut usize, depth: usize, out: &mut Vec<Token>) -> Option<()> {
    if depth > 4 {
        return None;
    }
    loop {
        while input.get(*pos) == Some(&b' ') {
            *pos += 1;
        }
        match input.get(*pos)? {
            b'\r' | b'\n' if depth == 0 => return Some(()),
            b')' if depth > 0 => {
                *pos += 1;
                return Some(());
            }
            b'(' => {
                *pos += 1;
                let mut inner = Vec::new();
                tokenize(input, pos, depth + 1, &mut inner)?;
                out.push(Token::List(inner));
            }
            b'"' => {
                *pos += 1;
                let mut s = Vec::new();
                loop {
                    match input.get(*pos)? {
                        b'"' => break,
                        b'\\' => {
                            *pos += 1;
                            s.push(*input.get(*pos)?);
                        }
                        b'\r' | b'\n' => return None,
                        &c => s.push(c),
                    }
                    *pos += 1;
                }
                *pos += 1;
                out.push(Token::Str(s));
            }
            b'{' => return None,
            _ => {
                let start = *pos;
                while let Some(&c) = input.get(*pos) {
                    if b" ()\r\n\"".contains(&c) {
                        break;
                    }
                    *pos += 1;
                }
                out.push(Token::Atom(
                    String::from_utf8_lossy(&input[start..*pos]).into_owned(),
                ));
            }
        }
        if out.len() > 64 {
            return None;
        }
    }
}

fn status_item(name: &str) -> Option<StatusDataItemName> {
    Some(match name.to_ascii_uppercase().as_str() {
        "MESSAGES" => StatusDataItemName::Messages,
        "RECENT" => StatusDataItemName::Recent,
        "UIDNEXT" => StatusDataItemName::UidNext,
        "UIDVALIDITY" => StatusDataItemName::UidValidity,
        "UNSEEN" => StatusDataItemName::Unseen,
        "DELETED" => StatusDataItemName::Deleted,
        "HIGHESTMODSEQ" => StatusDataItemName::HighestModSeq,
        _ => return None,
    })
}

/// The extended LIST command (RFC 5258): tag and request, or `None` when it is not one.
pub fn parse_extended(command: &[u8]) -> Option<(String, ListRequest)> {
    let mut tokens = Vec::new();
    tokenize(command, &mut 0, 0, &mut tokens)?;
    let mut tokens = tokens.into_iter();
    let Token::Atom(tag) = tokens.next()? else {
        return None;
    };
    // The tag is echoed in the tagged reply: only a tag RFC 3501 allows (no "*", "+", control
    // characters, ...), or a reply could pass for an untagged one or a continuation.
    if crate::framing::tag_of(command).as_deref() != Some(tag.as_str()) {
        return None;
    }
    let Token::Atom(verb) = tokens.next()? else {
        return None;
    };
    if !verb.eq_ignore_ascii_case("LIST") {
        return None;
    }
    let mut request = ListRequest::default();
    let mut next = tokens.next()?;
    if let Token::List(options) = &next {
        for option in options {
            let Token::Atom(option) = option else { return None };
            match option.to_ascii_uppercase().as_str() {
                "SUBSCRIBED" => request.subscribed_only = true,
                "SPECIAL-USE" => request.special_use_only = true,
                "RECURSIVEMATCH" | "REMOTE" => {}
                _ => return None,
            }
        }
        next = tokens.next()?;
    }
    request.reference = match next {
        Token::Atom(a) => a.into_bytes(),
        Token::Str(s) => s,
        Token::List(_) => return None,
    };
    request.patterns = match tokens.next()? {
        Token::Atom(a) => vec![a.into_bytes()],
        Token::Str(s) => vec![s],
        Token::List(list) => list
            .into_iter()
            .map(|t| match t {
                Token::Atom(a) => Some(a.into_bytes()),
                Token::Str(s) => Some(s),
                Token::List(_) => None,
            })
            .collect::<Option<Vec<_>>>()?,
    };
    if let Some(word) = tokens.next() {
        let Token::Atom(word) = word else { return None };
        if !word.eq_ignore_ascii_case("RETURN") {
            return None;
        }
        let Token::List(options) = tokens.next()? else {
            return None;
        };
        let mut options = options.into_iter().peekable();
        while let Some(option) = options.next() {
            let Token::Atom(option) = option else { return None };
            match option.to_ascii_uppercase().as_str() {
                "SUBSCRIBED" => request.return_subscribed = true,
                // Always returned anyway.
                "CHILDREN" | "SPECIAL-USE" => {}
                "STATUS" => {
                    let Some(Token::List(items)) = options.next() else {
                        return None;
                    };
                    let items = items
                        .into_iter()
                        .map(|t| match t {
                            Token::Atom(a) => status_item(&a),
                            _ => None,
                        })
                        .collect::<Option<Vec<_>>>()?;
                    request.status = Some(items);
                }
                _ => return None,
            }
        }
    }
    if tokens.next().is_some() {
        return None;
    }
    Some((tag, request))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_list_needs_a_valid_tag() {
        assert!(parse_extended(b"a1 LIST (SUBSCRIBED) \"\" \"*\"\r\n").is_some());
        for bad in [
            &b"* LIST (SUBSCRIBED) \"\" \"*\"\r\n"[..],
            b"+ LIST (SUBSCRIBED) \"\" \"*\"\r\n",
            b"a\x1b LIST (SUBSCRIBED) \"\" \"*\"\r\n",
            b"a% LIST (SUBSCRIBED) \"\" \"*\"\r\n",
        ] {
            assert!(
                parse_extended(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn m(pattern: &str, name: &str) -> bool {
        match Matcher::new(pattern) {
            Some(matcher) => matcher.matches(name, &mut Vec::new()),
            None => panic!("pattern refused: {pattern}"),
        }
    }

    #[test]
    fn wildcards_follow_rfc_3501() {
        assert!(m("*", "a/b/c"));
        assert!(m("%", "Sent"));
        assert!(!m("%", "a/b"));
        assert!(m("a/%", "a/b"));
        assert!(!m("a/%", "a/b/c"));
        assert!(m("a/*", "a/b/c"));
        assert!(m("inbox", "INBOX"));
        assert!(m("In%", "INBOX"));
        assert!(!m("Sent", "sent"));
        assert!(m("%/%", "a/b"));
        assert!(!m("x*", "a"));
        assert!(m("*/%x", "a/b/x"), "the first '/' is not the one that matches");
        assert!(m("Entw\u{fc}%", "Entw\u{fc}rfe"));
        assert!(m("%\u{fc}rfe", "Entw\u{fc}rfe"));
        assert!(!m("%/", "a/b/"));
        assert!(m("a%%%", "abc") && m("a*%*", "a/b"));
    }

    #[test]
    fn pathological_patterns_are_bounded_by_construction() {
        // 32 wildcards with literals between them against a long name: the matcher walks
        // (tokens + literal bytes) x name positions at most, and keeps no more than one flag
        // per name position.
        let pattern = "*a".repeat(MAX_WILDCARDS) + "b";
        let compiled = Pattern::new(&pattern).unwrap_or_else(|| panic!("refused"));
        assert_eq!(compiled.tokens.len(), 2 * MAX_WILDCARDS);
        let name = "a".repeat(100_000);
        let mut reach = Vec::new();
        assert!(!compiled.matches(name.as_bytes(), &mut reach));
        assert_eq!(reach.len(), name.len() + 1);
        assert!(compiled.matches((name.clone() + "b").as_bytes(), &mut reach));
        // A literal longer than the name is refused before any work.
        let long = Pattern::new(&"x".repeat(1000)).unwrap_or_else(|| panic!("refused"));
        let mut untouched = Vec::new();
        assert!(!long.matches(b"short", &mut untouched));
        assert!(untouched.is_empty());
        // Past the caps the pattern is refused, not run.
        assert!(Pattern::new(&"*".repeat(MAX_WILDCARDS + 1)).is_none());
        assert!(Pattern::new(&"a".repeat(MAX_PATTERN + 1)).is_none());
        let request = ListRequest {
            reference: b"x".repeat(MAX_PATTERN + 1),
            patterns: vec![b"*".to_vec()],
            ..ListRequest::default()
        };
        assert!(respond(&request, &[]).is_err());
        let request = ListRequest {
            patterns: vec!["%".repeat(MAX_WILDCARDS + 1).into_bytes()],
            ..ListRequest::default()
        };
        assert!(respond(&request, &[]).is_err());
    }

    #[test]
    fn the_extended_form_is_understood() -> Result<(), String> {
        let (tag, request) = parse_extended(
            b"a1 LIST (SUBSCRIBED) \"\" (\"*\" \"%\") RETURN (CHILDREN STATUS (MESSAGES UNSEEN))\r\n",
        )
        .ok_or("not parsed")?;
        assert_eq!(tag, "a1");
        assert!(request.subscribed_only);
        assert_eq!(request.patterns, vec![b"*".to_vec(), b"%".to_vec()]);
        assert_eq!(
            request.status,
            Some(vec![StatusDataItemName::Messages, StatusDataItemName::Unseen])
        );
        assert!(parse_extended(b"a1 LIST \"\" \"*\" RETURN (BOGUS)\r\n").is_none());
        assert!(parse_extended(b"a1 LIST \"\" \"*\" EXTRA\r\n").is_none());
        assert!(parse_extended(b"a1 LIST ((((((x)))))) \"\" \"*\"\r\n").is_none());
        Ok(())
    }
}
