//! Phishing signals for mail from outside: a From domain that failed DMARC, a From domain that
//! imitates one of ours (confusable characters, one character changed, added or swapped), and a
//! display name that borrows one of our names while the address is elsewhere. Users cannot be
//! trained for every trick, so such mail gets a visible warning: an `X-Sealmail-Warning` header
//! and a one-line notice at the top of the first plain-text part.

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
    let folded: String = name.to_lowercase().chars().map(skeleton_char).collect();
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
        let from_skeleton: Vec<char> = skeleton(&shown).chars().collect();
        for our in ours {
            let our_skeleton: Vec<char> = skeleton(&unicode_domain(our)).chars().collect();
            if within_one_edit(&from_skeleton, &our_skeleton) {
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

/// The message with the warnings added: `X-Sealmail-Warning` headers at the top, and a notice
/// line at the start of the first text/plain part whose transfer encoding lets plain ASCII be
/// inserted (7bit, 8bit, quoted-printable; a base64 part is left as it is).
pub fn add_warnings(message: &[u8], warnings: &[String]) -> Vec<u8> {
    if warnings.is_empty() {
        return message.to_vec();
    }
    let mut headers = String::new();
    for warning in warnings {
        headers.push_str(&format!("X-Sealmail-Warning: {warning}\r\n"));
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

    #[test]
    fn borrowed_display_names_and_dmarc_failures_are_flagged() {
        let found = warnings("elsewhere.test", Some("Example IT Support"), "none", &ours());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("mentions example.test"));
        let found = warnings("elsewhere.test", Some("Friendly Bank"), "fail", &ours());
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("DMARC failed"));
        assert!(warnings("example.test", Some("Example IT"), "pass", &ours()).is_empty());
    }

    #[test]
    fn the_notice_goes_into_the_first_plain_text_part_only() {
        let message = b"From: x@elsewhere.test\r\nContent-Type: multipart/alternative; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nhello\r\n--B\r\nContent-Type: text/html\r\n\r\n<p>hello</p>\r\n--B--\r\n";
        let warned = String::from_utf8_lossy(&add_warnings(message, &["careful".into()])).into_owned();
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
        let warned = String::from_utf8_lossy(&add_warnings(base64, &["careful".into()])).into_owned();
        assert!(
            warned.ends_with("\r\n\r\naGVsbG8=\r\n") && !warned.contains("[sealmail"),
            "{warned}"
        );
    }
}
