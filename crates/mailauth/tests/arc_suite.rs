//! The ARC validation suite (ValiMail, ../shared/testdata/arc-test-suite) against our ARC path:
//! each scenario's keys are served by the local DNS fixture; every message's chain validation
//! state must be the suite's `cv` (an empty cv means Fail), or be listed in
//! `EXPECTED_TO_DIFFER` with the reason.

use std::time::Duration;

use serde::Deserialize as _;
use serde_yaml::Value;

use sealmail_config::DnsConfig;
use sealmail_dns::Dns;
use sealmail_mailauth::Authenticator;
use sealmail_testkit::dns::DnsServer;
use sealmail_testkit::suite::Tally;

/// Cases where mail-auth 0.13.3 gives another state than the suite, with the reason
/// (measured 2026-11-29: 164 of 175 pass, with our rule that rsa-sha1 never passes). The test fails if a listed case starts passing.
const EXPECTED_TO_DIFFER: &[(&str, &[&str])] = &[
    (
        "a missing a= tag in ARC headers is accepted",
        &["ams_fields_a_na", "as_fields_a_na"],
    ),
    (
        "lenient tag-list parsing: an invalid tag key, duplicate tags, upper-case keys, a bad \
         separator, and an AMS h= that includes ARC-Seal are accepted",
        &[
            "as_format_inv_tag_key",
            "as_format_tags_dup",
            "as_format_tags_key_case",
            "as_format_tags_sc",
            "ams_fields_h_includes_as",
        ],
    ),
    (
        "stricter than the suite: an AMS without c= or with an empty h= is refused",
        &["ams_fields_c_na", "ams_fields_h_empty"],
    ),
    (
        "a chain with a missing ARC-Message-Signature is reported as none instead of fail",
        &["ams_struct_missing", "cv_fail_i1_ams_na"],
    ),
];

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// The suite repeats a few test ids within a document, which YAML mappings (and serde_yaml)
/// refuse: later ones get a "#2", "#3" suffix so every case runs.
fn unique_test_ids(raw: &str) -> String {
    let mut seen = std::collections::HashMap::<String, usize>::new();
    let mut out = String::with_capacity(raw.len());
    for line in raw.split_inclusive('\n') {
        if line.starts_with("---") {
            seen.clear();
        }
        let is_id = line.starts_with("  ")
            && !line.starts_with("   ")
            && line.trim_end().ends_with(':')
            && !line.trim().contains(' ');
        if is_id {
            let id = line.trim().trim_end_matches(':').to_string();
            let n = seen.entry(id.clone()).or_insert(0);
            *n += 1;
            if *n > 1 {
                out.push_str(&format!("  {id}#{n}:\n"));
                continue;
            }
        }
        out.push_str(line);
    }
    out
}

#[tokio::test]
async fn arc_validation_suite_through_our_arc_path() -> Result<(), String> {
    let testdata = sealmail_testkit::testdata();
    let path = format!("{testdata}/arc-test-suite/arc-draft-validation-tests.yml");
    let raw = unique_test_ids(&std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?);
    let server = DnsServer::start().await?;
    let config = DnsConfig {
        nameservers: vec![server.addr()],
        timeout: Duration::from_millis(300),
        attempts: 1,
        cache_size: 0,
        ..DnsConfig::default()
    };
    let mut tally = Tally::default();
    let mut total = 0;
    for document in serde_yaml::Deserializer::from_str(&raw) {
        let scenario = Value::deserialize(document).map_err(|e| e.to_string())?;
        server.clear();
        if let Value::Mapping(records) = &scenario["txt-records"] {
            for (name, value) in records {
                server.add_txt(&text(name), &text(value).replace('\n', ""));
            }
        }
        let Value::Mapping(tests) = &scenario["tests"] else {
            continue;
        };
        for (id, case) in tests {
            let id = text(id);
            total += 1;
            let dns = Dns::new(&config).map_err(|e| e.to_string())?;
            let authenticator = Authenticator::new(&dns, "mx.sealmail.test");
            let message = text(&case["message"]).replace("\r\n", "\n").replace('\n', "\r\n");
            let got = authenticator.arc_chain(message.as_bytes()).await;
            let expected = match text(&case["cv"]).to_ascii_lowercase().as_str() {
                "" => "fail".to_string(),
                other => other.to_string(),
            };
            let listed = EXPECTED_TO_DIFFER
                .iter()
                .find(|(_, cases)| cases.contains(&id.as_str()))
                .map(|(why, _)| *why);
            tally.case(&id, got == expected, listed, || {
                format!("expected {expected}, got {got}")
            });
        }
    }
    tally.check("ARC suite");
    assert_eq!(tally.passed + tally.differ, total);
    assert!(total >= 150, "only {total} cases found");
    Ok(())
}
