//! Fuzz target: the SMTP client's reply reader (delivery), reading consecutive replies from an
//! in-memory stream as a remote server would send them
//! (`sealmail_delivery::client::read_reply_from`), then what delivery keeps of a reply.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealmail_delivery::client::{Capabilities, read_reply_from};

fuzz_target!(|input: &[u8]| {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    runtime.block_on(async {
        let mut reader = tokio::io::BufReader::new(input);
        for _ in 0..16 {
            let Ok(reply) = read_reply_from(&mut reader).await else {
                break;
            };
            assert!((200..600).contains(&reply.code));
            assert!(!reply.lines.is_empty() && reply.lines.len() <= 128);
            let summary = reply.summary();
            assert!(!summary.contains(['\r', '\n', '\0']));
            assert!(summary.chars().count() <= 1000);
            let _ = reply.enhanced();
            let _ = Capabilities::from_ehlo(&reply);
        }
    });
});
