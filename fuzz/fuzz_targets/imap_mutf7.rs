//! Fuzz target: IMAP mailbox names in modified UTF-7 (RFC 3501 5.1.3):
//! `sealmail_imap::wire::decode_mailbox_name` accepts only the canonical encoding, so whatever
//! it decodes must encode back to the same bytes; and any name without a character unfit in a
//! name (`wire::unfit_in_name`: controls, invisible format characters) encodes to something
//! that decodes back to it (one with such a character is refused).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealmail_imap::wire::{decode_mailbox_name, encode_mailbox_name, unfit_in_name};

fuzz_target!(|input: &[u8]| {
    if let Some(name) = decode_mailbox_name(input) {
        assert_eq!(
            encode_mailbox_name(&name).as_bytes(),
            input,
            "a non-canonical spelling was accepted for {name:?}"
        );
    }
    if let Ok(name) = std::str::from_utf8(input) {
        let encoded = encode_mailbox_name(name);
        assert!(encoded.is_ascii());
        // A name with a control or invisible format character is refused (no mailbox can
        // have one).
        let expected = (!name.chars().any(unfit_in_name)).then_some(name);
        assert_eq!(decode_mailbox_name(encoded.as_bytes()).as_deref(), expected);
    }
});
