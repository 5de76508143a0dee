//! Sequence sets (`1:4,7,9:*`) resolved against the selected mailbox, without ever expanding a
//! range number by number (a client may send `1:4294967295`).

use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};

fn value(v: &SeqOrUid, max: u32) -> u32 {
    match v {
        SeqOrUid::Value(n) => n.get(),
        SeqOrUid::Asterisk => max,
    }
}

/// The inclusive ranges of a set, with `*` standing for `max` (RFC 3501: `4:2` is `2:4`).
pub fn ranges(set: &SequenceSet, max: u32) -> impl Iterator<Item = (u32, u32)> + '_ {
    set.0.as_ref().iter().map(move |s| match s {
        Sequence::Single(v) => {
            let v = value(v, max);
            (v, v)
        }
        Sequence::Range(a, b) => {
            let (a, b) = (value(a, max), value(b, max));
            (a.min(b), a.max(b))
        }
    })
}

pub fn contains(set: &SequenceSet, n: u32, max: u32) -> bool {
    ranges(set, max).any(|(lo, hi)| lo <= n && n <= hi)
}

/// Whether every number the set names explicitly lies within 1..=max (for sequence numbers,
/// where RFC 3501 makes a number past the end an error).
pub fn within(set: &SequenceSet, max: u32) -> bool {
    ranges(set, max).all(|(lo, hi)| lo >= 1 && hi <= max)
}

/// `1:3,5` style text of sorted UIDs, for COPYUID and APPENDUID.
pub fn compact(uids: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end.wrapping_add(1) {
            i += 1;
            end = uids[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}:{end}")
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_lists_runs_as_ranges() {
        assert_eq!(compact(&[1, 2, 3, 5, 7, 8]), "1:3,5,7:8");
        assert_eq!(compact(&[4]), "4");
        assert_eq!(compact(&[]), "");
    }
}
