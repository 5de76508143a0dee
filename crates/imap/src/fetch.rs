//! What FETCH returns from a message's bytes: body sections (RFC 3501 6.4.5), ENVELOPE and
//! BODY/BODYSTRUCTURE (7.4.2). The MIME tree comes from mail-parser, whose part offsets point
//! into the stored bytes, so every section is a slice of exactly what SMTP stored.

use std::borrow::Cow;

use imap_codec::imap_types::core::AString;
use imap_codec::imap_types::fetch::{Part, Section};
use mail_parser::{Address, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders, PartType};

use crate::wire::{nstring, string};

/// Where the header ends: just after the empty line (CRLF CRLF, or LF LF from a sloppy
/// sender), or the whole message when there is no body.
pub fn header_end(bytes: &[u8]) -> usize {
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\n' {
            if bytes.get(i + 1) == Some(&b'\n') {
                return i + 2;
            }
            if bytes.get(i + 1) == Some(&b'\r') && bytes.get(i + 2) == Some(&b'\n') {
                return i + 3;
            }
        }
        i += 1;
    }
    bytes.len()
}

/// The header fields whose names are (or, with `exclude`, are not) in `names`, each with its
/// continuation lines, followed by the empty line (RFC 3501: HEADER.FIELDS includes it).
pub fn header_fields(header: &[u8], names: &[AString<'_>], exclude: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut keep = false;
    for line in header.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            let name = line.split(|&b| b == b':').next().unwrap_or_default();
            let name = trim(name);
            let listed = names.iter().any(|n| n.as_ref().eq_ignore_ascii_case(name));
            keep = listed != exclude;
        }
        if keep {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

pub fn parse(bytes: &[u8]) -> Option<Message<'_>> {
    MessageParser::default().parse(bytes)
}

/// The part a section's part number names, and the message whose header a HEADER or TEXT
/// after it refers to (for a message/rfc822 part, the embedded message).
struct Located<'m, 'x> {
    part: &'m MessagePart<'x>,
    message: &'m Message<'x>,
}

/// Follows a part path (1.2.3) down the MIME tree.
fn locate<'m, 'x>(message: &'m Message<'x>, path: &[std::num::NonZeroU32]) -> Option<Located<'m, 'x>> {
    let mut current_message = message;
    let mut part = message.parts.first()?;
    for (depth, n) in path.iter().enumerate() {
        let n = n.get() as usize;
        // Entering an embedded message: its parts are numbered within it.
        if depth > 0
            && let PartType::Message(inner) = &part.body
        {
            current_message = inner;
            part = inner.parts.first()?;
        }
        match &part.body {
            PartType::Multipart(children) => {
                let child = *children.get(n.checked_sub(1)?)?;
                part = current_message.parts.get(child as usize)?;
            }
            // A non-multipart body has exactly one part: itself.
            _ if n == 1 => {}
            _ => return None,
        }
    }
    let message = match &part.body {
        PartType::Message(inner) => inner,
        _ => current_message,
    };
    Some(Located { part, message })
}

fn slice(bytes: &[u8], start: u32, end: u32) -> &[u8] {
    let end = (end as usize).min(bytes.len());
    let start = (start as usize).min(end);
    &bytes[start..end]
}

/// The header and text of the message embedded in the message/rfc822 part `container`. The
/// text runs to the end of the container, not of the embedded root part: mail-parser ends a
/// multipart root at its closing boundary, which would cut off the epilogue.
fn embedded_header_and_text<'b>(
    bytes: &'b [u8],
    container: &MessagePart<'_>,
    message: &Message<'_>,
) -> (&'b [u8], &'b [u8]) {
    match message.parts.first() {
        Some(root) => (
            slice(bytes, root.offset_header, root.offset_body),
            slice(bytes, root.offset_body, root.offset_end.max(container.offset_end)),
        ),
        None => (&[], &[]),
    }
}

