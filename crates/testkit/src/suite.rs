//! The tally of a third-party test suite run through our code, where some cases are listed as
//! expected to differ (with the reason): unlisted failures fail the test, and so do listed cases
//! that started to pass (the list may only shrink).

use std::collections::BTreeMap;

#[derive(Default)]
pub struct Tally {
    pub passed: usize,
    pub differ: usize,
    failures: BTreeMap<String, String>,
    stale: Vec<String>,
}

impl Tally {
    /// One case: `ok` whether our result is the expected one, `listed` why it is expected to
    /// differ (if it is listed), `failure` the text for an unlisted failure.
    pub fn case(&mut self, id: &str, ok: bool, listed: Option<&str>, failure: impl FnOnce() -> String) {
        match (ok, listed) {
            (true, None) => self.passed += 1,
            (true, Some(_)) => {
                self.passed += 1;
                self.stale.push(id.to_string());
            }
            (false, Some(why)) => {
                self.differ += 1;
                println!("{id}: differs as expected ({why})");
            }
            (false, None) => {
                self.failures.insert(id.to_string(), failure());
            }
        }
    }

    /// Prints the summary and panics on unlisted failures or listed cases that now pass.
    pub fn check(&self, suite: &str) {
        println!(
            "{suite}: {} passed, {} listed as differing",
            self.passed, self.differ
        );
        assert!(
            self.failures.is_empty(),
            "{} cases failed:\n{}",
            self.failures.len(),
            self.failures
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(
            self.stale.is_empty(),
            "these now pass; remove them from EXPECTED_TO_DIFFER: {:?}",
            self.stale
        );
    }
}
