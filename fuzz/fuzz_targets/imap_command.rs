//! Fuzz target: one framed IMAP command as the server decodes it: imap-codec's
//! `CommandCodec`, our extended LIST tokenizer (`sealmail_imap::list::parse_extended`), then
//! what the session does with the values that needs no store: sequence sets
//! (`sealmail_imap::sequence`, `Merged` checked against the plain ranges) against a small and a
//! full mailbox, LIST patterns (`list::Pattern`, checked against a naive matcher), mailbox names
//! (modified UTF-7) and FETCH sections on a message. An input `pattern NUL name` is matched
//! directly.
#![no_main]

use imap_codec::CommandCodec;
use imap_codec::decode::Decoder;
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::fetch::{MacroOrMessageDataItemNames, MessageDataItemName};
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::sequence::SequenceSet;
use libfuzzer_sys::fuzz_target;
use sealmail_imap::{fetch, list, sequence, wire};

const MESSAGE: &[u8] = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: hi\r\n\
Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\none\r\n\
--x\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ntwo\r\n--x--\r\n";

fn check_set(set: &SequenceSet) {
    for max in [0, 1, 7, u32::MAX] {
        let merged = sequence::Merged::new(set, max);
        for pair in merged.ranges().windows(2) {
            assert!(
                pair[0].1 < pair[1].0 && pair[0].1.saturating_add(1) < pair[1].0,
                "not merged"
            );
        }
        let mut probes = vec![0, 1, max, max.saturating_add(1), u32::MAX];
        for (lo, hi) in sequence::ranges(set, max) {
            assert!(lo <= hi);
            probes.extend([lo.saturating_sub(1), lo, hi, hi.saturating_add(1)]);
        }
        for n in probes {
            assert_eq!(
                merged.contains(n),
                sequence::contains(set, n, max),
                "{n} in {set:?} (max {max})"
            );
        }
        let within = sequence::within(set, max);
        if within {
            assert!(!sequence::contains(set, 0, max));
        }
    }
}

/// The LIST wildcards by their definition (RFC 3501 6.3.8), memoised: `*` anything, `%`
/// anything but the delimiter `/`.
fn naive_match(pattern: &[u8], name: &[u8]) -> bool {
    let (p, n) = (pattern.len(), name.len());
    // can[i][j]: pattern[i..] matches name[j..].
    let mut can = vec![vec![false; n + 1]; p + 1];
    can[p][n] = true;
    for i in (0..p).rev() {
        for j in (0..=n).rev() {
            can[i][j] = match pattern[i] {
                b'*' => can[i + 1][j] || (j < n && can[i][j + 1]),
                b'%' => can[i + 1][j] || (j < n && name[j] != b'/' && can[i][j + 1]),
                c => j < n && name[j] == c && can[i + 1][j + 1],
            };
        }
    }
    can[0][0]
}

fn check_pattern(pattern: &str, names: &[&[u8]]) {
    let Some(compiled) = list::Pattern::new(pattern) else {
        return;
    };
    let mut reach = Vec::new();
    for name in names {
        let got = compiled.matches(name, &mut reach);
        if pattern.len() <= 200 && name.len() <= 200 {
            assert_eq!(
                got,
                naive_match(pattern.as_bytes(), name),
                "{pattern:?} against {name:?}"
            );
        }
    }
}

fn check_mailbox(mailbox: &Mailbox<'_>) {
    if let Mailbox::Other(other) = mailbox {
        let _ = wire::decode_mailbox_name(other.as_ref());
    }
}

fuzz_target!(|command: &[u8]| {
    if let Some(nul) = command.iter().position(|&b| b == 0) {
        let pattern = String::from_utf8_lossy(&command[..nul]);
        let name = String::from_utf8_lossy(&command[nul + 1..]);
        check_pattern(&pattern, &[name.as_bytes(), b"INBOX", b"a/b/c"]);
        return;
    }
    // SEARCH RETURN (...) is taken off before imap-codec sees the command: what is left is
    // shorter, and the same as the input outside the clause.
    if let Some((rest, _)) = sealmail_imap::esearch::strip_return(command) {
        assert!(rest.len() < command.len());
        assert!(command.starts_with(&rest[..rest.len().min(4)]) || rest.len() < 4);
        assert!(command.ends_with(&rest[rest.len().saturating_sub(2)..]));
        let _ = CommandCodec::default().decode(&rest);
    }
    // APPEND ... UTF8 (literal8): the data item's wrapping is removed, nothing else.
    if let Some(rest) = sealmail_imap::esearch::strip_utf8_append(command) {
        assert!(rest.len() + 7 == command.len(), "exactly \"UTF8 (\" and \")\" go");
        let _ = CommandCodec::default().decode(&rest);
    }
    // `$` (SEARCHRES) written out: the rest of the command is kept.
    if let Some(rest) = sealmail_imap::esearch::substitute_saved(command, |_| Some("1:3".to_string())) {
        assert!(rest.len() >= command.len() && rest.ends_with(&command[command.len().saturating_sub(1)..]));
    }
    let names: [&[u8]; 4] = [b"INBOX", b"a/b/c", b"&AOk-t&AOk-/x", b"Sent Items"];
    if let Some((_tag, request)) = list::parse_extended(command) {
        for pattern in &request.patterns {
            check_pattern(&String::from_utf8_lossy(pattern), &names);
        }
    }
    let Ok((_rest, command)) = CommandCodec::default().decode(command) else {
        return;
    };
    let message = fetch::parse(MESSAGE);
    match &command.body {
        CommandBody::Fetch {
            sequence_set,
            macro_or_item_names,
            ..
        } => {
            check_set(sequence_set);
            if let MacroOrMessageDataItemNames::MessageDataItemNames(items) = macro_or_item_names {
                for item in items {
                    if let MessageDataItemName::BodyExt { section, .. } = item {
                        let _ = fetch::section(MESSAGE, section.as_ref());
                    }
                }
            }
            let _ = message;
        }
        CommandBody::Store { sequence_set, .. }
        | CommandBody::Copy { sequence_set, .. }
        | CommandBody::Move { sequence_set, .. }
        | CommandBody::ExpungeUid { sequence_set } => check_set(sequence_set),
        CommandBody::List {
            reference,
            mailbox_wildcard,
        }
        | CommandBody::Lsub {
            reference,
            mailbox_wildcard,
        } => {
            check_mailbox(reference);
            let request = list::ListRequest::plain(reference, mailbox_wildcard, false);
            for pattern in &request.patterns {
                check_pattern(&String::from_utf8_lossy(pattern), &names);
            }
        }
        CommandBody::Select { mailbox, .. }
        | CommandBody::Examine { mailbox, .. }
        | CommandBody::Create { mailbox, .. }
        | CommandBody::Delete { mailbox }
        | CommandBody::Subscribe { mailbox }
        | CommandBody::Unsubscribe { mailbox }
        | CommandBody::Status { mailbox, .. }
        | CommandBody::Append { mailbox, .. } => check_mailbox(mailbox),
        CommandBody::Rename { from, to } => {
            check_mailbox(from);
            check_mailbox(to);
        }
        _ => {}
    }
});
