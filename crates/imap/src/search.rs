//! SEARCH (RFC 3501 6.4.4) over a selected mailbox: every search key, evaluated message by
//! message. Flags, sizes, dates and UIDs come from the session's view; header and body keys read
//! the message (integrity-checked) only when the expression needs it.
//!
//! What a key costs must not grow with the message more than once: each sequence set is merged
//! and each string case-folded once per SEARCH ([`Prepared`]), and strings are found by a
//! case-insensitive KMP scan over the text as it is ([`Needle`]), never over a lower-cased copy
//! of a header or body.

use std::collections::HashMap;

use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::SequenceSet;
use mail_parser::{Message, MimeHeaders, PartType};

use crate::fetch::{header_end, parse};
use crate::selected::Entry;
use crate::sequence::{self, Merged};

/// What a search needs to know about one message besides its metadata.
pub struct Candidate<'a> {
    pub seq: u32,
    pub entry: &'a Entry,
    pub content: Option<&'a [u8]>,
    /// Largest sequence number and UID in the mailbox (for `*`).
    pub max_seq: u32,
    pub max_uid: u32,
    pub prepared: &'a Prepared,
    /// Whether the message is `\Recent` in this session.
    pub recent: bool,
}

/// A search string, case-folded once, with its KMP failure table: finding it in a text costs
/// one pass over the text's characters (folded one at a time) and allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needle {
    folded: Vec<char>,
    /// `fallback[i]`: the length of the longest proper prefix of `folded[..=i]` that is also
    /// its suffix.
    fallback: Vec<usize>,
}

impl Needle {
    pub fn new(bytes: &[u8]) -> Needle {
        let folded: Vec<char> = lossy_chars(bytes).flat_map(char::to_lowercase).collect();
        let mut fallback = vec![0; folded.len()];
        let mut k = 0;
        for i in 1..folded.len() {
            while k > 0 && folded[i] != folded[k] {
                k = fallback[k - 1];
            }
            if folded[i] == folded[k] {
                k += 1;
            }
            fallback[i] = k;
        }
        Needle { folded, fallback }
    }

    pub fn is_empty(&self) -> bool {
        self.folded.is_empty()
    }

    /// Whether the text contains the needle, ignoring case.
    pub fn found_in(&self, text: impl Iterator<Item = char>) -> bool {
        if self.folded.is_empty() {
            return true;
        }
        let mut k = 0;
        for c in text.flat_map(char::to_lowercase) {
            while k > 0 && self.folded[k] != c {
                k = self.fallback[k - 1];
            }
            if self.folded[k] == c {
                k += 1;
                if k == self.folded.len() {
                    return true;
                }
            }
        }
        false
    }
}

/// The characters of possibly broken UTF-8, as `String::from_utf8_lossy` would give them,
/// without building the string.
fn lossy_chars(bytes: &[u8]) -> impl Iterator<Item = char> + '_ {
    bytes.utf8_chunks().flat_map(|chunk| {
        let replacement = (!chunk.invalid().is_empty()).then_some(char::REPLACEMENT_CHARACTER);
        chunk.valid().chars().chain(replacement)
    })
}

/// Where a key lives in the command, which is where its prepared form is found again.
fn address<T: ?Sized>(value: &T) -> usize {
    std::ptr::from_ref(value).cast::<u8>() as usize
}

/// What a SEARCH works out once, before it looks at any message: each sequence set merged and
/// each search string folded, found again by the key's address in the command.
#[derive(Debug, Default)]
pub struct Prepared {
    sets: HashMap<usize, Merged>,
    needles: HashMap<(usize, usize), Needle>,
}

