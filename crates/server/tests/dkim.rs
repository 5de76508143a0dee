//! DKIM signing on submission, checked by two verifiers: sealmail's own inbound checks and
//! dkimpy (the independent implementation, from scripts/test.sh's venv), both reading the keys
//! from the records `sealmail domain dns` prints, served by the test's DNS server. And the other
//! way: a message dkimpy signs verifies in sealmail.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use sealmail_testkit::dns::{DnsServer, Rec};
use sealmail_testkit::{LineClient, TestResult, client_config, ctx, tls_connect};

fn python() -> String {
    std::env::var("SEALMAIL_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs the dkimpy script without blocking the runtime (the test's DNS server runs on it).
async fn dkimpy(args: &[&str]) -> TestResult<(bool, String)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/dkimpy_check.py");
    let output = ctx(
        tokio::process::Command::new(python())
            .arg(script)
            .args(args)
            .output()
            .await,
        "python",
    )?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if text.contains("No module named") {
        return Err(format!(
            "dkimpy is not installed for {}; scripts/test.sh sets up a venv with it and exports SEALMAIL_PYTHON: {text}",
            python()
        ));
    }
    Ok((output.status.success(), text))
}

/// sealmail's own inbound checks on `message`, with keys from `dns`.
async fn verify_in_sealmail(
    dns: &DnsServer,
    helo: &str,
    mail_from: &str,
    message: &[u8],
) -> TestResult<sealmail_mailauth::inbound::Verdict> {
    let resolver = sealmail_dns::Dns::new(&sealmail_config::DnsConfig {
        nameservers: vec![dns.addr()],
        timeout: Duration::from_secs(1),
        attempts: 1,
        ..sealmail_config::DnsConfig::default()
    })
    .map_err(|e| e.to_string())?;
    let authenticator = sealmail_mailauth::Authenticator::new(&resolver, "mx.receiver.test");
    Ok(authenticator
        .check_inbound(
            sealmail_mailauth::inbound::Arrival {
                client: IpAddr::from([192, 0, 2, 1]),
                helo,
                mail_from,
            },
            message,
            &sealmail_mailauth::inbound::InboundPolicy::default(),
        )
        .await)
}

/// `message` signed by dkimpy with its test key (selector test, example.com), the key's record
/// served by `dns`.
async fn signed_by_dkimpy(dns: &DnsServer, message: &str, options: &[&str]) -> TestResult<Vec<u8>> {
    let testdata = sealmail_testkit::testdata();
    let record = ctx(
        std::fs::read_to_string(format!("{testdata}/dkimpy/data/test.txt")),
        "test.txt",
    )?;
    let key = format!("{testdata}/dkimpy/data/test.private");
    dkimpy_sign(dns, message, (&key, record.trim(), "test"), options).await
}

/// `message` signed by dkimpy for example.com with `key` = (private key file, its DNS record,
/// selector), the record served by `dns`; `options` are the script's: algorithm, "length".
async fn dkimpy_sign(
    dns: &DnsServer,
    message: &str,
    key: (&str, &str, &str),
    options: &[&str],
) -> TestResult<Vec<u8>> {
    let (key_file, record, selector) = key;
    dns.add_txt(&format!("{selector}._domainkey.example.com"), record);
    let out = ctx(tempfile::tempdir(), "tempdir")?;
    let (source, target) = (out.path().join("in.eml"), out.path().join("out.eml"));
    ctx(std::fs::write(&source, message), "write")?;
    let (source, target) = (source.to_string_lossy(), target.to_string_lossy());
    let mut args = vec!["sign", &source, &target, key_file, "example.com", selector];
    args.extend_from_slice(options);
    let (ok, report) = dkimpy(&args).await?;
    if !ok {
        return Err(format!("dkimpy could not sign: {report}"));
    }
    ctx(std::fs::read(&*target), "read")
}

#[tokio::test]
async fn submitted_mail_is_dkim_signed_twice_and_both_verifiers_agree() -> TestResult {
    let dns = DnsServer::start().await?;
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let submission = common::free_addr()?;
    let extra = common::dns_section(dns.addr());
    let config = common::config_with_users(
        dir.path(),
        "example.test",
        &["alice", "bob"],
        &[("submission", submission, "implicit")],
        &extra,
    )?;
    // `domain add` made the keys: private, and published by `domain dns`.
    let keys: Vec<_> = ctx(
        std::fs::read_dir(dir.path().join("data/dkim/example.test")),
        "dkim dir",
    )?
    .flatten()
    .filter(|e| e.path().extension().is_some_and(|x| x == "pem"))
    .collect();
    assert_eq!(keys.len(), 2, "an Ed25519 and an RSA key");
    for key in &keys {
        use std::os::unix::fs::PermissionsExt;
        let mode = ctx(key.metadata(), "metadata")?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.path().display());
    }
    let (code, zone, err) = common::admin(dir.path(), &config, &["domain", "dns", "example.test"])?;
    assert_eq!(code, 0, "{err}");
    // A domain we do not serve has no records to publish: a typo must not print a zone.
    let (code, out, err) = common::admin(dir.path(), &config, &["domain", "dns", "exmaple.test"])?;
    assert!(
        code != 0 && out.is_empty() && err.contains("not served here"),
        "{code} {out} {err}"
    );
    for expected in [
        "example.test.\tIN\tMX\t10 mail.example.test.",
        "example.test.\tIN\tTXT\t\"v=spf1 mx -all\"",
        "_dmarc.example.test.\tIN\tTXT\t\"v=DMARC1; p=reject; rua=mailto:postmaster@example.test\"",
        "_mta-sts.example.test.\tIN\tTXT\t\"v=STSv1; id=",
        "_smtp._tls.example.test.\tIN\tTXT\t\"v=TLSRPTv1; rua=mailto:postmaster@example.test\"",
        "_25._tcp.mail.example.test.\tIN\tTLSA\t3 1 1 ",
        // The HELO name's own SPF record (RFC 7208 2.3).
        "mail.example.test.\tIN\tTXT\t\"v=spf1 a -all\"",
        "; MTA-STS policy",
    ] {
        assert!(zone.contains(expected), "{expected:?} missing from:\n{zone}");
    }
    // Client autoconfiguration (RFC 6186, RFC 8314): only the listeners there are.
    let srv = format!(
        "_submissions._tcp.example.test.\tIN\tSRV\t0 1 {} mail.example.test.",
        submission.port()
    );
    assert!(zone.contains(&srv), "{srv:?} missing from:\n{zone}");
    for absent in ["_submission._tcp.", "_imaps._tcp.", "_imap._tcp."] {
        assert!(
            !zone.contains(absent),
            "{absent} published without a listener:\n{zone}"
        );
    }
    // When the host name is itself a domain served here, it gets its SPF record from its own
    // `domain dns`: a second one at that name would be a permerror.
    let scratch = ctx(tempfile::tempdir(), "tempdir")?;
    let other = common::config_with_users(
        scratch.path(),
        "example.test",
        &[],
        &[("submission", submission, "implicit")],
        &extra,
    )?;
    let (code, _, err) = common::admin(scratch.path(), &other, &["domain", "add", "mail.example.test"])?;
    assert_eq!(code, 0, "{err}");
    let (_, other_zone, _) = common::admin(scratch.path(), &other, &["domain", "dns", "example.test"])?;
    assert!(other_zone.contains("_dmarc.example.test."), "{other_zone}");
    assert!(!other_zone.contains("v=spf1 a -all"), "{other_zone}");
    assert!(
        zone.contains("._domainkey.example.test.\tIN\tTXT\t\"v=DKIM1; k=ed25519; p="),
        "{zone}"
    );
    assert!(
        zone.contains("._domainkey.example.test.\tIN\tTXT\t( \"v=DKIM1; k=rsa; p="),
        "{zone}"
    );
    common::publish(&dns, &zone);
    // `domain dns --check` asks the DNS server: the TXT records are there, MX and TLSA not yet.
    let check = |config: std::path::PathBuf, dir: std::path::PathBuf| async move {
        tokio::task::spawn_blocking(move || {
            common::admin(&dir, &config, &["domain", "dns", "example.test", "--check"])
        })
        .await
        .map_err(|e| e.to_string())?
    };
    let (code, report, _) = check(config.clone(), dir.path().to_path_buf()).await?;
    assert_ne!(code, 0, "{report}");
    assert!(report.contains("example.test.\tMX\tmissing"), "{report}");
    assert!(report.contains("_dmarc.example.test.\tTXT\tok"), "{report}");
    assert!(
        report.contains("_submissions._tcp.example.test.\tSRV\tok"),
        "{report}"
    );
    assert!(report.contains("mail.example.test.\tTXT\tok"), "{report}");
    assert_eq!(
        report.matches("._domainkey.example.test.\tTXT\tok").count(),
        2,
        "{report}"
    );
    dns.add_mx("example.test", 10, "mail.example.test");
    for line in zone.lines().filter(|l| l.contains("\tTLSA\t")) {
        let fields: Vec<&str> = line.split('\t').collect();
        let data: Vec<&str> = fields[3].split(' ').collect();
        let hash = (0..data[3].len() / 2)
            .map(|i| u8::from_str_radix(&data[3][2 * i..2 * i + 2], 16).map_err(|e| e.to_string()))
            .collect::<Result<Vec<u8>, String>>()?;
        dns.add(fields[0], Rec::Tlsa(3, 1, 1, hash));
    }
    let (code, report, err) = check(config.clone(), dir.path().to_path_buf()).await?;
    assert_eq!(code, 0, "{report}{err}");
    assert!(
        !report.contains("missing") && !report.contains("differs"),
        "{report}"
    );
    // A changed record is reported as such.
    dns.remove("_dmarc.example.test");
    dns.add_txt("_dmarc.example.test", "v=DMARC1; p=none");
    let (code, report, _) = check(config.clone(), dir.path().to_path_buf()).await?;
    assert_ne!(code, 0);
    assert!(
        report.contains("_dmarc.example.test.\tTXT\tdiffers: found [\"v=DMARC1; p=none\"]"),
        "{report}"
    );
    dns.remove("_dmarc.example.test");
    dns.add_txt(
        "_dmarc.example.test",
        "v=DMARC1; p=reject; rua=mailto:postmaster@example.test",
    );
    let _server = common::serve(dir.path(), &config).await?;

    // Alice submits to Bob (delivered locally; the stored copy carries the signatures).
    let cert = dir.path().join("tls/0.pem");
    let mut c = LineClient::new(
        tls_connect(
            submission,
            client_config(&[&cert], rustls::DEFAULT_VERSIONS, &[])?,
            "mail.example.test",
        )
        .await?,
    );
    c.smtp_reply().await?;
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("\0alice@example.test\0{}", common::TEST_PASSWORD));
    c.dialog(&[
        ("EHLO client.test".to_string(), "250"),
        (format!("AUTH PLAIN {auth}"), "235"),
        ("MAIL FROM:<alice@example.test>".to_string(), "250"),
        ("RCPT TO:<bob@example.test>".to_string(), "250"),
        ("DATA".to_string(), "354"),
    ])
    .await?;
    c.command(
        "From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nSubject: signed\r\n\r\nHello Bob.\r\n.",
        "250",
    )
    .await?;
    let stored = common::mailbox_contents(&dir.path().join("data"), "bob@example.test", "INBOX").await?;
    let message = stored.first().ok_or("not delivered")?.clone();
    let text = String::from_utf8_lossy(&message).into_owned();
    assert_eq!(text.matches("DKIM-Signature: ").count(), 2, "{text}");
    assert!(
        text.contains("a=ed25519-sha256") && text.contains("a=rsa-sha256"),
        "{text}"
    );
    // From is listed twice in h= (over-signed: a second From added later breaks the signature).
    let h_tag: String = text
        .split("h=")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .ok_or("no h= tag")?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let from_count = h_tag
        .split(':')
        .filter(|name| name.eq_ignore_ascii_case("From"))
        .count();
    assert_eq!(from_count, 2, "From over-signed: {h_tag}");

    // sealmail's own verifier.
    let verdict = verify_in_sealmail(&dns, "mail.example.test", "alice@example.test", &message).await?;
    assert_eq!(
        verdict.header.matches("dkim=pass").count(),
        2,
        "{}",
        verdict.header
    );
    assert!(verdict.header.contains("dmarc=pass"), "{}", verdict.header);

    // dkimpy, asking the same DNS server.
    let out = ctx(tempfile::tempdir(), "tempdir")?;
    let file = out.path().join("signed.eml");
    ctx(std::fs::write(&file, &message), "write")?;
    let port = dns.addr().port().to_string();
    let (ok, report) = dkimpy(&["verify", &file.to_string_lossy(), "127.0.0.1", &port]).await?;
    assert!(ok && report.matches("pass").count() == 2, "dkimpy: {report}");

    // A broken body fails in dkimpy too (the check can fail).
    let tampered = text.replace("Hello Bob.", "Hello Eve.");
    ctx(std::fs::write(&file, tampered), "write")?;
    let (ok, report) = dkimpy(&["verify", &file.to_string_lossy(), "127.0.0.1", &port]).await?;
    assert!(!ok, "dkimpy accepted a changed body: {report}");
    Ok(())
}

