//! Inbound checks through the local DNS fixture, with the RFC 8463 signed message from
//! dkimpy's test data (../shared/testdata/dkimpy: an Ed25519 and an RSA signature by
//! football.example.com; the keys are the RFC's, listed in mail-auth's test data).

use std::net::IpAddr;
use std::time::Duration;

use sealmail_config::DnsConfig;
use sealmail_dns::Dns;
use sealmail_mailauth::Authenticator;
use sealmail_mailauth::inbound::{Arrival, Disposition, InboundPolicy, Verdict};
use sealmail_testkit::dns::{DnsServer, Rec};

/// The RFC 8463 message with CRLF line endings, as it travels.
fn signed_message() -> Result<Vec<u8>, String> {
    let path = format!("{}/dkimpy/data/rfc6376.signed.msg", sealmail_testkit::testdata());
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    Ok(text.replace("\r\n", "\n").replace('\n', "\r\n").into_bytes())
}

/// The two RFC 8463 keys, as mail-auth's test data lists them ("NAME VALUE" lines).
fn rfc8463_keys() -> Result<Vec<(String, String)>, String> {
    let path = format!(
        "{}/mail-auth/resources/dkim/001.txt",
        sealmail_testkit::testdata()
    );
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    Ok(text
        .lines()
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(' '))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect())
}

const SENDER_IP: [u8; 4] = [192, 0, 2, 10];
const OTHER_IP: [u8; 4] = [198, 51, 100, 7];

struct World {
    server: DnsServer,
}

impl World {
    async fn new(dmarc: &str, spf: &str) -> Result<World, String> {
        let server = DnsServer::start().await?;
        for (name, value) in rfc8463_keys()? {
            server.add_txt(&name, &value);
        }
        server.add_txt("_dmarc.football.example.com", dmarc);
        server.add_txt("football.example.com", spf);
        server.add_txt("mail.football.example.com", "v=spf1 a -all");
        server.add_a("mail.football.example.com", SENDER_IP.into());
        Ok(World { server })
    }

    async fn check(&self, ip: [u8; 4], mail_from: &str, message: &[u8]) -> Result<Verdict, String> {
        self.check_with(false, ip, mail_from, message).await
    }

    async fn check_with(
        &self,
        reverse_lookups: bool,
        ip: [u8; 4],
        mail_from: &str,
        message: &[u8],
    ) -> Result<Verdict, String> {
        let authenticator = self.authenticator(reverse_lookups)?;
        Ok(check(&authenticator, ip, mail_from, message).await)
    }

    fn authenticator(&self, reverse_lookups: bool) -> Result<Authenticator, String> {
        let dns = Dns::new(&DnsConfig {
            nameservers: vec![self.server.addr()],
            timeout: Duration::from_millis(300),
            attempts: 1,
            reverse_lookups,
            ..DnsConfig::default()
        })
        .map_err(|e| e.to_string())?;
        Ok(Authenticator::new(&dns, "mx.sealmail.test"))
    }
}

async fn check(authenticator: &Authenticator, ip: [u8; 4], mail_from: &str, message: &[u8]) -> Verdict {
    authenticator
        .check_inbound(
            Arrival {
                client: IpAddr::from(ip),
                helo: "mail.football.example.com",
                mail_from,
            },
            message,
            &InboundPolicy::default(),
        )
        .await
}

fn has(header: &str, needle: &str) -> bool {
    header.contains(needle)
}

#[tokio::test]
async fn a_signed_message_from_its_domain_passes_everything() -> Result<(), String> {
    let world = World::new("v=DMARC1; p=reject", "v=spf1 ip4:192.0.2.10 -all").await?;
    let verdict = world
        .check(SENDER_IP, "joe@football.example.com", &signed_message()?)
        .await?;
    let h = &verdict.header;
    assert!(h.starts_with("Authentication-Results: mx.sealmail.test;"), "{h}");
    assert_eq!(
        h.matches("dkim=pass").count(),
        2,
        "Ed25519 and RSA both pass: {h}"
    );
    assert!(
        has(h, "spf=pass") && has(h, "smtp.mailfrom=joe@football.example.com"),
        "{h}"
    );
    assert!(has(h, "dmarc=pass header.from=football.example.com"), "{h}");
    assert!(h.ends_with("\r\n"));
    assert_eq!(verdict.disposition, Disposition::Accept);
    assert_eq!(verdict.dmarc, "pass");
    Ok(())
}

