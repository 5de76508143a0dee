//! The proofs in `sealmail_types::proof` are only as good as the places that make them. Rust
//! cannot restrict a public constructor to one other crate, so this test does: in production
//! code, `TlsActive::from_completed_handshake` is named only in `net` (after its handshake
//! completes) and `Authenticated::from_verified_credentials` only in `identity` (after it
//! verified credentials). The makers have names found nowhere else, and any mention counts (a
//! call, a path passed to `map`, an alias), so renaming the type on import does not hide one.
//!
//! Production code is every `.rs` file under a crate's `src/` with its `#[cfg(test)]` items
//! removed (inline modules by their braces; `#[cfg(test)] mod x;` removes the file of `x`
//! and everything below it). `types` is scanned too (only `proof.rs` may name the makers,
//! where they are defined), and so is `testkit`, whose session fakes are behind its `fakes`
//! feature, which only dev-dependencies turn on: they are listed here by path.

use std::path::{Path, PathBuf};

const MAKERS: &[(&str, &str)] = &[
    ("from_completed_handshake", "net"),
    ("from_verified_credentials", "identity"),
    ("with_verified_credential", "identity"),
];

/// Files allowed to name every maker: the definitions, and test-only fakes outside `src/`
/// test modules (feature-gated, see the module comment).
const ALLOWED_FILES: &[&str] = &["types/src/proof.rs", "testkit/src/fakes.rs"];

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

/// The end (exclusive) of the item starting at `from`: a `;` before any `{`, or the brace
/// that closes the first `{`. Braces in strings or comments could fool it; the production
/// code scanned here has none that are unbalanced, and a wrong cut leaves more text, not less.
fn item_end(text: &str, from: usize) -> usize {
    let mut depth = 0usize;
    for (i, c) in text[from..].char_indices() {
        match c {
            ';' if depth == 0 => return from + i + 1,
            '{' => depth += 1,
            '}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return from + i + 1;
                }
            }
            _ => {}
        }
    }
    text.len()
}

/// The production text of a file, and the names of modules it declares test-only.
fn production_text(text: &str) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut test_modules = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = at + "#[cfg(test)]".len();
        let end = item_end(rest, item);
        let declared = rest[item..end].trim();
        if let Some(name) = declared.strip_prefix("mod ").and_then(|d| d.strip_suffix(';')) {
            test_modules.push(name.trim().to_string());
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    (out, test_modules)
}

/// Where the files of module `name`, declared in `file`, live.
fn module_paths(file: &Path, name: &str) -> Vec<PathBuf> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let base = if matches!(stem, "lib" | "main" | "mod") {
        dir.to_path_buf()
    } else {
        dir.join(stem)
    };
    vec![base.join(format!("{name}.rs")), base.join(name)]
}

#[test]
fn each_proof_is_made_only_where_its_condition_is_established() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let Ok(crates) = crates.canonicalize() else {
        panic!("cannot resolve the crates folder");
    };
    let mut makers_seen = vec![0usize; MAKERS.len()];
    let mut wrong = Vec::new();
    let Ok(entries) = std::fs::read_dir(&crates) else {
        panic!("cannot list {}", crates.display());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut files = Vec::new();
        rust_files(&entry.path().join("src"), &mut files);
        let mut sources = Vec::new();
        let mut test_only: Vec<PathBuf> = Vec::new();
        for file in files {
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            let (production, modules) = production_text(&text);
            for module in modules {
                test_only.extend(module_paths(&file, &module));
            }
            sources.push((file, production));
        }
        for (file, text) in &sources {
            if test_only.iter().any(|t| file.starts_with(t)) {
                continue;
            }
            let relative = file.strip_prefix(&crates).unwrap_or(file);
            if ALLOWED_FILES.iter().any(|a| relative == Path::new(a)) {
                continue;
            }
            for (i, (maker, owner)) in MAKERS.iter().enumerate() {
                let mentions = text.matches(maker).count();
                if mentions == 0 {
                    continue;
                }
                if name == *owner {
                    makers_seen[i] += mentions;
                } else {
                    wrong.push(format!("{} names {maker}", relative.display()));
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

#[test]
fn test_items_are_cut_by_their_braces_and_test_modules_by_path() {
    let text = "fn a() {}\n#[cfg(test)]\nmod fakes;\nfn b() { x(); }\n#[cfg(test)]\nmod tests {\n    fn t() { { y(); } }\n}\nfn c() {}\n";
    let (production, modules) = production_text(text);
    assert!(production.contains("fn a()") && production.contains("fn b()") && production.contains("fn c()"));
    assert!(!production.contains("y();"));
    assert_eq!(modules, vec!["fakes".to_string()]);
    assert_eq!(
        module_paths(Path::new("/c/smtp/src/lib.rs"), "fakes")[0],
        PathBuf::from("/c/smtp/src/fakes.rs")
    );
    assert_eq!(
        module_paths(Path::new("/c/imap/src/session.rs"), "dialog_tests")[0],
        PathBuf::from("/c/imap/src/session/dialog_tests.rs")
    );
}
