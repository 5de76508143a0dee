//! `sealmail check DOMAIN` against domains published on the local DNS test server: a domain
//! with every record right, and deliberately weak ones, each giving its documented finding
//! and fix; the JSON of docs/CHECK-JSON.md and `--fail-under`.

mod common;

use std::process::Command;

use sealmail_testkit::dns::{DnsServer, Rec};
use sealmail_testkit::{TestResult, ctx};

/// A DKIM `p=` value: the base64 SubjectPublicKeyInfo of a new RSA key of `bits`, made by
/// OpenSSL.
fn dkim_key(dir: &std::path::Path, bits: u32) -> TestResult<String> {
    let key = dir.join(format!("rsa{bits}.pem"));
    let made = ctx(
        Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt"])
            .arg(format!("rsa_keygen_bits:{bits}"))
            .arg("-out")
            .arg(&key)
            .output(),
        "openssl genpkey",
    )?;
    if !made.status.success() {
        return Err(String::from_utf8_lossy(&made.stderr).into_owned());
    }
    let public = ctx(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(&key)
            .output(),
        "openssl pkey",
    )?;
    use base64::Engine;
    Ok(base64::engine::general_purpose::STANDARD.encode(public.stdout))
}

/// Publishes the zone `sealmail domain dns` printed (MX, TXT, SRV lines; CNAMEs become A
/// records of 127.0.0.1, as the test DNS server does not chase them): the DKIM selectors in it.
fn publish_zone(dns: &DnsServer, zone: &str) -> TestResult<Vec<String>> {
    let mut selectors = Vec::new();
    for line in zone
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
    {
        let fields: Vec<&str> = line.splitn(4, '\t').collect();
        let [name, "IN", kind, value] = fields.as_slice() else {
            return Err(format!("not a zone line: {line}"));
        };
        let name = name.trim_end_matches('.');
        match *kind {
            "MX" => {
                let (preference, host) = value.split_once(' ').ok_or("MX")?;
                dns.add_mx(
                    name,
                    ctx(preference.parse(), "MX preference")?,
                    host.trim_end_matches('.'),
                );
            }
            "TXT" => {
                // One or more quoted strings, perhaps in parentheses: their contents joined.
                let text: String = value.split('"').skip(1).step_by(2).collect();
                dns.add_txt(name, &text);
                if let Some(selector) = name.strip_suffix("._domainkey.good.test") {
                    selectors.push(selector.to_string());
                }
            }
            "SRV" => {
                let parts: Vec<&str> = value.split(' ').collect();
                let [priority, weight, port, target] = parts.as_slice() else {
                    return Err(format!("SRV: {value}"));
                };
                dns.add(
                    name,
                    Rec::Srv(
                        ctx(priority.parse(), "priority")?,
                        ctx(weight.parse(), "weight")?,
                        ctx(port.parse(), "port")?,
                        target.trim_end_matches('.').to_string(),
                    ),
                );
            }
            "CNAME" => dns.add_a(name, std::net::Ipv4Addr::LOCALHOST),
            // Published in a signed zone: the test DNS server sets the AD bit for it.
            "TLSA" => {
                let parts: Vec<&str> = value.split(' ').collect();
                let [usage, selector, matching, data] = parts.as_slice() else {
                    return Err(format!("TLSA: {value}"));
                };
                dns.add(
                    name,
                    Rec::Tlsa(
                        ctx(usage.parse(), "usage")?,
                        ctx(selector.parse(), "selector")?,
                        ctx(matching.parse(), "matching type")?,
                        ctx(hex::decode(data), "TLSA data")?,
                    ),
                );
                dns.secure(name);
            }
            other => return Err(format!("unexpected record type {other}")),
        }
    }
    Ok(selectors)
}

