//! EXPUNGE, COPY and MOVE (RFC 3501, RFC 4315 UIDPLUS, RFC 6851).

use crate::session::*;

impl Session {
    pub(in crate::session) async fn expunge(&mut self, uids: Option<Vec<u32>>) -> Done {
        let Some(selected) = self.selected.as_mut() else {
            return bad("Select a mailbox first");
        };
        match self.ctx.store.expunge(selected.mailbox.id, uids).await {
            Ok(removed) => {
                selected.remove_own(&removed, &mut self.out);
                ok("EXPUNGE completed")
            }
            Err(e) => store_failure(&e),
        }
    }

    pub(in crate::session) async fn copy(
        &mut self,
        set: &SequenceSet,
        mailbox: &WireMailbox<'_>,
        uid: bool,
        remove_source: bool,
    ) -> Done {
        let indices = match self.resolve(set, uid) {
            Ok(i) => i,
            Err(done) => return done,
        };
        let target = match self.named_mailbox(mailbox, "[TRYCREATE] No such mailbox").await {
            Ok(found) => found,
            Err(done) => return done,
        };
        let uids = self.uids_of(&indices);
        let verb = if remove_source { "MOVE" } else { "COPY" };
        if uids.is_empty() {
            return ok(format!("{verb} completed (no messages)"));
        }
        if !remove_source && let (Some(selected), Some(account)) = (&self.selected, self.account_id()) {
            // A copy adds its messages' size to the account; a move does not.
            let adding: u64 = indices
                .iter()
                .filter_map(|&i| selected.entries.get(i))
                .map(|entry| entry.size)
                .sum();
            if let Err(done) = self.room_for(account, adding).await {
                return done;
            }
        }
        let Some(selected) = self.selected.as_mut() else {
            return bad("Select a mailbox first");
        };
        match self
            .ctx
            .store
            .copy_messages(CopyMessages {
                from: selected.mailbox.id,
                uids,
                to: target.id,
                remove_source,
            })
            .await
        {
            Ok(copied) => {
                let source: Vec<u32> = copied.uids.iter().map(|(s, _)| *s).collect();
                let dest: Vec<u32> = copied.uids.iter().map(|(_, d)| *d).collect();
                let code = format!(
                    "[COPYUID {} {} {}]",
                    copied.uid_validity,
                    sequence::compact(&source),
                    sequence::compact(&dest)
                );
                if remove_source {
                    // RFC 6851: COPYUID comes untagged, before the EXPUNGEs.
                    let _ = write!(Text(&mut self.out), "* OK {code} Moved\r\n");
                    selected.remove_own(&source, &mut self.out);
                    ok("MOVE completed")
                } else {
                    ok(format!("{code} COPY completed"))
                }
            }
            Err(e) => store_failure(&e),
        }
    }
}
