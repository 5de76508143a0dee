//! What a mailbox change means, whichever backend stores it: INBOX's spelling, how STORE
//! changes a flag list, and the limits on names. The backends differ only in their SQL.

use crate::FlagChange;

/// The longest mailbox name, in bytes, and the most levels one may have (IMAP CREATE checks
/// the same for a new name).
pub(crate) const MAX_NAME_BYTES: i64 = 255;
pub(crate) const MAX_NAME_LEVELS: i64 = 16;

pub(crate) fn is_inbox(name: &str) -> bool {
    name.eq_ignore_ascii_case("INBOX")
}

/// Flag lists are kept in the order given, without duplicates (system flags compare without
/// regard to case, as RFC 3501 says flags do).
pub(crate) fn apply_change(current: &[String], change: FlagChange, flags: &[String]) -> Vec<String> {
    let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    match change {
        FlagChange::Replace => {
            let mut out: Vec<String> = Vec::with_capacity(flags.len());
            for f in flags {
                if !out.iter().any(|o| same(o, f)) {
                    out.push(f.clone());
                }
            }
            out
        }
        FlagChange::Add => {
            let mut out = current.to_vec();
            for f in flags {
                if !out.iter().any(|o| same(o, f)) {
                    out.push(f.clone());
                }
            }
            out
        }
        FlagChange::Remove => current
            .iter()
            .filter(|c| !flags.iter().any(|f| same(c, f)))
            .cloned()
            .collect(),
    }
}