/// The bytes of a body section, or `None` when the section does not exist in this message
/// (RFC 3501 answers that with an empty string).
pub fn section(bytes: &[u8], section: Option<&Section<'_>>) -> Option<Vec<u8>> {
    let Some(section) = section else {
        return Some(bytes.to_vec());
    };
    // The top-level HEADER and TEXT need no MIME parsing.
    match section {
        Section::Header(None) => return Some(bytes[..header_end(bytes)].to_vec()),
        Section::Text(None) => return Some(bytes[header_end(bytes)..].to_vec()),
        Section::HeaderFields(None, names) => {
            return Some(header_fields(&bytes[..header_end(bytes)], names.as_ref(), false));
        }
        Section::HeaderFieldsNot(None, names) => {
            return Some(header_fields(&bytes[..header_end(bytes)], names.as_ref(), true));
        }
        _ => {}
    }
    let message = parse(bytes)?;
    let path = |part: &Part| part.0.as_ref().to_vec();
    match section {
        Section::Part(part) => {
            let found = locate(&message, &path(part))?;
            Some(slice(bytes, found.part.offset_body, found.part.offset_end).to_vec())
        }
        Section::Mime(part) => {
            let found = locate(&message, &path(part))?;
            Some(slice(bytes, found.part.offset_header, found.part.offset_body).to_vec())
        }
        Section::Header(Some(part))
        | Section::HeaderFields(Some(part), _)
        | Section::HeaderFieldsNot(Some(part), _)
        | Section::Text(Some(part)) => {
            let found = locate(&message, &path(part))?;
            if !matches!(found.part.body, PartType::Message(_)) {
                return None;
            }
            let (header, text) = embedded_header_and_text(bytes, found.part, found.message);
            Some(match section {
                Section::Header(_) => header.to_vec(),
                Section::HeaderFields(_, names) => header_fields(header, names.as_ref(), false),
                Section::HeaderFieldsNot(_, names) => header_fields(header, names.as_ref(), true),
                _ => text.to_vec(),
            })
        }
        Section::Header(None)
        | Section::Text(None)
        | Section::HeaderFields(None, _)
        | Section::HeaderFieldsNot(None, _) => None,
    }
}

/// A part whose Content-Transfer-Encoding BINARY cannot undo (RFC 3516 `UNKNOWN-CTE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownEncoding;

/// RFC 3516 `BINARY[part]`: the part's body with its Content-Transfer-Encoding undone (base64,
/// quoted-printable; 7bit, 8bit and binary are as stored). The whole message (`BINARY[]`) and
/// multipart or message/rfc822 parts are as BODY gives them, since they are not encoded
/// themselves. `None` when there is no such part.
pub fn binary_section(
    bytes: &[u8],
    path: &[std::num::NonZeroU32],
) -> Result<Option<Vec<u8>>, UnknownEncoding> {
    if path.is_empty() {
        return Ok(Some(bytes.to_vec()));
    }
    let Some(message) = parse(bytes) else {
        return Ok(None);
    };
    let Some(found) = locate(&message, path) else {
        return Ok(None);
    };
    let raw = slice(bytes, found.part.offset_body, found.part.offset_end);
    if matches!(found.part.body, PartType::Multipart(_) | PartType::Message(_)) {
        return Ok(Some(raw.to_vec()));
    }
    use mail_parser::MimeHeaders as _;
    let encoding = found
        .part
        .content_transfer_encoding()
        .map(|e| e.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let decoded = match encoding.as_str() {
        "" | "7bit" | "8bit" | "binary" => Some(raw.to_vec()),
        "base64" => mail_parser::decoders::base64::base64_decode(raw),
        "quoted-printable" => mail_parser::decoders::quoted_printable::quoted_printable_decode(raw),
        _ => None,
    };
    decoded.map(Some).ok_or(UnknownEncoding)
}

/// Header values as IMAP clients expect them in an ENVELOPE: the raw text, unfolded.
fn raw_header(message: &Message<'_>, name: &str) -> Option<Vec<u8>> {
    message.header_raw(name).map(|raw| {
        let unfolded: Vec<u8> = raw.bytes().filter(|&b| b != b'\r' && b != b'\n').collect();
        trim(&unfolded).to_vec()
    })
}

/// A decoded display name back in ASCII: as is when it is ASCII, else one RFC 2047 encoded
/// word, since an IMAP4rev1 quoted string may not carry 8-bit text.
fn display_name(name: &str) -> Cow<'_, str> {
    use base64::Engine as _;
    if name.is_ascii() {
        Cow::Borrowed(name)
    } else {
        Cow::Owned(format!(
            "=?utf-8?b?{}?=",
            base64::engine::general_purpose::STANDARD.encode(name)
        ))
    }
}

