//! Sender authentication on `mx`, end to end: a real sealmail whose resolver is pointed at the
//! test's own DNS server, and messages sent over SMTP with STARTTLS from loopback addresses
//! that the published SPF records allow or not. The signed message is RFC 8463's (dkimpy's
//! test data), signed by football.example.com with Ed25519 and RSA.

mod common;

use std::time::Duration;

use rustls::version::TLS13;
use sealmail_testkit::dns::DnsServer;
use sealmail_testkit::{LineClient, TestResult, client_config, ctx, tcp_from, tls_connect, tls_upgrade};

fn read(path: &str) -> TestResult<String> {
    let path = format!("{}/{path}", sealmail_testkit::testdata());
    std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))
}

/// The RFC 8463 message with CRLF endings and `extra` header lines in front (unsigned, so the
/// signatures still cover the same bytes).
fn signed_message(extra: &str) -> TestResult<String> {
    let text = read("dkimpy/data/rfc6376.signed.msg")?
        .replace("\r\n", "\n")
        .replace('\n', "\r\n");
    Ok(format!("{extra}{text}"))
}

const ALLOWED: [u8; 4] = [127, 0, 0, 1];
const ELSEWHERE: [u8; 4] = [127, 0, 0, 9];

async fn send(
    server: std::net::SocketAddr,
    cert: &std::path::Path,
    source: [u8; 4],
    from: &str,
    body: &str,
) -> TestResult<String> {
    let mut c = LineClient::new(tcp_from(source, server).await?);
    c.smtp_reply().await?;
    c.command("EHLO mail.football.example.com", "250").await?;
    c.command("STARTTLS", "220").await?;
    let config = client_config(&[cert], &[&TLS13], &[])?;
    let mut c = LineClient::new(tls_upgrade(c.into_inner(), config, "mail.example.test").await?);
    c.command("EHLO mail.football.example.com", "250").await?;
    c.command(&format!("MAIL FROM:<{from}>"), "250").await?;
    c.command("RCPT TO:<alice@example.test>", "250").await?;
    c.command("DATA", "354").await?;
    c.send(&format!("{}.\r\n", body.replace("\r\n.", "\r\n..")))
        .await?;
    c.smtp_reply().await
}

