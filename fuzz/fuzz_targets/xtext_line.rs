//! Fuzz target: the small text codecs of `sealmail_types`: xtext (RFC 3461: ENVID, ORCPT),
//! `ProtocolLine` (no CR, LF or NUL ever reaches the wire), `unsafe_content`, and address and
//! domain parsing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealmail_types::line::{ProtocolLine, unsafe_content};
use sealmail_types::{Domain, EmailAddress, xtext};

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    let decoded = xtext::decode(&text);
    if xtext::is_xtext(&text) {
        // Well-formed xtext in canonical form decodes and encodes back to itself.
        if let Some(again) = xtext::encode(&decoded)
            && again.len() == text.len()
        {
            assert_eq!(again, text);
        }
    }
    if let Some(encoded) = xtext::encode(&text) {
        assert!(xtext::is_xtext(&encoded));
        assert_eq!(xtext::decode(&encoded), text);
    }
    match ProtocolLine::new(text.as_ref()) {
        Ok(line) => {
            assert!(!line.as_str().contains(['\r', '\n', '\0']));
            let wire = line.to_wire();
            assert_eq!(wire.matches("\r\n").count(), 1);
            assert!(wire.ends_with("\r\n"));
        }
        Err(_) => assert!(text.contains(['\r', '\n', '\0'])),
    }
    if unsafe_content(input).is_none() {
        assert!(!input.contains(&0));
        for (i, &b) in input.iter().enumerate() {
            if b == b'\r' {
                assert_eq!(input.get(i + 1), Some(&b'\n'));
            }
            if b == b'\n' {
                assert!(i > 0 && input[i - 1] == b'\r');
            }
        }
    }
    if let Ok(address) = EmailAddress::parse(&text) {
        let _ = address.domain().to_unicode();
    }
    if let Ok(domain) = Domain::parse(&text) {
        assert!(!domain.as_str().contains(['\r', '\n', '\0', ' ']));
    }
});