fn address(out: &mut Vec<u8>, name: Option<&str>, address: Option<&str>) {
    out.push(b'(');
    nstring(
        out,
        name.map(|n| display_name(n).into_owned().into_bytes()).as_deref(),
    );
    let (local, host) = match address.and_then(|a| a.rsplit_once('@')) {
        Some((local, host)) => (Some(local), Some(host)),
        None => (address, None),
    };
    // A NIL host marks a group (RFC 3501 7.4.2): an address missing its parts (a display name
    // alone, a local part alone) gets placeholders instead, as Dovecot writes them, so that it
    // cannot be read as the start or end of a group.
    let host = host.filter(|h| !h.is_empty()).or(Some("MISSING_DOMAIN"));
    let local = local.filter(|l| !l.is_empty()).or(Some("MISSING_MAILBOX"));
    // An obsolete source route (RFC 5322 4.4, `<@route:user@domain>`) is the at-domain-list.
    let (route, local) = match local.and_then(|l| l.strip_prefix('@')?.rsplit_once(':')) {
        Some((route, local)) => (Some(format!("@{route}")), Some(local)),
        None => (None, local),
    };
    out.push(b' ');
    nstring(out, route.as_deref().map(str::as_bytes));
    out.push(b' ');
    nstring(out, local.map(str::as_bytes));
    out.push(b' ');
    nstring(out, host.map(str::as_bytes));
    out.push(b')');
}

fn address_list(out: &mut Vec<u8>, value: Option<&Address<'_>>) {
    let mut list = Vec::new();
    match value {
        Some(Address::List(addresses)) => {
            for addr in addresses {
                address(&mut list, addr.name.as_deref(), addr.address.as_deref());
            }
        }
        Some(Address::Group(groups)) => {
            for group in groups {
                // RFC 3501: a group is (NIL NIL "name" NIL), its members, then (NIL NIL NIL NIL).
                if let Some(name) = &group.name {
                    list.extend_from_slice(b"(NIL NIL ");
                    string(&mut list, display_name(name).as_bytes());
                    list.extend_from_slice(b" NIL)");
                }
                for addr in &group.addresses {
                    address(&mut list, addr.name.as_deref(), addr.address.as_deref());
                }
                if group.name.is_some() {
                    list.extend_from_slice(b"(NIL NIL NIL NIL)");
                }
            }
        }
        None => {}
    }
    if list.is_empty() {
        out.extend_from_slice(b"NIL");
    } else {
        out.push(b'(');
        out.extend_from_slice(&list);
        out.push(b')');
    }
}

pub fn envelope(out: &mut Vec<u8>, message: &Message<'_>) {
    out.push(b'(');
    nstring(out, raw_header(message, "Date").as_deref());
    out.push(b' ');
    nstring(out, raw_header(message, "Subject").as_deref());
    let from = message.from();
    for value in [
        from,
        message.sender().or(from),
        message.reply_to().or(from),
        message.to(),
        message.cc(),
        message.bcc(),
    ] {
        out.push(b' ');
        address_list(out, value);
    }
    out.push(b' ');
    nstring(out, raw_header(message, "In-Reply-To").as_deref());
    out.push(b' ');
    nstring(out, raw_header(message, "Message-ID").as_deref());
    out.push(b')');
}

fn upper_string(out: &mut Vec<u8>, s: &str) {
    string(out, s.to_ascii_uppercase().as_bytes());
}

fn params(out: &mut Vec<u8>, attributes: Option<&[mail_parser::Attribute<'_>]>) {
    match attributes {
        Some(list) if !list.is_empty() => {
            out.push(b'(');
            for (i, attr) in list.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                upper_string(out, &attr.name);
                out.push(b' ');
                string(out, attr.value.as_bytes());
            }
            out.push(b')');
        }
        _ => out.extend_from_slice(b"NIL"),
    }
}