use common::{check, finding, json_check};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealmail_domain_with_every_record_published_grades_a() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let dns = DnsServer::start().await?;
    // sealmail serves good.test's mail (MX, submission and IMAP with implicit TLS and with
    // STARTTLS) and its MTA-STS policy.
    let (https, mx) = (common::free_addr()?, common::free_addr()?);
    let (submissions, imaps) = (common::free_addr()?, common::free_addr()?);
    let (submission, imap) = (common::free_addr()?, common::free_addr()?);
    let config = common::config_with_users(
        dir.path(),
        "good.test",
        &["alice"],
        &[
            ("https", https, "implicit"),
            ("mx", mx, "starttls"),
            ("submission", submissions, "implicit"),
            ("imap", imaps, "implicit"),
            ("submission", submission, "starttls"),
            ("imap", imap, "starttls"),
        ],
        "[mta_sts]\nmode = \"enforce\"\nmax_age_secs = 604800\n",
    )?;
    let ca = sealmail_testkit::pki::TestCa::new("check test CA")?;
    let ca_file = common::install_issued(dir.path(), &ca, &["mail.good.test", "mta-sts.good.test"])?;
    let _server = common::serve(dir.path(), &config).await?;
    // Exactly the records `sealmail domain dns` tells the admin to publish.
    let (code, zone, err) = common::admin(dir.path(), &config, &["domain", "dns", "good.test"])?;
    assert_eq!(code, 0, "{err}");
    let selectors = publish_zone(&dns, &zone)?;
    assert_eq!(selectors.len(), 2, "an RSA and an Ed25519 key: {zone}");
    dns.add_a("mail.good.test", std::net::Ipv4Addr::LOCALHOST);
    // CAA is not in that zone: which CA issues is the admin's choice.
    dns.add(
        "good.test",
        Rec::Caa(0, "issue".into(), "check-ca.example".into()),
    );
    // The zone is signed: the MX answer is DNSSEC-validated, so DANE applies.
    dns.secure("good.test");
    // A message signed with the domain's keys, as sealmail signs outgoing mail.
    let body = "From: alice@good.test\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nhi\r\n";
    let signer = ctx(
        sealmail_mailauth::signing::Signer::load(&dir.path().join("data/dkim"), &["good.test".to_string()]),
        "load the DKIM keys",
    )?;
    let mut signed = ctx(signer.sign("good.test", body.as_bytes()), "sign")?;
    assert!(!signed.is_empty(), "no DKIM keys for good.test");
    signed.extend_from_slice(body.as_bytes());
    let message = dir.path().join("message.eml");
    ctx(std::fs::write(&message, &signed), "write the message")?;
    let message_arg = message.to_string_lossy().into_owned();
    let port = format!(
        "https={},smtp={},submissions={},imaps={},submission={},imap={}",
        https.port(),
        mx.port(),
        submissions.port(),
        imaps.port(),
        submission.port(),
        imap.port()
    );
    let ca_arg = ca_file.to_string_lossy().into_owned();
    // No --host: the submission and IMAP servers are those of the SRV records.
    let mut args = vec![
        "good.test",
        "--port",
        port.as_str(),
        "--ca-file",
        ca_arg.as_str(),
        "--message",
        message_arg.as_str(),
    ];
    for selector in &selectors {
        args.extend(["--dkim-selector", selector.as_str()]);
    }
    let report = json_check(dir.path(), &dns, &args)?;
    assert_eq!(report["schema_version"], 1);
    assert_eq!(report["domain"], "good.test");
    assert_eq!(report["grade"], "A", "{report:#}");
    let checks = report["checks"].as_array().ok_or("no checks")?;
    assert!(checks.iter().all(|c| c["status"] == "PASS"), "{report:#}");
    // The server checks ran: the MX over STARTTLS, submission and IMAP with implicit TLS and
    // with STARTTLS (no AUTH before TLS on submission, LOGINDISABLED on IMAP).
    for (id, port) in [
        ("starttls", mx),
        ("tls", mx),
        ("certificate", mx),
        ("tls-legacy", mx),
        ("auth-before-tls", mx),
        ("banner", mx),
        ("tls", submissions),
        ("certificate", imaps),
        ("tls-legacy", imaps),
        ("starttls", submission),
        ("auth-before-tls", submission),
        ("tls-legacy", submission),
        ("banner", imap),
        ("starttls", imap),
        ("auth-before-tls", imap),
        ("certificate", imap),
    ] {
        finding(&report, &format!("{id}:mail.good.test:{}", port.port()))?;
    }
    for id in [
        "mx",
        "spf",
        "spf-lookups",
        "spf-helo:mail.good.test",
        "dmarc",
        "dmarc-reports",
        "mta-sts-record",
        "mta-sts-policy",
        "mta-sts-mx",
        "mta-sts-max-age",
        "tls-rpt",
        "srv-submission",
        "srv-imap",
        "caa",
        "dkim-message",
    ] {
        finding(&report, id)?;
    }
    let dane = finding(&report, "dane:mail.good.test")?;
    assert!(
        dane["detail"].as_str().is_some_and(|d| d
            .starts_with("DNSSEC-validated TLSA records at _25._tcp.mail.good.test (3 1 1)")
            && d.ends_with("matches (DANE-EE match)")),
        "{dane}"
    );
    assert_eq!(
        finding(&report, "caa")?["detail"],
        "CAA at good.test: certificates only from check-ca.example"
    );
    let details: Vec<&str> = selectors
        .iter()
        .map(|s| finding(&report, &format!("dkim:{s}")).map(|c| c["detail"].as_str().unwrap_or_default()))
        .collect::<Result<_, _>>()?;
    assert!(details.contains(&"RSA key of 2048 bits"), "{details:?}");
    assert!(details.contains(&"Ed25519 key (RFC 8463)"), "{details:?}");
    assert_eq!(
        finding(&report, "spf-lookups")?["detail"],
        "1 of at most 10 DNS lookups"
    );
    for check in checks {
        for key in ["id", "pillar", "status", "detail", "fix"] {
            assert!(check.get(key).is_some(), "{key} in {check}");
        }
    }
    // The same as text, grouped by pillar; no colour when not on a terminal; --fail-under A holds.
    let (code, text, err) = check(
        dir.path(),
        &dns,
        &[
            "good.test",
            "--fail-under",
            "A",
            "--port",
            &port,
            "--ca-file",
            &ca_arg,
        ],
    )?;
    assert_eq!(code, 0, "{err}");
    assert!(text.starts_with("Mail security of good.test\n"), "{text}");
    assert!(
        text.contains("\nAuthentication\n  PASS spf: `v=spf1 mx -all` ends in -all"),
        "{text}"
    );
    assert!(text.contains("grade A"), "{text}");
    assert!(!text.contains('\x1b'));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_records_give_their_findings_and_fixes() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let dns = DnsServer::start().await?;
    // +all, DMARC p=none at pct=50 without reports, a 1024-bit DKIM key, no TLS-RPT, no SRV.
    dns.add_mx("weak.test", 10, "mx.weak.test");
    dns.add_txt("weak.test", "v=spf1 mx +all");
    dns.add_txt("_dmarc.weak.test", "v=DMARC1; p=none; pct=50");
    let small = dkim_key(dir.path(), 1024)?;
    dns.add_txt("old._domainkey.weak.test", &format!("v=DKIM1; p={small}"));
    let report = json_check(dir.path(), &dns, &["weak.test", "--dkim-selector", "old"])?;
    let spf = finding(&report, "spf")?;
    assert_eq!(spf["status"], "FAIL", "{spf}");
    assert_eq!(spf["pillar"], "authentication");
    assert!(spf["fix"].as_str().is_some_and(|f| f.contains("-all")), "{spf}");
    let dmarc = finding(&report, "dmarc")?;
    assert_eq!(dmarc["status"], "WARN");
    assert!(
        dmarc["fix"].as_str().is_some_and(|f| f.contains("p=reject")),
        "{dmarc}"
    );
    assert_eq!(finding(&report, "dmarc-pct")?["status"], "WARN");
    assert_eq!(finding(&report, "dmarc-reports")?["status"], "WARN");
    let dkim = finding(&report, "dkim:old")?;
    assert_eq!(dkim["status"], "FAIL");
    assert_eq!(
        dkim["detail"],
        "RSA key of 1024 bits: under 2048 bits, signatures can be forged"
    );
    assert_eq!(finding(&report, "tls-rpt")?["status"], "WARN");
    assert_eq!(finding(&report, "mta-sts-record")?["status"], "WARN");
    assert_eq!(finding(&report, "srv-imap")?["status"], "WARN");
    // The mail host has no SPF record of its own (its HELO name).
    assert_eq!(finding(&report, "spf-helo:mx.weak.test")?["status"], "WARN");
    let caa = finding(&report, "caa")?;
    assert_eq!(caa["status"], "WARN", "{caa}");
    assert!(
        caa["fix"]
            .as_str()
            .is_some_and(|f| f.contains("`weak.test. IN CAA 0 issue \"CA-DOMAIN\"`")),
        "{caa}"
    );
    assert_ne!(report["grade"], "A");

    // A sample message: its signatures' keys are checked (the 1024-bit one of weak.test's
    // subdomain, which DMARC aligns; not that of an unrelated signer), and a message without
    // any signature is a finding.
    dns.add_txt("new._domainkey.news.weak.test", &format!("v=DKIM1; p={small}"));
    let signed = dir.path().join("signed.eml");
    ctx(
        std::fs::write(
            &signed,
            "DKIM-Signature: v=1; a=rsa-sha256; d=news.weak.test; s=new; h=from;\r\n bh=AAAA; b=AAAA\r\nDKIM-Signature: v=1; a=rsa-sha256; d=esp.example; s=esp; h=from; bh=AAAA; b=AAAA\r\nFrom: a@news.weak.test\r\n\r\nbody\r\n",
        ),
        "write",
    )?;
    let unsigned = dir.path().join("unsigned.eml");
    ctx(
        std::fs::write(&unsigned, "From: a@weak.test\r\nSubject: x\r\n\r\nbody\r\n"),
        "write",
    )?;
    let report = json_check(
        dir.path(),
        &dns,
        &["weak.test", "--message", &signed.to_string_lossy()],
    )?;
    let signer = finding(&report, "dkim:new@news.weak.test")?;
    assert_eq!(signer["status"], "FAIL", "{signer}");
    // Its signature is made up: it does not verify, which receivers take as unsigned.
    let made_up = finding(&report, "dkim-message")?;
    assert_eq!(made_up["status"], "FAIL", "{made_up}");
    assert!(
        made_up["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("no DKIM signature of the sample message by weak.test verifies")),
        "{made_up}"
    );
    assert!(finding(&report, "dkim:esp@esp.example").is_err(), "{report:#}");
    let report = json_check(
        dir.path(),
        &dns,
        &["weak.test", "--message", &unsigned.to_string_lossy()],
    )?;
    // A signature whose key cannot be looked up is not a failed signature: the check could
    // not be made.
    dns.servfail("flaky._domainkey.weak.test");
    let flaky = dir.path().join("flaky.eml");
    // The right body hash (simple canonicalization), so that the key is looked up.
    let body_hash = {
        use base64::Engine;
        use sha2::Digest;
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(b"body\r\n"))
    };
    ctx(
        std::fs::write(
            &flaky,
            format!(
                "DKIM-Signature: v=1; a=rsa-sha256; d=weak.test; s=flaky; h=from; bh={body_hash}; b=AAAA\r\nFrom: a@weak.test\r\n\r\nbody\r\n"
            ),
        ),
        "write",
    )?;
    let flaky_report = json_check(
        dir.path(),
        &dns,
        &["weak.test", "--message", &flaky.to_string_lossy()],
    )?;
    let unknown = finding(&flaky_report, "dkim-message")?;
    assert_eq!(unknown["status"], "WARN", "{unknown}");
    assert_eq!(
        unknown["detail"],
        "the key of an aligned signature of the sample message could not be looked up (temperror)"
    );
    // A subdomain without a DMARC record of its own gets its parent's subdomain policy.
    dns.add_mx("sub.strict.test", 10, "mx.weak.test");
    dns.add_txt(
        "_dmarc.strict.test",
        "v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@strict.test",
    );
    let inherited = json_check(dir.path(), &dns, &["sub.strict.test"])?;
    assert_eq!(
        finding(&inherited, "dmarc")?["detail"],
        "`v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@strict.test`: sp=quarantine (failing mail goes to spam) (inherited from _dmarc.strict.test: its subdomain policy applies)"
    );
    assert_eq!(finding(&inherited, "dmarc-reports")?["status"], "PASS");
    let unsigned_finding = finding(&report, "dkim-message")?;
    assert_eq!(unsigned_finding["status"], "FAIL", "{unsigned_finding}");
    assert!(
        unsigned_finding["fix"]
            .as_str()
            .is_some_and(|f| f.contains("sign outgoing mail of weak.test")),
        "{unsigned_finding}"
    );
    // Below --fail-under: exit status 1, and why.
    let (code, _, err) = check(dir.path(), &dns, &["weak.test", "--fail-under", "B"])?;
    assert_eq!(code, 1);
    assert!(err.contains("is below --fail-under B"), "{err}");
    let (code, _, err) = check(dir.path(), &dns, &["weak.test", "--fail-under", "E"])?;
    assert_eq!(code, 2, "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spf_past_ten_lookups_missing_records_and_failed_lookups_are_findings() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let dns = DnsServer::start().await?;
    // Eleven includes, each a record of its own.
    let includes: Vec<String> = (1..=11).map(|n| format!("include:_spf{n}.many.test")).collect();
    dns.add_txt("many.test", &format!("v=spf1 {} -all", includes.join(" ")));
    for n in 1..=11 {
        dns.add_txt(&format!("_spf{n}.many.test"), "v=spf1 ip4:192.0.2.1 -all");
    }
    dns.add_mx("many.test", 0, ".");
    let report = json_check(dir.path(), &dns, &["many.test"])?;
    let lookups = finding(&report, "spf-lookups")?;
    assert_eq!(lookups["status"], "FAIL", "{lookups}");
    assert!(
        lookups["detail"]
            .as_str()
            .is_some_and(|d| d.contains("11 counted")),
        "{lookups}"
    );
    // Includes are followed: four of three lookups each pass the limit, though the record
    // itself has four terms; an include loop ends at the limit.
    let chain: Vec<String> = (1..=4).map(|n| format!("include:_s{n}.chain.test")).collect();
    dns.add_txt("chain.test", &format!("v=spf1 {} -all", chain.join(" ")));
    for n in 1..=4 {
        dns.add_txt(
            &format!("_s{n}.chain.test"),
            "v=spf1 a mx a:relay.chain.test -all",
        );
    }
    let report = json_check(dir.path(), &dns, &["chain.test"])?;
    let lookups = finding(&report, "spf-lookups")?;
    assert_eq!(lookups["status"], "FAIL", "{lookups}");
    dns.add_txt("loop.test", "v=spf1 include:loop2.test -all");
    dns.add_txt("loop2.test", "v=spf1 include:loop.test -all");
    let report = json_check(dir.path(), &dns, &["loop.test"])?;
    assert_eq!(finding(&report, "spf-lookups")?["status"], "FAIL");
    // What a redirect or an include leads to is judged too; so is the first `all`.
    dns.add_txt("open.test", "v=spf1 +all");
    dns.add_txt("redirect.test", "v=spf1 redirect=open.test");
    let spf = json_check(dir.path(), &dns, &["redirect.test"])?;
    let spf = finding(&spf, "spf")?;
    assert_eq!(spf["status"], "FAIL", "{spf}");
    assert!(
        spf["detail"]
            .as_str()
            .is_some_and(|d| d.contains("through the redirect to open.test")),
        "{spf}"
    );
    dns.add_txt("incl.test", "v=spf1 include:open.test -all");
    let report = json_check(dir.path(), &dns, &["incl.test"])?;
    assert_eq!(finding(&report, "spf")?["status"], "PASS");
    assert_eq!(finding(&report, "spf-include")?["status"], "FAIL");
    dns.add_txt("first.test", "v=spf1 +all -all");
    let report = json_check(dir.path(), &dns, &["first.test"])?;
    assert_eq!(finding(&report, "spf")?["status"], "FAIL");

    // A null MX takes no mail: no MTA-STS or client records are asked of it.
    let report = json_check(dir.path(), &dns, &["many.test"])?;
    assert_eq!(finding(&report, "mx")?["status"], "INFO");
    assert!(finding(&report, "tls-rpt").is_err());
    // Two SPF records, no DMARC, and a DMARC lookup that fails: findings, not a crash.
    dns.add_txt("two.test", "v=spf1 -all");
    dns.add_txt("two.test", "v=spf1 mx -all");
    dns.servfail("_dmarc.two.test");
    let report = json_check(dir.path(), &dns, &["two.test"])?;
    let spf = finding(&report, "spf")?;
    assert_eq!(spf["status"], "FAIL");
    assert!(
        spf["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("2 SPF records")),
        "{spf}"
    );
    let dmarc = finding(&report, "dmarc")?;
    assert_eq!(dmarc["status"], "WARN");
    assert!(
        dmarc["detail"]
            .as_str()
            .is_some_and(|d| d.contains("could not be looked up")),
        "{dmarc}"
    );
    assert_eq!(finding(&report, "mx")?["status"], "FAIL");
    let report = json_check(dir.path(), &dns, &["nothing.test"])?;
    assert_eq!(finding(&report, "dmarc")?["status"], "FAIL");
    assert!(
        finding(&report, "dmarc")?["fix"]
            .as_str()
            .is_some_and(|f| f.contains("_dmarc.nothing.test. TXT \"v=DMARC1; p=reject")),
        "{report:#}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mta_sts_policy_is_fetched_and_must_cover_every_mx_host() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let dns = DnsServer::start().await?;
    let https = common::free_addr()?;
    let config = common::config_with_users(
        dir.path(),
        "example.test",
        &["alice"],
        &[("https", https, "implicit")],
        "[mta_sts]\nmode = \"enforce\"\nmx = [\"mail.example.test\"]\nmax_age_secs = 604800\n",
    )?;
    let ca = sealmail_testkit::pki::TestCa::new("check test CA")?;
    let ca_file = common::install_issued(dir.path(), &ca, &["mail.example.test", "mta-sts.example.test"])?;
    let _server = common::serve(dir.path(), &config).await?;
    dns.add_mx("example.test", 10, "mail.example.test");
    dns.add_a("mta-sts.example.test", std::net::Ipv4Addr::LOCALHOST);
    dns.add_txt("_mta-sts.example.test", "v=STSv1; id=20261205");
    let port = format!("https={}", https.port());
    let ca_arg = ca_file.to_string_lossy().into_owned();
    let with_ca = [
        "example.test",
        "--port",
        port.as_str(),
        "--ca-file",
        ca_arg.as_str(),
    ];

    let report = json_check(dir.path(), &dns, &with_ca)?;
    assert_eq!(
        finding(&report, "mta-sts-policy")?["status"],
        "PASS",
        "{report:#}"
    );
    assert_eq!(finding(&report, "mta-sts-policy")?["detail"], "mode: enforce");
    assert_eq!(finding(&report, "mta-sts-mx")?["status"], "PASS");
    assert_eq!(
        finding(&report, "mta-sts-max-age")?["detail"],
        "max_age: 604800 s"
    );

    // A second MX host the policy does not name: senders that enforce it cannot use it.
    dns.add_mx("example.test", 20, "backup.other.test");
    let report = json_check(dir.path(), &dns, &with_ca)?;
    let mx = finding(&report, "mta-sts-mx")?;
    assert_eq!(mx["status"], "FAIL", "{mx}");
    assert_eq!(mx["fix"], "add `mx: backup.other.test` to the policy");

    // Without our test CA the policy's certificate is not trusted: the policy cannot be used.
    let report = json_check(dir.path(), &dns, &["example.test", "--port", port.as_str()])?;
    let policy = finding(&report, "mta-sts-policy")?;
    assert_eq!(policy["status"], "FAIL", "{policy}");
    assert!(
        policy["detail"]
            .as_str()
            .is_some_and(|d| d.contains("certificate is not valid or not trusted")),
        "{policy}"
    );
    // A port name that is not one is refused, not ignored.
    let (code, _, err) = check(dir.path(), &dns, &["example.test", "--port", "pop3=110"])?;
    assert_eq!(code, 2, "{err}");
    Ok(())
}

/// An OpenSSL test server (`openssl s_server`) on `port` with `cert` and `key` and `extra`
/// options; killed when dropped.
struct OpenSslServer(std::process::Child);

impl OpenSslServer {
    async fn start(
        port: u16,
        cert: &std::path::Path,
        key: &std::path::Path,
        extra: &[&str],
    ) -> TestResult<OpenSslServer> {
        let child = ctx(
            Command::new("openssl")
                .args(["s_server", "-quiet", "-accept"])
                .arg(format!("127.0.0.1:{port}"))
                .arg("-cert")
                .arg(cert)
                .arg("-key")
                .arg(key)
                .args(extra)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn(),
            "openssl s_server",
        )?;
        let server = OpenSslServer(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(server);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Err(format!("openssl s_server did not listen on {port}"))
    }
}

impl Drop for OpenSslServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A hostile SMTP server on `ip:port`: it accepts connections and then either says nothing
/// (`flood` false) or sends bytes without end and without a line break (`flood` true).
async fn hostile_smtp(ip: [u8; 4], port: u16, flood: bool) -> TestResult {
    use tokio::io::AsyncWriteExt;
    let listener = ctx(
        tokio::net::TcpListener::bind(std::net::SocketAddr::from((ip, port))).await,
        "bind",
    )?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if flood {
                    let junk = [b'A'; 4096];
                    while stream.write_all(&junk).await.is_ok() {}
                } else {
                    // Hold the connection open until the peer gives up.
                    let mut sink = [0u8; 64];
                    use tokio::io::AsyncReadExt;
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                }
            });
        }
    });
    Ok(())
}

