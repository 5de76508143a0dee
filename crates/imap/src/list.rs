//! LIST and LSUB (RFC 3501 6.3.8-9) with what clients rely on around them: SPECIAL-USE
//! attributes (RFC 6154), CHILDREN attributes (RFC 3348), and the extended syntax (RFC 5258:
//! selection options SUBSCRIBED, RECURSIVEMATCH (with CHILDINFO) and SPECIAL-USE, return
//! options SUBSCRIBED, CHILDREN, SPECIAL-USE and STATUS from RFC 5819). Subscriptions belong
//! to names, so a deleted mailbox that is still subscribed is listed as `\NonExistent`.
//!
//! imap-codec decodes only the RFC 3501 form of LIST, so the extended form is parsed here by a
//! small tokenizer; it is tried only after imap-codec has refused a LIST command.

use std::collections::{BTreeMap, BTreeSet};

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
    /// RFC 5258 RECURSIVEMATCH: also list a matching parent of a subscribed name the patterns
    /// do not match, with CHILDINFO. Only with SUBSCRIBED.
    pub recursive_match: bool,
    pub special_use_only: bool,
    pub return_subscribed: bool,
    pub status: Option<Vec<StatusDataItemName>>,
    /// Names are UTF-8 both ways (RFC 6855 UTF8=ACCEPT), not modified UTF-7.
    pub utf8: bool,
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
/// Most patterns in one LIST (RFC 5258 allows a list of them): each is matched against every
/// mailbox, so their number multiplies the cost.
pub const MAX_PATTERNS: usize = 32;
/// Most matching steps one LIST may take (names x pattern work, see [`Pattern::matches`]):
/// long names, many of them and many long patterns multiply; past this the LIST is refused
/// instead of occupying a worker for seconds. Everyday LISTs take a few thousand.
pub const MAX_LIST_WORK: u64 = 200_000_000;

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

    /// The most steps [`Pattern::matches`] takes on a name of `len` bytes.
    fn cost(&self, len: usize) -> u64 {
        (len as u64 + 1) * (self.tokens.len() + self.literal_len) as u64
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

fn decode(bytes: &[u8], utf8: bool) -> String {
    wire::name_from_wire(bytes, utf8).unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned())
}

