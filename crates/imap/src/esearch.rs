//! `SEARCH RETURN (...)` (RFC 4731 ESEARCH, required by IMAP4rev2) and the `* ESEARCH`
//! response. imap-codec 2.0.0-alpha.10 decodes only the RFC 3501 SEARCH, so the return
//! options are taken off the command here, before decoding; the rest of the command is left
//! exactly as it was (literals included) for imap-codec.

/// What the client asked a SEARCH to return.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReturnOptions {
    pub min: bool,
    pub max: bool,
    pub all: bool,
    pub count: bool,
}

impl ReturnOptions {
    /// RFC 4731 3.1: `RETURN ()` means ALL.
    fn or_all(mut self) -> ReturnOptions {
        if !(self.min || self.max || self.all || self.count) {
            self.all = true;
        }
        self
    }
}

/// Why a RETURN clause is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReturnError {
    /// SAVE (RFC 5182 SEARCHRES) is not supported.
    Save,
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
            b"SAVE" => error = Some(ReturnError::Save),
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
            Some(Err(ReturnError::Save))
        );
        assert!(matches!(
            strip_return(b"c SEARCH RETURN (PARTIAL 1:5) ALL\r\n").map(|r| r.1),
            Some(Err(ReturnError::Unknown(_)))
        ));
        assert_eq!(strip_return(b"d SEARCH ALL\r\n"), None);
        assert_eq!(strip_return(b"d FETCH 1 RETURN (x)\r\n"), None);
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
            all: false,
            count: true,
        };
        assert_eq!(
            response("t", false, every, &[4, 9], Some(12)),
            "* ESEARCH (TAG \"t\") MIN 4 MAX 9 COUNT 2 MODSEQ 12\r\n"
        );
    }
}
