//! `SEARCH RETURN (...)` (RFC 4731 ESEARCH, required by IMAP4rev2) and the `* ESEARCH`
//! response, and APPEND's `UTF8 (...)` data item (RFC 6855 4). imap-codec 2.0.0-alpha.10 decodes only the RFC 3501 SEARCH, so the return
//! options are taken off the command here, before decoding; the rest of the command is left
//! exactly as it was (literals included) for imap-codec.

/// What the client asked a SEARCH to return.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReturnOptions {
    pub min: bool,
    pub max: bool,
    pub all: bool,
    pub count: bool,
    /// RFC 5182 SEARCHRES: keep the result for `$`.
    pub save: bool,
}

impl ReturnOptions {
    /// RFC 4731 3.1: `RETURN ()` means ALL (SAVE alone returns nothing, RFC 5182 2.1).
    fn or_all(mut self) -> ReturnOptions {
        if !(self.min || self.max || self.all || self.count || self.save) {
            self.all = true;
        }
        self
    }

    /// Whether an `* ESEARCH` response is sent at all.
    pub fn answers(&self) -> bool {
        self.min || self.max || self.all || self.count
    }
}

/// Why a RETURN clause is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReturnError {
    Unknown(String),
}

/// If `command` is `tag [UID] SEARCH RETURN (options) ...`, the command without the RETURN
/// clause and the options. The clause must be on the first line, before any literal.
pub fn strip_return(command: &[u8]) -> Option<(Vec<u8>, Result<ReturnOptions, ReturnError>)> {
    let first_line_end = command.iter().position(|&b| b == b'\r' || b == b'\n')?;
    let line = &command[..first_line_end];
    let mut words = line.split(|&b| b == b' ');
    let _tag = words.next()?;
    let mut consumed = _tag.len() + 1;
    let mut verb = words.next()?;
    if verb.eq_ignore_ascii_case(b"UID") {
        consumed += verb.len() + 1;
        verb = words.next()?;
    }
    if !verb.eq_ignore_ascii_case(b"SEARCH") {
        return None;
    }
    consumed += verb.len() + 1;
    let rest = line.get(consumed..)?;
    if rest.len() < 7 || !rest[..7].eq_ignore_ascii_case(b"RETURN ") {
        return None;
    }
    let after_return = &rest[7..];
    if after_return.first() != Some(&b'(') {
        return None;
    }
    let close = after_return.iter().position(|&b| b == b')')?;
    let inside = &after_return[1..close];
    let mut options = ReturnOptions::default();
    let mut error = None;
    for word in inside.split(|&b| b == b' ').filter(|w| !w.is_empty()) {
        match word.to_ascii_uppercase().as_slice() {
            b"MIN" => options.min = true,
            b"MAX" => options.max = true,
            b"ALL" => options.all = true,
            b"COUNT" => options.count = true,
            b"SAVE" => options.save = true,
            other => {
                error.get_or_insert(ReturnError::Unknown(
                    String::from_utf8_lossy(other).chars().take(32).collect(),
                ));
            }
        }
    }
    // Drop "RETURN (...)" and the space after it.
    let clause_end = consumed + 7 + close + 1;
    let skip_space = usize::from(command.get(clause_end) == Some(&b' '));
    let mut stripped = command[..consumed].to_vec();
    stripped.extend_from_slice(&command[clause_end + skip_space..]);
    Some((stripped, error.map_or(Ok(options.or_all()), Err)))
}

/// Most `$` one command may use.
pub const MAX_SAVED_REFERENCES: usize = 4;

/// Where a `$` stands in a command, which decides what it is written out as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SavedUse {
    /// The message set of `[UID] FETCH/STORE/COPY/MOVE` or `UID EXPUNGE` (its first argument).
    Set { uid: bool },
    /// A search key of SEARCH; `after_uid` when it follows the key word `UID` (`UID $`).
    SearchKey { after_uid: bool },
}