#[tokio::test]
async fn mx_authenticates_senders_and_applies_their_dmarc_policies() -> TestResult {
    let dns = DnsServer::start().await?;
    for line in read("mail-auth/resources/dkim/001.txt")?
        .lines()
        .take_while(|l| !l.is_empty())
    {
        if let Some((name, value)) = line.split_once(' ') {
            dns.add_txt(name, value);
        }
    }
    dns.add_txt("football.example.com", "v=spf1 ip4:127.0.0.1 -all");
    dns.add_txt("_dmarc.football.example.com", "v=DMARC1; p=reject");
    dns.add_txt("quarantined.test", "v=spf1 ip4:127.0.0.1 -all");
    dns.add_txt("_dmarc.quarantined.test", "v=DMARC1; p=quarantine");
    dns.add_txt("relaxed.test", "v=spf1 ip4:127.0.0.1 ~all");
    dns.add_txt("_dmarc.relaxed.test", "v=DMARC1; p=none");
    dns.add_txt("slow.test", "v=spf1 ip4:127.0.0.1 -all");
    dns.timeout("_dmarc.slow.test");

    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let mx = common::free_addr()?;
    let imap_addr = common::free_addr()?;
    let extra = common::dns_section(dns.addr());
    let config = common::config_with_users(
        dir.path(),
        "example.test",
        &["alice"],
        &[("mx", mx, "starttls"), ("imap", imap_addr, "implicit")],
        &extra,
    )?;
    let _server = common::serve(dir.path(), &config).await?;
    let cert = dir.path().join("tls/0.pem");
    let data = dir.path().join("data");

    // 1. Signed, from an address SPF allows: everything passes. A forged result claiming our
    //    authserv-id is removed; a result from someone else stays.
    let forged = "Authentication-Results: mail.example.test; dkim=pass header.d=bank.test\r\nAuthentication-Results: other.test; spf=pass\r\n";
    let reply = send(
        mx,
        &cert,
        ALLOWED,
        "joe@football.example.com",
        &signed_message(forged)?,
    )
    .await?;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    let inbox = common::mailbox_contents(&data, "alice@example.test", "INBOX").await?;
    let stored = String::from_utf8_lossy(inbox.last().ok_or("nothing stored")?).into_owned();
    assert!(
        stored.starts_with(
            "Return-Path: <joe@football.example.com>\r\nAuthentication-Results: mail.example.test;\r\n"
        ),
        "{stored}"
    );
    assert_eq!(stored.matches("dkim=pass").count(), 2, "{stored}");
    assert!(
        stored.contains("spf=pass") && stored.contains("dmarc=pass header.from=football.example.com"),
        "{stored}"
    );
    assert_eq!(
        stored
            .matches("Authentication-Results: mail.example.test")
            .count(),
        1,
        "forged result kept: {stored}"
    );
    assert!(!stored.contains("bank.test"), "{stored}");
    assert!(
        stored.contains("Authentication-Results: other.test; spf=pass"),
        "{stored}"
    );

    // 2. Altered in transit and sent from elsewhere: DKIM and SPF fail, p=reject refuses it.
    let tampered = signed_message("")?.replace("We lost the game.", "We won the game.");
    let reply = send(mx, &cert, ELSEWHERE, "joe@football.example.com", &tampered).await?;
    assert!(reply.starts_with("550 5.7.1"), "{reply}");

    // 3. p=quarantine: delivered, to Junk.
    let unsigned = "From: eve@quarantined.test\r\nTo: alice@example.test\r\nSubject: q\r\n\r\nhello\r\n";
    let reply = send(mx, &cert, ELSEWHERE, "eve@quarantined.test", unsigned).await?;
    assert!(reply.starts_with("250"), "{reply}");
    let junk = common::mailbox_contents(&data, "alice@example.test", "Junk").await?;
    assert_eq!(junk.len(), 1);
    assert!(String::from_utf8_lossy(&junk[0]).contains("policy.dmarc=quarantine"));

    // 4. SPF softfail under p=none: delivered to the INBOX with the softfail recorded.
    let relaxed = "From: ann@relaxed.test\r\nTo: alice@example.test\r\nSubject: r\r\n\r\nhello\r\n";
    let reply = send(mx, &cert, ELSEWHERE, "ann@relaxed.test", relaxed).await?;
    assert!(reply.starts_with("250"), "{reply}");
    let inbox = common::mailbox_contents(&data, "alice@example.test", "INBOX").await?;
    let last = String::from_utf8_lossy(inbox.last().ok_or("nothing stored")?).into_owned();
    assert!(
        last.contains("spf=softfail") && last.contains("dmarc=fail"),
        "{last}"
    );
    // ... and it is marked: DMARC failed.
    assert!(
        last.contains(
            "X-Sealmail-Warning: The sender's domain relaxed.test could not be verified (DMARC failed)"
        ),
        "{last}"
    );
    // Marked, not altered: the text is as sent.
    assert!(last.ends_with("\r\nSubject: r\r\n\r\nhello\r\n"), "{last}");
    assert!(!last.contains("[sealmail warning"), "{last}");

    // 4b. A look-alike of our own domain with our name in the display name: marked twice.
    let lookalike = "From: Example IT Support <help@examp1e.test>\r\nTo: alice@example.test\r\nSubject: reset your password\r\n\r\nClick here.\r\n";
    let reply = send(mx, &cert, ELSEWHERE, "help@examp1e.test", lookalike).await?;
    assert!(reply.starts_with("250"), "{reply}");
    let inbox = common::mailbox_contents(&data, "alice@example.test", "INBOX").await?;
    let last = String::from_utf8_lossy(inbox.last().ok_or("nothing stored")?).into_owned();
    assert!(
        last.contains(
            "X-Sealmail-Warning: The sender's domain examp1e.test (examp1e.test) imitates example.test"
        ),
        "{last}"
    );
    assert!(
        last.contains("X-Sealmail-Warning: The sender's name mentions example.test"),
        "{last}"
    );
    assert!(last.ends_with(lookalike), "the message was altered: {last}");
    // Clients see the keyword $Phishing (RFC 9051 2.3.2) on both marked messages, and in FLAGS.
    let mut imap = LineClient::new(
        tls_connect(
            imap_addr,
            client_config(&[&cert], &[&TLS13], &[])?,
            "mail.example.test",
        )
        .await?,
    );
    imap.line().await?;
    imap.imap(
        "a",
        &format!("LOGIN alice@example.test \"{}\"", common::TEST_PASSWORD),
    )
    .await?;
    let selected = imap.imap("b", "SELECT INBOX").await?;
    assert!(
        selected
            .iter()
            .any(|l| l.starts_with("* FLAGS (") && l.contains("$Phishing")),
        "{selected:?}"
    );
    let fetched = imap.imap("c", "FETCH 1:* (FLAGS)").await?;
    let marked: Vec<&String> = fetched.iter().filter(|l| l.contains("$Phishing")).collect();
    assert_eq!(
        marked.len(),
        2,
        "the DMARC failure and the look-alike: {fetched:?}"
    );
    assert!(
        marked[0].starts_with("* 2 FETCH") && marked[1].starts_with("* 3 FETCH"),
        "{fetched:?}"
    );

    // 5. The DMARC lookup times out: try again later, never a silent pass.
    let slow = "From: sam@slow.test\r\nTo: alice@example.test\r\nSubject: s\r\n\r\nhello\r\n";
    let started = std::time::Instant::now();
    let reply = send(mx, &cert, ALLOWED, "sam@slow.test", slow).await?;
    assert!(reply.starts_with("451 4.7.1"), "{reply}");
    assert!(started.elapsed() < Duration::from_secs(10));
    Ok(())
}

