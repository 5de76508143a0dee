//! Phishing signals for mail from outside: a From domain that failed DMARC, a From domain that
//! imitates one of ours (confusable characters, or one character changed, added or swapped in
//! a name long enough for that to be a trick), and a display name that borrows one of our names
//! while the address is elsewhere. Users cannot be trained for every trick, so such mail is
//! marked where clients show it: an `X-Sealmail-Warning` header and the IMAP keyword
//! [`KEYWORD`]. The message itself is not altered unless the administrator asks for a notice
//! in the text: that would break the sender's DKIM signature for anyone who checks it later.

/// The IMAP keyword of suspected phishing (RFC 9051 2.3.2), which clients show.
pub const KEYWORD: &str = "$Phishing";

/// Labels shorter than this are not look-alikes when one character differs: short names are
/// one edit away from many honest names (`a.test`/`b.test`, `hp.com`/`hq.com`). Lookalikes
/// made of confusable characters are caught at any length.
const MIN_LABEL_FOR_ONE_EDIT: usize = 5;

/// Characters that look like Latin letters or digits, mapped to what they imitate (a small
/// table in the spirit of Unicode's confusables for the letters domains use).
fn skeleton_char(c: char) -> char {
    match c {
        'а' | 'ɑ' | 'α' => 'a',
        'ь' | 'Ь' => 'b',
        'с' | 'ϲ' => 'c',
        'ԁ' => 'd',
        'е' | 'ё' | 'ε' => 'e',
        'һ' => 'h',
        'і' | 'ı' | 'ι' | 'ї' | '1' | 'l' | '|' | 'ӏ' | 'ǀ' => 'l',
        'ј' => 'j',
        'к' | 'κ' => 'k',
        'м' => 'm',
        'п' | 'η' => 'n',
        'о' | 'ο' | 'σ' | '0' | 'ө' => 'o',
        'р' | 'ρ' => 'p',
        'ԛ' => 'q',
        'ѕ' | '5' => 's',
        'т' | 'τ' => 't',
        'υ' | 'ս' => 'u',
        'ν' | 'ѵ' => 'v',
        'ԝ' | 'ω' => 'w',
        'х' | 'χ' => 'x',
        'у' | 'γ' => 'y',
        'z' | '2' => 'z',
        other => other,
    }
}

/// What a name looks like: confusables folded, `rn` read as `m`, `vv` as `w`.
pub fn skeleton(name: &str) -> String {
    // Invisible format characters (zero-width space and joiners, bidi marks, soft hyphen)
    // would otherwise hide a name from the comparison: `Exa\u{200B}mple`.
    let invisible = |c: &char| matches!(c, '\u{00AD}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}');
    let folded: String = name
        .to_lowercase()
        .chars()
        .filter(|c| !invisible(c))
        .map(skeleton_char)
        .collect();
    folded.replace("rn", "m").replace("vv", "w")
}

/// Damerau-Levenshtein distance is at most 1: one character changed, added, removed, or two
/// neighbours swapped.
fn within_one_edit(a: &[char], b: &[char]) -> bool {
    if a == b {
        return true;
    }
    let (la, lb) = (a.len(), b.len());
    if la.abs_diff(lb) > 1 {
        return false;
    }
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let (ra, rb) = (&a[prefix..], &b[prefix..]);
    match (ra.len(), rb.len()) {
        (x, y) if x == y => {
            ra[1..] == rb[1..] || (x >= 2 && ra[0] == rb[1] && ra[1] == rb[0] && ra[2..] == rb[2..])
        }
        (x, y) if x > y => ra[1..] == *rb,
        _ => *ra == rb[1..],
    }
}

/// Whether `from` imitates `ours` (both Unicode, lowercase): the same skeleton though spelled
/// differently, or one edit apart in a label of ours long enough for that to be a trick.
fn imitates(from: &str, ours: &str) -> bool {
    let (from_skeleton, our_skeleton) = (skeleton(from), skeleton(ours));
    if from_skeleton == our_skeleton {
        return from != ours;
    }
    // A dot added or removed (`exam.ple.test`) changes nothing a reader sees.
    if from_skeleton.replace('.', "") == our_skeleton.replace('.', "") {
        return true;
    }
    let from_labels: Vec<&str> = from_skeleton.split('.').collect();
    let our_labels: Vec<&str> = our_skeleton.split('.').collect();
    if from_labels.len() != our_labels.len() {
        return false;
    }
    let mut differing = from_labels
        .iter()
        .zip(&our_labels)
        .enumerate()
        .filter(|(_, (a, b))| a != b);
    let (Some((position, (from_label, our_label))), None) = (differing.next(), differing.next()) else {
        return false;
    };
    let a: Vec<char> = from_label.chars().collect();
    let b: Vec<char> = our_label.chars().collect();
    // Top-level labels are all short, and one edit there (`example.co` for `example.com`)
    // keeps the name the reader knows: always a look-alike.
    let top_level = position + 1 == our_labels.len();
    (top_level || b.len() >= MIN_LABEL_FOR_ONE_EDIT) && within_one_edit(&a, &b)
}

