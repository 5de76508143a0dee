//! Wakes the IMAP sessions watching a mailbox after a commit that changed it: called by the
//! SQLite writer after each commit, and by PostgreSQL's listener for every node's commits.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

use sealmail_types::MailboxId;

/// Wakes the sessions watching a mailbox after a commit that changed it.
#[derive(Default)]
pub(crate) struct Watchers(Mutex<HashMap<i64, watch::Sender<()>>>);

impl Watchers {
    pub(crate) fn subscribe(&self, mailbox: MailboxId) -> watch::Receiver<()> {
        let mut map = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry(mailbox.0)
            .or_insert_with(|| watch::channel(()).0)
            .subscribe()
    }

    pub(crate) fn notify(&self, mailboxes: &[i64]) {
        if mailboxes.is_empty() {
            return;
        }
        let mut map = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for id in mailboxes {
            if let Some(sender) = map.get(id) {
                if sender.receiver_count() == 0 {
                    map.remove(id);
                } else {
                    sender.send_replace(());
                }
            }
        }
    }
}

impl Watchers {
    /// Wakes every watcher (after a lost connection to the notifications, when any mailbox
    /// may have changed unseen).
    pub(crate) fn notify_all(&self) {
        let mut map = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        map.retain(|_, sender| sender.receiver_count() > 0);
        for sender in map.values() {
            sender.send_replace(());
        }
    }
}
