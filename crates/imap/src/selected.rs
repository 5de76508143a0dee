//! The selected mailbox as one session sees it: the message sequence (sequence number = index
//! + 1), each message's flags, and the mod-sequence up to which it has heard of every change.
//!
//! Other sessions and SMTP delivery change the mailbox underneath; [`Selected::sync`] asks the
//! store what changed after `known_modseq` and tells the client (EXPUNGE, FETCH FLAGS, EXISTS,
//! RECENT) at the moments RFC 3501 section 7 allows.
//!
//! It also owns two things RFC 3501 asks of a selected mailbox: which messages are `\Recent`
//! in this session (claimed from the store, so each new message is recent in exactly one
//! session, see [`Store::claim_recent`]), and the keywords the client was told of in `FLAGS`:
//! a keyword is never shown in a FETCH before a `* FLAGS` that lists it.

use std::collections::{HashMap, HashSet};
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

/// The system flags a client may set (RFC 3501 2.3.2; `\Recent` is the server's).
pub const SYSTEM_FLAGS: &str = "\\Answered \\Flagged \\Deleted \\Seen \\Draft";

/// Most keywords a mailbox lists in `* FLAGS`. Past it STORE refuses new keywords, and
/// PERMANENTFLAGS no longer offers `\*` (RFC 3501 7.1); a keyword beyond it that arrived by
/// APPEND is not shown, so a FETCH never shows one the client was not told of, and the FLAGS
/// line and the work to keep it stay bounded.
pub const MAX_KEYWORDS: usize = 256;