/// With the cache warm, checking the next message asks DNS nothing: not for the SPF and DKIM
/// records, and not for the names the DMARC tree walk finds empty (`_dmarc.example.com`,
/// `_dmarc.com`), whose NXDOMAIN answers are cached for their SOA's time (RFC 2308). A query per
/// message would cost a round trip to the resolver for every message received.
#[tokio::test]
async fn a_warm_cache_checks_a_message_without_asking_dns() -> Result<(), String> {
    let world = World::new("v=DMARC1; p=reject", "v=spf1 ip4:192.0.2.10 -all").await?;
    let authenticator = world.authenticator(false)?;
    let message = signed_message()?;
    let first = check(&authenticator, SENDER_IP, "joe@football.example.com", &message).await;
    assert!(has(&first.header, "dmarc=pass"), "{}", first.header);
    let asked = world.server.queries();
    assert!(
        asked >= 5,
        "SPF x2, two DKIM keys and the DMARC walk were asked for: {asked}"
    );
    for _ in 0..3 {
        let again = check(&authenticator, SENDER_IP, "joe@football.example.com", &message).await;
        assert_eq!(again.header, first.header);
    }
    assert_eq!(world.server.queries(), asked, "no query once the cache is warm");
    Ok(())
}

#[tokio::test]
async fn a_broken_body_hash_from_elsewhere_fails_dmarc_and_p_reject_refuses_it() -> Result<(), String> {
    let world = World::new("v=DMARC1; p=reject", "v=spf1 ip4:192.0.2.10 -all").await?;
    let tampered =
        String::from_utf8_lossy(&signed_message()?).replace("We lost the game.", "We won the game.");
    let verdict = world
        .check(OTHER_IP, "joe@football.example.com", tampered.as_bytes())
        .await?;
    let h = &verdict.header;
    // mail-auth reports a body hash mismatch as "neutral (body hash did not verify)"; either
    // way it is not a pass and DMARC fails.
    assert!(!has(h, "dkim=pass") && has(h, "body hash did not verify"), "{h}");
    assert!(has(h, "spf=fail"), "{h}");
    assert!(has(h, "dmarc=fail") && has(h, "policy.dmarc=reject"), "{h}");
    assert!(
        matches!(verdict.disposition, Disposition::Reject(ref why) if why.contains("football.example.com"))
    );
    Ok(())
}

#[tokio::test]
async fn p_quarantine_failures_go_to_junk_and_p_none_failures_are_delivered() -> Result<(), String> {
    let world = World::new("v=DMARC1; p=quarantine", "v=spf1 ip4:192.0.2.10 -all").await?;
    let unsigned = b"From: Joe <joe@football.example.com>\r\nTo: suzie@shopping.example.net\r\nSubject: hi\r\n\r\nhello\r\n";
    let verdict = world
        .check(OTHER_IP, "joe@football.example.com", unsigned)
        .await?;
    assert!(has(&verdict.header, "dmarc=fail"), "{}", verdict.header);
    assert_eq!(verdict.disposition, Disposition::Junk);

    let relaxed = World::new("v=DMARC1; p=none", "v=spf1 ip4:192.0.2.10 ~all").await?;
    let verdict = relaxed
        .check(OTHER_IP, "joe@football.example.com", unsigned)
        .await?;
    assert!(has(&verdict.header, "spf=softfail"), "{}", verdict.header);
    assert!(has(&verdict.header, "dmarc=fail") && has(&verdict.header, "policy.dmarc=none"));
    assert_eq!(verdict.disposition, Disposition::Accept);
    Ok(())
}

#[tokio::test]
async fn a_dmarc_lookup_that_times_out_is_a_temporary_failure_not_a_pass() -> Result<(), String> {
    let world = World::new("v=DMARC1; p=reject", "v=spf1 ip4:192.0.2.10 -all").await?;
    world.server.remove("_dmarc.football.example.com");
    world.server.timeout("_dmarc.football.example.com");
    let unsigned = b"From: joe@football.example.com\r\nSubject: hi\r\n\r\nhello\r\n";
    let verdict = world
        .check(OTHER_IP, "joe@football.example.com", unsigned)
        .await?;
    assert!(
        matches!(verdict.disposition, Disposition::TempFail(_)),
        "{:?}\n{}",
        verdict.disposition,
        verdict.header
    );
    Ok(())
}