/// RFC 7489 6.6.1 and RFC 5322 3.6: a From field naming several domains is judged by the
/// strictest of their DMARC outcomes, and a message with two From fields, or a From without
/// an address, is refused. mail-auth alone exempts such messages from DMARC.
#[tokio::test]
async fn a_from_with_several_authors_cannot_slip_past_dmarc() -> TestResult {
    let dns = DnsServer::start().await?;
    // Our own domain publishes p=reject; the attacker's passes SPF from where it sends.
    dns.add_txt("_dmarc.example.test", "v=DMARC1; p=reject");
    dns.add_txt("evil.test", "v=spf1 ip4:127.0.0.9 -all");
    dns.add_txt("_dmarc.evil.test", "v=DMARC1; p=none");
    dns.add_txt("other.test", "v=spf1 -all");

    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let mx = common::free_addr()?;
    let extra = common::dns_section(dns.addr());
    let config = common::config_with_users(
        dir.path(),
        "example.test",
        &["alice"],
        &[("mx", mx, "starttls")],
        &extra,
    )?;
    let _server = common::serve(dir.path(), &config).await?;
    let cert = dir.path().join("tls/0.pem");
    let data = dir.path().join("data");

    let body = |from_lines: &str| {
        format!("{from_lines}To: alice@example.test\r\nSubject: wire the money\r\n\r\nPlease pay.\r\n")
    };
    for (from_lines, what) in [
        ("From: ceo@example.test, x@evil.test\r\n", "two author domains"),
        ("From: x@evil.test, ceo@example.test\r\n", "our domain second"),
        ("From: \"CEO\" <ceo@example.test>,\r\n x@evil.test\r\n", "folded"),
        (
            "From: x@evil.test\r\nFrom: ceo@example.test\r\n",
            "two From fields",
        ),
        (
            "From: x@evil.test\r\nfrom:ceo@example.test\r\n",
            "two From fields, other spelling",
        ),
        ("From: undisclosed:;\r\n", "a From without an address"),
        // mail-parser leaves the ESC of the encoded word in the domain.
        (
            "From: =?utf-8?q?x@exampl=1Be.test?= (Example)\r\n",
            "a control character in the domain",
        ),
        (
            "From: x@evil.test, y@bad_domain.test\r\n",
            "an invalid author domain",
        ),
    ] {
        let reply = send(mx, &cert, ELSEWHERE, "x@evil.test", &body(from_lines)).await?;
        assert!(reply.starts_with("550 5.7.1"), "{what}: {reply}");
    }
    let inbox = common::mailbox_contents(&data, "alice@example.test", "INBOX").await?;
    let junk = common::mailbox_contents(&data, "alice@example.test", "Junk").await?;
    assert!(
        inbox.is_empty() && junk.is_empty(),
        "delivered: {inbox:?} {junk:?}"
    );

    // Several authors whose domains do not ask for rejection: delivered, each domain judged.
    let reply = send(
        mx,
        &cert,
        ELSEWHERE,
        "x@evil.test",
        &body("From: x@evil.test, y@other.test\r\n"),
    )
    .await?;
    assert!(reply.starts_with("250"), "{reply}");
    let inbox = common::mailbox_contents(&data, "alice@example.test", "INBOX").await?;
    let stored = String::from_utf8_lossy(inbox.last().ok_or("nothing stored")?).into_owned();
    assert!(stored.contains("dmarc=pass header.from=evil.test"), "{stored}");
    Ok(())
}

/// `[inbound] phishing_notice_in_body = true`: the warning is also a line at the top of the
/// text, for administrators whose users' clients show neither headers nor keywords.
#[tokio::test]
async fn the_notice_in_the_text_is_an_option() -> TestResult {
    let dns = DnsServer::start().await?;
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let mx = common::free_addr()?;
    let extra = format!(
        "{}[inbound]\nphishing_notice_in_body = true\n",
        common::dns_section(dns.addr())
    );
    let config = common::config_with_users(
        dir.path(),
        "example.test",
        &["alice"],
        &[("mx", mx, "starttls")],
        &extra,
    )?;
    let _server = common::serve(dir.path(), &config).await?;
    let cert = dir.path().join("tls/0.pem");
    let lookalike = "From: help@examp1e.test\r\nTo: alice@example.test\r\nSubject: hi\r\n\r\nClick here.\r\n";
    let reply = send(mx, &cert, ELSEWHERE, "help@examp1e.test", lookalike).await?;
    assert!(reply.starts_with("250"), "{reply}");
    let inbox = common::mailbox_contents(&dir.path().join("data"), "alice@example.test", "INBOX").await?;
    let last = String::from_utf8_lossy(inbox.last().ok_or("nothing stored")?).into_owned();
    assert!(
        last.ends_with("\r\n\r\n[sealmail warning: The sender's domain examp1e.test (examp1e.test) imitates example.test, but it is not example.test]\r\n\r\nClick here.\r\n"),
        "{last}"
    );
    Ok(())
}
