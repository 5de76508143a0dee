//! Sequence sets (RFC 3501 section 9, `sequence-set`: `1:4,7,9:*`) resolved against the
//! selected mailbox, without ever expanding a range number by number (a client may send
//! `1:4294967295`) and without letting repetition cost: `1:*,1:*,...` merges into one range.

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

/// The set's ranges sorted and merged (overlapping and adjacent ones joined): never more
/// ranges than the set has, and usually far fewer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged(Vec<(u32, u32)>);

impl Merged {
    pub fn new(set: &SequenceSet, max: u32) -> Merged {
        let mut all: Vec<(u32, u32)> = ranges(set, max).collect();
        all.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(all.len().min(64));
        for (lo, hi) in all {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        merged.shrink_to_fit();
        Merged(merged)
    }

    /// Binary search: O(log ranges) per number.
    pub fn contains(&self, n: u32) -> bool {
        let after = self.0.partition_point(|&(lo, _)| lo <= n);
        after > 0 && self.0[after - 1].1 >= n
    }

    pub fn ranges(&self) -> &[(u32, u32)] {
        &self.0
    }
}

pub fn contains(set: &SequenceSet, n: u32, max: u32) -> bool {
    ranges(set, max).any(|(lo, hi)| lo <= n && n <= hi)
}

/// Whether every number the set names explicitly lies within 1..=max (for sequence numbers,
/// where RFC 3501 makes a number past the end an error).
pub fn within(set: &SequenceSet, max: u32) -> bool {
    ranges(set, max).all(|(lo, hi)| lo >= 1 && hi <= max)
}

/// Sorted, disjoint ranges written as a sequence set (`1:3,7`).
pub fn ranges_text(ranges: &[(u32, u32)]) -> String {
    let parts: Vec<String> = ranges
        .iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}:{hi}")
            }
        })
        .collect();
    parts.join(",")
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

    fn set(text: &str) -> SequenceSet {
        match SequenceSet::try_from(text) {
            Ok(set) => set,
            Err(e) => panic!("{text}: {e:?}"),
        }
    }

    #[test]
    fn repeated_and_overlapping_ranges_merge_into_few() {
        let repeated = vec!["1:*"; 10_000].join(",");
        let merged = Merged::new(&set(&repeated), 100_000);
        assert_eq!(merged.ranges(), [(1, 100_000)]);
        assert!(merged.0.capacity() <= 1, "kept {} slots", merged.0.capacity());
        let merged = Merged::new(&set("9:7,1,2,3,5:6,20,4294967295:4294967295"), 20);
        assert_eq!(
            merged.ranges(),
            [(1, 3), (5, 9), (20, 20), (4294967295, 4294967295)]
        );
        for (n, inside) in [
            (0, false),
            (1, true),
            (3, true),
            (4, false),
            (7, true),
            (10, false),
            (20, true),
            (21, false),
            (u32::MAX, true),
        ] {
            assert_eq!(merged.contains(n), inside, "{n}");
        }
    }

    #[test]
    fn compact_lists_runs_as_ranges() {
        assert_eq!(compact(&[1, 2, 3, 5, 7, 8]), "1:3,5,7:8");
        assert_eq!(compact(&[4]), "4");
        assert_eq!(compact(&[]), "");
    }
}