/// A plaintext SMTP server that names its software and version, offers AUTH and no
/// STARTTLS: what a forgotten old MX looks like. Serves until the test ends.
async fn plaintext_smtp() -> TestResult<u16> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = ctx(tokio::net::TcpListener::bind("127.0.0.1:0").await, "bind")?;
    let port = ctx(listener.local_addr(), "addr")?.port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write
                    .write_all(b"220 old.weak.test ESMTP Postfix 2.11.3 (Ubuntu)\r\n")
                    .await;
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply: &[u8] = if line.to_ascii_uppercase().starts_with("EHLO") {
                        b"250-old.weak.test\r\n250-PIPELINING\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n"
                    } else {
                        b"502 5.5.2 no\r\n"
                    };
                    if write.write_all(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_servers_give_their_findings_and_fixes() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let dns = DnsServer::start().await?;
    let ca = sealmail_testkit::pki::TestCa::new("weak servers CA")?;
    let ca_file = dir.path().join("ca.pem");
    ca.write(&ca_file)?;
    // The MX: plaintext only, AUTH before TLS, a version in its greeting.
    let smtp = plaintext_smtp().await?;
    dns.add_mx("weak.test", 10, "old.weak.test");
    dns.add_a("old.weak.test", std::net::Ipv4Addr::LOCALHOST);
    // Two hostile MX hosts on the same port of other loopback addresses: one never greets,
    // one sends an endless line.
    hostile_smtp([127, 0, 0, 2], smtp, false).await?;
    hostile_smtp([127, 0, 0, 3], smtp, true).await?;
    dns.add_mx("weak.test", 20, "silent.weak.test");
    dns.add_a("silent.weak.test", std::net::Ipv4Addr::new(127, 0, 0, 2));
    dns.add_mx("weak.test", 30, "flood.weak.test");
    dns.add_a("flood.weak.test", std::net::Ipv4Addr::new(127, 0, 0, 3));
    // legacy.weak.test: implicit TLS on "submissions" with TLS 1.0 only (Debian's OpenSSL at
    // security level 0), and on "imaps" a certificate for another name.
    dns.add_a("legacy.weak.test", std::net::Ipv4Addr::LOCALHOST);
    let right = ca.issue(&["legacy.weak.test"], &dir.path().join("right"), "cert")?;
    let wrong = ca.issue(&["elsewhere.test"], &dir.path().join("wrong"), "cert")?;
    let (tls1_port, wrong_port) = (common::free_addr()?.port(), common::free_addr()?.port());
    let (closed1, closed2) = (common::free_addr()?.port(), common::free_addr()?.port());
    let _tls1 = OpenSslServer::start(
        tls1_port,
        &right.cert,
        &right.key,
        &["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"],
    )
    .await?;
    let _wrong = OpenSslServer::start(wrong_port, &wrong.cert, &wrong.key, &[]).await?;
    // expired.weak.test, named by an SRV record with its own port: an expired certificate.
    let expired = ca.issue_expired(&["expired.weak.test"], &dir.path().join("expired"), "cert")?;
    let expired_port = common::free_addr()?.port();
    let _expired = OpenSslServer::start(expired_port, &expired.cert, &expired.key, &[]).await?;
    dns.add_a("expired.weak.test", std::net::Ipv4Addr::LOCALHOST);
    dns.add(
        "_submissions._tcp.weak.test",
        Rec::Srv(0, 1, expired_port, "expired.weak.test".into()),
    );
    let ports =
        format!("smtp={smtp},submissions={tls1_port},imaps={wrong_port},submission={closed1},imap={closed2}");
    let ca_arg = ca_file.to_string_lossy().into_owned();
    let report = json_check(
        dir.path(),
        &dns,
        &[
            "weak.test",
            "--port",
            &ports,
            "--ca-file",
            &ca_arg,
            "--host",
            "legacy.weak.test",
        ],
    )?;
    let mx = |id: &str| finding(&report, &format!("{id}:old.weak.test:{smtp}"));
    let starttls = mx("starttls")?;
    assert_eq!(starttls["status"], "FAIL", "{starttls}");
    assert_eq!(starttls["pillar"], "encryption");
    assert!(
        starttls["fix"].as_str().is_some_and(|f| f.contains("STARTTLS")),
        "{starttls}"
    );
    assert_eq!(mx("auth-before-tls")?["status"], "FAIL");
    let banner = mx("banner")?;
    assert_eq!(banner["status"], "WARN", "{banner}");
    assert!(
        banner["detail"]
            .as_str()
            .is_some_and(|d| d.contains("postfix 2.11.3")),
        "{banner}"
    );

    // Bounded however a server behaves: a step that gets no answer in time, and a line past
    // the limit, are findings.
    let silent = finding(&report, &format!("protocol:silent.weak.test:{smtp}"))?;
    assert_eq!(silent["status"], "FAIL", "{silent}");
    assert_eq!(
        silent["detail"],
        "the greeting: no complete answer in time (15 s a step, 60 s a connection)"
    );
    let flood = finding(&report, &format!("protocol:flood.weak.test:{smtp}"))?;
    assert_eq!(
        flood["detail"], "the greeting: a line longer than 2048 bytes",
        "{flood}"
    );

    let legacy = |id: &str, port: u16| finding(&report, &format!("{id}:legacy.weak.test:{port}"));
    let old = legacy("tls-legacy", tls1_port)?;
    assert_eq!(old["status"], "FAIL", "{old}");
    assert_eq!(old["detail"], "accepts TLS 1.0 (deprecated by RFC 8996)");
    assert!(
        old["fix"].as_str().is_some_and(|f| f.contains("TLSv1.2")),
        "{old}"
    );
    assert_eq!(legacy("tls", tls1_port)?["status"], "FAIL");
    let name = legacy("certificate", wrong_port)?;
    assert_eq!(name["status"], "FAIL", "{name}");
    assert_eq!(
        name["detail"],
        "the certificate is not valid for legacy.weak.test"
    );
    assert_eq!(legacy("tls", wrong_port)?["status"], "PASS");
    assert_eq!(legacy("tls-legacy", wrong_port)?["status"], "PASS");
    assert_eq!(legacy("reachable", closed1)?["status"], "INFO");
    let gone = finding(&report, &format!("certificate:expired.weak.test:{expired_port}"))?;
    assert_eq!(gone["status"], "FAIL", "{gone}");
    assert_eq!(gone["detail"], "the certificate has expired");
    assert!(
        gone["fix"].as_str().is_some_and(|f| f.starts_with("renew it")),
        "{gone}"
    );
    assert_eq!(
        finding(&report, &format!("tls:expired.weak.test:{expired_port}"))?["status"],
        "PASS"
    );
    // Without our CA the certificate is from an unknown authority (the chain is checked first).
    let report = json_check(
        dir.path(),
        &dns,
        &["weak.test", "--port", &ports, "--host", "legacy.weak.test"],
    )?;
    let unknown = finding(&report, &format!("certificate:legacy.weak.test:{wrong_port}"))?;
    assert_eq!(
        unknown["detail"],
        "the certificate is not from a trusted authority (self-signed, or the chain is incomplete)"
    );
    Ok(())
}

