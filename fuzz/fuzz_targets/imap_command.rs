//! Fuzz target: one framed IMAP command as the server decodes it: imap-codec's
//! `CommandCodec`, our extended LIST tokenizer (`sealmail_imap::list::parse_extended`), then
//! what the session does with the values that needs no store: sequence sets
//! (`sealmail_imap::sequence`) against a small and a full mailbox, LIST patterns
//! (`list::wildcard_match`), mailbox names (modified UTF-7) and FETCH sections on a message.
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
        for (lo, hi) in sequence::ranges(set, max) {
            assert!(lo <= hi);
        }
        let within = sequence::within(set, max);
        if within {
            assert!(!sequence::contains(set, 0, max));
        }
        let _ = sequence::contains(set, max, max);
    }
}

fn check_mailbox(mailbox: &Mailbox<'_>) {
    if let Mailbox::Other(other) = mailbox {
        let _ = wire::decode_mailbox_name(other.as_ref());
    }
}

fuzz_target!(|command: &[u8]| {
    if let Some((_tag, request)) = list::parse_extended(command) {
        let names: [Vec<char>; 3] = [
            "INBOX".chars().collect(),
            "a/b/c".chars().collect(),
            "&AOk-t&AOk-/x".chars().collect(),
        ];
        for pattern in &request.patterns {
            let pattern: Vec<char> = String::from_utf8_lossy(pattern).chars().collect();
            for name in &names {
                let _ = list::wildcard_match(&pattern, name);
            }
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
                let pattern: Vec<char> = String::from_utf8_lossy(pattern).chars().collect();
                let _ = list::wildcard_match(&pattern, &['a', '/', 'b']);
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
