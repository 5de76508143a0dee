//! The RFC 7208 SPF test suite (openspf, ../shared/testdata/spf-rfc7208) against our SPF path:
//! each scenario's zone is served by the local DNS fixture, and `Authenticator` asks it through
//! the same resolver set-up the server uses. Every case must pass, or be listed in `EXPECTED_TO_DIFFER`
//! with the reason.

use std::time::Duration;

use sealmail_config::DnsConfig;
use sealmail_dns::Dns;
use sealmail_mailauth::{Authenticator, spf_result_name};
use sealmail_testkit::dns::{DnsServer, Rec};
use sealmail_testkit::suite::Tally;
use serde::Deserialize as _;
use serde_yaml::Value;

/// Cases where our SPF evaluator (`sealmail_mailauth::spf`) does not give the suite's result,
/// each with the reason it is a deliberate decision. Empty: all 203 cases pass (140 did with
/// mail-auth 0.13.3's lenient SPF). The test fails if a listed case starts passing, so the
/// list only ever shrinks.
const EXPECTED_TO_DIFFER: &[(&str, &[&str])] = &[];

fn listed_as_differing(id: &str) -> Option<&'static str> {
    EXPECTED_TO_DIFFER
        .iter()
        .find(|(_, cases)| cases.contains(&id))
        .map(|(why, _)| *why)
}

/// The shared test data sits beside the project (`../shared/testdata`); SEALMAIL_TESTDATA
/// points elsewhere.
fn suite() -> String {
    let testdata = sealmail_testkit::testdata();
    format!("{testdata}/spf-rfc7208/rfc7208-tests.yml")
}

fn strings(value: &Value) -> Vec<Vec<u8>> {
    match value {
        Value::Sequence(items) => items.iter().flat_map(strings).collect(),
        Value::String(s) => vec![s.as_bytes().to_vec()],
        other => vec![
            serde_yaml::to_string(other)
                .unwrap_or_default()
                .trim()
                .as_bytes()
                .to_vec(),
        ],
    }
}

/// A TXT record's strings as DNS can carry them: a record of no strings at all (the suite's
/// `null-text` has one, noting it is illegal) goes out as one empty string, since a TXT RDATA
/// is one or more character-strings (RFC 1035 3.3.14) and a zone file cannot say otherwise.
fn wire_txt(value: &Value) -> Vec<Vec<u8>> {
    let strings = strings(value);
    if strings.is_empty() {
        vec![Vec::new()]
    } else {
        strings
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// Loads a scenario's zone into the DNS server (pyspf's driver conventions: SPF records stand
/// in for TXT where a name has no TXT; unknown names starting "error." time out).
fn load_zone(server: &DnsServer, zone: &Value) {
    server.clear();
    server.timeout_unknown_with_prefix("error.");
    let Value::Mapping(names) = zone else { return };
    for (name, records) in names {
        let name = text(name);
        let Value::Sequence(records) = records else {
            continue;
        };
        let has_txt = records
            .iter()
            .any(|r| matches!(r, Value::Mapping(m) if m.contains_key("TXT")));
        let mut spf = Vec::new();
        // A name listed with only NONE records still exists (NODATA, not NXDOMAIN): give it a
        // record of a type SPF never asks for.
        server.add(&name, Rec::Tlsa(3, 1, 1, vec![0; 32]));
        for record in records {
            match record {
                Value::String(s) if s == "TIMEOUT" => server.timeout(&name),
                Value::Mapping(map) => {
                    for (kind, value) in map {
                        let kind = text(kind);
                        if text(value) == "NONE" {
                            continue;
                        }
                        match kind.as_str() {
                            "TXT" => server.add(&name, Rec::Txt(wire_txt(value))),
                            "SPF" => spf.push(wire_txt(value)),
                            "A" => {
                                if let Ok(ip) = text(value).parse() {
                                    server.add(&name, Rec::A(ip));
                                }
                            }
                            "AAAA" => {
                                if let Ok(ip) = text(value).parse() {
                                    server.add(&name, Rec::Aaaa(ip));
                                }
                            }
                            "MX" => {
                                if let Value::Sequence(mx) = value
                                    && let [preference, host] = mx.as_slice()
                                {
                                    let preference = preference.as_u64().unwrap_or(0) as u16;
                                    server.add(&name, Rec::Mx(preference, text(host)));
                                }
                            }
                            "PTR" => server.add(&name, Rec::Ptr(text(value))),
                            "CNAME" => server.add(&name, Rec::Cname(text(value))),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if !has_txt {
            for record in spf {
                server.add(&name, Rec::Txt(record));
            }
        }
    }
}

#[tokio::test]
async fn rfc7208_suite_passes_through_our_spf_path() -> Result<(), String> {
    let raw = std::fs::read_to_string(suite()).map_err(|e| format!("{}: {e}", suite()))?;
    let server = DnsServer::start().await?;
    let config = DnsConfig {
        nameservers: vec![server.addr()],
        timeout: Duration::from_millis(200),
        attempts: 1,
        // Every scenario has its own zone: no answer may outlive it.
        cache_size: 0,
        ..DnsConfig::default()
    };
    let mut tally = Tally::default();
    for document in serde_yaml::Deserializer::from_str(&raw) {
        let scenario = Value::deserialize(document).map_err(|e| e.to_string())?;
        let description = text(&scenario["description"]);
        load_zone(&server, &scenario["zonedata"]);
        let Value::Mapping(tests) = &scenario["tests"] else {
            continue;
        };
        for (id, case) in tests {
            let id = text(id);
            let dns = Dns::new(&config).map_err(|e| e.to_string())?;
            let authenticator = Authenticator::new(&dns, "localhost");
            let ip = text(&case["host"])
                .parse()
                .map_err(|e| format!("{id}: host: {e}"))?;
            let helo = text(&case["helo"]);
            let mailfrom = text(&case["mailfrom"]);
            let output = if mailfrom.is_empty() {
                authenticator.spf_helo(ip, &helo).await
            } else {
                authenticator.spf_mail_from(ip, &helo, &mailfrom).await
            };
            let got = spf_result_name(output.result());
            let expected: Vec<String> = match &case["result"] {
                Value::Sequence(list) => list.iter().map(text).collect(),
                other => vec![text(other)],
            };
            let mut ok = expected.iter().any(|e| e == got);
            if ok
                && got == "fail"
                && let Some(explanation) = case.get("explanation").map(text)
                && explanation != "DEFAULT"
                && output.explanation() != Some(explanation.as_str())
            {
                ok = false;
            }
            tally.case(&id, ok, listed_as_differing(&id), || {
                format!(
                    "[{description}] expected {expected:?}, got {got} (explanation {:?})",
                    output.explanation()
                )
            });
        }
    }
    tally.check("RFC 7208 suite");
    assert_eq!(tally.passed + tally.differ, 203, "every case of the suite ran");
    Ok(())
}
