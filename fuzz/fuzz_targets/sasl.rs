//! Fuzz target: SASL responses as the SMTP and IMAP servers decode them: base64, then
//! `sealmail_identity::sasl::Exchange` (PLAIN and LOGIN), over a few steps.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use libfuzzer_sys::fuzz_target;
use sealmail_identity::sasl::{Exchange, Mechanism, Step};

fuzz_target!(|input: &[u8]| {
    let Some((&first, rest)) = input.split_first() else {
        return;
    };
    let mechanism = if first & 1 == 0 {
        Mechanism::Plain
    } else {
        Mechanism::Login
    };
    let _ = Mechanism::from_name(&String::from_utf8_lossy(rest));
    // Lines as they arrive; each is base64 (a line that is not is refused before SASL).
    let mut lines = rest.split(|&b| b == b'\n');
    let initial = if first & 2 == 0 {
        None
    } else {
        lines.next().and_then(|l| BASE64.decode(l).ok())
    };
    let (mut exchange, mut step) = Exchange::start(mechanism, initial.as_deref());
    for line in lines {
        let Step::Challenge(_) = step else { break };
        let Ok(response) = BASE64.decode(line) else { break };
        step = exchange.respond(&response);
    }
    if let Step::Done(credentials) = step {
        if matches!(mechanism, Mechanism::Login) {
            assert!(!credentials.username.is_empty());
        }
    }
});