/// Search keys whose next word is their argument (a `$` there is that argument: a keyword, a
/// string, a number), not a message set.
const KEYS_WITH_ARGUMENT: &[&str] = &[
    "BCC",
    "BEFORE",
    "BODY",
    "CC",
    "FROM",
    "KEYWORD",
    "LARGER",
    "ON",
    "SENTBEFORE",
    "SENTON",
    "SENTSINCE",
    "SINCE",
    "SMALLER",
    "SUBJECT",
    "TEXT",
    "TO",
    "UNKEYWORD",
    "CHARSET",
    "MODSEQ",
    "HEADER",
    "OLDER",
    "YOUNGER",
];

/// The command with each `$` (RFC 5182: the saved search result) that stands where a message
/// set may, on the first line and outside quoted strings, replaced by what `replacement` gives
/// for its use; `None` to leave the command as it is (no such `$`, more than
/// [`MAX_SAVED_REFERENCES`], or `replacement` gave `None`). Only sequence-set positions are
/// touched: a `$` that is a keyword, a mailbox name or a search string stays what it is.
pub fn substitute_saved(
    command: &[u8],
    mut replacement: impl FnMut(SavedUse) -> Option<String>,
) -> Option<Vec<u8>> {
    let line_end = command.iter().position(|&b| b == b'\r' || b == b'\n')?;
    let line = &command[..line_end];
    let words: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let mut at = 1;
    let uid = words.get(at)?.eq_ignore_ascii_case(b"UID");
    if uid {
        at += 1;
    }
    let verb = String::from_utf8_lossy(words.get(at)?).to_ascii_uppercase();
    let mut out: Vec<u8> = Vec::with_capacity(command.len() + 64);
    let mut substitutions = 0;
    match verb.as_str() {
        "FETCH" | "STORE" | "COPY" | "MOVE" | "EXPUNGE" => {
            if words.get(at + 1) != Some(&&b"$"[..]) || (verb == "EXPUNGE" && !uid) {
                return None;
            }
            let text = replacement(SavedUse::Set { uid })?;
            let prefix: usize = words[..=at].iter().map(|w| w.len() + 1).sum();
            out.extend_from_slice(&line[..prefix]);
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(&line[prefix + 1..]);
            substitutions = 1;
        }
        "SEARCH" => {
            let mut quoted = false;
            let mut i = 0;
            while i < line.len() {
                let b = line[i];
                if quoted {
                    out.push(b);
                    if b == b'\\' && i + 1 < line.len() {
                        out.push(line[i + 1]);
                        i += 2;
                        continue;
                    }
                    quoted = b != b'"';
                } else if b == b'"' {
                    quoted = true;
                    out.push(b);
                } else if b == b'$'
                    && i > 0
                    && matches!(line[i - 1], b' ' | b'(')
                    && matches!(line.get(i + 1), None | Some(b' ' | b')'))
                {
                    let before = &line[..i];
                    let mut previous = before
                        .split(|&c| c == b' ' || c == b'(')
                        .rev()
                        .filter(|w| !w.is_empty());
                    let word1 = previous
                        .next()
                        .map(|w| String::from_utf8_lossy(w).to_ascii_uppercase());
                    let word2 = previous
                        .next()
                        .map(|w| String::from_utf8_lossy(w).to_ascii_uppercase());
                    let is_argument = word1.as_deref().is_some_and(|w| KEYS_WITH_ARGUMENT.contains(&w))
                        || word2.as_deref() == Some("HEADER");
                    if is_argument {
                        out.push(b);
                    } else {
                        substitutions += 1;
                        if substitutions > MAX_SAVED_REFERENCES {
                            return None;
                        }
                        let after_uid = word1.as_deref() == Some("UID");
                        out.extend_from_slice(replacement(SavedUse::SearchKey { after_uid })?.as_bytes());
                    }
                } else {
                    out.push(b);
                }
                i += 1;
            }
        }
        _ => return None,
    }
    if substitutions == 0 {
        return None;
    }
    out.extend_from_slice(&command[line_end..]);
    Some(out)
}