/// DANE: each MX host's TLSA records at `_25._tcp.HOST`, judged by whether the resolver vouches
/// for them (the AD bit) and against the certificate the host presents on the SMTP port; every
/// record that should change comes with the exact record to publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tlsa_records_are_checked_against_the_certificate_each_mx_presents() -> TestResult {
    use rustls_pki_types::pem::PemObject;
    use sha2::Digest;
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let dns = DnsServer::start().await?;
    let mx = common::free_addr()?;
    let config =
        common::config_with_users(dir.path(), "dane.test", &["alice"], &[("mx", mx, "starttls")], "")?;
    let ca = sealmail_testkit::pki::TestCa::new("DANE test CA")?;
    let hosts = [
        "matching.dane.test",
        "wrong.dane.test",
        "unsigned.dane.test",
        "unusable.dane.test",
        "absent.dane.test",
        "broken.dane.test",
    ];
    let ca_file = common::install_issued(dir.path(), &ca, &hosts)?;
    let _server = common::serve(dir.path(), &config).await?;
    // The SHA-256 of the served certificate's key: the data of a `3 1 1` record.
    let leaf = ctx(
        rustls_pki_types::CertificateDer::from_pem_file(dir.path().join("tls/0.pem")),
        "the served certificate",
    )?;
    let (_, parsed) = ctx(x509_parser::parse_x509_certificate(&leaf), "parse it")?;
    let digest = sha2::Sha256::digest(parsed.tbs_certificate.subject_pki.raw).to_vec();
    for (preference, host) in hosts.iter().enumerate() {
        dns.add_mx("dane.test", preference as u16, host);
        dns.add_a(host, std::net::Ipv4Addr::LOCALHOST);
    }
    dns.secure("dane.test");
    let tlsa = |host: &str, record: Rec, signed: bool| {
        let name = format!("_25._tcp.{host}");
        dns.add(&name, record);
        if signed {
            dns.secure(&name);
        }
    };
    tlsa("matching.dane.test", Rec::Tlsa(3, 1, 1, digest.clone()), true);
    tlsa("wrong.dane.test", Rec::Tlsa(3, 1, 1, vec![7; 32]), true);
    tlsa("unsigned.dane.test", Rec::Tlsa(3, 1, 1, digest.clone()), false);
    // PKIX-EE (1) is not for SMTP (RFC 7672 3.1.3).
    tlsa("unusable.dane.test", Rec::Tlsa(1, 1, 1, digest.clone()), true);
    dns.servfail("_25._tcp.broken.dane.test");
    let ports = format!("smtp={}", mx.port());
    let report = json_check(
        dir.path(),
        &dns,
        &[
            "dane.test",
            "--port",
            &ports,
            "--ca-file",
            &ca_file.to_string_lossy(),
        ],
    )?;
    let dane = |host: &str| finding(&report, &format!("dane:{host}"));
    let record = format!("3 1 1 {}", hex::encode(&digest));
    let fix_publishes = |check: &serde_json::Value, host: &str| {
        check["fix"]
            .as_str()
            .is_some_and(|f| f.contains(&format!("`_25._tcp.{host}. IN TLSA {record}`")))
    };

    let matching = dane("matching.dane.test")?;
    assert_eq!(matching["status"], "PASS", "{matching}");
    assert_eq!(matching["pillar"], "authentication");
    let wrong = dane("wrong.dane.test")?;
    assert_eq!(wrong["status"], "FAIL", "{wrong}");
    assert!(
        wrong["detail"]
            .as_str()
            .is_some_and(|d| d
                .contains("does not match its TLSA records (no TLSA record matches the certificate chain)")),
        "{wrong}"
    );
    assert!(fix_publishes(wrong, "wrong.dane.test"), "{wrong}");
    let unsigned = dane("unsigned.dane.test")?;
    assert_eq!(unsigned["status"], "WARN", "{unsigned}");
    assert!(
        unsigned["detail"]
            .as_str()
            .is_some_and(|d| d.contains("did not say they are DNSSEC-validated")
                && d.ends_with("(they would match: DANE-EE match)")),
        "{unsigned}"
    );
    let unusable = dane("unusable.dane.test")?;
    assert_eq!(unusable["status"], "FAIL", "{unusable}");
    assert!(fix_publishes(unusable, "unusable.dane.test"), "{unusable}");
    let absent = dane("absent.dane.test")?;
    assert_eq!(absent["status"], "WARN", "{absent}");
    assert!(fix_publishes(absent, "absent.dane.test"), "{absent}");
    let broken = dane("broken.dane.test")?;
    assert_eq!(broken["status"], "FAIL", "{broken}");
    assert!(
        broken["detail"]
            .as_str()
            .is_some_and(|d| d.contains("failed (Server Failure)")),
        "{broken}"
    );
    // The same matching host named by an MX answer DNSSEC did not vouch for: senders do not
    // look up its TLSA records, so its records pass nothing (RFC 7672 2.2.1).
    dns.add_mx("unsigned-mx.test", 10, "matching.dane.test");
    let report = json_check(
        dir.path(),
        &dns,
        &[
            "unsigned-mx.test",
            "--port",
            &ports,
            "--ca-file",
            &ca_file.to_string_lossy(),
        ],
    )?;
    let unvouched = finding(&report, "dane:matching.dane.test")?;
    assert_eq!(unvouched["status"], "WARN", "{unvouched}");
    assert!(
        unvouched["detail"].as_str().is_some_and(|d| d.starts_with(
            "the MX records of unsigned-mx.test are not DNSSEC-validated, so senders do not use DANE"
        )),
        "{unvouched}"
    );
    assert!(
        unvouched["fix"]
            .as_str()
            .is_some_and(|f| f.starts_with("sign the zone of unsigned-mx.test")),
        "{unvouched}"
    );
    Ok(())
}

