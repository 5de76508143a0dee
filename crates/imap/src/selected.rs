//! The selected mailbox as one session sees it: the message sequence (sequence number = index
//! + 1), each message's flags, and the mod-sequence up to which it has heard of every change.
//!
//! Other sessions and SMTP delivery change the mailbox underneath; [`Selected::sync`] asks the
//! store what changed after `known_modseq` and tells the client (EXPUNGE, FETCH FLAGS, EXISTS)
//! at the moments RFC 3501 section 7 allows.

use std::collections::HashMap;
use std::fmt::Write as _;

use tokio::sync::watch;

use sealmail_store::{Mailbox, MessageFlags, Store, StoreError, StoredMessage};
use sealmail_types::MessageId;

use crate::wire;

#[derive(Debug, Clone)]
pub struct Entry {
    pub id: MessageId,
    pub uid: u32,
    pub size: u64,
    pub internal_date: i64,
    pub flags: Vec<String>,
    pub modseq: u64,
}

impl From<StoredMessage> for Entry {
    fn from(m: StoredMessage) -> Entry {
        Entry {
            id: m.id,
            uid: m.uid,
            size: m.size,
            internal_date: m.internal_date,
            flags: m.flags,
            modseq: m.modseq,
        }
    }
}

pub struct Selected {
    pub mailbox: Mailbox,
    pub read_only: bool,
    pub entries: Vec<Entry>,
    pub known_modseq: u64,
    /// Wakes when the mailbox changes (IDLE waits on it).
    pub watch: watch::Receiver<()>,
    /// Flag changes this session made and already reported, by UID, with their mod-sequence:
    /// sync does not report them a second time.
    own_changes: HashMap<u32, u64>,
}

impl Selected {
    pub async fn open(store: &dyn Store, mailbox: Mailbox, read_only: bool) -> Result<Selected, StoreError> {
        // Subscribe before reading, so that a change committed in between still wakes us.
        let mut watch = store.watch_mailbox(mailbox.id);
        watch.mark_unchanged();
        let snapshot = store.changes_since(mailbox.id, 0).await?;
        Ok(Selected {
            mailbox,
            read_only,
            entries: snapshot.changed.into_iter().map(Entry::from).collect(),
            known_modseq: snapshot.highest_modseq,
            watch,
            own_changes: HashMap::new(),
        })
    }

    pub fn exists(&self) -> u32 {
        self.entries.len() as u32
    }

    pub fn max_uid(&self) -> u32 {
        self.entries.last().map_or(0, |e| e.uid)
    }

    pub fn index_of_uid(&self, uid: u32) -> Option<usize> {
        self.entries.binary_search_by_key(&uid, |e| e.uid).ok()
    }

    /// Records flags this session set, and says whether they are news to the entry.
    pub fn apply_own_flags(&mut self, update: &MessageFlags) -> Option<usize> {
        let index = self.index_of_uid(update.uid)?;
        let entry = &mut self.entries[index];
        entry.flags.clone_from(&update.flags);
        if update.modseq > entry.modseq {
            entry.modseq = update.modseq;
            self.own_changes.insert(update.uid, update.modseq);
        }
        Some(index)
    }

    /// Removes messages this session expunged (or moved away) and reports each one.
    pub fn remove_own(&mut self, uids: &[u32], out: &mut Vec<u8>) {
        for uid in uids {
            if let Some(index) = self.index_of_uid(*uid) {
                self.entries.remove(index);
                let _ = write!(Text(out), "* {} EXPUNGE\r\n", index + 1);
            }
        }
    }

    /// Tells the client what changed since it last heard. With `allow_expunge` false (during
    /// FETCH, STORE and SEARCH, RFC 3501 7.4.1) nothing is reported while an expunge is
    /// pending, so sequence numbers never shift under a command that uses them.
    pub async fn sync(
        &mut self,
        store: &dyn Store,
        out: &mut Vec<u8>,
        allow_expunge: bool,
        condstore: bool,
    ) -> Result<(), StoreError> {
        self.watch.mark_unchanged();
        let changes = store.changes_since(self.mailbox.id, self.known_modseq).await?;
        if changes.highest_modseq <= self.known_modseq {
            return Ok(());
        }
        let expunged: Vec<u32> = changes
            .expunged
            .into_iter()
            .filter(|uid| self.index_of_uid(*uid).is_some())
            .collect();
        if !expunged.is_empty() && !allow_expunge {
            return Ok(());
        }
        self.remove_own(&expunged, out);
        let mut added = 0;
        for message in changes.changed {
            if message.uid > self.max_uid() {
                self.entries.push(Entry::from(message));
                added += 1;
                continue;
            }
            let Some(index) = self.index_of_uid(message.uid) else {
                continue;
            };
            let entry = &mut self.entries[index];
            let reported = self.own_changes.get(&message.uid) == Some(&message.modseq);
            let changed = entry.flags != message.flags;
            entry.flags = message.flags;
            entry.modseq = message.modseq;
            if changed && !reported {
                let _ = write!(Text(out), "* {} FETCH (UID {} FLAGS ", index + 1, entry.uid);
                wire::flag_list(out, &entry.flags);
                if condstore {
                    let _ = write!(Text(out), " MODSEQ ({})", entry.modseq);
                }
                out.extend_from_slice(b")\r\n");
            }
        }
        if added > 0 {
            let _ = write!(Text(out), "* {} EXISTS\r\n* 0 RECENT\r\n", self.entries.len());
        }
        self.own_changes.clear();
        self.known_modseq = changes.highest_modseq;
        Ok(())
    }
}

/// `write!` into a byte buffer.
pub struct Text<'a>(pub &'a mut Vec<u8>);

impl std::fmt::Write for Text<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}