impl Prepared {
    pub fn new(criteria: &[SearchKey<'_>], max_seq: u32, max_uid: u32) -> Prepared {
        let mut prepared = Prepared::default();
        for key in criteria {
            prepared.add(key, max_seq, max_uid);
        }
        prepared
    }

    fn add(&mut self, key: &SearchKey<'_>, max_seq: u32, max_uid: u32) {
        use SearchKey::*;
        match key {
            And(keys) => keys.as_ref().iter().for_each(|k| self.add(k, max_seq, max_uid)),
            Not(k) => self.add(k, max_seq, max_uid),
            Or(a, b) => {
                self.add(a, max_seq, max_uid);
                self.add(b, max_seq, max_uid);
            }
            SequenceSet(set) => {
                self.sets.insert(address(set), Merged::new(set, max_seq));
            }
            Uid(set) => {
                self.sets.insert(address(set), Merged::new(set, max_uid));
            }
            Bcc(s) | Body(s) | Cc(s) | From(s) | Subject(s) | Text(s) | To(s) | Header(_, s) => {
                let bytes = s.as_ref();
                self.needles
                    .entry((address(bytes), bytes.len()))
                    .or_insert_with(|| Needle::new(bytes));
            }
            _ => {}
        }
    }

    fn in_set(&self, set: &SequenceSet, value: u32, max: u32) -> bool {
        match self.sets.get(&address(set)) {
            Some(merged) => merged.contains(value),
            None => sequence::contains(set, value, max),
        }
    }

    /// The prepared needle for these bytes (folded now if they were not seen before).
    fn needle(&self, bytes: &[u8]) -> std::borrow::Cow<'_, Needle> {
        match self.needles.get(&(address(bytes), bytes.len())) {
            Some(needle) => std::borrow::Cow::Borrowed(needle),
            None => std::borrow::Cow::Owned(Needle::new(bytes)),
        }
    }
}

/// Most keys that read message content (BODY, TEXT, headers) in one SEARCH: each scans every
/// message it is asked of, so their number multiplies the cost of the command.
pub const MAX_CONTENT_KEYS: usize = 32;
/// Most keys of any kind in one SEARCH.
pub const MAX_KEYS: usize = 1024;

