//! SELECT and EXAMINE (RFC 3501 6.3.1-6.3.2, RFC 7162 QRESYNC), and the STATUS response line.

use crate::session::*;

impl Session {
    pub(in crate::session) async fn select(
        &mut self,
        mailbox: &WireMailbox<'_>,
        read_only: bool,
        parameters: &[SelectParameter],
    ) -> Done {
        self.saved.clear();
        if self.selected.take().is_some() {
            // RFC 7162 3.2.11: the previous mailbox is closed.
            self.out
                .extend_from_slice(b"* OK [CLOSED] Previous mailbox closed\r\n");
        }
        if parameters.iter().any(|p| matches!(p, SelectParameter::CondStore)) {
            self.condstore = true;
        }
        let resync = parameters.iter().find_map(|p| match p {
            SelectParameter::QResync {
                uid_validity,
                mod_sequence_value,
                known_uids,
                ..
            } => Some((uid_validity.get(), mod_sequence_value.get(), known_uids.clone())),
            SelectParameter::CondStore => None,
        });
        if resync.is_some() && !self.qresync {
            return bad("QRESYNC must be enabled first (ENABLE QRESYNC)");
        }
        let found = match self.named_mailbox(mailbox, "[NONEXISTENT] No such mailbox").await {
            Ok(found) => found,
            Err(done) => return done,
        };
        let mut selected = match Selected::open(self.ctx.store.as_ref(), found, read_only).await {
            Ok(selected) => selected,
            Err(e) => return store_failure(&e),
        };
        let first_unseen = selected
            .entries
            .iter()
            .position(|e| !e.flags.iter().any(|f| f.eq_ignore_ascii_case("\\Seen")));
        let uid_next = selected
            .mailbox
            .uid_next
            .max(selected.max_uid().saturating_add(1));
        selected.rev2 = self.rev2;
        selected.write_flags(&mut self.out);
        let mut text = Text(&mut self.out);
        let _ = write!(text, "* {} EXISTS\r\n", selected.exists());
        if !self.rev2 {
            let _ = write!(text, "* {} RECENT\r\n", selected.recent_count());
        }
        if let Some(index) = first_unseen {
            let _ = write!(text, "* OK [UNSEEN {}] First unseen message\r\n", index + 1);
        }
        let _ = write!(
            text,
            "* OK [UIDVALIDITY {}] UIDs valid\r\n",
            selected.mailbox.uid_validity
        );
        let _ = write!(text, "* OK [UIDNEXT {uid_next}] Predicted next UID\r\n");
        let _ = write!(text, "* OK [HIGHESTMODSEQ {}] Highest\r\n", selected.known_modseq);
        if let Some(special) = &selected.mailbox.special_use {
            let _ = write!(text, "* LIST ({special}) \"/\" ");
            let mut name_out = Vec::new();
            wire::string(
                &mut name_out,
                wire::name_to_wire(&selected.mailbox.name, self.utf8).as_bytes(),
            );
            self.out.extend_from_slice(&name_out);
            self.out.extend_from_slice(b"\r\n");
        }
        // RFC 7162 3.2.5: what changed since the client's mod-sequence, if its UIDs still hold.
        if let Some((uid_validity, since, known)) = resync
            && uid_validity == selected.mailbox.uid_validity
        {
            let last = uid_next.saturating_sub(1);
            let ranges = match &known {
                Some(known) => crate::sequence::Merged::new(known, last).ranges().to_vec(),
                None if last > 0 => vec![(1, last)],
                None => Vec::new(),
            };
            let ranges = selected.write_vanished_earlier(ranges, last, &mut self.out);
            // Sorted and disjoint: a binary search per message.
            let in_known = |uid: u32| {
                let i = ranges.partition_point(|&(_, hi)| hi < uid);
                ranges.get(i).is_some_and(|&(lo, _)| lo <= uid)
            };
            for (index, entry) in selected.entries.iter().enumerate() {
                if entry.modseq > since && (known.is_none() || in_known(entry.uid)) {
                    let _ = write!(
                        Text(&mut self.out),
                        "* {} FETCH (UID {} FLAGS ",
                        index + 1,
                        entry.uid
                    );
                    selected.write_flag_list(&mut self.out, entry.uid, &entry.flags);
                    let _ = write!(Text(&mut self.out), " MODSEQ ({}))\r\n", entry.modseq);
                }
            }
        }
        selected.qresync = self.qresync;
        self.selected = Some(selected);
        if read_only {
            ok("[READ-ONLY] EXAMINE completed")
        } else {
            ok("[READ-WRITE] SELECT completed")
        }
    }

    pub(in crate::session) async fn status_line(
        &mut self,
        mailbox: &Mailbox,
        items: &[StatusDataItemName],
    ) -> Result<(), StoreError> {
        let status = self.ctx.store.mailbox_status(mailbox.id).await?;
        let mut parts = Vec::new();
        for item in items {
            match item {
                StatusDataItemName::Messages => parts.push(format!("MESSAGES {}", status.messages)),
                StatusDataItemName::Recent => parts.push(format!("RECENT {}", status.recent)),
                StatusDataItemName::UidNext => parts.push(format!("UIDNEXT {}", status.uid_next)),
                StatusDataItemName::UidValidity => parts.push(format!("UIDVALIDITY {}", status.uid_validity)),
                StatusDataItemName::Unseen => parts.push(format!("UNSEEN {}", status.unseen)),
                StatusDataItemName::Deleted => parts.push(format!("DELETED {}", status.deleted)),
                StatusDataItemName::DeletedStorage => parts.push("DELETED-STORAGE 0".to_string()),
                // RFC 8438: the mailbox's total size in octets.
                StatusDataItemName::Size => parts.push(format!("SIZE {}", status.size)),
                StatusDataItemName::HighestModSeq => {
                    self.condstore = true;
                    parts.push(format!("HIGHESTMODSEQ {}", status.highest_modseq));
                }
            }
        }
        self.out.extend_from_slice(b"* STATUS ");
        wire::string(
            &mut self.out,
            wire::name_to_wire(&mailbox.name, self.utf8).as_bytes(),
        );
        let _ = write!(Text(&mut self.out), " ({})\r\n", parts.join(" "));
        Ok(())
    }
}
