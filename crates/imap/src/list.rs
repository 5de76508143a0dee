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

/// Wildcard match: `*` matches anything, `%` anything but the hierarchy delimiter. Dynamic
/// programming over (pattern, name) positions, so no pattern can make it exponential.
pub fn wildcard_match(pattern: &[char], name: &[char]) -> bool {
    let n = name.len();
    let mut row = vec![false; n + 1];
    row[0] = true;
    for pc in pattern {
        let mut next = vec![false; n + 1];
        match pc {
            '*' | '%' => {
                let mut reachable = false;
                for j in 0..=n {
                    reachable = reachable || row[j];
                    next[j] = reachable;
                    // '%' may stop before a delimiter but never span one.
                    if *pc == '%' && j < n && name[j] == '/' {
                        reachable = false;
                    }
                }
            }
            c => {
                for j in 0..n {
                    next[j + 1] = row[j] && name[j] == *c;
                }
            }
        }
        row = next;
    }
    row[n]
}

fn matches(pattern: &str, name: &str) -> bool {
    let name_chars: Vec<char> = name.chars().collect();
    let pattern_chars: Vec<char> = pattern.chars().collect();
    if name == "INBOX" {
        // INBOX is case-insensitive: match it against the pattern's own spelling.
        let upper: Vec<char> = pattern.chars().map(|c| c.to_ascii_uppercase()).collect();
        return wildcard_match(&upper, &name_chars);
    }
    wildcard_match(&pattern_chars, &name_chars)
}

fn decode(bytes: &[u8]) -> String {
    wire::decode_mailbox_name(bytes).unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned())
}

pub fn respond(request: &ListRequest, mailboxes: &[Mailbox]) -> Vec<ListLine> {
    let verb = if request.lsub { "LSUB" } else { "LIST" };
    if request.patterns.iter().all(|p| p.is_empty()) && !request.lsub {
        // RFC 3501: an empty pattern asks for the hierarchy delimiter.
        return vec![ListLine {
            line: b"* LIST (\\Noselect) \"/\" \"\"\r\n".to_vec(),
            mailbox: None,
        }];
    }
    let reference = decode(&request.reference);
    let patterns: Vec<String> = request
        .patterns
        .iter()
        .filter(|p| p.len() <= 1024)
        .map(|p| format!("{reference}{}", decode(p)))
        .collect();
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
        if !patterns.iter().any(|p| matches(p, &name)) {
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
    lines
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

    fn m(pattern: &str, name: &str) -> bool {
        matches(pattern, name)
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
        let long = "*".repeat(500) + "x";
        assert!(!m(&long, &"a".repeat(300)));
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
