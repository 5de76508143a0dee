//! Fuzz target: the DATA receiver (`sealmail_smtp::data::DataReceiver`) fed in arbitrary
//! pieces, plus the round trip of the SMTP client's dot-stuffing through it.
//!
//! Checked: it never uses more than it was given; the result does not depend on how the
//! input was split; the end is the first `CRLF.CRLF` that is not inside a longer line; content
//! that `unsafe_content` accepts comes back unchanged after `dot_stuff`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealmail_delivery::client::dot_stuff;
use sealmail_smtp::data::{Data, DataReceiver};
use sealmail_types::line::unsafe_content;

const MAX: usize = 64 * 1024;

fn run(input: &[u8], split: &[usize]) -> (usize, Option<Data>) {
    let mut receiver = DataReceiver::new(MAX);
    let mut used = 0;
    let mut cuts = split.iter().copied();
    while used < input.len() {
        let piece = cuts.next().unwrap_or(input.len()).max(1);
        let end = (used + piece).min(input.len());
        let given = end - used;
        let (n, done) = receiver.feed(&input[used..end]);
        assert!(n <= given, "used more than it was given");
        used += n;
        if done.is_some() {
            return (used, done);
        }
        assert_eq!(n, given, "stopped early without an end");
    }
    (used, None)
}

fuzz_target!(|input: &[u8]| {
    // The first bytes choose the split points, the rest is the data.
    let (split, data) = input.split_at(input.len().min(4));
    let split: Vec<usize> = split.iter().map(|&b| usize::from(b) + 1).collect();
    let whole = run(data, &[]);
    let pieces = run(data, &split);
    assert_eq!(whole, pieces, "the result depends on how the input arrived");
    let bytewise = run(data, &vec![1; data.len().min(4096)]);
    if data.len() <= 4096 {
        assert_eq!(whole, bytewise, "byte by byte differs");
    }
    if let (used, Some(result)) = &whole {
        // The end marker is the last five octets used, or ".\r\n" at the very start.
        let used_bytes = &data[..*used];
        assert!(used_bytes.ends_with(b"\r\n.\r\n") || used_bytes == b".\r\n");
        // No earlier `CRLF.CRLF` in the raw bytes (the data starts at a line start): the end
        // is the first one, and nothing else ends the data (no `LF.LF`, `CR.CR`, ...).
        let mut framed = b"\r\n".to_vec();
        framed.extend_from_slice(data);
        let first = framed.windows(5).position(|w| w == b"\r\n.\r\n");
        assert_eq!(
            first.map(|p| p + 5 - 2),
            Some(*used),
            "the end is not the first CRLF.CRLF"
        );
        if !result.too_big && !result.bare_line_ending && !result.nul {
            assert!(unsafe_content(&result.content).is_none());
        }
    }
    // Dot-stuffing round trip of content the client would send.
    if unsafe_content(data).is_none() {
        let stuffed = dot_stuff(data);
        let (used, result) = run(&stuffed, &[]);
        let result = result.expect("the stuffed data has an end");
        assert_eq!(used, stuffed.len(), "the end was found early");
        let mut expected = data.to_vec();
        if !expected.is_empty() && !expected.ends_with(b"\r\n") {
            expected.extend_from_slice(b"\r\n");
        }
        if expected.len() <= MAX {
            assert!(!result.bare_line_ending && !result.nul && !result.too_big);
            assert_eq!(result.content, expected);
        }
    }
});