/// `* ESEARCH (TAG "tag") [UID] ...` for the numbers found (ascending).
pub fn response(tag: &str, uid: bool, options: ReturnOptions, found: &[u32], modseq: Option<u64>) -> String {
    let mut out = format!("* ESEARCH (TAG \"{tag}\")");
    if uid {
        out.push_str(" UID");
    }
    if let (true, Some(min)) = (options.min, found.first()) {
        out.push_str(&format!(" MIN {min}"));
    }
    if let (true, Some(max)) = (options.max, found.last()) {
        out.push_str(&format!(" MAX {max}"));
    }
    if options.all && !found.is_empty() {
        out.push_str(&format!(" ALL {}", crate::sequence::compact(found)));
    }
    if options.count {
        out.push_str(&format!(" COUNT {}", found.len()));
    }
    if let (Some(modseq), false) = (modseq, found.is_empty()) {
        out.push_str(&format!(" MODSEQ {modseq}"));
    }
    out.push_str("\r\n");
    out
}

/// If `command` is an APPEND whose message is given as `UTF8 (literal8)` (RFC 6855 4), the
/// command with the message as a plain literal8, which imap-codec decodes. The `UTF8 (` must
/// end the first line before the literal's length, and `)` must follow the literal's octets and
/// end the command.
pub fn strip_utf8_append(command: &[u8]) -> Option<Vec<u8>> {
    let line_end = command.windows(2).position(|w| w == b"\r\n")?;
    let line = &command[..line_end];
    let mut words = line.split(|&b| b == b' ');
    let _tag = words.next()?;
    if !words.next()?.eq_ignore_ascii_case(b"APPEND") {
        return None;
    }
    // "... UTF8 (~{n}" or "... UTF8 (~{n+}"
    let open = line.iter().rposition(|&b| b == b'(')?;
    let before = &line[..open];
    if before.len() < 5 || !before[before.len() - 5..].eq_ignore_ascii_case(b"UTF8 ") {
        return None;
    }
    let announcement = &line[open + 1..];
    let digits = announcement.strip_prefix(b"~{")?.strip_suffix(b"}")?;
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let length: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let data_start = line_end + 2;
    let data_end = data_start.checked_add(length)?;
    if command.get(data_end..)? != b")\r\n" {
        return None;
    }
    let mut out = Vec::with_capacity(command.len());
    out.extend_from_slice(&line[..before.len() - 5]);
    out.extend_from_slice(announcement);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&command[data_start..data_end]);
    out.extend_from_slice(b"\r\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_clauses_are_taken_off_and_read() {
        let Some((rest, options)) = strip_return(b"a1 UID SEARCH RETURN (MIN count) UNSEEN\r\n") else {
            panic!("not recognised")
        };
        assert_eq!(rest, b"a1 UID SEARCH UNSEEN\r\n");
        assert_eq!(
            options,
            Ok(ReturnOptions {
                min: true,
                count: true,
                ..ReturnOptions::default()
            })
        );
        let Some((rest, options)) = strip_return(b"b search return () TEXT {3}\r\nabc\r\n") else {
            panic!("not recognised")
        };
        assert_eq!(rest, b"b search TEXT {3}\r\nabc\r\n");
        assert_eq!(
            options,
            Ok(ReturnOptions {
                all: true,
                ..ReturnOptions::default()
            })
        );
        assert_eq!(
            strip_return(b"c SEARCH RETURN (SAVE) ALL\r\n").map(|r| r.1),
            Some(Ok(ReturnOptions {
                save: true,
                ..ReturnOptions::default()
            }))
        );
        assert!(matches!(
            strip_return(b"c SEARCH RETURN (PARTIAL 1:5) ALL\r\n").map(|r| r.1),
            Some(Err(ReturnError::Unknown(_)))
        ));
        assert_eq!(strip_return(b"d SEARCH ALL\r\n"), None);
        assert_eq!(strip_return(b"d FETCH 1 RETURN (x)\r\n"), None);
    }

    #[test]
    fn an_append_of_utf8_data_becomes_a_plain_literal8() {
        let command = b"a APPEND INBOX (\\Seen) UTF8 (~{4}\r\nab\xc3\xa9)\r\n";
        assert_eq!(
            strip_utf8_append(command).as_deref(),
            Some(b"a APPEND INBOX (\\Seen) ~{4}\r\nab\xc3\xa9\r\n".as_slice())
        );
        // No closing parenthesis right after the octets, or a literal of another length: not it.
        assert_eq!(strip_utf8_append(b"a APPEND INBOX UTF8 (~{5}\r\nabcde\r\n"), None);
        assert_eq!(
            strip_utf8_append(b"a APPEND INBOX UTF8 (~{4}\r\nabcde)\r\n"),
            None
        );
        assert_eq!(strip_utf8_append(b"a APPEND INBOX ~{5}\r\nabcde\r\n"), None);
        assert_eq!(strip_utf8_append(b"a SEARCH UTF8 (~{1}\r\na)\r\n"), None);
    }

    #[test]
    fn the_saved_result_marker_is_replaced_only_where_a_message_set_stands() {
        let replace = |use_: SavedUse| {
            Some(match use_ {
                SavedUse::Set { uid: true } => "U".to_string(),
                SavedUse::Set { uid: false } => "S".to_string(),
                SavedUse::SearchKey { after_uid: true } => "K".to_string(),
                SavedUse::SearchKey { after_uid: false } => "UID K".to_string(),
            })
        };
        let sub = |c: &[u8]| substitute_saved(c, replace).map(|v| String::from_utf8_lossy(&v).into_owned());
        assert_eq!(
            sub(b"a FETCH $ (FLAGS)\r\n").as_deref(),
            Some("a FETCH S (FLAGS)\r\n")
        );
        assert_eq!(
            sub(b"a UID STORE $ +FLAGS (\\Seen $)\r\n").as_deref(),
            Some("a UID STORE U +FLAGS (\\Seen $)\r\n")
        );
        assert_eq!(
            sub(b"a UID EXPUNGE $\r\n").as_deref(),
            Some("a UID EXPUNGE U\r\n")
        );
        assert_eq!(sub(b"a COPY 1:5 $\r\n"), None, "a mailbox named $");
        assert_eq!(sub(b"a DELETE $\r\n"), None);
        assert_eq!(
            sub(b"a UID SEARCH OR $ SUBJECT \"a $ b\" UID $\r\n").as_deref(),
            Some("a UID SEARCH OR UID K SUBJECT \"a $ b\" UID K\r\n")
        );
        assert_eq!(
            sub(b"a SEARCH KEYWORD $ SUBJECT $ HEADER $ $\r\n"),
            None,
            "arguments stay"
        );
        assert_eq!(sub(b"a SEARCH SUBJECT x$y\r\n"), None);
        assert_eq!(sub(b"a SEARCH $ $ $ $ $\r\n"), None, "at most 4");
        assert_eq!(substitute_saved(b"a FETCH $ (FLAGS)\r\n", |_| None), None);
    }

    #[test]
    fn esearch_responses_follow_rfc_4731() {
        let all = ReturnOptions {
            all: true,
            ..ReturnOptions::default()
        };
        assert_eq!(
            response("t", true, all, &[1, 2, 3, 7], None),
            "* ESEARCH (TAG \"t\") UID ALL 1:3,7\r\n"
        );
        assert_eq!(response("t", false, all, &[], None), "* ESEARCH (TAG \"t\")\r\n");
        let every = ReturnOptions {
            min: true,
            max: true,
            count: true,
            ..ReturnOptions::default()
        };
        assert_eq!(
            response("t", false, every, &[4, 9], Some(12)),
            "* ESEARCH (TAG \"t\") MIN 4 MAX 9 COUNT 2 MODSEQ 12\r\n"
        );
    }
}
