//! Fuzz target: SCRAM-SHA-256(-PLUS) messages as the server parses them
//! (`sealmail_identity::scram`): a client-first-message with any flags, then, if it parses,
//! the server's challenge from a fixed verifier and a client-final-message.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sealmail_identity::scram::{self, ChannelBindings, Verifier};

/// PBKDF2 once, not per input.
static VERIFIER: OnceLock<Option<Verifier>> = OnceLock::new();

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    // Client-first and client-final are separated by the first newline.
    let (first, last) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    let bindings = ChannelBindings {
        tls_exporter: (flags & 4 == 0).then(|| vec![7u8; 32]),
        tls_server_end_point: (flags & 8 == 0).then(|| vec![9u8; 32]),
    };
    let Ok(client_first) = scram::client_first(first, flags & 1 == 1, flags & 2 == 2, &bindings) else {
        return;
    };
    let verifier = VERIFIER
        .get_or_init(|| Verifier::derive_with_salt("pencil", b"0123456789abcdef", scram::MIN_ITERATIONS).ok());
    let Some(verifier) = verifier else {
        return;
    };
    let (challenge, server_first) = client_first.challenge(verifier);
    assert!(!challenge.is_empty());
    let _ = server_first.finish(last);
});
