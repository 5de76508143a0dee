//! Writing IMAP response syntax: strings (quoted when safe, a literal otherwise), flag lists,
//! dates, and mailbox names in modified UTF-7 (RFC 3501 section 5.1.3).

use base64::Engine as _;
use base64::engine::{GeneralPurpose, GeneralPurposeConfig, general_purpose::NO_PAD};

/// Appends `bytes` as an IMAP string: a quoted string if every byte may appear in one, else a
/// literal (which carries anything, including 8-bit and CR/LF, byte for byte).
pub fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    let quotable = bytes.len() < 1024 && bytes.iter().all(|&b| (0x20..0x7f).contains(&b));
    if quotable {
        out.push(b'"');
        for &b in bytes {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        literal(out, bytes);
    }
}

pub fn literal(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", bytes.len()).as_bytes());
    out.extend_from_slice(bytes);
}

/// A literal, or a literal8 (`~{n}`, RFC 3516) when the bytes hold a NUL, which a literal may
/// not carry.
pub fn literal_or_8(out: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.contains(&0) {
        out.push(b'~');
    }
    literal(out, bytes);
}

/// NIL for `None`, else a string.
pub fn nstring(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) => string(out, b),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// A flag list with `\Recent` first when `recent` (the flag is the server's, never stored).
pub fn flag_list_of(out: &mut Vec<u8>, flags: &[String], recent: bool) {
    out.push(b'(');
    if recent {
        out.extend_from_slice(b"\\Recent");
    }
    for (i, flag) in flags.iter().enumerate() {
        if i > 0 || recent {
            out.push(b' ');
        }
        out.extend_from_slice(flag.as_bytes());
    }
    out.push(b')');
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// RFC 3501 date-time in UTC: `"02-Jan-2006 15:04:05 +0000"` (quotes included).
pub fn internal_date(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "\"{:02}-{}-{:04} {:02}:{:02}:{:02} +0000\"",
            t.day(),
            MONTHS[usize::from(u8::from(t.month())) - 1],
            t.year(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => "\"01-Jan-1970 00:00:00 +0000\"".to_string(),
    }
}

/// Modified base64 of RFC 3501 5.1.3: "," in place of "/", no padding.
const MUTF7: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::IMAP_MUTF7, NO_PAD);
const MUTF7_DECODE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::IMAP_MUTF7,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone),
);

/// A UTF-8 mailbox name as IMAP4rev1 clients expect it on the wire.
pub fn encode_mailbox_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut pending: Vec<u16> = Vec::new();
    let flush = |out: &mut String, pending: &mut Vec<u16>| {
        if pending.is_empty() {
            return;
        }
        let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
        out.push('&');
        out.push_str(&MUTF7.encode(bytes));
        out.push('-');
        pending.clear();
    };
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut out, &mut pending);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut units = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut units));
        }
    }
    flush(&mut out, &mut pending);
    out
}

/// A mailbox name as the client sent it: UTF-8 once it enabled UTF8=ACCEPT (RFC 6855 3, where
/// `&` is just a character), else modified UTF-7. Characters [`unfit_in_name`] are refused
/// either way.
pub fn name_from_wire(wire: &[u8], utf8: bool) -> Option<String> {
    if !utf8 {
        return decode_mailbox_name(wire);
    }
    let name = std::str::from_utf8(wire).ok()?;
    (!name.chars().any(unfit_in_name)).then(|| name.to_string())
}

/// Characters no mailbox name may hold: controls, and invisible format characters (zero-width
/// ones, bidi overrides and isolates, line and paragraph separators, the BOM) that would let two
/// names look the same or a name look like another.
pub fn unfit_in_name(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// A mailbox name for the client: UTF-8 after UTF8=ACCEPT, else modified UTF-7.
pub fn name_to_wire(name: &str, utf8: bool) -> String {
    if utf8 {
        name.to_string()
    } else {
        encode_mailbox_name(name)
    }
}

/// The UTF-8 name for a name received in modified UTF-7. Only the one canonical encoding of a
/// name is accepted: another spelling of the same name is refused rather than guessed at, so no
/// two wire names ever reach the same mailbox by different roads. A name that decodes to a
/// control character (`&AA0ACg-` is CR LF) or another [`unfit_in_name`] is refused too: no
/// mailbox can have one, and a name is echoed in responses, where a CR LF would end the line
/// early.
pub fn decode_mailbox_name(wire: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(wire).ok()?;
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('&') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let end = after.find('-')?;
        let encoded = &after[..end];
        if encoded.is_empty() {
            out.push('&');
        } else {
            let bytes = MUTF7_DECODE.decode(encoded).ok()?;
            if bytes.len() % 2 != 0 {
                return None;
            }
            let units: Vec<u16> = bytes
                .chunks(2)
                .map(|p| u16::from_be_bytes([p[0], p[1]]))
                .collect();
            out.push_str(&String::from_utf16(&units).ok()?);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if out.chars().any(unfit_in_name) {
        return None;
    }
    (encode_mailbox_name(&out) == text).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_names_round_trip_through_modified_utf7() {
        for (utf8, wire) in [
            ("INBOX", "INBOX"),
            ("Entwürfe", "Entw&APw-rfe"),
            ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
            ("a&b", "a&-b"),
        ] {
            assert_eq!(encode_mailbox_name(utf8), wire);
            assert_eq!(decode_mailbox_name(wire.as_bytes()).as_deref(), Some(utf8));
        }
    }

    #[test]
    fn non_canonical_and_broken_encodings_are_refused() {
        // "INBOX" spelled in UTF-7, an unterminated shift, 8-bit bytes, a lone surrogate.
        for wire in ["&AEkATgBCAE8AWA-", "&U,BTFw", "Entw\u{fc}rfe", "&2D0-"] {
            assert_eq!(decode_mailbox_name(wire.as_bytes()), None, "{wire}");
        }
        // Control characters, encoded: CR LF, NUL, DEL, U+0085 (NEL).
        for wire in ["&AA0ACg-", "a&AAA-b", "&AH8-", "&AIU-"] {
            assert_eq!(decode_mailbox_name(wire.as_bytes()), None, "{wire}");
        }
    }

    #[test]
    fn strings_are_quoted_or_sent_as_literals() {
        let mut out = Vec::new();
        string(&mut out, b"a \"b\" \\c");
        assert_eq!(out, b"\"a \\\"b\\\" \\\\c\"");
        out.clear();
        string(&mut out, "Grüße\r\n".as_bytes());
        assert_eq!(out, "{9}\r\nGrüße\r\n".as_bytes());
    }
}
