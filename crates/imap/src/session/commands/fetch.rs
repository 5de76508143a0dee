//! FETCH (RFC 3501 6.4.5, RFC 3516 BINARY, RFC 7162 CHANGEDSINCE/VANISHED): messages read
//! in bounded batches and responses sent along the way, so a large FETCH never sits whole in memory.

use crate::session::*;

impl Session {
    pub(in crate::session) async fn flush_if_large(
        &mut self,
        client: &mut dyn Client,
    ) -> Result<(), ConnError> {
        if self.out.len() >= FLUSH_AT {
            client.send(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    pub(in crate::session) async fn fetch(
        &mut self,
        set: &SequenceSet,
        items: MacroOrMessageDataItemNames<'_>,
        uid: bool,
        modifiers: &[FetchModifier],
        client: &mut dyn Client,
    ) -> Result<Done, ConnError> {
        let indices = match self.resolve(set, uid) {
            Ok(i) => i,
            Err(done) => return Ok(done),
        };
        let items = match items {
            // RFC 3501 6.4.5 (Macro::expand borrows the macro, which this match consumes).
            MacroOrMessageDataItemNames::Macro(m) => {
                use MessageDataItemName::*;
                match m {
                    Macro::All => vec![Flags, InternalDate, Rfc822Size, Envelope],
                    Macro::Full => vec![Flags, InternalDate, Rfc822Size, Envelope, Body],
                    _ => vec![Flags, InternalDate, Rfc822Size],
                }
            }
            MacroOrMessageDataItemNames::MessageDataItemNames(items) => items,
        };
        // Each item that copies message bytes is built in memory for every message before it is
        // sent: the same item twice is sent once, and only a few such items are taken at a time.
        if items.len() > MAX_FETCH_ITEMS {
            return Ok(bad(format!("At most {MAX_FETCH_ITEMS} FETCH items")));
        }
        let mut unique = Vec::with_capacity(items.len());
        for item in items {
            if !unique.contains(&item) {
                unique.push(item);
            }
        }
        let mut items = unique;
        let copies = items
            .iter()
            .filter(|i| {
                matches!(
                    i,
                    MessageDataItemName::BodyExt { .. }
                        | MessageDataItemName::Binary { .. }
                        | MessageDataItemName::BinarySize { .. }
                        | MessageDataItemName::Rfc822
                        | MessageDataItemName::Rfc822Text
                        | MessageDataItemName::Rfc822Header
                )
            })
            .count();
        if copies > MAX_FETCH_SECTIONS {
            return Ok(bad(format!(
                "At most {MAX_FETCH_SECTIONS} body sections (BODY[], BINARY[], RFC822...) in one FETCH"
            )));
        }
        if uid && !items.contains(&MessageDataItemName::Uid) {
            items.insert(0, MessageDataItemName::Uid);
        }
        let changed_since = modifiers.iter().find_map(|m| match m {
            FetchModifier::ChangedSince(n) => Some(n.get()),
            FetchModifier::Vanished => None,
        });
        // RFC 7162 3.2.6: UID FETCH (CHANGEDSINCE n VANISHED) also names the UIDs of the set
        // that are gone, once QRESYNC is enabled.
        if modifiers.contains(&FetchModifier::Vanished) {
            if !uid || changed_since.is_none() || !self.qresync {
                return Ok(bad("VANISHED needs UID FETCH, CHANGEDSINCE and ENABLE QRESYNC"));
            }
            if let Some(selected) = &self.selected {
                let last = selected
                    .mailbox
                    .uid_next
                    .max(selected.max_uid().saturating_add(1))
                    .saturating_sub(1);
                let ranges = crate::sequence::Merged::new(set, last).ranges().to_vec();
                selected.write_vanished_earlier(ranges, last, &mut self.out);
            }
        }
        if changed_since.is_some() || items.contains(&MessageDataItemName::ModSeq) {
            self.condstore = true;
        }
        if self.condstore && changed_since.is_some() && !items.contains(&MessageDataItemName::ModSeq) {
            items.push(MessageDataItemName::ModSeq);
        }
        let wants_content = items.iter().any(|i| {
            matches!(
                i,
                MessageDataItemName::Body
                    | MessageDataItemName::BodyExt { .. }
                    | MessageDataItemName::Binary { .. }
                    | MessageDataItemName::BinarySize { .. }
                    | MessageDataItemName::BodyStructure
                    | MessageDataItemName::Envelope
                    | MessageDataItemName::Rfc822
                    | MessageDataItemName::Rfc822Header
                    | MessageDataItemName::Rfc822Text
            )
        });
        let sets_seen = items.iter().any(|i| {
            matches!(
                i,
                MessageDataItemName::BodyExt { peek: false, .. }
                    | MessageDataItemName::Binary { peek: false, .. }
                    | MessageDataItemName::Rfc822
                    | MessageDataItemName::Rfc822Text
            )
        });
        let Some(selected) = self.selected.as_mut() else {
            return Ok(bad("Select a mailbox first"));
        };
        let indices: Vec<usize> = match changed_since {
            Some(since) => indices
                .into_iter()
                .filter(|&i| selected.entries.get(i).is_some_and(|e| e.modseq > since))
                .collect(),
            None => indices,
        };
        // RFC 3501 6.4.5: fetching a body section sets \Seen, in a read-write mailbox.
        let mut newly_seen = std::collections::HashSet::new();
        if sets_seen && !selected.read_only {
            let unseen: Vec<u32> = indices
                .iter()
                .filter_map(|&i| selected.entries.get(i))
                .filter(|e| !e.flags.iter().any(|f| f.eq_ignore_ascii_case("\\Seen")))
                .map(|e| e.uid)
                .collect();
            if !unseen.is_empty() {
                match self
                    .ctx
                    .store
                    .update_flags(SetFlags {
                        mailbox: selected.mailbox.id,
                        uids: unseen,
                        change: FlagChange::Add,
                        flags: vec!["\\Seen".into()],
                        unchanged_since: None,
                    })
                    .await
                {
                    Ok(update) => {
                        for message in &update.messages {
                            selected.apply_own_flags(message);
                            newly_seen.insert(message.uid);
                        }
                    }
                    Err(e) => return Ok(store_failure(&e)),
                }
            }
        }
        let mut vanished = false;
        // Messages are read in batches: one store query per batch instead of one per message.
        let mut start = 0;
        while start < indices.len() {
            let Some(selected) = self.selected.as_ref() else {
                break;
            };
            let rest = &indices[start..];
            let size_of = |&i: &usize| match (wants_content, selected.entries.get(i)) {
                (true, Some(e)) => e.size,
                _ => 0,
            };
            let batch = &rest[..batch_len(rest.iter().map(size_of))];
            start += batch.len();
            let entries: Vec<(usize, crate::selected::Entry)> = batch
                .iter()
                .filter_map(|&i| selected.entries.get(i).map(|e| (i, e.clone())))
                .collect();
            let contents: Vec<Option<Result<Vec<u8>, StoreError>>> = if wants_content {
                let ids: Vec<_> = entries.iter().map(|(_, e)| e.id).collect();
                match self.ctx.store.read_messages(&ids).await {
                    Ok(contents) => contents.into_iter().map(Some).collect(),
                    Err(e) => return Ok(store_failure(&e)),
                }
            } else {
                entries.iter().map(|_| None).collect()
            };
            for ((index, entry), content) in entries.iter().zip(contents) {
                let content = match content {
                    None => None,
                    Some(Ok(bytes)) => Some(bytes),
                    Some(Err(StoreError::NotFound(_))) => {
                        vanished = true;
                        continue;
                    }
                    Some(Err(e)) => {
                        if matches!(e, StoreError::Integrity { .. }) {
                            let mailbox = self
                                .selected
                                .as_ref()
                                .map(|s| s.mailbox.name.clone())
                                .unwrap_or_default();
                            tracing::error!(peer = %self.peer, uid = entry.uid, %mailbox, "IMAP FETCH refused a message that failed its integrity check");
                        }
                        return Ok(store_failure(&e));
                    }
                };
                let include_flags =
                    newly_seen.contains(&entry.uid) && !items.contains(&MessageDataItemName::Flags);
                self.fetch_one(*index, entry, content.as_deref(), &items, include_flags);
                self.flush_if_large(client).await?;
            }
        }
        Ok(if vanished {
            no("[EXPUNGEISSUED] Some messages were expunged meanwhile")
        } else if std::mem::take(&mut self.unknown_encoding) {
            no("[UNKNOWN-CTE] A part's Content-Transfer-Encoding is not one BINARY can undo")
        } else {
            ok("FETCH completed")
        })
    }

    pub(in crate::session) fn fetch_one(
        &mut self,
        index: usize,
        entry: &crate::selected::Entry,
        content: Option<&[u8]>,
        items: &[MessageDataItemName<'_>],
        include_flags: bool,
    ) {
        let condstore = self.condstore;
        let mut unknown_encoding = false;
        let recent = self.selected.as_ref().is_some_and(|s| s.is_recent(entry.uid));
        let flags = match &self.selected {
            Some(selected) => selected.shown_flags(&entry.flags),
            None => entry.flags.clone(),
        };
        let out = &mut self.out;
        let _ = write!(Text(out), "* {} FETCH (", index + 1);
        let mut parsed: Option<Option<mail_parser::Message<'_>>> = None;
        let mut first = true;
        let mut sep = |out: &mut Vec<u8>| {
            if !std::mem::take(&mut first) {
                out.push(b' ');
            }
        };
        let mut modseq_written = false;
        let mut all_items: Vec<&MessageDataItemName<'_>> = items.iter().collect();
        let flags_item = MessageDataItemName::Flags;
        if include_flags {
            all_items.push(&flags_item);
        }
        for item in all_items {
            sep(out);
            match item {
                MessageDataItemName::Uid => {
                    let _ = write!(Text(out), "UID {}", entry.uid);
                }
                MessageDataItemName::Flags => {
                    out.extend_from_slice(b"FLAGS ");
                    wire::flag_list_of(out, &flags, recent);
                    if condstore && !modseq_written && !items.contains(&MessageDataItemName::ModSeq) {
                        let _ = write!(Text(out), " MODSEQ ({})", entry.modseq);
                        modseq_written = true;
                    }
                }
                MessageDataItemName::ModSeq => {
                    let _ = write!(Text(out), "MODSEQ ({})", entry.modseq);
                }
                MessageDataItemName::InternalDate => {
                    let _ = write!(
                        Text(out),
                        "INTERNALDATE {}",
                        wire::internal_date(entry.internal_date)
                    );
                }
                MessageDataItemName::Rfc822Size => {
                    let _ = write!(Text(out), "RFC822.SIZE {}", entry.size);
                }
                MessageDataItemName::Rfc822 => {
                    out.extend_from_slice(b"RFC822 ");
                    wire::literal(out, content.unwrap_or_default());
                }
                MessageDataItemName::Rfc822Header => {
                    let bytes = content.unwrap_or_default();
                    out.extend_from_slice(b"RFC822.HEADER ");
                    wire::literal(out, &bytes[..fetch::header_end(bytes)]);
                }
                MessageDataItemName::Rfc822Text => {
                    let bytes = content.unwrap_or_default();
                    out.extend_from_slice(b"RFC822.TEXT ");
                    wire::literal(out, &bytes[fetch::header_end(bytes)..]);
                }
                MessageDataItemName::Envelope
                | MessageDataItemName::Body
                | MessageDataItemName::BodyStructure => {
                    let bytes = content.unwrap_or_default();
                    if parsed.is_none() {
                        parsed = Some(fetch::parse(bytes));
                    }
                    let label: &[u8] = match item {
                        MessageDataItemName::Envelope => b"ENVELOPE ",
                        MessageDataItemName::Body => b"BODY ",
                        _ => b"BODYSTRUCTURE ",
                    };
                    out.extend_from_slice(label);
                    match (&parsed, item) {
                        (Some(Some(m)), MessageDataItemName::Envelope) => fetch::envelope(out, m),
                        (Some(Some(m)), MessageDataItemName::Body) => {
                            fetch::body_structure(out, bytes, m, false)
                        }
                        (Some(Some(m)), _) => fetch::body_structure(out, bytes, m, true),
                        (_, MessageDataItemName::Envelope) => {
                            out.extend_from_slice(b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)")
                        }
                        _ => out.extend_from_slice(b"(\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 0 0)"),
                    }
                }
                MessageDataItemName::BodyExt { section, partial, .. } => {
                    let bytes = content.unwrap_or_default();
                    let data = fetch::section(bytes, section.as_ref()).unwrap_or_default();
                    let _ = write!(Text(out), "BODY[{}]", section_text(section));
                    let data = partial_of(out, &data, partial);
                    wire::literal(out, data);
                }
                MessageDataItemName::Binary { section, partial, .. } => {
                    let path = section_path(section);
                    let data = fetch::binary_section(content.unwrap_or_default(), section);
                    let _ = write!(Text(out), "BINARY[{path}]");
                    match data {
                        // RFC 3516: the fetch fails with NO [UNKNOWN-CTE] (see `fetch`).
                        Err(fetch::UnknownEncoding) => {
                            out.extend_from_slice(b" NIL");
                            unknown_encoding = true;
                        }
                        Ok(data) => {
                            let data = data.unwrap_or_default();
                            let data = partial_of(out, &data, partial);
                            wire::literal_or_8(out, data);
                        }
                    }
                }
                MessageDataItemName::BinarySize { section } => {
                    let size = fetch::binary_section(content.unwrap_or_default(), section)
                        .ok()
                        .flatten()
                        .map_or(0, |d| d.len());
                    let _ = write!(Text(out), "BINARY.SIZE[{}] {size}", section_path(section));
                }
            }
        }
        out.extend_from_slice(b")\r\n");
        self.unknown_encoding |= unknown_encoding;
    }
}

/// The octets of `data` a `<origin.length>` partial asks for (all of them without one), after
/// writing what stands between the section and its literal: `<origin> `, or a space.
fn partial_of<'d>(
    out: &mut Vec<u8>,
    data: &'d [u8],
    partial: &Option<(u32, std::num::NonZeroU32)>,
) -> &'d [u8] {
    match partial {
        Some((origin, length)) => {
            let start = (*origin as usize).min(data.len());
            let end = start.saturating_add(length.get() as usize).min(data.len());
            let _ = write!(Text(out), "<{origin}> ");
            &data[start..end]
        }
        None => {
            out.push(b' ');
            data
        }
    }
}