/// How many keys `key` holds (itself included), and how many of them read content.
pub fn key_counts(key: &SearchKey<'_>) -> (usize, usize) {
    use SearchKey::*;
    let add = |a: (usize, usize), b: (usize, usize)| (a.0 + b.0, a.1 + b.1);
    match key {
        And(keys) => keys.as_ref().iter().map(key_counts).fold((1, 0), add),
        Not(k) => add((1, 0), key_counts(k)),
        Or(a, b) => add(add((1, 0), key_counts(a)), key_counts(b)),
        other => (1, usize::from(needs_content(other))),
    }
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

/// Days since 1970-01-01 (UTC) of a Unix time: what SEARCH compares internal dates by.
fn unix_day(unix: i64) -> i64 {
    unix.div_euclid(86_400)
}

/// The day number (as [`unix_day`]) of a SEARCH date. imap-codec hands dates over as chrono
/// values; this is the one place they are read, so our own code counts time with `time` only.
fn search_day(date: &imap_codec::imap_types::datetime::NaiveDate) -> Option<i64> {
    let midnight = date.as_ref().and_hms_opt(0, 0, 0)?;
    Some(unix_day(midnight.and_utc().timestamp()))
}

/// The day number (as [`unix_day`]) of a message's Date: header, as written (its own zone);
/// None for a date that does not exist. Any year mail-parser reads (up to 65535) counts:
/// `time` stops at 9999, so this is the civil-from-days arithmetic (H. Hinnant's) in i64.
fn sent_day(date: &mail_parser::DateTime) -> Option<i64> {
    let (year, month, day) = (i64::from(date.year), i64::from(date.month), i64::from(date.day));
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if !(1..=month_days).contains(&day) {
        return None;
    }
    // Years start in March here, so that the leap day is the last day of a year.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    Some(era * 146_097 + day_of_era - 719_468)
}

/// Whether a header field `name` is present with a value that contains the needle, raw
/// (unfolded: line breaks skipped) or decoded.
fn header_contains(message: &Message<'_>, name: &str, needle: &Needle) -> bool {
    for header in message.headers() {
        if !header.name.as_str().eq_ignore_ascii_case(name) {
            continue;
        }
        let raw_start = header.offset_start as usize;
        let raw_end = (header.offset_end as usize).min(message.raw_message.len());
        if raw_start < raw_end {
            let raw =
                lossy_chars(&message.raw_message[raw_start..raw_end]).filter(|&c| c != '\r' && c != '\n');
            if needle.found_in(raw) {
                return true;
            }
        }
        let decoded = match &header.value {
            mail_parser::HeaderValue::Text(t) => needle.found_in(t.chars()),
            mail_parser::HeaderValue::TextList(list) => list.iter().any(|t| needle.found_in(t.chars())),
            mail_parser::HeaderValue::Address(address) => address.iter().any(|addr| {
                addr.name.as_ref().is_some_and(|n| needle.found_in(n.chars()))
                    || addr.address.as_ref().is_some_and(|a| needle.found_in(a.chars()))
            }),
            _ => false,
        };
        if decoded {
            return true;
        }
    }
    false
}

/// Whether a text part (decoded) or an attachment's name contains the needle.
fn body_contains(message: &Message<'_>, needle: &Needle) -> bool {
    message.parts.iter().any(|part| {
        let in_text = match &part.body {
            PartType::Text(t) | PartType::Html(t) => needle.found_in(t.chars()),
            _ => false,
        };
        in_text || part.attachment_name().is_some_and(|n| needle.found_in(n.chars()))
    })
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
        SequenceSet(set) => c.prepared.in_set(set, c.seq, c.max_seq),
        Uid(set) => c.prepared.in_set(set, entry.uid, c.max_uid),
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
        Recent => c.recent,
        // RFC 3501 6.4.4: NEW is RECENT UNSEEN, OLD is NOT RECENT.
        New => c.recent && !has_flag(entry, "\\Seen"),
        Old => !c.recent,
        Larger(n) => entry.size > u64::from(*n),
        Smaller(n) => entry.size < u64::from(*n),
        Before(d) => search_day(d).is_some_and(|day| unix_day(entry.internal_date) < day),
        On(d) => search_day(d).is_some_and(|day| unix_day(entry.internal_date) == day),
        Since(d) => search_day(d).is_some_and(|day| unix_day(entry.internal_date) >= day),
        SentBefore(d) | SentOn(d) | SentSince(d) => {
            if !message(parsed) {
                return false;
            }
            let Some(Some(m)) = parsed.as_ref() else {
                return false;
            };
            let (Some(sent), Some(day)) = (m.date().and_then(sent_day), search_day(d)) else {
                return false;
            };
            match key {
                SentBefore(_) => sent < day,
                SentOn(_) => sent == day,
                _ => sent >= day,
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
            let needle = c.prepared.needle(s.as_ref());
            // An empty string matches every message, as a substring of anything.
            needle.is_empty()
                || (message(parsed) && matches!(parsed, Some(Some(m)) if header_contains(m, name, &needle)))
        }
        Header(field, value) => {
            // RFC 3501 6.4.4: an empty string matches every message with that field.
            let Ok(name) = std::str::from_utf8(field.as_ref()) else {
                return false;
            };
            let needle = c.prepared.needle(value.as_ref());
            message(parsed) && matches!(parsed, Some(Some(m)) if header_contains(m, name, &needle))
        }
        Body(s) => {
            let needle = c.prepared.needle(s.as_ref());
            needle.is_empty()
                || (message(parsed) && matches!(parsed, Some(Some(m)) if body_contains(m, &needle)))
        }
        Text(s) => {
            let needle = c.prepared.needle(s.as_ref());
            let in_header = c
                .content
                .is_some_and(|b| needle.found_in(lossy_chars(&b[..header_end(b)])));
            in_header || (message(parsed) && matches!(parsed, Some(Some(m)) if body_contains(m, &needle)))
        }
        ModSequence { modseq, .. } => entry.modseq >= *modseq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The date of `SEARCH <key> <date>` as imap-codec hands it over.
    fn search_date(command: &str) -> imap_codec::imap_types::datetime::NaiveDate {
        use imap_codec::decode::Decoder;
        use imap_codec::imap_types::command::CommandBody;
        let line = format!("a SEARCH {command}\r\n");
        let parsed = imap_codec::CommandCodec::default().decode(line.as_bytes());
        let Ok((
            _,
            imap_codec::imap_types::command::Command {
                body: CommandBody::Search { criteria, .. },
                ..
            },
        )) = parsed
        else {
            panic!("{command}: not a SEARCH");
        };
        match criteria.as_ref().first() {
            Some(SearchKey::Since(d) | SearchKey::SentOn(d)) => d.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dates_compare_as_utc_days_for_internal_dates_and_as_written_for_sent_dates() {
        let december_4 = 1_796_342_400; // 2026-12-04T00:00:00Z
        let day = search_day(&search_date("SINCE 4-Dec-2026"));
        assert_eq!(day, Some(unix_day(december_4)));
        assert_eq!(
            Some(unix_day(december_4 - 1) + 1),
            day,
            "the second before is the day before"
        );
        assert_eq!(
            Some(unix_day(december_4 + 86_399)),
            day,
            "the last second is the same day"
        );
        assert_eq!(unix_day(-1), -1, "before 1970 rounds down");
        let sent = mail_parser::DateTime {
            year: 2026,
            month: 12,
            day: 4,
            hour: 23,
            minute: 59,
            second: 59,
            tz_before_gmt: true,
            tz_hour: 11,
            tz_minute: 0,
        };
        assert_eq!(sent_day(&sent), search_day(&search_date("SENTON 4-Dec-2026")));
        let impossible = mail_parser::DateTime { month: 13, ..sent };
        assert_eq!(sent_day(&impossible), None);
        let day = |year, month, day| {
            sent_day(&mail_parser::DateTime {
                year,
                month,
                day,
                ..sent
            })
        };
        assert_eq!(day(1970, 1, 1), Some(0));
        assert_eq!(day(1969, 12, 31), Some(-1));
        assert_eq!(day(2000, 3, 1), Some(11_017));
        assert_eq!(day(2024, 2, 29).zip(day(2024, 3, 1)).map(|(a, b)| b - a), Some(1));
        assert_eq!(day(2023, 2, 29), None, "not a leap year");
        assert_eq!(day(1900, 2, 29), None, "not a leap year");
        assert_eq!(day(2026, 4, 31), None);
        assert_eq!(day(2026, 1, 0), None);
        // Years past 9999 still count (a sender cannot make a message drop out of SENTSINCE).
        assert!(day(20_000, 1, 1) > day(9999, 12, 31));
        assert_eq!(day(65_535, 12, 31).map(|d| d > 0), Some(true));
        // Every day of a few years is one more than the day before.
        let mut previous = day(1999, 12, 31);
        for year in 2000..2005 {
            for month in 1..=12 {
                for d in 1..=31 {
                    if let Some(this) = day(year, month, d) {
                        assert_eq!(previous.map(|p| p + 1), Some(this), "{year}-{month}-{d}");
                        previous = Some(this);
                    }
                }
            }
        }
    }

    #[test]
    fn needles_are_found_ignoring_case_in_one_pass() {
        let found = |needle: &str, text: &str| Needle::new(needle.as_bytes()).found_in(text.chars());
        assert!(found("hello", "Say HeLLo there"));
        assert!(found("GRÜSSE", "viele grüsse"));
        assert!(found("", "anything"));
        assert!(!found("hello", "help"));
        // Overlaps that a naive restart would get wrong, and the worst case for backtracking.
        assert!(found("aab", "aaab"));
        assert!(found("abab", "ababcabab"));
        assert!(!found("abac", "ababab"));
        let text = "a".repeat(200_000) + "b";
        assert!(found(&("a".repeat(1000) + "b"), &text));
        assert!(!found(&("a".repeat(1000) + "c"), &text));
        // Broken UTF-8 is read as from_utf8_lossy would: U+FFFD, not an error.
        assert!(Needle::new(b"x").found_in(lossy_chars(b"\xff\xfex")));
        assert!(Needle::new("\u{fffd}".as_bytes()).found_in(lossy_chars(b"a\xffb")));
    }

    #[test]
    fn a_prepared_search_merges_each_set_once() {
        let set = match imap_codec::imap_types::sequence::SequenceSet::try_from(
            vec!["1:*"; 5000].join(",").as_str(),
        ) {
            Ok(set) => set,
            Err(e) => panic!("{e:?}"),
        };
        let criteria = [SearchKey::SequenceSet(set)];
        let prepared = Prepared::new(&criteria, 100_000, 200_000);
        assert_eq!(prepared.sets.len(), 1);
        let SearchKey::SequenceSet(set) = &criteria[0] else {
            panic!("not a set");
        };
        assert!(prepared.in_set(set, 100_000, 100_000));
        assert!(!prepared.in_set(set, 100_001, 100_000));
        assert_eq!(
            prepared.sets.values().next().map(|m| m.ranges().to_vec()),
            Some(vec![(1, 100_000)])
        );
    }
}