/// testssl.sh's JSON findings by id, for one server (`--ip 127.0.0.1 HOST:PORT`, `-p -f -S`:
/// protocols, forward secrecy, the certificate; `--nodns none`: it asks no DNS server).
async fn testssl(
    dir: &std::path::Path,
    host: &str,
    port: u16,
    ca_file: &str,
) -> TestResult<serde_json::Map<String, serde_json::Value>> {
    let program = ["testssl", "testssl.sh"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok())
        .ok_or("testssl.sh is not installed (Debian package testssl.sh; scripts/test.sh installs it)")?;
    let json = dir.join(format!("testssl-{host}-{port}.json"));
    let run = tokio::process::Command::new(program)
        .args(["--quiet", "--color", "0", "--warnings", "off", "--nodns", "none"])
        .args(["-p", "-f", "-S", "--add-ca", ca_file, "--jsonfile"])
        .arg(&json)
        .args(["--ip", "127.0.0.1", &format!("{host}:{port}")])
        .current_dir(dir)
        .output();
    let output = ctx(
        tokio::time::timeout(std::time::Duration::from_secs(300), run).await,
        "testssl took over 5 minutes",
    )?;
    ctx(output, "testssl")?;
    let findings: Vec<serde_json::Value> = ctx(
        serde_json::from_slice(&ctx(std::fs::read(&json), "testssl's JSON file")?),
        "testssl's JSON",
    )?;
    let mut by_id = serde_json::Map::new();
    for finding in findings {
        if let Some(id) = finding["id"].as_str() {
            by_id.insert(id.to_string(), finding["finding"].clone());
        }
    }
    Ok(by_id)
}