fn line_count(body: &[u8]) -> usize {
    let lf = body.iter().filter(|&&b| b == b'\n').count();
    lf + usize::from(!body.is_empty() && body.last() != Some(&b'\n'))
}

fn disposition(out: &mut Vec<u8>, part: &MessagePart<'_>) {
    match part.content_disposition() {
        Some(d) => {
            out.push(b'(');
            upper_string(out, d.ctype());
            out.push(b' ');
            params(out, d.attributes());
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
}

fn language(out: &mut Vec<u8>, part: &MessagePart<'_>) {
    match part.content_language() {
        HeaderValue::Text(t) => string(out, t.as_bytes()),
        HeaderValue::TextList(list) if !list.is_empty() => {
            out.push(b'(');
            for (i, t) in list.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                string(out, t.as_bytes());
            }
            out.push(b')');
        }
        _ => out.extend_from_slice(b"NIL"),
    }
}

/// Most parts one BODY or BODYSTRUCTURE describes, nested messages included. mail-parser's
/// part lists of a malformed message can name a part more than once (and parts of nested
/// messages again inside), so a walk bounded only by depth can be exponential: the fuzzer
/// found a 23 KB message whose BODYSTRUCTURE took minutes and over 2 GB. Past the limit a
/// part is shown as an empty text part.
pub const MAX_STRUCTURE_PARTS: usize = 1000;

/// BODY (`extensible` false) or BODYSTRUCTURE (true) of the whole message.
pub fn body_structure(out: &mut Vec<u8>, bytes: &[u8], message: &Message<'_>, extensible: bool) {
    let mut parts_left = MAX_STRUCTURE_PARTS;
    structure_of(out, bytes, message, 0, extensible, 0, &mut parts_left);
}

/// An empty text part, where RFC 3501 needs a part and there is none to show.
const EMPTY_PART: &[u8] = b"(\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 0 0)";

fn structure_of(
    out: &mut Vec<u8>,
    bytes: &[u8],
    message: &Message<'_>,
    part_id: usize,
    extensible: bool,
    depth: usize,
    parts_left: &mut usize,
) {
    let Some(part) = message.parts.get(part_id) else {
        out.extend_from_slice(b"NIL");
        return;
    };
    if *parts_left == 0 {
        out.extend_from_slice(EMPTY_PART);
        return;
    }
    *parts_left -= 1;
    let content_type = part.content_type();
    if let PartType::Multipart(children) = &part.body
        && depth < 32
    {
        out.push(b'(');
        // A child always comes after its parent in mail-parser's list; one that does not
        // (a malformed tree naming an ancestor or itself) is not followed.
        let mut shown = 0;
        for &child in children {
            if (child as usize) <= part_id {
                continue;
            }
            structure_of(
                out,
                bytes,
                message,
                child as usize,
                extensible,
                depth + 1,
                parts_left,
            );
            shown += 1;
        }
        if shown == 0 {
            // RFC 3501 needs at least one part; an empty multipart shows as an empty text part.
            out.extend_from_slice(EMPTY_PART);
        }
        out.push(b' ');
        upper_string(out, content_type.and_then(|c| c.subtype()).unwrap_or("MIXED"));
        if extensible {
            out.push(b' ');
            params(out, content_type.and_then(|c| c.attributes()));
            extension_tail(out, part);
        }
        out.push(b')');
        return;
    }
    let (main, sub) = match content_type {
        Some(c) => (c.ctype().to_string(), c.subtype().unwrap_or("").to_string()),
        None => ("text".to_string(), "plain".to_string()),
    };
    let body = slice(bytes, part.offset_body, part.offset_end);
    out.push(b'(');
    upper_string(out, &main);
    out.push(b' ');
    upper_string(out, if sub.is_empty() { "plain" } else { &sub });
    out.push(b' ');
    match content_type.and_then(|c| c.attributes()) {
        Some(a) if !a.is_empty() => params(out, Some(a)),
        _ if main.eq_ignore_ascii_case("text") => out.extend_from_slice(b"(\"CHARSET\" \"US-ASCII\")"),
        _ => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    nstring(out, part.content_id().map(str::as_bytes));
    out.push(b' ');
    nstring(out, part.content_description().map(str::as_bytes));
    out.push(b' ');
    upper_string(out, part.content_transfer_encoding().unwrap_or("7BIT"));
    out.extend_from_slice(format!(" {}", body.len()).as_bytes());
    match &part.body {
        PartType::Message(inner) if depth < 32 => {
            out.push(b' ');
            envelope(out, inner);
            out.push(b' ');
            structure_of(out, bytes, inner, 0, extensible, depth + 1, parts_left);
            out.extend_from_slice(format!(" {}", line_count(body)).as_bytes());
        }
        _ if main.eq_ignore_ascii_case("text") => {
            out.extend_from_slice(format!(" {}", line_count(body)).as_bytes());
        }
        _ => {}
    }
    if extensible {
        // body-fld-md5 is not computed.
        out.extend_from_slice(b" NIL");
        extension_tail(out, part);
    }
    out.push(b')');
}

/// Disposition, language and location: the extension data both kinds of part end with.
fn extension_tail(out: &mut Vec<u8>, part: &MessagePart<'_>) {
    out.push(b' ');
    disposition(out, part);
    out.push(b' ');
    language(out, part);
    out.push(b' ');
    nstring(out, part.content_location().map(str::as_bytes));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    const NESTED: &[u8] = b"From: a@b.test\r\nSubject: t\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\npreamble\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\nworld\r\n--XX\r\nContent-Type: message/rfc822\r\n\r\nFrom: c@d.test\r\nSubject: inner\r\nContent-Type: multipart/alternative; boundary=YY\r\n\r\n--YY\r\nContent-Type: text/plain\r\n\r\ninner text\r\n--YY\r\nContent-Type: text/html\r\n\r\n<b>x</b>\r\n--YY--\r\n\r\n--XX--\r\nepilogue\r\n";

    /// Found by the `mime_fetch` fuzz target: nested message/rfc822 parts after a boundary
    /// with no line break made mail-parser 0.11.9 hit its `debug_assert!(false, "Invalid part
    /// ID, could not find multipart.")`, a panic in every debug build (release builds compile
    /// it out). The workspace turns mail-parser's debug assertions off, as in the release; the
    /// message must give a BODYSTRUCTURE, an ENVELOPE and its sections without panicking.
    #[test]
    fn fuzz_crash_nested_rfc822_after_a_glued_boundary() {
        const CRASH: &[u8] = b"Content-Type:multipart;boundary=foo bar\n\n--foo barContent-Type:message/rfc822\n\nContent-Type:message/rfc822\n\n\n--foo bar--";
        let message = parse(CRASH);
        let Some(message) = message else {
            return;
        };
        let mut out = Vec::new();
        envelope(&mut out, &message);
        assert!(out.starts_with(b"("));
        out.clear();
        body_structure(&mut out, CRASH, &message, true);
        assert!(out.starts_with(b"("));
        for path in [&[1][..], &[1, 1], &[2]] {
            let _ = section(CRASH, Some(&Section::Part(part(path))));
        }
    }

    fn part(path: &[u32]) -> Part {
        let parts: Vec<NonZeroU32> = path.iter().filter_map(|&n| NonZeroU32::new(n)).collect();
        Part(parts.try_into().unwrap_or_else(|_| unreachable!()))
    }

    fn text(bytes: Option<Vec<u8>>) -> String {
        String::from_utf8(bytes.unwrap_or_default()).unwrap_or_default()
    }

    #[test]
    fn sections_are_exact_slices_of_the_stored_bytes() {
        assert_eq!(
            text(section(NESTED, Some(&Section::Part(part(&[1]))))),
            "hello\r\nworld"
        );
        assert_eq!(
            text(section(NESTED, Some(&Section::Mime(part(&[1]))))),
            "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        );
        assert_eq!(
            text(section(NESTED, Some(&Section::Part(part(&[2, 1]))))),
            "inner text"
        );
        assert_eq!(
            text(section(NESTED, Some(&Section::Part(part(&[2, 2]))))),
            "<b>x</b>"
        );
        assert!(
            text(section(NESTED, Some(&Section::Header(Some(part(&[2])))))).starts_with("From: c@d.test\r\n")
        );
        assert_eq!(section(NESTED, Some(&Section::Part(part(&[3])))), None);
        assert_eq!(section(NESTED, Some(&Section::Header(Some(part(&[1]))))), None);
        let header = text(section(NESTED, Some(&Section::Header(None))));
        assert!(header.ends_with("boundary=\"XX\"\r\n\r\n"));
    }

    #[test]
    fn header_fields_keep_continuations_and_end_with_an_empty_line() {
        let header = b"Subject: a\r\n b\r\nFrom: x@y\r\nTo: z@w\r\n\r\n";
        let names = [AString::try_from("subject").unwrap_or_else(|_| unreachable!())];
        assert_eq!(header_fields(header, &names, false), b"Subject: a\r\n b\r\n\r\n");
        assert_eq!(
            header_fields(header, &names, true),
            b"From: x@y\r\nTo: z@w\r\n\r\n"
        );
    }

    #[test]
    fn bodystructure_of_a_nested_message() {
        let message = parse(NESTED).unwrap_or_else(|| unreachable!());
        let mut out = Vec::new();
        body_structure(&mut out, NESTED, &message, false);
        let text = String::from_utf8(out).unwrap_or_default();
        assert_eq!(
            text,
            "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"utf-8\") NIL NIL \"7BIT\" 12 2)(\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 181 (NIL \"inner\" ((NIL NIL \"c\" \"d.test\")) ((NIL NIL \"c\" \"d.test\")) ((NIL NIL \"c\" \"d.test\")) NIL NIL NIL NIL NIL) ((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 10 1)(\"TEXT\" \"HTML\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 8 1) \"ALTERNATIVE\") 13) \"MIXED\")"
        );
    }

    fn envelope_of(message: &str) -> String {
        let message = message.replace('\n', "\r\n");
        let mut out = Vec::new();
        if let Some(parsed) = parse(message.as_bytes()) {
            envelope(&mut out, &parsed);
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// RFC 3501 7.4.2: groups are a start marker (NIL NIL "name" NIL), the members and an end
    /// marker (NIL NIL NIL NIL); a comment after an address is its name; a source route is the
    /// at-domain-list; an empty Sender or Reply-To is the From.
    #[test]
    fn envelopes_mark_groups_routes_and_names_as_rfc_3501_says() {
        const HEAD: &str = "Date: Sat, 01 Feb 2007 01:02:03 +0200\n";
        let user = |name: &str| format!("(({name} NIL \"user\" \"domain\"))");
        let got = envelope_of(&format!(
            "{HEAD}From: user@domain (Real Name)\nTo: group: g1@d1.org, g2@d2.org;, group2: g3@d3.org;\n\nbody\n"
        ));
        let real = user("\"Real Name\"");
        assert_eq!(
            got,
            format!(
                "(\"Sat, 01 Feb 2007 01:02:03 +0200\" NIL {real} {real} {real} ((NIL NIL \"group\" NIL)(NIL NIL \"g1\" \"d1.org\")(NIL NIL \"g2\" \"d2.org\")(NIL NIL NIL NIL)(NIL NIL \"group2\" NIL)(NIL NIL \"g3\" \"d3.org\")(NIL NIL NIL NIL)) NIL NIL NIL NIL)"
            )
        );
        let got = envelope_of(&format!(
            "{HEAD}From: user@domain (Real Name)\nSender: \nReply-To: \n\nbody\n"
        ));
        assert_eq!(
            got,
            format!("(\"Sat, 01 Feb 2007 01:02:03 +0200\" NIL {real} {real} {real} NIL NIL NIL NIL NIL)")
        );
        let got = envelope_of(&format!("{HEAD}From: <@route:user@domain>\n\nbody\n"));
        let routed = "((NIL \"@route\" \"user\" \"domain\"))";
        assert_eq!(
            got,
            format!(
                "(\"Sat, 01 Feb 2007 01:02:03 +0200\" NIL {routed} {routed} {routed} NIL NIL NIL NIL NIL)"
            )
        );
        // An empty group, and a group whose only member is a display name without an address.
        let got = envelope_of(&format!(
            "{HEAD}From: user@domain\nTo: undisclosed-recipients:;\nCc: team: \"Just A Name\";\n\nbody\n"
        ));
        assert!(
            got.contains(" ((NIL NIL \"undisclosed-recipients\" NIL)(NIL NIL NIL NIL)) "),
            "{got}"
        );
        assert!(
            got.contains(" ((NIL NIL \"team\" NIL)(\"Just A Name\" NIL \"MISSING_MAILBOX\" \"MISSING_DOMAIN\")(NIL NIL NIL NIL)) "),
            "{got}"
        );
        // A bare word (mail-parser reads it as a display name) is never a group marker either.
        let got = envelope_of(&format!("{HEAD}From: user@domain\nTo: localonly\n\nbody\n"));
        assert!(
            got.contains(" ((\"localonly\" NIL \"MISSING_MAILBOX\" \"MISSING_DOMAIN\")) "),
            "{got}"
        );
    }

    /// The TEXT of a message/rfc822 part is that message's body to the end of the part,
    /// epilogue included.
    #[test]
    fn the_text_of_an_embedded_message_keeps_its_epilogue() {
        let message = "From: a@b.test\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n--XX\r\nContent-Type: message/rfc822\r\n\r\nFrom: c@d.test\r\nContent-Type: multipart/alternative; boundary=YY\r\n\r\npre\r\n--YY\r\nContent-Type: text/plain\r\n\r\ninner\r\n--YY--\r\ninner epilogue\r\n\r\n--XX--\r\n";
        let body = "pre\r\n--YY\r\nContent-Type: text/plain\r\n\r\ninner\r\n--YY--\r\ninner epilogue\r\n";
        assert_eq!(
            text(section(
                message.as_bytes(),
                Some(&Section::Text(Some(part(&[1]))))
            )),
            body
        );
        assert_eq!(
            text(section(
                message.as_bytes(),
                Some(&Section::Header(Some(part(&[1]))))
            )),
            "From: c@d.test\r\nContent-Type: multipart/alternative; boundary=YY\r\n\r\n"
        );
    }

    /// A message whose whole body is a message/rfc822 (twice nested): every section of the
    /// embedded messages runs to the end of the stored bytes, trailing empty lines included.
    #[test]
    fn sections_of_messages_that_are_message_rfc822_all_the_way_down() {
        let sub = "From: sub@domain.org\r\nSubject: submsg\r\n\r\nHello world\r\n\r\n";
        let middle = format!("From: user2@domain.org\r\nContent-Type: message/rfc822\r\n\r\n{sub}");
        let whole = format!(
            "From: user@domain.org\r\nMime-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n{middle}"
        );
        let get = |s: Section<'_>| text(section(whole.as_bytes(), Some(&s)));
        assert_eq!(get(Section::Text(None)), middle);
        assert_eq!(get(Section::Part(part(&[1]))), middle);
        assert_eq!(
            get(Section::Header(Some(part(&[1])))),
            "From: user2@domain.org\r\nContent-Type: message/rfc822\r\n\r\n"
        );
        assert_eq!(get(Section::Text(Some(part(&[1])))), sub);
        assert_eq!(get(Section::Part(part(&[1, 1]))), sub);
        assert_eq!(
            get(Section::Header(Some(part(&[1, 1])))),
            "From: sub@domain.org\r\nSubject: submsg\r\n\r\n"
        );
        assert_eq!(get(Section::Text(Some(part(&[1, 1])))), "Hello world\r\n\r\n");
        assert_eq!(get(Section::Part(part(&[1, 1, 1]))), "Hello world\r\n\r\n");
    }

    /// A message/rfc822 whose embedded message is a multipart/digest with a prologue, boundary
    /// lines with trailing white space, and an epilogue.
    #[test]
    fn an_embedded_digest_keeps_its_prologue_and_epilogue() {
        let inner_text = "prologue\r\n\r\n--foo \r\n\r\nFrom: m1@example.com\r\nSubject: m1\r\n\r\nm1 body\r\n\r\n--foo \r\nX-Mime: m2 header\r\n\r\nFrom: m2@example.com\r\nSubject: m2\r\n\r\nm2 body\r\n\r\n--foo--\r\n\r\nepilogue\r\n";
        let inner_header = "From: sub@domain.org\r\nSubject: submsg\r\nContent-Type: multipart/digest; boundary=\"foo\"\r\n\r\n";
        let whole = format!(
            "From: user@domain.org\r\nMime-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n{inner_header}{inner_text}"
        );
        let get = |s: Section<'_>| text(section(whole.as_bytes(), Some(&s)));
        assert_eq!(
            get(Section::Part(part(&[1]))),
            format!("{inner_header}{inner_text}")
        );
        assert_eq!(get(Section::Header(Some(part(&[1])))), inner_header);
        assert_eq!(get(Section::Text(Some(part(&[1])))), inner_text);
        assert_eq!(
            get(Section::Part(part(&[1, 1]))),
            "From: m1@example.com\r\nSubject: m1\r\n\r\nm1 body\r\n"
        );
        assert_eq!(get(Section::Mime(part(&[1, 1]))), "\r\n");
        assert_eq!(
            get(Section::Header(Some(part(&[1, 1])))),
            "From: m1@example.com\r\nSubject: m1\r\n\r\n"
        );
        assert_eq!(get(Section::Text(Some(part(&[1, 1])))), "m1 body\r\n");
        assert_eq!(get(Section::Mime(part(&[1, 2]))), "X-Mime: m2 header\r\n\r\n");
        assert_eq!(get(Section::Text(Some(part(&[1, 2])))), "m2 body\r\n");
    }

    /// RFC 3516: BINARY undoes base64 and quoted-printable, leaves 7bit/8bit as stored, gives
    /// containers as BODY does, and refuses an encoding it cannot undo.
    #[test]
    fn binary_sections_undo_the_transfer_encoding() {
        let message = "From: a@b.test\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC/w==\r\n--B\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: Quoted-Printable\r\n\r\ncaf=C3=A9 =\r\nsoft\r\n--B\r\nContent-Type: text/plain\r\n\r\nplain\r\n--B\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n--B--\r\n";
        let get = |path: &[u32]| binary_section(message.as_bytes(), part(path).0.as_ref());
        assert_eq!(get(&[1]), Ok(Some(vec![0, 1, 2, 255])));
        assert_eq!(get(&[2]), Ok(Some("café soft".as_bytes().to_vec())));
        assert_eq!(get(&[3]), Ok(Some(b"plain".to_vec())));
        assert_eq!(get(&[4]), Err(UnknownEncoding));
        assert_eq!(get(&[9]), Ok(None));
        assert_eq!(
            binary_section(message.as_bytes(), &[]),
            Ok(Some(message.as_bytes().to_vec()))
        );
    }

    /// Found by the mime_fetch fuzz target: a 23 KB message of nested message/rfc822 and
    /// multipart parts whose BODYSTRUCTURE took minutes and over 2 GB before the walk was
    /// bounded by parts, not only by depth.
    #[test]
    fn fuzz_blowup_nested_parts_are_described_within_the_part_limit() -> Result<(), String> {
        let bytes = include_bytes!("testdata/fuzz-mime-fetch-blowup.eml");
        let message = parse(bytes).ok_or("mail-parser gives up on it")?;
        for extensible in [false, true] {
            let mut out = Vec::new();
            body_structure(&mut out, bytes, &message, extensible);
            let described = out.windows(2).filter(|w| w == b"(\"").count();
            assert!(
                described <= 2 * MAX_STRUCTURE_PARTS,
                "{described} parts described"
            );
            // Each described part shows at most its own text and a nested envelope.
            assert!(
                out.len() < 64 * bytes.len(),
                "{} bytes for a {}-byte message",
                out.len(),
                bytes.len()
            );
        }
        Ok(())
    }
}
