//! The proofs in `sealmail_types::proof` are only as good as the places that make them. Rust
//! cannot restrict a public constructor to one other crate, so this test does: outside tests,
//! `TlsActive::from_session` is called only in `net` (after its handshake completes) and
//! `Authenticated::verified` only in `identity` (after it verified credentials).

use std::path::{Path, PathBuf};

const MAKERS: &[(&str, &str)] = &[
    ("TlsActive::from_session", "net"),
    ("Authenticated::verified", "identity"),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Production code of a source file: what comes before its unit-test module.
fn production_part(text: &str) -> &str {
    match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => text,
    }
}

#[test]
fn each_proof_is_made_only_where_its_condition_is_established() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut makers_seen = vec![0usize; MAKERS.len()];
    let mut wrong = Vec::new();
    let Ok(entries) = std::fs::read_dir(&crates) else {
        panic!("cannot list {}", crates.display());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "types" || name == "testkit" {
            continue;
        }
        let mut files = Vec::new();
        rust_files(&entry.path().join("src"), &mut files);
        let sources: Vec<(PathBuf, String)> = files
            .into_iter()
            .filter_map(|file| std::fs::read_to_string(&file).ok().map(|text| (file, text)))
            .collect();
        // Modules compiled only for tests (`#[cfg(test)] mod fakes;`) may make proofs.
        let mut test_only = Vec::new();
        for (_, text) in &sources {
            for piece in text.split("#[cfg(test)]\nmod ").skip(1) {
                if let Some((name, _)) = piece.split_once(';') {
                    test_only.push(format!("{name}.rs"));
                }
            }
        }
        for (file, text) in &sources {
            if file
                .file_name()
                .is_some_and(|f| test_only.iter().any(|t| f.to_string_lossy() == *t))
            {
                continue;
            }
            for (i, (maker, owner)) in MAKERS.iter().enumerate() {
                let calls = production_part(text).matches(maker).count();
                if calls == 0 {
                    continue;
                }
                if name == *owner {
                    makers_seen[i] += calls;
                } else {
                    wrong.push(format!("{} calls {maker}", file.display()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "proofs made outside their owner: {wrong:?}");
    // The scan must have found the real makers, or it scanned nothing.
    for (i, (maker, owner)) in MAKERS.iter().enumerate() {
        assert!(
            makers_seen[i] > 0,
            "{maker} not found in {owner}: the scan is broken"
        );
    }
}