/// Where `sealmail check` and testssl.sh disagree about one server's TLS: the versions
/// accepted (TLS 1.0 and 1.1 probed raw by us; 1.2 and 1.3 through rustls, which takes the
/// highest), and the certificate (trusted chain, expired, key size).
fn disagreements(
    report: &serde_json::Value,
    host: &str,
    port: u16,
    theirs: &serde_json::Map<String, serde_json::Value>,
) -> TestResult<Vec<String>> {
    let text = |id: &str| theirs.get(id).and_then(|v| v.as_str()).unwrap_or("").to_string();
    let offered = |id: &str| text(id).starts_with("offered");
    let ours = |id: &str| finding(report, &format!("{id}:{host}:{port}"));
    let mut differ = Vec::new();
    let legacy = ours("tls-legacy")?;
    for (id, name) in [("TLS1", "TLS 1.0"), ("TLS1_1", "TLS 1.1")] {
        let we_say =
            legacy["status"] == "FAIL" && legacy["detail"].as_str().is_some_and(|d| d.contains(name));
        if we_say != offered(id) {
            differ.push(format!("{name}: testssl {:?}, we {legacy}", text(id)));
        }
    }
    let tls = ours("tls")?;
    let ours_version = tls["detail"].as_str().unwrap_or("");
    let expected = if offered("TLS1_3") {
        Some("TLS 1.3")
    } else if offered("TLS1_2") {
        Some("TLS 1.2")
    } else {
        None
    };
    match expected {
        Some(version) if tls["status"] != "PASS" || !ours_version.starts_with(version) => {
            differ.push(format!("testssl: {version} offered; we: {tls}"));
        }
        None if tls["status"] != "FAIL" => {
            differ.push(format!("testssl: neither TLS 1.2 nor 1.3; we: {tls}"));
        }
        _ => {}
    }
    if let Ok(certificate) = ours("certificate") {
        let detail = certificate["detail"].as_str().unwrap_or("");
        let expired = text("cert_expirationStatus").contains("expired");
        if expired != (detail == "the certificate has expired") {
            differ.push(format!(
                "expiry: testssl {:?}, we {detail:?}",
                text("cert_expirationStatus")
            ));
        }
        // testssl's chain verdict includes expiry (`failed (expired).`); ours names expiry
        // apart from an unknown authority.
        let chain = text("cert_chain_of_trust");
        let unknown_authority = chain.starts_with("failed") && !chain.contains("expired");
        let untrusted = detail.starts_with("the certificate is not from a trusted authority");
        if unknown_authority != untrusted {
            differ.push(format!(
                "trust: testssl {:?}, we {detail:?}",
                text("cert_chain_of_trust")
            ));
        }
        // testssl says `RSA 2048 bits` or `EC 256 bits`; a valid certificate's detail names
        // its key the same way.
        if certificate["status"] == "PASS" {
            let their_key = text("cert_keySize");
            let (kind, bits) = their_key.split_once(' ').unwrap_or(("", ""));
            let bits = bits.split(' ').next().unwrap_or("");
            if !detail.ends_with(&format!("{kind} key of {bits} bits")) {
                differ.push(format!("key: testssl {their_key:?}, we {detail:?}"));
            }
        }
    }
    Ok(differ)
}

