//! xtext (RFC 3461 section 4): the encoding of the DSN parameters `ENVID` and `ORCPT`.
//!
//! Those values arrive encoded, are kept encoded in the queue, and leave encoded: a decoded
//! value is never written into a protocol line, so an encoded CR LF (`+0D+0A`) can never become
//! a line break on the wire. smtp-proto hands us the decoded text; [`encode`] turns it back into
//! the canonical xtext after [`printable_ascii`] has refused what RFC 3461 does not allow.

/// RFC 3461 4.4: ENVID is at most 100 characters (of its decoded form).
pub const MAX_ENVID_CHARS: usize = 100;

/// True when `decoded` holds only what RFC 3461 allows inside ENVID and an rfc822 ORCPT after
/// decoding: printable US-ASCII and space (no control characters, nothing above 0x7E).
pub fn printable_ascii(decoded: &str) -> bool {
    decoded.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// The canonical xtext of `decoded`: "+" and "=", space, and anything outside `!`..`~` become
/// `+XX` (upper-case hex). Characters above U+00FF cannot be written as one octet and are
/// refused (None), as are all non-ASCII ones when checked with [`printable_ascii`] first.
pub fn encode(decoded: &str) -> Option<String> {
    let mut out = String::with_capacity(decoded.len());
    for c in decoded.chars() {
        let code = u32::from(c);
        if code > 0xff {
            return None;
        }
        if (0x21..=0x7e).contains(&code) && c != '+' && c != '=' {
            out.push(c);
        } else {
            out.push_str(&format!("+{code:02X}"));
        }
    }
    Some(out)
}

/// The text `encoded` stands for (each `+XX` as its octet, taken as Latin-1 like smtp-proto
/// does); a malformed `+` is kept as it is. For showing a value (in a DSN), never for a line.
pub fn decode(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut chars = encoded.chars();
    while let Some(c) = chars.next() {
        if c != '+' {
            out.push(c);
            continue;
        }
        let hex: String = chars.clone().take(2).collect();
        match u8::from_str_radix(&hex, 16) {
            Ok(octet) if hex.len() == 2 => {
                out.push(char::from(octet));
                chars.nth(1);
            }
            _ => out.push('+'),
        }
    }
    out
}

/// True when `text` is well-formed xtext: `!`..`~` except "+" and "=", or "+" and two
/// upper-case hex digits.
pub fn is_xtext(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                let hex = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b));
                if !hex(bytes.get(i + 1)) || !hex(bytes.get(i + 2)) {
                    return false;
                }
                i += 3;
            }
            b'=' => return false,
            b if (0x21..=0x7e).contains(&b) => i += 1,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_escapes_what_xtext_may_not_carry() {
        assert_eq!(encode("QQ314159").as_deref(), Some("QQ314159"));
        assert_eq!(encode("hi there").as_deref(), Some("hi+20there"));
        assert_eq!(encode("a+b=c").as_deref(), Some("a+2Bb+3Dc"));
        assert_eq!(encode("x\r\nMAIL FROM").as_deref(), Some("x+0D+0AMAIL+20FROM"));
        assert_eq!(encode("\u{0100}"), None);
        for text in ["QQ314159", "hi there", "a+b=c", "x\r\n\0"] {
            let encoded = encode(text).unwrap_or_default();
            assert!(is_xtext(&encoded), "{encoded}");
            assert!(!encoded.contains(['\r', '\n', '\0', ' ']), "{encoded}");
        }
    }

    #[test]
    fn decoding_undoes_encoding() {
        for text in ["QQ 314+1", "a=b", "plain", "x\r\n"] {
            assert_eq!(decode(&encode(text).unwrap_or_default()), text);
        }
        assert_eq!(decode("a+2"), "a+2");
        assert_eq!(decode("a+ZZb"), "a+ZZb");
    }

    #[test]
    fn only_printable_ascii_is_allowed_decoded() {
        assert!(printable_ascii("Bob@Example.COM"));
        assert!(printable_ascii("George @Tax- ME .GOV"));
        for bad in ["a\r\nb", "a\nb", "a\rb", "a\0b", "a\tb", "caf\u{e9}", "\u{7f}"] {
            assert!(!printable_ascii(bad), "{bad:?}");
        }
    }

    #[test]
    fn malformed_xtext_is_recognised() {
        assert!(is_xtext("abc+2B+0D"));
        for bad in ["a b", "a=b", "a+", "a+0", "a+0d", "a+GG", "a\r\nb", "caf\u{e9}"] {
            assert!(!is_xtext(bad), "{bad:?}");
        }
    }
}