#[tokio::test]
async fn reverse_lookups_add_an_iprev_result_only_when_configured() -> Result<(), String> {
    let world = World::new("v=DMARC1; p=none", "v=spf1 ip4:192.0.2.10 -all").await?;
    world.server.add(
        "10.2.0.192.in-addr.arpa",
        Rec::Ptr("mail.football.example.com".into()),
    );
    // 198.51.100.7 claims the same name, whose address is not 198.51.100.7.
    world.server.add(
        "7.100.51.198.in-addr.arpa",
        Rec::Ptr("mail.football.example.com".into()),
    );
    let message = signed_message()?;

    let off = world
        .check(SENDER_IP, "joe@football.example.com", &message)
        .await?;
    assert!(!has(&off.header, "iprev"), "{}", off.header);

    let confirmed = world
        .check_with(true, SENDER_IP, "joe@football.example.com", &message)
        .await?;
    assert!(
        has(&confirmed.header, "iprev=pass policy.iprev=192.0.2.10"),
        "{}",
        confirmed.header
    );
    let unconfirmed = world
        .check_with(true, OTHER_IP, "joe@football.example.com", &message)
        .await?;
    assert!(
        has(&unconfirmed.header, "iprev=fail") && has(&unconfirmed.header, "policy.iprev=198.51.100.7"),
        "{}",
        unconfirmed.header
    );
    // iprev informs; it does not decide.
    assert_eq!(confirmed.disposition, Disposition::Accept);
    Ok(())
}

#[tokio::test]
async fn a_message_without_a_header_section_is_refused() -> Result<(), String> {
    // No header field at all: there is no From to authenticate, so nothing to deliver.
    let world = World::new("v=DMARC1; p=none", "v=spf1 ip4:192.0.2.10 -all").await?;
    for message in [
        &b"\r\njust a body\r\n"[..],
        b"no colon on this line\r\n\r\nbody\r\n",
    ] {
        let verdict = world
            .check(SENDER_IP, "joe@football.example.com", message)
            .await?;
        assert!(
            matches!(verdict.disposition, Disposition::Reject(ref why) if why.contains("header")),
            "{:?}",
            verdict.disposition
        );
        assert_eq!(verdict.dmarc, "permerror");
    }
    Ok(())
}

/// A message can carry any number of DKIM signatures, each a key lookup (perhaps a timeout) and
/// a public-key operation; only the topmost five are checked, the rest are named in one
/// `dkim=policy` entry.
#[tokio::test]
async fn only_five_dkim_signatures_are_checked() -> Result<(), String> {
    let world = World::new("v=DMARC1; p=none", "v=spf1 ip4:192.0.2.10 -all").await?;
    let message = String::from_utf8(signed_message()?).map_err(|e| e.to_string())?;
    // The real Ed25519 signature (its body hash is right), re-labelled for 200 other domains
    // whose key lookups all find nothing.
    let start = message.find("DKIM-Signature:").ok_or("no signature")?;
    let length = message[start..]
        .match_indices("\r\n")
        .map(|(i, _)| i + 2)
        .find(|&end| !message[start + end..].starts_with([' ', '\t']))
        .ok_or("unterminated signature")?;
    let signature = &message[start..start + length];
    let mut hostile = String::new();
    for n in 0..200 {
        hostile.push_str(&signature.replace("football.example.com", &format!("d{n}.test")));
    }
    hostile.push_str(&message);
    let before = world.server.queries();
    let verdict = world
        .check(SENDER_IP, "joe@football.example.com", hostile.as_bytes())
        .await?;
    let asked = world.server.queries() - before;
    let h = &verdict.header;
    assert_eq!(h.matches("dkim=").count(), 6, "five checked, one summary: {h}");
    assert!(
        has(
            h,
            "dkim=policy reason=\"197 more DKIM signatures not checked (limit 5)\""
        ),
        "{h}"
    );
    // SPF (TXT and A for the HELO name, TXT for the sender), the DMARC walk (3 names) and at
    // most five key records.
    assert!(asked <= 12, "{asked} queries for one message");
    Ok(())
}