/// The TLS findings of `sealmail check` agree with those of testssl.sh (an independent
/// scanner) on the same ports: a TLS 1.0-only server, a modern one with an expired
/// certificate, and sealmail's own implicit-TLS submission port. The servers are named by SRV
/// records, so each is checked on its own port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_findings_agree_with_testssl() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let dns = DnsServer::start().await?;
    let (mx, submissions) = (common::free_addr()?, common::free_addr()?);
    let config = common::config_with_users(
        dir.path(),
        "agree.test",
        &["alice"],
        &[("mx", mx, "starttls"), ("submission", submissions, "implicit")],
        "",
    )?;
    let ca = sealmail_testkit::pki::TestCa::new("agreement CA")?;
    let ca_file = common::install_issued(dir.path(), &ca, &["mail.agree.test"])?;
    let _server = common::serve(dir.path(), &config).await?;
    let legacy = ca.issue(&["legacy.agree.test"], &dir.path().join("legacy"), "cert")?;
    let expired = ca.issue_expired(&["expired.agree.test"], &dir.path().join("expired"), "cert")?;
    let (legacy_port, expired_port) = (common::free_addr()?.port(), common::free_addr()?.port());
    let _legacy = OpenSslServer::start(
        legacy_port,
        &legacy.cert,
        &legacy.key,
        &["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"],
    )
    .await?;
    let _expired = OpenSslServer::start(expired_port, &expired.cert, &expired.key, &[]).await?;
    dns.add_mx("agree.test", 10, "mail.agree.test");
    let servers = [
        ("legacy.agree.test", legacy_port),
        ("expired.agree.test", expired_port),
        ("mail.agree.test", submissions.port()),
    ];
    for (host, port) in servers {
        dns.add_a(host, std::net::Ipv4Addr::LOCALHOST);
        dns.add(
            "_submissions._tcp.agree.test",
            Rec::Srv(0, 1, port, host.to_string()),
        );
    }
    let ca_arg = ca_file.to_string_lossy().into_owned();
    let ports = format!("smtp={}", mx.port());
    let report = json_check(
        dir.path(),
        &dns,
        &["agree.test", "--port", &ports, "--ca-file", &ca_arg],
    )?;
    // The three scans run at once (each is mostly waiting on its handshakes).
    let mut scans = tokio::task::JoinSet::new();
    for (host, port) in servers {
        let (dir, ca) = (dir.path().to_path_buf(), ca_arg.clone());
        scans.spawn(async move { (host, port, testssl(&dir, host, port, &ca).await) });
    }
    let mut differ = Vec::new();
    while let Some(scan) = scans.join_next().await {
        let (host, port, theirs) = ctx(scan, "testssl task")?;
        let theirs = theirs?;
        // testssl read each server: a certificate, and every protocol probed.
        for id in ["TLS1", "TLS1_1", "TLS1_2", "TLS1_3", "cert_keySize"] {
            assert!(
                theirs
                    .get(id)
                    .is_some_and(|v| v.as_str().is_some_and(|t| !t.is_empty())),
                "testssl has no {id} for {host}:{port}: {theirs:?}"
            );
        }
        differ.extend(disagreements(&report, host, port, &theirs)?);
    }
    assert!(differ.is_empty(), "{differ:#?}\n{report:#}");
    // What each server is: the comparison covered an accepting and a refusing answer of each.
    let status = |id: &str, host: &str, port: u16| {
        finding(&report, &format!("{id}:{host}:{port}")).map(|c| c["status"].clone())
    };
    assert_eq!(status("tls-legacy", "legacy.agree.test", legacy_port)?, "FAIL");
    assert_eq!(status("tls", "legacy.agree.test", legacy_port)?, "FAIL");
    assert_eq!(status("certificate", "expired.agree.test", expired_port)?, "FAIL");
    assert_eq!(
        status("tls-legacy", "mail.agree.test", submissions.port())?,
        "PASS"
    );
    assert_eq!(
        status("certificate", "mail.agree.test", submissions.port())?,
        "PASS"
    );
    Ok(())
}

/// A plain HTTP GET of the metrics endpoint (HTTP/1.1, `Connection: close`): the body.
async fn metrics_of(address: std::net::SocketAddr) -> TestResult<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = ctx(
        tokio::net::TcpStream::connect(address).await,
        "connect to /metrics",
    )?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    ctx(tcp.write_all(request.as_bytes()).await, "write")?;
    let mut answer = String::new();
    ctx(tcp.read_to_string(&mut answer).await, "read")?;
    Ok(answer)
}