#[tokio::test]
async fn a_message_signed_by_dkimpy_verifies_in_sealmail() -> TestResult {
    let dns = DnsServer::start().await?;
    let signed = signed_by_dkimpy(
        &dns,
        "From: someone@example.com\r\nTo: alice@example.test\r\nSubject: from dkimpy\r\nDate: Sat, 28 Nov 2026 12:00:00 +0000\r\nMessage-ID: <x@example.com>\r\n\r\nsigned elsewhere\r\n",
        &["rsa-sha256"],
    )
    .await?;
    let verdict = verify_in_sealmail(&dns, "mail.example.com", "someone@example.com", &signed).await?;
    assert!(
        verdict
            .header
            .contains("dkim=pass header.i=@example.com header.s=test"),
        "{}",
        verdict.header
    );
    Ok(())
}

/// A key made elsewhere (here by openssl) and put in `DATA/dkim/DOMAIN/SELECTOR.pem` by hand is
/// read and published like ours; readable by others, it is refused with the fix.
#[tokio::test]
async fn a_key_imported_by_hand_is_published_and_must_be_private() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let submission = common::free_addr()?;
    let config = common::config_with_users(
        dir.path(),
        "example.test",
        &[],
        &[("submission", submission, "implicit")],
        "",
    )?;
    let key = dir.path().join("data/dkim/example.test/imported.pem");
    let made = ctx(
        std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&key)
            .output(),
        "openssl genpkey",
    )?;
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    ctx(
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)),
        "chmod",
    )?;
    let public = ctx(
        std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(&key)
            .output(),
        "openssl pkey",
    )?;
    // An Ed25519 SubjectPublicKeyInfo ends with the 32-byte key, which the record carries.
    let raw = &public.stdout[public.stdout.len().saturating_sub(32)..];
    let p = base64::engine::general_purpose::STANDARD.encode(raw);
    let (code, zone, err) = common::admin(dir.path(), &config, &["domain", "dns", "example.test"])?;
    assert_eq!(code, 0, "{err}");
    let record = zone
        .lines()
        .find(|l| l.starts_with("imported._domainkey.example.test."))
        .ok_or(format!("not published:\n{zone}"))?;
    assert!(
        record.contains("k=ed25519") && record.contains(&format!("p={p}")),
        "{record}"
    );

    ctx(
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)),
        "chmod",
    )?;
    let (code, _, err) = common::admin(dir.path(), &config, &["domain", "dns", "example.test"])?;
    assert_ne!(code, 0);
    assert!(err.contains("chmod 600"), "{err}");
    Ok(())
}

