//! Fuzz target: a stored message as FETCH reads it: mail-parser's MIME tree
//! (`sealmail_imap::fetch::parse`), then ENVELOPE, BODY and BODYSTRUCTURE, and body sections
//! (part numbers, HEADER, HEADER.FIELDS, TEXT, MIME) from it.
#![no_main]

use std::num::NonZeroU32;

use imap_codec::imap_types::core::{AString, Vec1};
use imap_codec::imap_types::fetch::{Part, Section};
use libfuzzer_sys::fuzz_target;
use sealmail_imap::fetch;

fn part(path: &[u32]) -> Option<Part> {
    let numbers: Vec<NonZeroU32> = path.iter().filter_map(|&n| NonZeroU32::new(n)).collect();
    Vec1::try_from(numbers).ok().map(Part)
}

fuzz_target!(|bytes: &[u8]| {
    let end = fetch::header_end(bytes);
    assert!(end <= bytes.len());
    let names: Vec<AString<'_>> = ["Subject", "from", "CONTENT-TYPE"]
        .into_iter()
        .filter_map(|n| AString::try_from(n).ok())
        .collect();
    let _ = fetch::header_fields(&bytes[..end], &names, false);
    let _ = fetch::header_fields(&bytes[..end], &names, true);
    let Some(message) = fetch::parse(bytes) else {
        return;
    };
    let mut out = Vec::new();
    fetch::envelope(&mut out, &message);
    out.clear();
    fetch::body_structure(&mut out, bytes, &message, false);
    out.clear();
    fetch::body_structure(&mut out, bytes, &message, true);
    let mut sections: Vec<Section<'_>> = vec![Section::Header(None), Section::Text(None)];
    if let Ok(list) = Vec1::try_from(names.clone()) {
        sections.push(Section::HeaderFields(None, list.clone()));
        sections.push(Section::HeaderFieldsNot(part(&[2]), list));
    }
    for path in [&[1][..], &[2], &[1, 1], &[2, 1], &[1, 2, 1], &[3, 1, 1, 1]] {
        if let Some(p) = part(path) {
            sections.push(Section::Part(p.clone()));
            sections.push(Section::Header(Some(p.clone())));
            sections.push(Section::Text(Some(p.clone())));
            sections.push(Section::Mime(p));
        }
    }
    for section in &sections {
        let _ = fetch::section(bytes, Some(section));
    }
});