/// The LIST response lines, or why the request is refused (a pattern too long or with too
/// many wildcards). `subscriptions` are the names subscribed to, which may include mailboxes
/// deleted since (RFC 3501 6.3.6).
pub fn respond(
    request: &ListRequest,
    mailboxes: &[Mailbox],
    subscriptions: &[String],
) -> Result<Vec<ListLine>, String> {
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
    if request.patterns.len() > MAX_PATTERNS {
        return Err(format!("At most {MAX_PATTERNS} patterns in one LIST"));
    }
    let reference = decode(&request.reference, request.utf8);
    let mut patterns = Vec::with_capacity(request.patterns.len());
    for pattern in &request.patterns {
        if pattern.len() > MAX_PATTERN {
            return Err(too_complex());
        }
        let full = format!("{reference}{}", decode(pattern, request.utf8));
        patterns.push(Matcher::new(&full).ok_or_else(too_complex)?);
    }
    let mut reach = Vec::new();
    let mut work: u64 = 0;
    let mut too_costly = false;
    let mut matched = |name: &str| {
        patterns.iter().any(|p| {
            work += p.pattern.cost(name.len()) * 2;
            too_costly |= work > MAX_LIST_WORK;
            !too_costly && p.matches(name, &mut reach)
        })
    };
    let existing: BTreeMap<&str, &Mailbox> = mailboxes.iter().map(|m| (m.name.as_str(), m)).collect();
    let subscribed: BTreeSet<&str> = subscriptions.iter().map(String::as_str).collect();
    // Subscribed names no pattern matches: a parent of one is listed for it with \Noselect
    // (LSUB, RFC 3501 6.3.9) or CHILDINFO (RECURSIVEMATCH, RFC 5258 3.5).
    let unmatched_subscribed: BTreeSet<&str> = if request.lsub || request.recursive_match {
        subscribed.iter().copied().filter(|n| !matched(n)).collect()
    } else {
        BTreeSet::new()
    };
    let below = |set: &BTreeSet<&str>, name: &str| {
        let prefix = format!("{name}/");
        set.range(prefix.as_str()..)
            .next()
            .is_some_and(|n| n.starts_with(&prefix))
    };
    let existing_names: BTreeSet<&str> = existing.keys().copied().collect();
    let has_children = |name: &str| below(&existing_names, name);
    // Every name that could be listed: mailboxes, the levels above them, subscribed names and
    // the levels above those.
    let mut candidates: BTreeSet<&str> = existing_names.clone();
    candidates.extend(subscribed.iter().copied());
    for name in existing_names.iter().chain(subscribed.iter()) {
        let mut end = 0;
        while let Some(i) = name[end..].find('/') {
            candidates.insert(&name[..end + i]);
            end += i + 1;
        }
    }
    let mut ordered: Vec<&str> = candidates.into_iter().collect();
    ordered.sort_by_key(|name| *name != "INBOX");
    let mut lines = Vec::new();
    for name in ordered {
        if !matched(name) {
            continue;
        }
        let mailbox = existing.get(name).copied();
        let is_subscribed = subscribed.contains(name);
        let special = mailbox.and_then(|m| m.special_use.as_deref());
        let mut attributes: Vec<&str> = Vec::new();
        let mut child_info = false;
        if request.lsub {
            if !is_subscribed && !below(&unmatched_subscribed, name) {
                continue;
            }
            // LSUB predates CHILDREN: only \Noselect, for a name that is not a mailbox or not
            // itself subscribed.
            if mailbox.is_none() || !is_subscribed {
                attributes.push("\\Noselect");
            }
        } else if request.subscribed_only {
            if is_subscribed {
                if mailbox.is_none() {
                    attributes.push("\\NonExistent");
                }
                attributes.push("\\Subscribed");
            } else if request.recursive_match && below(&unmatched_subscribed, name) {
                child_info = true;
                if mailbox.is_none() {
                    attributes.push("\\Noselect");
                }
            } else {
                continue;
            }
            if mailbox.is_some() || has_children(name) {
                attributes.push(if has_children(name) {
                    "\\HasChildren"
                } else {
                    "\\HasNoChildren"
                });
            }
        } else {
            // Plain LIST: mailboxes and the levels above them.
            if mailbox.is_none() && !has_children(name) {
                continue;
            }
            if mailbox.is_none() {
                attributes.push("\\Noselect");
            }
            attributes.push(if has_children(name) {
                "\\HasChildren"
            } else {
                "\\HasNoChildren"
            });
            if request.return_subscribed && is_subscribed {
                attributes.push("\\Subscribed");
            }
        }
        if request.special_use_only && special.is_none() {
            continue;
        }
        if let Some(special) = special {
            attributes.push(special);
        }
        let mut line = format!("* {verb} ({}) \"/\" ", attributes.join(" ")).into_bytes();
        wire::string(&mut line, wire::name_to_wire(name, request.utf8).as_bytes());
        if child_info {
            line.extend_from_slice(b" (\"CHILDINFO\" (\"SUBSCRIBED\"))");
        }
        line.extend_from_slice(b"\r\n");
        lines.push(ListLine {
            line,
            mailbox: mailbox.cloned(),
        });
    }
    if too_costly {
        return Err("This LIST would take too long; use fewer or shorter patterns".to_string());
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
        "SIZE" => StatusDataItemName::Size,
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
                "RECURSIVEMATCH" => request.recursive_match = true,
                "REMOTE" => {}
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
    // RFC 5258 3.1: RECURSIVEMATCH alone (or with only REMOTE) is a syntax error.
    if request.recursive_match && !request.subscribed_only {
        return None;
    }
    Some((tag, request))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_too_many_patterns_is_refused() {
        let request = ListRequest {
            patterns: vec![b"%".to_vec(); MAX_PATTERNS + 1],
            ..ListRequest::default()
        };
        assert!(respond(&request, &[], &[]).is_err());
        let request = ListRequest {
            patterns: vec![b"%".to_vec(); MAX_PATTERNS],
            ..ListRequest::default()
        };
        assert!(respond(&request, &[], &[]).is_ok());
    }

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
        assert!(respond(&request, &[], &[]).is_err());
        let request = ListRequest {
            patterns: vec!["%".repeat(MAX_WILDCARDS + 1).into_bytes()],
            ..ListRequest::default()
        };
        assert!(respond(&request, &[], &[]).is_err());
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

    /// The mailboxes of imaptest's `listext` scenario (prefix `t`): created, some subscribed,
    /// `t/test6` subscribed and then deleted.
    fn listext() -> (Vec<Mailbox>, Vec<String>) {
        let names = [
            "t",
            "t/test1",
            "t/test2",
            "t/test2/test1",
            "t/test3",
            "t/test4/test5",
            "t/test4/test52",
            "t/test7/test7",
            "t/test8/test8",
            "t/test8/test9",
        ];
        let mailboxes = names
            .iter()
            .enumerate()
            .map(|(i, name)| mailbox(i as i64 + 1, name.to_string()))
            .collect();
        let subscribed = [
            "t/test1",
            "t/test2/test1",
            "t/test6",
            "t/test7/test7",
            "t/test8/test8",
            "t/test8/test9",
        ];
        (mailboxes, subscribed.iter().map(|s| s.to_string()).collect())
    }

    /// An empty mailbox of account 1.
    fn mailbox(id: i64, name: String) -> Mailbox {
        use sealmail_types::{AccountId, MailboxId};
        Mailbox {
            id: MailboxId(id),
            account: AccountId(1),
            name,
            special_use: None,
            uid_validity: 1,
            uid_next: 1,
            subscribed: false,
            highest_modseq: 0,
        }
    }

    fn assert_listed(got: &[String], line: &str) {
        assert!(got.iter().any(|l| l == line), "{line} not in {got:?}");
    }

    fn lines(command: &str, lsub: bool) -> Vec<String> {
        let (mailboxes, subscribed) = listext();
        let request = if lsub {
            let (reference, pattern) = command.split_once(' ').unwrap_or(("", command));
            ListRequest {
                reference: reference.trim_matches('"').as_bytes().to_vec(),
                patterns: vec![pattern.as_bytes().to_vec()],
                lsub: true,
                ..ListRequest::default()
            }
        } else {
            match parse_extended(format!("a LIST {command}\r\n").as_bytes()) {
                Some((_, request)) => request,
                None => return vec!["BAD".to_string()],
            }
        };
        respond(&request, &mailboxes, &subscribed)
            .unwrap_or_default()
            .into_iter()
            .map(|l| String::from_utf8_lossy(&l.line).trim_end().to_string())
            .collect()
    }

    #[test]
    fn recursivematch_needs_subscribed_and_unknown_options_are_bad() {
        for bad in [
            "(RECURSIVEMATCH) \"\" \"\"",
            "(RECURSIVEMATCH REMOTE) \"\" \"\"",
            "(imaptest) \"\" \"\"",
            "\"\" \"\" RETURN (imaptest)",
        ] {
            assert_eq!(lines(bad, false), ["BAD"], "{bad}");
        }
        assert_ne!(lines("(REMOTE) \"\" %", false), ["BAD"]);
    }

    /// RFC 5258 with imaptest's expectations: a deleted mailbox stays subscribed and is
    /// \NonExistent; RECURSIVEMATCH gives CHILDINFO to a parent only for a subscribed child
    /// the patterns do not match themselves.
    #[test]
    fn subscribed_selection_recursivematch_and_childinfo() {
        let got = lines("(SUBSCRIBED) \"\" t/*", false);
        assert_listed(&got, "* LIST (\\NonExistent \\Subscribed) \"/\" \"t/test6\"");
        assert_listed(&got, "* LIST (\\Subscribed \\HasNoChildren) \"/\" \"t/test1\"");
        assert_eq!(got.len(), 6, "only the subscribed names: {got:?}");

        let got = lines(
            "(SUBSCRIBED RECURSIVEMATCH) \"\" t/test2% RETURN (CHILDREN)",
            false,
        );
        assert_eq!(
            got,
            ["* LIST (\\HasChildren) \"/\" \"t/test2\" (\"CHILDINFO\" (\"SUBSCRIBED\"))"]
        );

        let got = lines("(SUBSCRIBED RECURSIVEMATCH) \"\" *test7", false);
        assert_eq!(
            got,
            ["* LIST (\\Subscribed \\HasNoChildren) \"/\" \"t/test7/test7\""],
            "the child is listed itself: no CHILDINFO"
        );

        let got = lines("(SUBSCRIBED RECURSIVEMATCH) \"\" *test8", false);
        assert_eq!(
            got,
            [
                "* LIST (\\Noselect \\HasChildren) \"/\" \"t/test8\" (\"CHILDINFO\" (\"SUBSCRIBED\"))",
                "* LIST (\\Subscribed \\HasNoChildren) \"/\" \"t/test8/test8\"",
            ],
            "CHILDINFO for t/test8/test9, which *test8 does not match"
        );

        let got = lines("(SUBSCRIBED RECURSIVEMATCH) \"\" (t/test2 t/test2/test1)", false);
        assert_eq!(
            got,
            ["* LIST (\\Subscribed \\HasNoChildren) \"/\" \"t/test2/test1\""]
        );

        let got = lines("\"\" t/% RETURN (CHILDREN SUBSCRIBED)", false);
        assert_listed(&got, "* LIST (\\HasNoChildren \\Subscribed) \"/\" \"t/test1\"");
        assert_listed(&got, "* LIST (\\HasChildren) \"/\" \"t/test2\"");
        assert_listed(&got, "* LIST (\\Noselect \\HasChildren) \"/\" \"t/test4\"");
        assert!(
            !got.iter().any(|l| l.contains("test6")),
            "a deleted mailbox is not listed without SUBSCRIBED: {got:?}"
        );
    }

    /// RFC 3501 6.3.9: LSUB with % lists a parent that is not itself subscribed, but has a
    /// subscribed child, with \Noselect; a deleted but subscribed mailbox is listed too.
    #[test]
    fn lsub_lists_unsubscribed_parents_of_subscribed_children_as_noselect() {
        let got = lines("\"\" t/%", true);
        assert_eq!(
            got,
            [
                "* LSUB () \"/\" \"t/test1\"",
                "* LSUB (\\Noselect) \"/\" \"t/test2\"",
                "* LSUB (\\Noselect) \"/\" \"t/test6\"",
                "* LSUB (\\Noselect) \"/\" \"t/test7\"",
                "* LSUB (\\Noselect) \"/\" \"t/test8\"",
            ]
        );
        let got = lines("\"\" *test1", true);
        assert_eq!(
            got,
            ["* LSUB () \"/\" \"t/test1\"", "* LSUB () \"/\" \"t/test2/test1\""]
        );
    }

    /// Many long names against many long patterns that almost match: refused once the work
    /// passes MAX_LIST_WORK, instead of running for seconds.
    #[test]
    fn a_list_that_would_take_too_long_is_refused() {
        let mailboxes: Vec<Mailbox> = (0..1000)
            .map(|i| mailbox(i + 1, format!("{i:04}{}", "a".repeat(250))))
            .collect();
        let pattern = format!("*{}b*", "a".repeat(900));
        let request = ListRequest {
            patterns: vec![pattern.into_bytes(); 32],
            ..ListRequest::default()
        };
        assert!(respond(&request, &mailboxes, &[]).is_err());
        // The same names with one short pattern are fine.
        let request = ListRequest {
            patterns: vec![b"00*".to_vec()],
            ..ListRequest::default()
        };
        assert_eq!(respond(&request, &mailboxes, &[]).map(|l| l.len()), Ok(100));
    }
}
