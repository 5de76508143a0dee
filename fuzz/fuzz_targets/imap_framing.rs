//! Fuzz target: IMAP framing (`sealmail_imap::framing::read_command`): lines and the literals
//! between them, read off a `Connection` over an in-memory stream, one command after another
//! until the input ends, before login or after it (the first input byte chooses).
//!
//! Checked: every accepted command ends in CRLF, its literals are exactly where its lines
//! announce them, and it stays within the stage's allowance; before login no APPEND with a
//! literal is ever accepted; every frame uses input (no endless loop); and once a frame is
//! dropped the whole message budget is free again (no reservation leaks).
#![no_main]

use std::net::SocketAddr;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sealmail_config::{Role, TlsMode};
use sealmail_imap::framing::{Frame, Limits, Stage, read_command};
use sealmail_net::budget::BodyBudget;
use sealmail_net::{ConnError, Connection, ConnectionInfo, Timeouts};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

const BUDGET: usize = 8 * 1024;

const LIMITS: Limits = Limits {
    max_line: 256,
    max_append: 4096,
    max_literal: 512,
    max_literals: 4,
    max_command: 2048,
    max_unauthenticated_literal: 64,
    max_unauthenticated_command: 256,
    idle: Duration::from_secs(5),
    unauthenticated_idle: Duration::from_secs(5),
};

/// `{n}` or `{n+}` at the end of a line, as RFC 3501 (and RFC 7888) spell it.
fn announced(line: &[u8]) -> Option<usize> {
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let digits = &inner[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Walks a command as a reader of RFC 3501 would; returns its first line and literal count.
fn check_structure(command: &[u8]) -> (Vec<u8>, usize) {
    let mut rest = command;
    let mut first = None;
    let mut literals = 0;
    loop {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("every line of a command ends in CRLF");
        let line = &rest[..end];
        assert!(!line.contains(&b'\n'), "a line holds a line feed");
        first.get_or_insert_with(|| line.to_vec());
        rest = &rest[end + 2..];
        match announced(line) {
            Some(n) => {
                literals += 1;
                assert!(rest.len() >= n, "a literal is shorter than announced");
                rest = &rest[n..];
            }
            None => {
                assert!(rest.is_empty(), "bytes after the last line");
                return (first.unwrap_or_default(), literals);
            }
        }
    }
}

fn is_append(first_line: &[u8]) -> bool {
    let mut words = first_line.split(|&b| b == b' ');
    let _tag = words.next();
    words
        .next()
        .is_some_and(|verb| verb.eq_ignore_ascii_case(b"APPEND"))
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, wire)) = input.split_first() else {
        return;
    };
    let stage = if mode & 1 == 0 {
        Stage::NotAuthenticated
    } else {
        Stage::Authenticated
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return;
    };
    runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(wire.len() * 8 + 64 * 1024);
        client.write_all(wire).await.expect("the duplex holds the input");
        client.shutdown().await.expect("end of input");
        let peer: SocketAddr = "127.0.0.2:40000".parse().expect("address");
        let info = ConnectionInfo {
            peer,
            local: "127.0.0.1:143".parse().expect("address"),
            role: Role::Imap,
            tls_mode: TlsMode::StartTls,
        };
        let mut conn =
            Connection::over_stream(
                info,
                server,
                None,
                Timeouts::uniform(Duration::from_secs(5)),
                CancellationToken::new(),
            );
        let budget = BodyBudget::with_client_share(BUDGET, BUDGET / 2);
        let mut frames = 0usize;
        loop {
            match read_command(&mut conn, &LIMITS, stage, &budget).await {
                Ok(Frame::Command(command, reservation)) => {
                    let (first, literals) = check_structure(&command);
                    assert!(literals <= LIMITS.max_literals);
                    let allowed = match (stage, is_append(&first)) {
                        (Stage::NotAuthenticated, true) if literals > 0 => {
                            panic!("APPEND with a literal accepted before login")
                        }
                        (Stage::NotAuthenticated, _) => LIMITS.max_unauthenticated_command,
                        (Stage::Authenticated, true) => LIMITS.max_command + LIMITS.max_append,
                        (Stage::Authenticated, false) => LIMITS.max_command,
                    };
                    // Each line may bring its CRLF beyond the allowance.
                    let slack = 2 * (LIMITS.max_literals as u64 + 1);
                    assert!(
                        command.len() as u64 <= allowed + slack,
                        "command over its allowance"
                    );
                    drop(reservation);
                }
                Ok(Frame::Refused { tag, .. }) => {
                    if let Some(tag) = tag {
                        assert!(!tag.is_empty() && !tag.contains(['\r', '\n', ' ', '\0']));
                    }
                }
                Err(ConnError::Closed) => break,
                Err(e) => panic!("unexpected error on an in-memory stream: {e}"),
            }
            assert_eq!(budget.available(), BUDGET, "a dropped frame still holds budget");
            frames += 1;
            assert!(frames <= wire.len(), "a frame that used no input");
        }
    });
});
