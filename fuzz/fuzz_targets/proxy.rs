//! Fuzz target: PROXY protocol headers (`sealmail_net::proxy::parse_v1` / `parse_v2`).
#![no_main]

use libfuzzer_sys::fuzz_target;

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fuzz_target!(|input: &[u8]| {
    let _ = sealmail_net::proxy::parse_v1(input);
    // Version 2: a 16-byte header and its payload, with the signature put in place so the
    // fuzzer does not have to find it.
    if input.len() >= 4 {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend_from_slice(&input[..4]);
        let _ = sealmail_net::proxy::parse_v2(&header, &input[4..]);
    }
    if input.len() >= 16 {
        let _ = sealmail_net::proxy::parse_v2(&input[..16], &input[16..]);
    }
});