pub struct Selected {
    pub mailbox: Mailbox,
    pub read_only: bool,
    /// RFC 7162 QRESYNC is enabled: expunges are reported as `* VANISHED`.
    pub qresync: bool,
    /// IMAP4rev2 is enabled: no `\Recent` and no `* n RECENT` (RFC 9051 removed them).
    pub rev2: bool,
    pub entries: Vec<Entry>,
    /// UIDs that are `\Recent` in this session.
    recent: HashSet<u32>,
    /// The keywords of the last `* FLAGS` the client got, in that order (at most
    /// [`MAX_KEYWORDS`]), and the same in lower case for lookups.
    keywords: Vec<String>,
    known_keywords: HashSet<String>,
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
        let entries: Vec<Entry> = snapshot.changed.into_iter().map(Entry::from).collect();
        let max_uid = entries.last().map_or(0, |e| e.uid);
        // EXAMINE does not change \Recent (RFC 3501 6.3.2): it sees what nobody claimed yet.
        let mark = store.claim_recent(mailbox.id, max_uid, !read_only).await?;
        let recent = entries.iter().map(|e| e.uid).filter(|&uid| uid > mark).collect();
        let mut selected = Selected {
            mailbox,
            read_only,
            qresync: false,
            rev2: false,
            entries,
            recent,
            keywords: Vec::new(),
            known_keywords: HashSet::new(),
            known_modseq: snapshot.highest_modseq,
            watch,
            own_changes: HashMap::new(),
        };
        let all: Vec<String> = selected.entries.iter().flat_map(|e| e.flags.clone()).collect();
        selected.learn_keywords(&all);
        Ok(selected)
    }

    /// Adds the keywords among `flags` the client was not told of (up to [`MAX_KEYWORDS`]);
    /// true when there were any. Costs one hash lookup per flag.
    fn learn_keywords(&mut self, flags: &[String]) -> bool {
        let mut learned = false;
        for flag in flags {
            if flag.starts_with('\\') || self.keywords.len() >= MAX_KEYWORDS {
                continue;
            }
            if self.known_keywords.insert(flag.to_ascii_lowercase()) {
                self.keywords.push(flag.clone());
                learned = true;
            }
        }
        learned
    }

    /// Whether setting `flags` stays within [`MAX_KEYWORDS`] keywords.
    pub fn keywords_fit(&self, flags: &[String]) -> bool {
        let mut new: HashSet<String> = HashSet::new();
        for flag in flags.iter().filter(|f| !f.starts_with('\\')) {
            let lower = flag.to_ascii_lowercase();
            if !self.known_keywords.contains(&lower) {
                new.insert(lower);
            }
        }
        self.keywords.len() + new.len() <= MAX_KEYWORDS
    }

    /// `* FLAGS` and `* OK [PERMANENTFLAGS]` with the keywords in use (SELECT, and again
    /// whenever a new keyword appears).
    pub fn write_flags(&self, out: &mut Vec<u8>) {
        let mut extra = String::new();
        for keyword in &self.keywords {
            extra.push(' ');
            extra.push_str(keyword);
        }
        let mut text = Text(out);
        let _ = write!(text, "* FLAGS ({SYSTEM_FLAGS}{extra})\r\n");
        if self.read_only {
            let _ = write!(text, "* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n");
        } else {
            let more = if self.keywords.len() < MAX_KEYWORDS {
                " \\*"
            } else {
                ""
            };
            let _ = write!(
                text,
                "* OK [PERMANENTFLAGS ({SYSTEM_FLAGS}{extra}{more})] Flags permitted\r\n"
            );
        }
    }

    /// Sends a new `* FLAGS` if `flags` (of messages that just changed or arrived) hold a
    /// keyword the client was not told of. Call before writing any FETCH that shows them.
    pub fn announce_new_keywords<'f>(
        &mut self,
        out: &mut Vec<u8>,
        flags: impl IntoIterator<Item = &'f [String]>,
    ) {
        let mut learned = false;
        for list in flags {
            learned |= self.learn_keywords(list);
        }
        if learned {
            // Keywords no longer used stay listed: a client may still hold them.
            self.write_flags(out);
        }
    }

    /// Messages `\Recent` in this session.
    pub fn recent_count(&self) -> usize {
        self.recent.len()
    }

    pub fn is_recent(&self, uid: u32) -> bool {
        !self.rev2 && self.recent.contains(&uid)
    }

    /// A message's flags as the client sees them: `\Recent` first when it is recent here.
    pub fn write_flag_list(&self, out: &mut Vec<u8>, uid: u32, flags: &[String]) {
        wire::flag_list_of(out, &self.shown_flags(flags), self.is_recent(uid));
    }

    /// The flags a client may see: system flags and the keywords it was told of.
    pub fn shown_flags(&self, flags: &[String]) -> Vec<String> {
        flags
            .iter()
            .filter(|f| f.starts_with('\\') || self.known_keywords.contains(&f.to_ascii_lowercase()))
            .cloned()
            .collect()
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
        let mut vanished = Vec::new();
        for uid in uids {
            if let Some(index) = self.index_of_uid(*uid) {
                self.entries.remove(index);
                self.recent.remove(uid);
                if self.qresync {
                    vanished.push(*uid);
                } else {
                    let _ = write!(Text(out), "* {} EXPUNGE\r\n", index + 1);
                }
            }
        }
        if !vanished.is_empty() {
            // RFC 7162 3.2.10: with QRESYNC, expunges are told by UID.
            vanished.sort_unstable();
            let _ = write!(
                Text(out),
                "* VANISHED {}\r\n",
                crate::sequence::compact(&vanished)
            );
        }
    }

    /// `* VANISHED (EARLIER)` for the UIDs within `ranges` (sorted, disjoint; clipped to
    /// 1..=`last`, since UID 0 does not exist) that no message here has, if there are any.
    /// Returns the clipped ranges.
    pub fn write_vanished_earlier(
        &self,
        ranges: Vec<(u32, u32)>,
        last: u32,
        out: &mut Vec<u8>,
    ) -> Vec<(u32, u32)> {
        let ranges: Vec<(u32, u32)> = ranges
            .into_iter()
            .filter(|&(lo, _)| lo >= 1 && lo <= last)
            .map(|(lo, hi)| (lo, hi.min(last)))
            .collect();
        let vanished = self.missing_uids(&ranges);
        if !vanished.is_empty() {
            let _ = write!(
                Text(out),
                "* VANISHED (EARLIER) {}\r\n",
                crate::sequence::ranges_text(&vanished)
            );
        }
        ranges
    }

    /// The UIDs within `ranges` (sorted, disjoint) that no message here has, as ranges: what
    /// QRESYNC reports as `VANISHED (EARLIER)`. It may name UIDs the client never knew, which
    /// RFC 7162 3.2.10 allows, and it needs no expunge history: always complete.
    pub fn missing_uids(&self, ranges: &[(u32, u32)]) -> Vec<(u32, u32)> {
        let mut missing = Vec::new();
        for &(lo, hi) in ranges {
            let mut next = Some(lo);
            let start = self.entries.partition_point(|e| e.uid < lo);
            for entry in &self.entries[start..] {
                let Some(from) = next else { break };
                if entry.uid > hi {
                    break;
                }
                if entry.uid > from {
                    missing.push((from, entry.uid - 1));
                }
                next = entry.uid.checked_add(1);
            }
            if let Some(from) = next
                && from <= hi
            {
                missing.push((from, hi));
            }
        }
        missing
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
        // Flag changes are written after any new `* FLAGS` they need.
        let mut fetches = Vec::new();
        let max_before = self.max_uid();
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
                fetches.push(index);
            }
        }
        if added > 0 {
            let max_uid = self.max_uid();
            let mark = store
                .claim_recent(self.mailbox.id, max_uid, !self.read_only)
                .await?;
            self.recent.extend(
                self.entries
                    .iter()
                    .map(|e| e.uid)
                    .filter(|&uid| uid > max_before && uid > mark),
            );
        }
        // Only the messages that changed or arrived can bring a new keyword.
        let arrived = self.entries.len() - added;
        let changed: Vec<Vec<String>> = fetches
            .iter()
            .map(|&i| self.entries[i].flags.clone())
            .chain(self.entries[arrived..].iter().map(|e| e.flags.clone()))
            .collect();
        self.announce_new_keywords(out, changed.iter().map(Vec::as_slice));
        for index in fetches {
            let entry = &self.entries[index];
            let _ = write!(Text(out), "* {} FETCH (UID {} FLAGS ", index + 1, entry.uid);
            self.write_flag_list(out, entry.uid, &entry.flags);
            if condstore {
                let _ = write!(Text(out), " MODSEQ ({})", entry.modseq);
            }
            out.extend_from_slice(b")\r\n");
        }
        if added > 0 {
            let _ = write!(Text(out), "* {} EXISTS\r\n", self.entries.len());
            if !self.rev2 {
                let _ = write!(Text(out), "* {} RECENT\r\n", self.recent.len());
            }
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
