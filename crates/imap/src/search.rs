//! SEARCH (RFC 3501 6.4.4) over a selected mailbox: every search key, evaluated message by
//! message. Flags, sizes, dates and UIDs come from the session's view; header and body keys read
//! the message (integrity-checked) only when the expression needs it.

use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::SequenceSet;
use mail_parser::{Message, MimeHeaders, PartType};

use crate::fetch::{header_end, parse};
use crate::selected::Entry;
use crate::sequence;

/// What a search needs to know about one message besides its metadata.
pub struct Candidate<'a> {
    pub seq: u32,
    pub entry: &'a Entry,
    pub content: Option<&'a [u8]>,
    /// Largest sequence number and UID in the mailbox (for `*`).
    pub max_seq: u32,
    pub max_uid: u32,
}

/// Whether the key needs the message bytes.
pub fn needs_content(key: &SearchKey<'_>) -> bool {
    use SearchKey::*;
    match key {
        And(keys) => keys.as_ref().iter().any(needs_content),
        Not(k) => needs_content(k),
        Or(a, b) => needs_content(a) || needs_content(b),
        Bcc(_) | Body(_) | Cc(_) | From(_) | Header(..) | Subject(_) | Text(_) | To(_) | SentBefore(_)
        | SentOn(_) | SentSince(_) => true,
        _ => false,
    }
}

fn has_flag(entry: &Entry, flag: &str) -> bool {
    entry.flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
}

fn contains(haystack: &str, needle: &[u8]) -> bool {
    let needle = String::from_utf8_lossy(needle).to_lowercase();
    needle.is_empty() || haystack.to_lowercase().contains(&needle)
}

fn internal_day(unix: i64) -> Option<chrono::NaiveDate> {
    chrono::DateTime::from_timestamp(unix, 0).map(|t| t.date_naive())
}

/// The values of a header field, raw (unfolded) and decoded, for substring matching.
fn header_text(message: &Message<'_>, name: &str) -> String {
    let mut text = String::new();
    for header in message.headers() {
        if !header.name.as_str().eq_ignore_ascii_case(name) {
            continue;
        }
        let raw_start = header.offset_start as usize;
        let raw_end = (header.offset_end as usize).min(message.raw_message.len());
        if raw_start < raw_end {
            text.push_str(
                &String::from_utf8_lossy(&message.raw_message[raw_start..raw_end]).replace("\r\n", ""),
            );
            text.push(' ');
        }
        match &header.value {
            mail_parser::HeaderValue::Text(t) => text.push_str(t),
            mail_parser::HeaderValue::TextList(list) => text.push_str(&list.join(" ")),
            mail_parser::HeaderValue::Address(address) => {
                for addr in address.iter() {
                    if let Some(name) = &addr.name {
                        text.push_str(name);
                        text.push(' ');
                    }
                    if let Some(a) = &addr.address {
                        text.push_str(a);
                        text.push(' ');
                    }
                }
            }
            _ => {}
        }
        text.push('\n');
    }
    text
}

fn body_text(message: &Message<'_>) -> String {
    let mut text = String::new();
    for part in &message.parts {
        match &part.body {
            PartType::Text(t) | PartType::Html(t) => {
                text.push_str(t);
                text.push('\n');
            }
            _ => {}
        }
        if let Some(name) = part.attachment_name() {
            text.push_str(name);
            text.push('\n');
        }
    }
    text
}

/// Evaluates `key` against one message; the parsed message is made once, when first needed.
pub fn matches<'c>(key: &SearchKey<'_>, c: &Candidate<'c>, parsed: &mut Option<Option<Message<'c>>>) -> bool {
    use SearchKey::*;
    let entry = c.entry;
    let message = |parsed: &mut Option<Option<Message<'c>>>| -> bool {
        if parsed.is_none() {
            *parsed = Some(c.content.and_then(parse));
        }
        matches!(parsed, Some(Some(_)))
    };
    match key {
        And(keys) => keys.as_ref().iter().all(|k| matches(k, c, parsed)),
        Not(k) => !matches(k, c, parsed),
        Or(a, b) => matches(a, c, parsed) || matches(b, c, parsed),
        SequenceSet(set) => in_set(set, c.seq, c.max_seq),
        Uid(set) => in_set(set, entry.uid, c.max_uid),
        All => true,
        Answered => has_flag(entry, "\\Answered"),
        Unanswered => !has_flag(entry, "\\Answered"),
        Deleted => has_flag(entry, "\\Deleted"),
        Undeleted => !has_flag(entry, "\\Deleted"),
        Draft => has_flag(entry, "\\Draft"),
        Undraft => !has_flag(entry, "\\Draft"),
        Flagged => has_flag(entry, "\\Flagged"),
        Unflagged => !has_flag(entry, "\\Flagged"),
        Seen => has_flag(entry, "\\Seen"),
        Unseen => !has_flag(entry, "\\Seen"),
        Keyword(k) => has_flag(entry, k.as_ref()),
        Unkeyword(k) => !has_flag(entry, k.as_ref()),
        // \Recent is never set here (see the crate documentation): no message is new or recent.
        New | Recent => false,
        Old => true,
        Larger(n) => entry.size > u64::from(*n),
        Smaller(n) => entry.size < u64::from(*n),
        Before(d) => internal_day(entry.internal_date).is_some_and(|day| day < *d.as_ref()),
        On(d) => internal_day(entry.internal_date).is_some_and(|day| day == *d.as_ref()),
        Since(d) => internal_day(entry.internal_date).is_some_and(|day| day >= *d.as_ref()),
        SentBefore(d) | SentOn(d) | SentSince(d) => {
            if !message(parsed) {
                return false;
            }
            let Some(Some(m)) = parsed.as_ref() else {
                return false;
            };
            let Some(sent) = m.date().and_then(|dt| {
                chrono::NaiveDate::from_ymd_opt(i32::from(dt.year), u32::from(dt.month), u32::from(dt.day))
            }) else {
                return false;
            };
            match key {
                SentBefore(_) => sent < *d.as_ref(),
                SentOn(_) => sent == *d.as_ref(),
                _ => sent >= *d.as_ref(),
            }
        }
        Bcc(s) | Cc(s) | From(s) | To(s) | Subject(s) => {
            let name = match key {
                Bcc(_) => "Bcc",
                Cc(_) => "Cc",
                From(_) => "From",
                To(_) => "To",
                _ => "Subject",
            };
            message(parsed) && matches!(parsed, Some(Some(m)) if contains(&header_text(m, name), s.as_ref()))
        }
        Header(field, value) => {
            let name = String::from_utf8_lossy(field.as_ref()).into_owned();
            message(parsed)
                && matches!(parsed, Some(Some(m)) if {
                    let text = header_text(m, &name);
                    !text.is_empty() && contains(&text, value.as_ref())
                })
        }
        Body(s) => message(parsed) && matches!(parsed, Some(Some(m)) if contains(&body_text(m), s.as_ref())),
        Text(s) => {
            let header = c
                .content
                .map(|b| String::from_utf8_lossy(&b[..header_end(b)]).into_owned())
                .unwrap_or_default();
            contains(&header, s.as_ref())
                || (message(parsed) && matches!(parsed, Some(Some(m)) if contains(&body_text(m), s.as_ref())))
        }
        ModSequence { modseq, .. } => entry.modseq >= *modseq,
    }
}

fn in_set(set: &SequenceSet, value: u32, max: u32) -> bool {
    sequence::contains(set, value, max)
}