fn unicode_domain(domain: &str) -> String {
    let (unicode, result) = idna::domain_to_unicode(domain);
    if result.is_ok() {
        unicode
    } else {
        domain.to_string()
    }
}

/// The warnings for a message from outside whose From address is in `from_domain` (A-label or
/// Unicode) with display name `display_name`, given the DMARC result and our domains.
pub fn warnings(from_domain: &str, display_name: Option<&str>, dmarc: &str, ours: &[String]) -> Vec<String> {
    let from_domain = from_domain.trim_end_matches('.').to_lowercase();
    let shown = unicode_domain(&from_domain);
    let mut out = Vec::new();
    if dmarc == "fail" {
        out.push(format!(
            "The sender's domain {from_domain} could not be verified (DMARC failed): the message may be forged"
        ));
    }
    let is_ours = ours.iter().any(|d| d.eq_ignore_ascii_case(&from_domain));
    if !is_ours && !from_domain.is_empty() {
        let from_unicode = shown.to_lowercase();
        for our in ours {
            if imitates(&from_unicode, &unicode_domain(our).to_lowercase()) {
                out.push(format!(
                    "The sender's domain {shown} ({from_domain}) imitates {our}, but it is not {our}"
                ));
                break;
            }
        }
        if let Some(name) = display_name {
            let name = skeleton(name);
            for our in ours {
                let label = our.split('.').next().unwrap_or(our);
                let mentions =
                    name.contains(&skeleton(our)) || (label.len() >= 4 && name.contains(&skeleton(label)));
                if mentions {
                    out.push(format!(
                        "The sender's name mentions {our}, but the message comes from {from_domain}"
                    ));
                    break;
                }
            }
        }
    }
    out
}

/// The display name of the message's first From address, if any.
pub fn from_display_name(message: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::default().parse_headers(message)?;
    let from = parsed.from()?.first()?;
    from.name.as_ref().map(|n| n.to_string())
}