/// The value of the metric line `name` (with its labels) in a `/metrics` answer.
fn metric_value(body: &str, name: &str) -> Option<u32> {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits up to `limit` for the metric `name` to satisfy `wanted`: the last `/metrics` answer.
async fn wait_for_metric(
    address: std::net::SocketAddr,
    name: &str,
    wanted: impl Fn(u32) -> bool,
    limit: std::time::Duration,
) -> TestResult<String> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let body = metrics_of(address).await?;
        if metric_value(&body, name).is_some_and(&wanted) {
            return Ok(body);
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("{name} not as wanted within {limit:?}:\n{body}"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

/// curl over https to `host` on `port` (resolved to 127.0.0.1, `ca` trusted): (head, body).
fn curl_https(
    host: &str,
    port: u16,
    ca: &std::path::Path,
    path: &str,
    extra: &[&str],
) -> TestResult<(String, String)> {
    let output = ctx(
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "-D", "-", "--resolve"])
            .arg(format!("{host}:{port}:127.0.0.1"))
            .arg("--cacert")
            .arg(ca)
            .args(extra)
            .arg(format!("https://{host}:{port}{path}"))
            .output(),
        "curl",
    )?;
    if !output.status.success() {
        return Err(format!(
            "curl {path}: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no header end")?;
    Ok((head.to_string(), body.to_string()))
}

/// A cookie's value from response headers.
fn cookie(head: &str, name: &str) -> Option<String> {
    head.lines()
        .filter_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .filter_map(|c| c.split(';').next())
        .filter_map(|c| c.split_once('='))
        .find(|(n, v)| *n == name && !v.is_empty())
        .map(|(_, v)| v.to_string())
}

/// The value of the hidden form field `name` in a page.
fn hidden_field(page: &str, name: &str) -> TestResult<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page.find(&marker).ok_or_else(|| format!("no {name} field"))? + marker.len();
    let end = page[start..].find('"').ok_or("unterminated field")? + start;
    Ok(page[start..end].to_string())
}

/// good.test served by a sealmail instance, every record of `sealmail domain dns` published on
/// the test DNS server, and the server's own check every `interval_secs` (`[check]`) through
/// that server, on the instance's ports (`[check] ports`), trusting the test CA (`[delivery]
/// trust_anchors`); admin@good.test has the admin role.
struct GoodInstance {
    dir: tempfile::TempDir,
    dns: DnsServer,
    config: std::path::PathBuf,
    server: sealmail_testkit::Sealmail,
    https: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
    ca_file: std::path::PathBuf,
}

impl GoodInstance {
    async fn start(interval_secs: u32) -> TestResult<GoodInstance> {
        let dir = ctx(tempfile::tempdir(), "tempdir")?;
        let dns = DnsServer::start().await?;
        // Records change under the tests: answers are not cached.
        dns.set_ttl(1);
        let (https, mx) = (common::free_addr()?, common::free_addr()?);
        let (submissions, imaps) = (common::free_addr()?, common::free_addr()?);
        let (submission, imap, metrics) = (common::free_addr()?, common::free_addr()?, common::free_addr()?);
        let ports = format!(
            "https={},smtp={},submissions={},imaps={},submission={},imap={}",
            https.port(),
            mx.port(),
            submissions.port(),
            imaps.port(),
            submission.port(),
            imap.port()
        );
        let extra = format!(
            "[mta_sts]\nmode = \"enforce\"\nmax_age_secs = 604800\n\
             [check]\ninterval_secs = {interval_secs}\nports = \"{ports}\"\n\
             [delivery]\ntrust_anchors = \"issued/ca.pem\"\n\
             [metrics]\nbind = \"{metrics}\"\n\
             {}cache_size = 0\n",
            common::dns_section(dns.addr())
        );
        let config = common::config_with_users(
            dir.path(),
            "good.test",
            &["alice"],
            &[
                ("https", https, "implicit"),
                ("mx", mx, "starttls"),
                ("submission", submissions, "implicit"),
                ("imap", imaps, "implicit"),
                ("submission", submission, "starttls"),
                ("imap", imap, "starttls"),
            ],
            &extra,
        )?;
        let (code, _, err) = common::admin(
            dir.path(),
            &config,
            &["user", "add", "admin@good.test", "--password-stdin", "--admin"],
        )?;
        if code != 0 {
            return Err(format!("user add --admin: {err}"));
        }
        let ca = sealmail_testkit::pki::TestCa::new("daily check test CA")?;
        let ca_file = common::install_issued(dir.path(), &ca, &["mail.good.test", "mta-sts.good.test"])?;
        // Every record published before the server starts, so its first check finds them all.
        let (code, zone, err) = common::admin(dir.path(), &config, &["domain", "dns", "good.test"])?;
        if code != 0 {
            return Err(format!("domain dns: {err}"));
        }
        publish_zone(&dns, &zone)?;
        dns.add_a("mail.good.test", std::net::Ipv4Addr::LOCALHOST);
        dns.add(
            "good.test",
            Rec::Caa(0, "issue".into(), "check-ca.example".into()),
        );
        dns.secure("good.test");
        let server = common::serve(dir.path(), &config).await?;
        Ok(GoodInstance {
            dir,
            dns,
            config,
            server,
            https,
            metrics,
            ca_file,
        })
    }

    /// curl on the https listener: (head, body).
    fn curl(&self, path: &str, extra: &[&str]) -> TestResult<(String, String)> {
        curl_https("mail.good.test", self.https.port(), &self.ca_file, path, extra)
    }

    /// Logs admin@good.test in through the login form: the session's Cookie header.
    fn admin_session(&self) -> TestResult<String> {
        let (head, page) = self.curl("/", &[])?;
        let login = cookie(&head, "__Host-sealmail-login").ok_or("no login cookie")?;
        let form = format!(
            "username=admin%40good.test&password={}&csrf={}",
            common::TEST_PASSWORD.replace(' ', "+"),
            hidden_field(&page, "csrf")?
        );
        let (head, _) = self.curl(
            "/login",
            &[
                "-H",
                &format!("Cookie: __Host-sealmail-login={login}"),
                "--data",
                &form,
            ],
        )?;
        let session =
            cookie(&head, "__Host-sealmail-session").ok_or_else(|| format!("not logged in: {head}"))?;
        Ok(format!("Cookie: __Host-sealmail-session={session}"))
    }

    /// The admin console's domains page.
    fn domains_page(&self) -> TestResult<String> {
        let session = self.admin_session()?;
        Ok(self.curl("/admin/domains", &["-H", &session])?.1)
    }

    /// Waits up to `limit_secs` for the grade gauge to satisfy `wanted`.
    async fn wait_for_grade(&self, wanted: impl Fn(u32) -> bool, limit_secs: u64) -> TestResult<String> {
        let limit = std::time::Duration::from_secs(limit_secs);
        wait_for_metric(
            self.metrics,
            "sealmail_check_grade{domain=\"good.test\"}",
            wanted,
            limit,
        )
        .await
    }
}

/// The server checks its own domains by itself (`[check]`, here every 3 s instead of daily),
/// through its `[dns]` resolver, on the ports of `[check] ports` and with `[delivery]
/// trust_anchors`: the grade shows on /metrics and in the admin console; a record taken away
/// lowers it at the next run, which is a `check_grade_dropped` security event and a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_grades_its_own_domains_and_records_a_drop() -> TestResult {
    let good = GoodInstance::start(3).await?;
    let body = good.wait_for_grade(|g| g > 0, 60).await?;
    assert_eq!(
        metric_value(&body, "sealmail_check_grade{domain=\"good.test\"}"),
        Some(4),
        "an A, as `sealmail check` gives it: {body}\n{}",
        good.server.errors()
    );
    assert_eq!(
        metric_value(&body, "sealmail_check_score{domain=\"good.test\"}"),
        Some(100),
        "{body}"
    );
    let page = good.domains_page()?;
    assert!(
        page.contains("grade <strong class=\"grade\">A</strong>, score 100/100"),
        "{page}"
    );
    assert!(
        !page.contains("<table class=\"findings\">"),
        "no findings: {page}"
    );

    // DMARC goes: the next run grades lower.
    good.dns.remove("_dmarc.good.test");
    let body = good.wait_for_grade(|g| g < 4, 60).await?;
    let score = metric_value(&body, "sealmail_check_score{domain=\"good.test\"}").ok_or("no score")?;
    assert!(score < 100, "{body}");
    good.server
        .wait_for_log(
            "daily check: the grade of a served domain dropped",
            std::time::Duration::from_secs(10),
        )
        .await?;
    let (code, events, err) = common::admin(
        good.dir.path(),
        &good.config,
        &["security", "events", "--since", "1h"],
    )?;
    assert_eq!(code, 0, "{err}");
    let dropped: Vec<&str> = events
        .lines()
        .filter(|l| l.contains("\"kind\":\"check_grade_dropped\""))
        .collect();
    assert_eq!(dropped.len(), 1, "one drop, however many runs since: {events}");
    assert!(
        dropped[0].contains("domain good.test: grade A -> ") && dropped[0].contains("fail: dmarc"),
        "{}",
        dropped[0]
    );
    // The console shows the new grade and the finding with its fix.
    let page = good.domains_page()?;
    assert!(!page.contains("class=\"grade\">A<"), "{page}");
    assert!(page.contains(&format!("score {score}/100")), "{page}");
    assert!(page.contains("<td>FAIL</td><td>dmarc</td>"), "{page}");
    assert!(
        page.contains("_dmarc.good.test"),
        "the fix names the record: {page}"
    );
    // Text from DNS is escaped: the record's quotes are entities, not markup.
    assert!(
        page.contains("v=DMARC1; p=reject") && !page.contains("TXT \"v=DMARC1"),
        "{page}"
    );
    Ok(())
}

/// "Check security now" in the admin console checks a domain at once, though its daily check
/// is not due (the first round of a week's interval waits minutes after start); the form
/// needs the page's CSRF token like every admin form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_console_checks_a_domain_now() -> TestResult {
    let good = GoodInstance::start(604_800).await?;
    let session = good.admin_session()?;
    let (_, page) = good.curl("/admin/domains", &["-H", &session])?;
    assert!(page.contains("Daily check: not yet made."), "{page}");
    let csrf = hidden_field(&page, "csrf")?;
    // Without the token: refused, nothing checked.
    let (head, _) = good.curl(
        "/admin/domains/grade",
        &["-H", &session, "--data", "domain=good.test"],
    )?;
    assert!(head.lines().next().is_some_and(|l| l.contains(" 403")), "{head}");
    let (_, page) = good.curl(
        "/admin/domains/grade",
        &["-H", &session, "--data", &format!("domain=good.test&csrf={csrf}")],
    )?;
    assert!(page.contains("Checking good.test"), "{page}");
    // Well before the first daily round could come (a minute after start at the earliest).
    let body = good.wait_for_grade(|g| g > 0, 30).await?;
    assert_eq!(
        metric_value(&body, "sealmail_check_grade{domain=\"good.test\"}"),
        Some(4),
        "{body}\n{}",
        good.server.errors()
    );
    let (_, page) = good.curl("/admin/domains", &["-H", &session])?;
    assert!(
        page.contains("grade <strong class=\"grade\">A</strong>, score 100/100"),
        "{page}"
    );
    // Making the server connect out is an admin action, recorded.
    let mut events = String::new();
    for _ in 0..50 {
        let (code, out, err) = common::admin(good.dir.path(), &good.config, &["security", "events"])?;
        assert_eq!(code, 0, "{err}");
        events = out;
        if events.contains("started a security check of good.test") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(events.contains("admin_action"), "{events}");
    assert!(
        events.contains("started a security check of good.test"),
        "{events}"
    );
    // A domain not served here is not checked.
    let (_, page) = good.curl(
        "/admin/domains/grade",
        &[
            "-H",
            &session,
            "--data",
            &format!("domain=other.test&csrf={csrf}"),
        ],
    )?;
    assert!(page.contains("That domain is not served here."), "{page}");
    Ok(())
}
