//! STORE: flag changes (RFC 3501 6.4.6), with CONDSTORE's UNCHANGEDSINCE (RFC 7162).

use crate::session::*;

impl Session {
    pub(in crate::session) async fn store_flags(
        &mut self,
        set: &SequenceSet,
        kind: StoreType,
        response: StoreResponse,
        flags: &[Flag<'_>],
        uid: bool,
        modifiers: &[StoreModifier],
    ) -> Done {
        let indices = match self.resolve(set, uid) {
            Ok(i) => i,
            Err(done) => return done,
        };
        let mut names = Vec::with_capacity(flags.len());
        for flag in flags {
            match flag_name(flag) {
                Some(name) if name.len() <= 100 => names.push(name),
                Some(_) => return bad("Keyword too long"),
                None => return no("[CANNOT] That flag cannot be set"),
            }
        }
        if names.len() > MAX_FLAGS {
            return no(format!("[LIMIT] At most {MAX_FLAGS} flags per message"));
        }
        let change = match kind {
            StoreType::Add => FlagChange::Add,
            StoreType::Remove => FlagChange::Remove,
            StoreType::Replace => FlagChange::Replace,
        };
        let unchanged_since = modifiers.iter().map(|StoreModifier::UnchangedSince(n)| *n).next();
        if unchanged_since.is_some() {
            self.condstore = true;
        }
        let uids = self.uids_of(&indices);
        let Some(selected) = self.selected.as_mut() else {
            return bad("Select a mailbox first");
        };
        if change != FlagChange::Remove && !selected.keywords_fit(&names) {
            return no(format!(
                "[LIMIT] A mailbox may use at most {} keywords",
                crate::selected::MAX_KEYWORDS
            ));
        }
        let update = match self
            .ctx
            .store
            .update_flags(SetFlags {
                mailbox: selected.mailbox.id,
                uids,
                change,
                flags: names,
                unchanged_since,
            })
            .await
        {
            Ok(update) => update,
            Err(e) => return store_failure(&e),
        };
        let mut shown = Vec::with_capacity(update.messages.len());
        for message in &update.messages {
            if let Some(index) = selected.apply_own_flags(message) {
                shown.push((index, message));
            }
        }
        // A keyword new to the mailbox is announced before any FETCH shows it.
        selected.announce_new_keywords(&mut self.out, update.messages.iter().map(|m| m.flags.as_slice()));
        for (index, message) in shown {
            if matches!(response, StoreResponse::Silent) && !self.condstore {
                continue;
            }
            let mut text = Text(&mut self.out);
            let _ = write!(text, "* {} FETCH (", index + 1);
            if uid {
                let _ = write!(text, "UID {} ", message.uid);
            }
            if !matches!(response, StoreResponse::Silent) {
                self.out.extend_from_slice(b"FLAGS ");
                selected.write_flag_list(&mut self.out, message.uid, &message.flags);
                if self.condstore {
                    self.out.push(b' ');
                }
            }
            if self.condstore {
                let _ = write!(Text(&mut self.out), "MODSEQ ({})", message.modseq);
            }
            self.out.extend_from_slice(b")\r\n");
        }
        if update.modified.is_empty() {
            return ok("STORE completed");
        }
        let modified: Vec<u32> = if uid {
            update.modified
        } else {
            update
                .modified
                .iter()
                .filter_map(|u| selected.index_of_uid(*u).map(|i| i as u32 + 1))
                .collect()
        };
        ok(format!(
            "[MODIFIED {}] Conditional STORE failed",
            sequence::compact(&modified)
        ))
    }
}