/// The message with the warnings added: `X-Sealmail-Warning` headers at the top (a header
/// added above the others does not break DKIM signatures), and, when `notice_in_body`, a
/// notice line at the start of the first text/plain part whose transfer encoding lets plain
/// ASCII be inserted (7bit, 8bit, quoted-printable; a base64 part is left as it is).
pub fn add_warnings(message: &[u8], warnings: &[String], notice_in_body: bool) -> Vec<u8> {
    if warnings.is_empty() {
        return message.to_vec();
    }
    let mut headers = String::new();
    for warning in warnings {
        headers.push_str(&format!("X-Sealmail-Warning: {warning}\r\n"));
    }
    if !notice_in_body {
        let mut out = headers.into_bytes();
        out.extend_from_slice(message);
        return out;
    }
    let notice = format!(
        "[sealmail warning: {}]\r\n\r\n",
        warnings
            .join(" / ")
            .chars()
            .filter(|c| c.is_ascii() && !c.is_ascii_control())
            .collect::<String>()
    );
    let insert_at = mail_parser::MessageParser::default()
        .parse(message)
        .and_then(|parsed| {
            use mail_parser::MimeHeaders;
            parsed.parts.iter().find_map(|part| {
                let text = matches!(part.body, mail_parser::PartType::Text(_));
                let plain = part.content_type().is_none_or(|c| {
                    c.ctype().eq_ignore_ascii_case("text")
                        && c.subtype().is_none_or(|s| s.eq_ignore_ascii_case("plain"))
                });
                let encoding_ok = part.content_transfer_encoding().is_none_or(|e| {
                    ["7bit", "8bit", "quoted-printable"]
                        .iter()
                        .any(|ok| e.eq_ignore_ascii_case(ok))
                });
                (text && plain && encoding_ok).then_some(part.offset_body as usize)
            })
        });
    let mut out = Vec::with_capacity(message.len() + headers.len() + notice.len());
    out.extend_from_slice(headers.as_bytes());
    match insert_at {
        Some(at) if at <= message.len() => {
            out.extend_from_slice(&message[..at]);
            out.extend_from_slice(notice.as_bytes());
            out.extend_from_slice(&message[at..]);
        }
        _ => out.extend_from_slice(message),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> Vec<String> {
        vec!["example.test".to_string()]
    }

    #[test]
    fn look_alike_domains_are_caught_and_honest_ones_are_not() {
        for imitation in [
            "examp1e.test",
            "exаmple.test",        // Cyrillic а
            "xn--exmple-4nf.test", // the same, as it arrives in A-label form
            "exmaple.test",        // swapped
            "examples.test",       // one added
            "exarnple.test",       // rn for m
        ] {
            let found = warnings(imitation, None, "none", &ours());
            assert_eq!(found.len(), 1, "{imitation}: {found:?}");
            assert!(found[0].contains("imitates example.test"), "{found:?}");
        }
        for honest in ["example.test", "other.test", "sample.org", "exam.test"] {
            assert!(warnings(honest, None, "pass", &ours()).is_empty(), "{honest}");
        }
    }

    fn flagged(from: &str, our: &str) -> bool {
        !warnings(from, None, "pass", &[our.to_string()]).is_empty()
    }

    #[test]
    fn one_edit_in_a_short_name_is_not_a_look_alike_but_confusables_are() {
        // Honest neighbours, both ways round.
        for (a, b) in [
            ("a.test", "b.test"),
            ("hp.com", "hq.com"),
            ("ibm.com", "ibn.com"),
            ("bank.com", "bonk.com"),
            ("sap.com", "sas.com"),
            ("gmx.de", "gmx.at"),
            ("web.de", "wbe.de"),
            ("example.test", "example.org"),
        ] {
            assert!(!flagged(a, b) && !flagged(b, a), "{a} / {b}");
        }
        // Real-world imitations of long enough names.
        for (imitation, real) in [
            ("paypa1.com", "paypal.com"),
            ("paypai.com", "paypal.com"),
            ("rnicrosoft.com", "microsoft.com"),
            ("micosoft.com", "microsoft.com"),
            ("gooogle.com", "google.com"),
            ("arnazon.com", "amazon.com"),
            ("amazno.com", "amazon.com"),
            ("appie.com", "apple.com"),
            ("linkedln.com", "linkedin.com"),
            ("vvells.com", "wells.com"),
            // One edit in the top-level label, or a dot added.
            ("example.co", "example.com"),
            ("example.cm", "example.com"),
            ("bank.ne", "bank.net"),
            ("exam.ple.test", "example.test"),
        ] {
            assert!(flagged(imitation, real), "{imitation} imitates {real}");
        }
        // Confusables are caught in short names too, in Unicode or A-label form.
        for (imitation, real) in [
            ("h\u{0440}.com", "hp.com"), // Cyrillic er
            ("xn--h-5tb.com", "hp.com"),
            ("\u{0430}.test", "a.test"),   // Cyrillic a
            ("ib\u{043c}.com", "ibm.com"), // Cyrillic em
            ("0vh.com", "ovh.com"),
        ] {
            assert!(flagged(imitation, real), "{imitation} imitates {real}");
        }
    }

    #[test]
    fn by_default_only_a_header_is_added_and_the_message_is_unchanged() {
        let message = b"From: x@elsewhere.test\r\nDKIM-Signature: v=1; d=elsewhere.test\r\n\r\nhello\r\n";
        let warned = add_warnings(message, &["careful".into()], false);
        assert_eq!(
            warned,
            [b"X-Sealmail-Warning: careful\r\n".as_slice(), message].concat()
        );
        assert_eq!(add_warnings(message, &[], true), message.to_vec());
    }

    #[test]
    fn borrowed_display_names_and_dmarc_failures_are_flagged() {
        let found = warnings("elsewhere.test", Some("Example IT Support"), "none", &ours());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("mentions example.test"));
        let hidden = warnings(
            "elsewhere.test",
            Some("Exa\u{200B}mple.te\u{00AD}st IT"),
            "none",
            &ours(),
        );
        assert_eq!(
            hidden.len(),
            1,
            "invisible characters do not hide the name: {hidden:?}"
        );
        let found = warnings("elsewhere.test", Some("Friendly Bank"), "fail", &ours());
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("DMARC failed"));
        assert!(warnings("example.test", Some("Example IT"), "pass", &ours()).is_empty());
    }

    #[test]
    fn the_notice_goes_into_the_first_plain_text_part_only() {
        let message = b"From: x@elsewhere.test\r\nContent-Type: multipart/alternative; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nhello\r\n--B\r\nContent-Type: text/html\r\n\r\n<p>hello</p>\r\n--B--\r\n";
        let warned = String::from_utf8_lossy(&add_warnings(message, &["careful".into()], true)).into_owned();
        assert!(
            warned.starts_with("X-Sealmail-Warning: careful\r\nFrom: x@elsewhere.test\r\n"),
            "{warned}"
        );
        assert!(
            warned.contains("Content-Type: text/plain\r\n\r\n[sealmail warning: careful]\r\n\r\nhello"),
            "{warned}"
        );
        assert_eq!(warned.matches("[sealmail warning").count(), 1);
        let base64 = b"From: x@e.test\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n";
        let warned = String::from_utf8_lossy(&add_warnings(base64, &["careful".into()], true)).into_owned();
        assert!(
            warned.ends_with("\r\n\r\naGVsbG8=\r\n") && !warned.contains("[sealmail"),
            "{warned}"
        );
    }
}
