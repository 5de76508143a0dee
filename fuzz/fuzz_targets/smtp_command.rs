//! Fuzz target: one SMTP command line as the server reads it (smtp-proto's `Request::parse`, as
//! `sealmail_smtp::session` calls it), then what our session does with the parsed values that
//! needs no store: address and domain parsing of MAIL/RCPT/EHLO, xtext of ENVID/ORCPT.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_proto::Request;

fuzz_target!(|line: &[u8]| {
    // The session appends CRLF to the line it read (which never contains LF).
    let line = match line.iter().position(|&b| b == b'\n') {
        Some(end) => &line[..end],
        None => line,
    };
    let mut with_crlf = line.to_vec();
    with_crlf.extend_from_slice(b"\r\n");
    let Ok(request) = Request::parse(&mut with_crlf.iter()) else {
        return;
    };
    match request.into_owned() {
        Request::Ehlo { host } | Request::Helo { host } => {
            let _ = sealmail_types::Domain::parse(&host);
        }
        Request::Mail { from } => {
            let _ = sealmail_types::EmailAddress::parse(&from.address);
            if let Some(envid) = &from.env_id {
                check_xtext(envid);
            }
        }
        Request::Rcpt { to } => {
            let _ = sealmail_types::EmailAddress::parse(&to.address);
            if let Some(orcpt) = &to.orcpt {
                check_xtext(orcpt);
            }
        }
        Request::Bdat { chunk_size, .. } => {
            // A chunk size is only a number: the receiver never allocates it up front.
            let _ = chunk_size;
        }
        _ => {}
    }
});

fn check_xtext(decoded: &str) {
    if let Some(encoded) = sealmail_types::xtext::encode(decoded) {
        assert!(
            sealmail_types::xtext::is_xtext(&encoded),
            "encode gave non-xtext {encoded:?}"
        );
        assert_eq!(sealmail_types::xtext::decode(&encoded), decoded);
    }
}