#[tokio::test]
async fn dkim_rotate_makes_new_active_keys_and_keeps_the_old_ones_published() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let submission = common::free_addr()?;
    let config = common::config_with_users(
        dir.path(),
        "example.test",
        &[],
        &[("submission", submission, "implicit")],
        "",
    )?;
    let active = |dir: &std::path::Path| -> TestResult<Vec<String>> {
        let text = ctx(
            std::fs::read_to_string(dir.join("data/dkim/example.test/active")),
            "active",
        )?;
        Ok(text.lines().map(String::from).collect())
    };
    let before = active(dir.path())?;
    assert_eq!(before.len(), 2);
    let (code, out, err) = common::admin(dir.path(), &config, &["dkim", "rotate", "example.test"])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("stay published"), "{out}");
    let after = active(dir.path())?;
    assert_eq!(after.len(), 2);
    assert!(
        after.iter().all(|s| !before.contains(s)),
        "{before:?} -> {after:?}"
    );
    let (_, zone, _) = common::admin(dir.path(), &config, &["domain", "dns", "example.test"])?;
    for selector in before.iter().chain(&after) {
        assert!(
            zone.contains(&format!("{selector}._domainkey.example.test.")),
            "{selector} not published:\n{zone}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_rsa_sha1_signature_never_passes() -> TestResult {
    // RFC 8301: rsa-sha1 must not be accepted, even when the signature is valid.
    let dns = DnsServer::start().await?;
    dns.add_txt("_dmarc.example.com", "v=DMARC1; p=reject");
    let signed = signed_by_dkimpy(
        &dns,
        "From: someone@example.com\r\nTo: alice@example.test\r\nSubject: old crypto\r\nDate: Sat, 28 Nov 2026 12:00:00 +0000\r\nMessage-ID: <y@example.com>\r\n\r\nsigned with sha1\r\n",
        &["rsa-sha1"],
    )
    .await?;
    assert!(String::from_utf8_lossy(&signed).contains("a=rsa-sha1"));
    let verdict = verify_in_sealmail(&dns, "mail.example.com", "someone@example.com", &signed).await?;
    assert!(!verdict.header.contains("dkim=pass"), "{}", verdict.header);
    assert!(
        verdict
            .header
            .contains("dkim=policy reason=\"rsa-sha1 is not accepted (RFC 8301)\" header.d=example.com"),
        "{}",
        verdict.header
    );
    assert_eq!(verdict.dmarc, "fail");
    assert!(matches!(
        verdict.disposition,
        sealmail_mailauth::inbound::Disposition::Reject(_)
    ));
    Ok(())
}

#[tokio::test]
async fn an_rsa_key_under_1024_bits_never_passes() -> TestResult {
    // RFC 8301 3.2: verifiers must not consider signatures with keys under 1024 bits valid.
    let dns = DnsServer::start().await?;
    dns.add_txt("_dmarc.example.com", "v=DMARC1; p=none");
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let key = dir.path().join("small.pem");
    let key_file = key.to_string_lossy().to_string();
    let made = ctx(
        tokio::process::Command::new("openssl")
            .args(["genrsa", "-traditional", "-out", &key_file, "768"])
            .output()
            .await,
        "openssl genrsa",
    )?;
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let public = ctx(
        tokio::process::Command::new("openssl")
            .args(["rsa", "-in", &key_file, "-pubout", "-outform", "DER"])
            .output()
            .await,
        "openssl rsa",
    )?;
    assert!(public.status.success());
    use base64::Engine as _;
    let record = format!(
        "v=DKIM1; k=rsa; p={}",
        base64::engine::general_purpose::STANDARD.encode(&public.stdout)
    );
    let message = "From: someone@example.com\r\nTo: alice@example.test\r\nSubject: small key\r\nDate: Sat, 28 Nov 2026 12:00:00 +0000\r\nMessage-ID: <s@example.com>\r\n\r\nsigned with 768 bits\r\n";
    let signed = dkimpy_sign(&dns, message, (&key_file, &record, "small"), &["rsa-sha256"]).await?;
    assert!(String::from_utf8_lossy(&signed).contains("s=small"));
    let verdict = verify_in_sealmail(&dns, "mail.example.com", "someone@example.com", &signed).await?;
    assert!(!verdict.header.contains("dkim=pass"), "{}", verdict.header);
    assert!(
        verdict.header.contains("dkim=fail") && verdict.header.contains("header.s=small"),
        "{}",
        verdict.header
    );
    assert_eq!(verdict.dmarc, "fail");

    // The same message with dkimpy's own 1024-bit test key passes: the size is what failed.
    let signed = signed_by_dkimpy(&dns, message, &["rsa-sha256"]).await?;
    let verdict = verify_in_sealmail(&dns, "mail.example.com", "someone@example.com", &signed).await?;
    assert!(verdict.header.contains("dkim=pass"), "{}", verdict.header);
    Ok(())
}

#[tokio::test]
async fn a_signature_with_a_body_length_tag_does_not_pass() -> TestResult {
    // RFC 6376 8.2: with l= anyone can append to the body (a new MIME part, a link) and keep
    // the signature valid. We treat such signatures as neutral: they never pass and never
    // count for DMARC, whether or not something was appended.
    let dns = DnsServer::start().await?;
    dns.add_txt("_dmarc.example.com", "v=DMARC1; p=reject");
    let message = "From: bank@example.com\r\nTo: alice@example.test\r\nSubject: statement\r\nDate: Sat, 28 Nov 2026 12:00:00 +0000\r\nMessage-ID: <l@example.com>\r\n\r\nYour statement is ready.\r\n";
    let signed = signed_by_dkimpy(&dns, message, &["rsa-sha256", "length"]).await?;
    let text = String::from_utf8_lossy(&signed).to_string();
    assert!(
        text.contains(" l=") || text.contains(";l="),
        "dkimpy added no l=: {text}"
    );
    for candidate in [
        text.clone(),
        format!("{text}Click http://evil.test/login to confirm.\r\n"),
    ] {
        let verdict =
            verify_in_sealmail(&dns, "mail.example.com", "bank@example.com", candidate.as_bytes()).await?;
        assert!(!verdict.header.contains("dkim=pass"), "{}", verdict.header);
        assert!(verdict.header.contains("dkim=neutral"), "{}", verdict.header);
        assert_eq!(verdict.dmarc, "fail");
    }
    Ok(())
}
