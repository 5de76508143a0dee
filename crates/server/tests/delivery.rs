//! Outbound delivery between two real sealmail instances on loopback: a.test (alice submits)
//! and b.test (bob receives), with the local DNS fixture for MX/A/TXT/TLSA records, a test CA
//! for certificates, and an HTTPS server for MTA-STS policies.

mod common;

use sealmail_store::MailStore;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use sealmail_testkit::dns::{DnsServer, Rec};
use sealmail_testkit::pki::{HttpsServer, TestCa};
use sealmail_testkit::{LineClient, Sealmail, TestResult, client_config, ctx, tls_connect};
use sha2::Digest;

/// One sealmail instance serving `domain` with `users`.
struct Node {
    dir: tempfile::TempDir,
    config: PathBuf,
    process: Option<Sealmail>,
    /// mx (STARTTLS), submission (implicit TLS), imap (implicit TLS), https.
    mx: SocketAddr,
    submission: SocketAddr,
    imap: SocketAddr,
    https: SocketAddr,
    domain: String,
    /// What a client must trust to connect: the CA, or the self-signed certificate.
    trust: PathBuf,
}

impl Node {
    /// Configures (not starts) a node. Its certificate for mail.DOMAIN is issued by `ca`, or
    /// self-signed when `ca` is `None`.
    fn new(domain: &str, users: &[&str], ca: Option<&TestCa>, extra: &str) -> TestResult<Node> {
        let dir = ctx(tempfile::tempdir(), "tempdir")?;
        let (mx, submission, imap) = (common::free_addr()?, common::free_addr()?, common::free_addr()?);
        let https = common::free_addr()?;
        let config = common::config_with_users(
            dir.path(),
            domain,
            users,
            &[
                ("mx", mx, "starttls"),
                ("submission", submission, "implicit"),
                ("imap", imap, "implicit"),
                ("https", https, "implicit"),
            ],
            extra,
        )?;
        let mut trust = dir.path().join("tls/0.pem");
        if let Some(ca) = ca {
            // Replace the generated self-signed certificate by one the CA issued.
            let (host, policy_host) = (format!("mail.{domain}"), format!("mta-sts.{domain}"));
            trust = common::install_issued(dir.path(), ca, &[&host, &policy_host])?;
        }
        Ok(Node {
            dir,
            config,
            process: None,
            mx,
            submission,
            imap,
            https,
            domain: domain.to_string(),
            trust,
        })
    }

    async fn start(&mut self) -> TestResult {
        self.process = Some(common::serve(self.dir.path(), &self.config).await?);
        Ok(())
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("tls/0.pem")
    }

    fn admin(&self, args: &[&str]) -> TestResult<String> {
        let (code, out, err) = common::admin(self.dir.path(), &self.config, args)?;
        if code != 0 {
            return Err(format!("{args:?}: {err}"));
        }
        Ok(out)
    }

    /// `sealmail domain dns` records of this node's domain, served by `dns` (DKIM, SPF, DMARC).
    fn publish(&self, dns: &DnsServer) -> TestResult {
        let zone = self.admin(&["domain", "dns", &self.domain])?;
        common::publish(dns, &zone);
        Ok(())
    }

    /// Submits a message from `from` (a user of this node) to `to` over implicit TLS.
    async fn submit(&self, from: &str, to: &str, subject: &str, require_tls: bool) -> TestResult {
        let mail_params = if require_tls { " REQUIRETLS" } else { "" };
        self.submit_with(from, to, subject, mail_params, "").await
    }

    /// As `submit`, with `rcpt_params` after `RCPT TO:<to>` (e.g. " NOTIFY=SUCCESS").
    async fn submit_with(
        &self,
        from: &str,
        to: &str,
        subject: &str,
        mail_params: &str,
        rcpt_params: &str,
    ) -> TestResult {
        let mut c = LineClient::new(
            tls_connect(
                self.submission,
                client_config(&[&self.trust], rustls::DEFAULT_VERSIONS, &[])?,
                &format!("mail.{}", self.domain),
            )
            .await?,
        );
        c.smtp_reply().await?;
        let auth =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{from}\0{}", common::TEST_PASSWORD));
        let ehlo = c.command("EHLO client.test", "250").await?;
        assert!(
            ehlo.contains("REQUIRETLS"),
            "REQUIRETLS is offered over TLS: {ehlo}"
        );
        c.dialog(&[
            (format!("AUTH PLAIN {auth}"), "235"),
            (format!("MAIL FROM:<{from}>{mail_params}"), "250"),
            (format!("RCPT TO:<{to}>{rcpt_params}"), "250"),
            ("DATA".to_string(), "354"),
        ])
        .await?;
        c.command(
            &format!(
                "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nDate: Sun, 29 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{subject}@{}>\r\n\r\nHello from {from}.\r\n.",
                self.domain
            ),
            "250",
        )
        .await?;
        Ok(())
    }

    async fn mailbox(&self, user: &str, mailbox: &str) -> TestResult<Vec<String>> {
        Ok(common::mailbox_contents(&self.data(), user, mailbox)
            .await?
            .iter()
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .collect())
    }

    /// Waits until `user`'s `mailbox` holds `count` messages; returns them.
    async fn wait_for_mail(
        &self,
        user: &str,
        mailbox: &str,
        count: usize,
        limit: Duration,
    ) -> TestResult<Vec<String>> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let messages = self.mailbox(user, mailbox).await?;
            if messages.len() >= count {
                return Ok(messages);
            }
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "{user} {mailbox} has {} message(s), expected {count}; queue:\n{}",
                    messages.len(),
                    self.admin(&["queue", "list"]).unwrap_or_default()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `queue list` output satisfies `done`; returns it.
    async fn wait_for_queue(&self, limit: Duration, done: impl Fn(&str) -> bool) -> TestResult<String> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let queue = self.admin(&["queue", "list"])?;
            if done(&queue) {
                return Ok(queue);
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("queue did not reach the expected state:\n{queue}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The TLS results (TLS-RPT counts) this node's store holds.
    async fn tls_results(&self) -> TestResult<Vec<sealmail_store::TlsResultCount>> {
        let store = ctx(
            sealmail_store::SqliteStore::open(&self.data(), 4).await,
            "open store",
        )?;
        ctx(
            sealmail_store::ReportStore::tls_results(&store).await,
            "tls results",
        )
    }

    fn queue_ids(&self) -> TestResult<Vec<String>> {
        Ok(self
            .admin(&["queue", "list"])?
            .lines()
            .filter(|l| !l.starts_with(' ') && l.contains(" bytes from "))
            .filter_map(|l| l.split(' ').next().map(str::to_string))
            .collect())
    }
}

/// The sender side's `[dns]` and `[delivery]` sections: the fixture as resolver (its AD bit
/// trusted), the receiver's mx port for MX hosts, the CA, fast retries.
/// `more` adds `[delivery]` keys or replaces the defaults here.
fn sender_extra(dns: &DnsServer, receiver_mx_port: u16, ca_file: &Path, more: &str) -> String {
    let defaults = [
        format!("smtp_port = {receiver_mx_port}"),
        format!("trust_anchors = \"{}\"", ca_file.display()),
        "retry_base_secs = 1".to_string(),
        "retry_max_secs = 2".to_string(),
        "connect_timeout_secs = 5".to_string(),
        "command_timeout_secs = 20".to_string(),
    ];
    let mut delivery = String::from("[delivery]\n");
    for line in defaults {
        let key = line.split(' ').next().unwrap_or_default();
        if !more.lines().any(|l| l.starts_with(&format!("{key} "))) {
            delivery.push_str(&line);
            delivery.push('\n');
        }
    }
    delivery.push_str(more);
    format!(
        "{}trust_ad_bit = true\n\n{delivery}",
        common::dns_section(dns.addr())
    )
}

/// The DNS of both domains: MX, A, SPF and DMARC; DKIM keys come from `Node::publish`.
fn zone(dns: &DnsServer) {
    // These tests change records while the servers run: nothing may be cached.
    dns.set_ttl(0);
    for domain in ["a.test", "b.test"] {
        dns.add_mx(domain, 10, &format!("mail.{domain}"));
        dns.add_a(&format!("mail.{domain}"), [127, 0, 0, 1].into());
    }
    dns.add_txt("a.test", "v=spf1 ip4:127.0.0.0/8 -all");
    dns.add_txt("_dmarc.a.test", "v=DMARC1; p=reject");
}

/// The DNS fixture with both zones, a test CA the senders trust, and a folder with its file.
struct Base {
    dns: DnsServer,
    ca: TestCa,
    work: tempfile::TempDir,
    ca_file: PathBuf,
}

impl Base {
    async fn new() -> TestResult<Base> {
        let dns = DnsServer::start().await?;
        zone(&dns);
        let ca = TestCa::new("sealmail delivery test CA")?;
        let work = ctx(tempfile::tempdir(), "tempdir")?;
        let ca_file = work.path().join("ca.pem");
        ca.write(&ca_file)?;
        Ok(Base {
            dns,
            ca,
            work,
            ca_file,
        })
    }

    /// An MTA-STS `enforce` policy for b.test (MX `mail.b.test`), served over HTTPS with a
    /// certificate from the senders' CA, and its TXT record.
    async fn mta_sts_enforce(&self) -> TestResult<HttpsServer> {
        let policy_cert = self.ca.issue(&["mta-sts.b.test"], self.work.path(), "mta-sts")?;
        let https = HttpsServer::start(&policy_cert, &sts_policy("enforce")).await?;
        self.dns.add_a("mta-sts.b.test", [127, 0, 0, 1].into());
        self.dns.add_txt("_mta-sts.b.test", "v=STSv1; id=1");
        Ok(https)
    }

    /// b.test with bob, its certificate from `ca` (self-signed when `None`); not started.
    fn b(&self, ca: Option<&TestCa>) -> TestResult<Node> {
        Node::new("b.test", &["bob"], ca, &common::dns_section(self.dns.addr()))
    }

    /// a.test with alice, delivering to MX hosts on `mx_port` with `more` in `[delivery]`, its
    /// DKIM keys published; not started.
    fn a(&self, mx_port: u16, more: &str) -> TestResult<Node> {
        let a = Node::new(
            "a.test",
            &["alice"],
            Some(&self.ca),
            &sender_extra(&self.dns, mx_port, &self.ca_file, more),
        )?;
        a.publish(&self.dns)?;
        Ok(a)
    }
}

struct World {
    base: Base,
    a: Node,
    b: Node,
}

/// a.test and b.test, both started. `b_ca`: whether b's certificate is CA-issued (else
/// self-signed, which PKIX-requiring policies must refuse).
async fn world(b_ca: bool, a_extra: &str) -> TestResult<World> {
    let base = Base::new().await?;
    let mut b = base.b(b_ca.then_some(&base.ca))?;
    let mut a = base.a(b.mx.port(), a_extra)?;
    b.start().await?;
    a.start().await?;
    Ok(World { base, a, b })
}

fn header_value<'m>(message: &'m str, name: &str) -> Option<&'m str> {
    let header = message.split("\r\n\r\n").next()?;
    let start = header
        .find(&format!("\r\n{name}:"))
        .map(|p| p + 2)
        .or_else(|| header.starts_with(&format!("{name}:")).then_some(0))?;
    let rest = &header[start..];
    let end = rest
        .match_indices("\r\n")
        .find(|(i, _)| !rest[i + 2..].starts_with([' ', '\t']))
        .map(|(i, _)| i)
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_from_a_reaches_b_over_verified_tls_signed_and_passing_every_check() -> TestResult {
    let w = world(true, "").await?;
    w.a.submit("alice@a.test", "bob@b.test", "first", false).await?;
    let inbox =
        w.b.wait_for_mail("bob@b.test", "INBOX", 1, Duration::from_secs(20))
            .await?;
    let message = &inbox[0];
    let results = header_value(message, "Authentication-Results").ok_or(format!("no A-R:\n{message}"))?;
    assert!(
        results.starts_with("Authentication-Results: mail.b.test;"),
        "{results}"
    );
    assert!(results.contains("dkim=pass"), "{results}");
    assert!(
        results.contains("spf=pass") && results.contains("smtp.mailfrom=alice@a.test"),
        "{results}"
    );
    assert!(results.contains("dmarc=pass header.from=a.test"), "{results}");
    // b's Received line says the hop from a was TLS (RFC 8314 tls clause).
    let received = header_value(message, "Received").ok_or("no Received")?;
    assert!(
        received.contains("from mail.a.test") && received.contains("tls TLS_"),
        "{received}"
    );
    assert!(message.contains("Subject: first"));
    // a's queue is empty once b said 250.
    w.a.wait_for_queue(Duration::from_secs(10), |q| q.contains("the queue is empty"))
        .await?;

    // Bob reads it over IMAP.
    let mut imap = LineClient::new(
        tls_connect(
            w.b.imap,
            client_config(&[&w.b.trust], rustls::DEFAULT_VERSIONS, &[])?,
            "mail.b.test",
        )
        .await?,
    );
    imap.line().await?;
    let login = imap
        .imap("l", &format!("LOGIN bob@b.test \"{}\"", common::TEST_PASSWORD))
        .await?;
    assert!(login.last().is_some_and(|l| l.starts_with("l OK")), "{login:?}");
    imap.imap("s", "SELECT INBOX").await?;
    let fetched = imap
        .imap("f", "FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]")
        .await?;
    assert!(
        fetched.iter().any(|l| l.contains("Subject: first")),
        "{fetched:?}"
    );

    // A REQUIRETLS message needs more than a certificate valid for the MX name: the name came
    // from an MX answer no one vouched for, and a forged MX naming the attacker's own host
    // (with a valid certificate for it) would pass that check (RFC 8689 4.2.1). Bounced.
    w.a.submit("alice@a.test", "bob@b.test", "required", true).await?;
    let bounce =
        w.a.wait_for_mail("alice@a.test", "INBOX", 1, Duration::from_secs(20))
            .await?;
    assert!(
        bounce[0].contains("Status: 5.7.30") && bounce[0].contains("not authenticated"),
        "{}",
        bounce[0]
    );
    // With b.test's MX answer DNSSEC-validated, the same message takes the same way: b's
    // certificate verifies and b offers REQUIRETLS.
    w.base.dns.secure("b.test");
    w.a.submit("alice@a.test", "bob@b.test", "required-2", true)
        .await?;
    let inbox =
        w.b.wait_for_mail("bob@b.test", "INBOX", 2, Duration::from_secs(20))
            .await?;
    assert!(inbox.iter().any(|m| m.contains("Subject: required-2")));
    assert!(!inbox.iter().any(|m| m.contains("Subject: required\r\n")));
    Ok(())
}

/// MTA-STS policy text for b.test.
fn sts_policy(mode: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: mail.b.test\r\nmax_age: 86400\r\n")
}

/// The policy a sealmail receiver serves on its `https` listener, fetched by a sealmail sender
/// through the records `domain dns` printed, enforced, and counted for TLS-RPT as an MTA-STS
/// success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealmail_receivers_own_mta_sts_policy_is_fetched_and_enforced() -> TestResult {
    let base = Base::new().await?;
    let mut b = base.b(Some(&base.ca))?;
    // `_mta-sts.b.test` (its id) and `mta-sts.b.test` (a CNAME to mail.b.test), as printed.
    b.publish(&base.dns)?;
    let mut a = base.a(b.mx.port(), &format!("mta_sts_port = {}\n", b.https.port()))?;
    b.start().await?;
    a.start().await?;

    a.submit("alice@a.test", "bob@b.test", "under b's own policy", false)
        .await?;
    let delivered = b
        .wait_for_mail("bob@b.test", "INBOX", 1, Duration::from_secs(20))
        .await?;
    assert_eq!(delivered.len(), 1);
    let results = a.tls_results().await?;
    assert!(
        results.iter().any(|r| r.result.policy_domain == "b.test"
            && r.result.policy_type == "sts"
            && r.result.mx_host == "mail.b.test"
            && r.result.result_type == "success"),
        "{results:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mta_sts_enforce_refuses_an_unverifiable_certificate_and_testing_delivers() -> TestResult {
    let base = Base::new().await?;
    let dns = &base.dns;
    let https = base.mta_sts_enforce().await?;

    // b's certificate is self-signed: no CA the sender trusts vouches for it.
    let mut b = base.b(None)?;
    let mut a = base.a(b.mx.port(), &format!("mta_sts_port = {}\n", https.addr.port()))?;
    b.start().await?;
    a.start().await?;

    a.submit("alice@a.test", "bob@b.test", "enforced", false).await?;
    let queue = a
        .wait_for_queue(Duration::from_secs(20), |q| q.contains("attempts=2"))
        .await?;
    assert!(queue.contains("bob@b.test pending"), "{queue}");
    assert!(
        queue.to_lowercase().contains("certificate"),
        "the reason names the certificate: {queue}"
    );
    assert!(
        https.requests().iter().any(|p| p == "/.well-known/mta-sts.txt"),
        "{:?}",
        https.requests()
    );
    assert!(
        b.mailbox("bob@b.test", "INBOX").await?.is_empty(),
        "never sent under enforce"
    );
    // Counted for TLS-RPT as an MTA-STS failure of that MX host.
    let results = a.tls_results().await?;
    assert!(
        results.iter().any(|r| r.result.policy_domain == "b.test"
            && r.result.policy_type == "sts"
            && r.result.mx_host == "mail.b.test"
            && r.result.result_type == "certificate-not-trusted"),
        "{results:?}"
    );
    // The day's RFC 8460 report for b.test says so.
    let day = results.first().map(|r| r.day.clone()).unwrap_or_default();
    let report = a.admin(&["tls-report", "--day", &day])?;
    let report: serde_json::Value = ctx(serde_json::from_str(report.trim()), "report JSON")?;
    let policy = &report["policies"][0];
    assert_eq!(policy["policy"]["policy-type"], "sts", "{report}");
    assert_eq!(policy["policy"]["policy-domain"], "b.test", "{report}");
    assert_eq!(policy["policy"]["mx-host"][0], "mail.b.test", "{report}");
    assert!(
        policy["policy"]["policy-string"]
            .as_array()
            .is_some_and(|lines| lines.iter().any(|l| l == "mode: enforce")),
        "{report}"
    );
    assert!(
        policy["summary"]["total-failure-session-count"].as_i64() >= Some(1),
        "{report}"
    );
    assert_eq!(
        policy["failure-details"][0]["result-type"], "certificate-not-trusted",
        "{report}"
    );
    assert_eq!(report["date-range"]["start-datetime"], format!("{day}T00:00:00Z"));

    // The policy outlives a restart (RFC 8461 5.1): a restarted sender whose view of the
    // policy is taken away (the TXT record gone, the policy server failing, as an attacker on
    // the path would arrange) still enforces it until max_age ends.
    dns.remove("_mta-sts.b.test");
    https.set_failing(true);
    let mut process = a.process.take().ok_or("a is not running")?;
    process.signal(nix::sys::signal::Signal::SIGTERM)?;
    process.wait_exit(Duration::from_secs(10)).await?;
    a.start().await?;
    a.admin(&["queue", "flush"])?;
    let attempts = a.admin(&["queue", "list"])?;
    let before: usize = attempts
        .split("attempts=")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .ok_or(format!("no attempts in {attempts}"))?;
    let queue = a
        .wait_for_queue(Duration::from_secs(20), |q| {
            q.contains(&format!("attempts={}", before + 1))
        })
        .await?;
    assert!(queue.to_lowercase().contains("certificate"), "{queue}");
    assert!(
        b.mailbox("bob@b.test", "INBOX").await?.is_empty(),
        "still never sent"
    );
    https.set_failing(false);

    // The same policy in testing mode reports but delivers (a new id makes senders refetch).
    https.set_body(&sts_policy("testing"));
    dns.remove("_mta-sts.b.test");
    dns.add_txt("_mta-sts.b.test", "v=STSv1; id=2");
    let inbox = b
        .wait_for_mail("bob@b.test", "INBOX", 1, Duration::from_secs(20))
        .await?;
    assert!(inbox[0].contains("Subject: enforced"));
    // Testing mode delivered, but the unverifiable certificate is still reported, not a success.
    let results = a.tls_results().await?;
    assert!(
        !results
            .iter()
            .any(|r| r.result.policy_domain == "b.test" && r.result.result_type == "success"),
        "{results:?}"
    );
    a.wait_for_queue(Duration::from_secs(10), |q| q.contains("the queue is empty"))
        .await?;
    Ok(())
}

/// The TLSA 3 1 1 data of a PEM certificate file: SHA-256 of its SubjectPublicKeyInfo.
fn tlsa_311(cert: &Path) -> TestResult<Vec<u8>> {
    let der = sealmail_testkit::pem_certificate_der(cert)?;
    let spki = sealmail_delivery::verify::spki(&der).ok_or("no SPKI")?;
    Ok(sha2::Sha256::digest(&spki).to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_refuses_a_tlsa_mismatch_and_delivers_on_a_match_without_any_ca() -> TestResult {
    let base = Base::new().await?;
    let dns = &base.dns;
    // b's certificate is self-signed: only DANE can vouch for it.
    let mut b = base.b(None)?;
    let mut a = base.a(b.mx.port(), "")?;
    let tlsa_name = format!("_{}._tcp.mail.b.test", b.mx.port());
    dns.add(&tlsa_name, Rec::Tlsa(3, 1, 1, vec![0xAB; 32]));
    // DANE needs the MX answer validated too (RFC 7672 2.2.1).
    dns.secure(&tlsa_name);
    dns.secure("b.test");
    b.start().await?;
    a.start().await?;

    a.submit("alice@a.test", "bob@b.test", "dane", false).await?;
    let queue = a
        .wait_for_queue(Duration::from_secs(20), |q| q.contains("attempts=2"))
        .await?;
    assert!(
        queue.contains("bob@b.test pending") && queue.contains("DANE"),
        "{queue}"
    );
    assert!(
        b.mailbox("bob@b.test", "INBOX").await?.is_empty(),
        "never sent on a mismatch"
    );

    // The right key: delivered, although no CA vouches for b's certificate.
    dns.remove(&tlsa_name);
    dns.add(&tlsa_name, Rec::Tlsa(3, 1, 1, tlsa_311(&b.cert())?));
    let inbox = b
        .wait_for_mail("bob@b.test", "INBOX", 1, Duration::from_secs(20))
        .await?;
    assert!(inbox[0].contains("Subject: dane"));

    // The same records without the AD bit are not DANE: opportunistic TLS delivers too, and a
    // mismatch does not matter then. (Shown by the next message going through with a wrong
    // record that is not secure.)
    dns.clear();
    zone(dns);
    a.publish(dns)?;
    dns.add(&tlsa_name, Rec::Tlsa(3, 1, 1, vec![0xAB; 32]));
    a.submit("alice@a.test", "bob@b.test", "insecure-tlsa", false)
        .await?;
    b.wait_for_mail("bob@b.test", "INBOX", 2, Duration::from_secs(20))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_mx_and_unknown_domains_bounce_with_the_reason() -> TestResult {
    let w = world(true, "").await?;
    // c.test says it takes no mail (RFC 7505); nowhere.test does not exist.
    w.base.dns.add_mx("c.test", 0, ".");
    w.a.submit("alice@a.test", "carol@c.test", "nullmx", false)
        .await?;
    w.a.submit("alice@a.test", "nobody@nowhere.test", "nxdomain", false)
        .await?;
    let bounces =
        w.a.wait_for_mail("alice@a.test", "INBOX", 2, Duration::from_secs(20))
            .await?;
    let all = bounces.join("\n");
    assert!(
        all.contains("Content-Type: multipart/report; report-type=delivery-status"),
        "{all}"
    );
    assert!(
        all.contains("Final-Recipient: rfc822; carol@c.test") && all.contains("Status: 5.1.10"),
        "{all}"
    );
    assert!(all.contains("null MX"), "{all}");
    assert!(
        all.contains("Final-Recipient: rfc822; nobody@nowhere.test") && all.contains("does not exist"),
        "{all}"
    );
    assert!(
        all.contains("Subject: nullmx") && all.contains("Subject: nxdomain"),
        "original headers: {all}"
    );
    w.a.wait_for_queue(Duration::from_secs(10), |q| q.contains("the queue is empty"))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_refusal_is_retried_until_delivered() -> TestResult {
    let w = world(true, "").await?;
    // b cannot finish DMARC for a.test (its DNS times out), so it answers 451: a retries.
    w.base.dns.remove("_dmarc.a.test");
    w.base.dns.timeout("_dmarc.a.test");
    w.a.submit("alice@a.test", "bob@b.test", "retried", false).await?;
    let queue =
        w.a.wait_for_queue(Duration::from_secs(30), |q| q.contains("attempts=2"))
            .await?;
    assert!(
        queue.contains("bob@b.test pending") && queue.contains("451"),
        "{queue}"
    );
    assert!(w.b.mailbox("bob@b.test", "INBOX").await?.is_empty());
    // b's DNS recovers; the next retry gets through.
    w.base.dns.clear();
    zone(&w.base.dns);
    w.a.publish(&w.base.dns)?;
    let inbox =
        w.b.wait_for_mail("bob@b.test", "INBOX", 1, Duration::from_secs(30))
            .await?;
    assert!(inbox[0].contains("Subject: retried"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_show_retry_and_delete() -> TestResult {
    // b is configured but never started: everything for it waits in the queue.
    let base = Base::new().await?;
    let b = base.b(Some(&base.ca))?;
    let mut a = base.a(b.mx.port(), "retry_base_secs = 3600\n")?;
    a.start().await?;
    a.submit("alice@a.test", "bob@b.test", "kept", false).await?;
    a.submit("alice@a.test", "bob@b.test", "dropped", false).await?;
    let queue = a
        .wait_for_queue(Duration::from_secs(20), |q| q.matches("attempts=1").count() == 2)
        .await?;
    let ids = a.queue_ids()?;
    assert_eq!(ids.len(), 2, "{queue}");
    let show = a.admin(&["queue", "show", &ids[0]])?;
    assert!(
        show.contains("bob@b.test pending attempts=1") && show.contains("Subject: kept"),
        "{show}"
    );
    assert!(
        show.contains("DKIM-Signature:"),
        "the queued copy is the signed one: {show}"
    );

    let deleted = a.admin(&["queue", "delete", &ids[1]])?;
    assert!(deleted.contains("deleted"), "{deleted}");
    assert_eq!(a.queue_ids()?, vec![ids[0].clone()]);
    let (code, _, err) = common::admin(a.dir.path(), &a.config, &["queue", "delete", &ids[1]])?;
    assert!(code != 0 && err.contains("no queued message"), "{err}");

    // With an hour to the next attempt, only `queue retry` makes it try again now.
    let retried = a.admin(&["queue", "retry", &ids[0]])?;
    assert!(retried.contains("1 recipient"), "{retried}");
    a.wait_for_queue(Duration::from_secs(20), |q| q.contains("attempts=2"))
        .await?;
    // `queue flush` does the same for the whole queue.
    let flushed = a.admin(&["queue", "flush"])?;
    assert!(flushed.contains("1 pending recipient"), "{flushed}");
    a.wait_for_queue(Duration::from_secs(20), |q| q.contains("attempts=3"))
        .await?;
    Ok(())
}

/// aiosmtpd (an independent SMTP server, from scripts/test.sh's venv) on `port`: no STARTTLS,
/// no REQUIRETLS; it writes what it receives to the Maildir `maildir`.
async fn plaintext_receiver(port: u16, maildir: &Path) -> TestResult<tokio::process::Child> {
    let python = std::env::var("SEALMAIL_PYTHON").unwrap_or_else(|_| "python3".into());
    let child = ctx(
        tokio::process::Command::new(&python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir)
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn(),
        "aiosmtpd (scripts/test.sh installs it into .test-venv and exports SEALMAIL_PYTHON)",
    )?;
    sealmail_testkit::wait_for_port(SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(20))
        .await?;
    Ok(child)
}

fn maildir_messages(maildir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        if let Ok(entries) = std::fs::read_dir(maildir.join(sub)) {
            for entry in entries.flatten() {
                if let Ok(text) = std::fs::read_to_string(entry.path()) {
                    out.push(text);
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_starttls_gets_plaintext_only_when_nothing_requires_tls() -> TestResult {
    let base = Base::new().await?;
    let (dns, work) = (&base.dns, &base.work);
    dns.add_a("mail.plain.test", [127, 0, 0, 1].into());
    let port = common::free_addr()?.port();
    let maildir = work.path().join("maildir");
    let _receiver = plaintext_receiver(port, &maildir).await?;
    // Static routes to the receiver; strict.test also requires TLS.
    let mut a = base.a(
        25,
        &format!(
            "require_tls = [\"strict.test\"]\n\n[delivery.routes]\n\"plain.test\" = \"mail.plain.test:{port}\"\n\"strict.test\" = \"mail.plain.test:{port}\"\n"
        ),
    )?;
    a.start().await?;

    // Opportunistic (RFC 7435): no STARTTLS offered, no policy: sent in the clear.
    a.submit("alice@a.test", "user@plain.test", "opportunistic", false)
        .await?;
    a.wait_for_queue(Duration::from_secs(20), |q| q.contains("the queue is empty"))
        .await?;
    let received = maildir_messages(&maildir);
    assert_eq!(received.len(), 1, "{received:?}");
    assert!(received[0].contains("Subject: opportunistic") && received[0].contains("DKIM-Signature:"));

    // require_tls: never in the clear; it waits and says why.
    a.submit("alice@a.test", "user@strict.test", "strict", false)
        .await?;
    let queue = a
        .wait_for_queue(Duration::from_secs(20), |q| q.contains("attempts=2"))
        .await?;
    assert!(
        queue.contains("user@strict.test pending") && queue.contains("does not offer STARTTLS"),
        "{queue}"
    );

    // REQUIRETLS: not sent, bounced at once with the reason.
    a.submit("alice@a.test", "user@plain.test", "requiretls", true)
        .await?;
    let bounces = a
        .wait_for_mail("alice@a.test", "INBOX", 1, Duration::from_secs(20))
        .await?;
    assert!(
        bounces[0].contains("Final-Recipient: rfc822; user@plain.test"),
        "{}",
        bounces[0]
    );
    assert!(
        bounces[0].contains("Status: 5.7.30") && bounces[0].contains("offers no TLS"),
        "{}",
        bounces[0]
    );
    assert_eq!(
        maildir_messages(&maildir).len(),
        1,
        "the REQUIRETLS message never left"
    );

    // The refusal under require_tls is counted for TLS-RPT.
    let results = a.tls_results().await?;
    assert!(
        results.iter().any(|r| r.result.policy_domain == "strict.test"
            && r.result.result_type == "starttls-not-supported"
            && r.count >= 1),
        "{results:?}"
    );
    Ok(())
}

/// The attempts `queue list` shows for `address`, if it is pending.
fn attempts_of(queue: &str, address: &str) -> Option<u32> {
    queue
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{address} pending attempts=")))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
}

/// RFC 3461/3464 notices beyond failures: `relayed` for NOTIFY=SUCCESS when the receiving
/// server (aiosmtpd) offers no DSN, one `delayed` notice for a recipient that waits past
/// `delay_warning_secs`, none when its NOTIFY asks for failures only. (A server that offers
/// DSN gets the NOTIFY instead: the Postfix test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsn_notices_for_delays_and_for_servers_without_dsn() -> TestResult {
    let base = Base::new().await?;
    let (dns, work) = (&base.dns, &base.work);
    dns.add_a("mail.plain.test", [127, 0, 0, 1].into());
    let port = common::free_addr()?.port();
    let closed = common::free_addr()?.port();
    let maildir = work.path().join("maildir");
    let _receiver = plaintext_receiver(port, &maildir).await?;
    let mut a = base.a(
        25,
        &format!(
            "delay_warning_secs = 1\n\n[delivery.routes]\n\"plain.test\" = \"mail.plain.test:{port}\"\n\"late.test\" = \"mail.plain.test:{closed}\"\n"
        ),
    )?;
    a.start().await?;
    let inbox = || a.mailbox("alice@a.test", "INBOX");

    // aiosmtpd offers no DSN: a says the message was relayed.
    a.submit_with(
        "alice@a.test",
        "user@plain.test",
        "to-plain",
        "",
        " NOTIFY=SUCCESS",
    )
    .await?;
    let notices = a
        .wait_for_mail("alice@a.test", "INBOX", 1, Duration::from_secs(20))
        .await?;
    for needed in [
        "Subject: Successful Mail Delivery Report",
        "Final-Recipient: rfc822; user@plain.test",
        "Action: relayed",
        "Status: 2.0.0",
        "Remote-MTA: dns; mail.plain.test",
        "Subject: to-plain",
    ] {
        assert!(notices[0].contains(needed), "{needed}:\n{}", notices[0]);
    }

    // A recipient that cannot be reached: one "delayed" notice, however many attempts follow;
    // none for the recipient whose NOTIFY asks for failures only.
    a.submit_with(
        "alice@a.test",
        "quiet@late.test",
        "late-quiet",
        "",
        " NOTIFY=FAILURE",
    )
    .await?;
    a.submit("alice@a.test", "user@late.test", "late", false).await?;
    let notices = a
        .wait_for_mail("alice@a.test", "INBOX", 2, Duration::from_secs(20))
        .await?;
    let delayed = notices
        .iter()
        .find(|n| n.contains("Action: delayed"))
        .ok_or(format!("no delayed notice: {notices:?}"))?;
    for needed in [
        "Subject: Delayed Mail (still being retried)",
        "Final-Recipient: rfc822; user@late.test",
        "Will-Retry-Until: ",
        "Subject: late",
    ] {
        assert!(delayed.contains(needed), "{needed}:\n{delayed}");
    }
    a.wait_for_queue(Duration::from_secs(30), |q| {
        attempts_of(q, "user@late.test").is_some_and(|n| n >= 4)
            && attempts_of(q, "quiet@late.test").is_some_and(|n| n >= 4)
    })
    .await?;
    let notices = inbox().await?;
    assert_eq!(notices.len(), 2, "one delayed notice in all: {notices:?}");
    assert!(
        !notices.iter().any(|n| n.contains("quiet@late.test")),
        "{notices:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_never_loses_queued_mail() -> TestResult {
    let base = Base::new().await?;
    let mut b = base.b(Some(&base.ca))?;
    let mut a = base.a(b.mx.port(), "")?;
    a.start().await?;

    // b is down: five messages wait in a's queue; a is killed without warning.
    for i in 0..5 {
        a.submit("alice@a.test", "bob@b.test", &format!("waiting-{i}"), false)
            .await?;
    }
    a.wait_for_queue(Duration::from_secs(20), |q| q.matches("attempts=1").count() >= 5)
        .await?;
    let mut process = a.process.take().ok_or("a is not running")?;
    process.signal(nix::sys::signal::Signal::SIGKILL)?;
    process.wait_exit(Duration::from_secs(10)).await?;

    // b comes up; a restarts, and in the middle of sending twenty more, is killed again.
    b.start().await?;
    a.start().await?;
    for i in 0..20 {
        a.submit("alice@a.test", "bob@b.test", &format!("busy-{i}"), false)
            .await?;
    }
    let mut process = a.process.take().ok_or("a is not running")?;
    process.signal(nix::sys::signal::Signal::SIGKILL)?;
    process.wait_exit(Duration::from_secs(10)).await?;
    a.start().await?;

    // Every message arrives (at least once; a repeat is allowed only for the crash window).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let expected: Vec<String> = (0..5)
        .map(|i| format!("waiting-{i}"))
        .chain((0..20).map(|i| format!("busy-{i}")))
        .collect();
    loop {
        let inbox = b.mailbox("bob@b.test", "INBOX").await?;
        let missing: Vec<&String> = expected
            .iter()
            .filter(|s| !inbox.iter().any(|m| m.contains(&format!("Subject: {s}\r\n"))))
            .collect();
        if missing.is_empty() {
            assert!(
                inbox.len() <= 25 + 20,
                "duplicates beyond the crash window: {}",
                inbox.len()
            );
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "lost after kill -9: {missing:?}\n{}",
                a.admin(&["queue", "list"])?
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    a.wait_for_queue(Duration::from_secs(20), |q| q.contains("the queue is empty"))
        .await?;
    Ok(())
}

/// A Postfix instance of its own (tests/interop/postfix-instance.sh; root and Debian's
/// postfix, which scripts/test.sh installs); stopped and removed when dropped.
struct Postfix {
    name: String,
    port: u16,
}

impl Postfix {
    fn script() -> &'static str {
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/postfix-instance.sh")
    }

    /// Listens on `port`; relays mail for each domain of `relays` to its address.
    async fn start(port: u16, relays: &[(&str, SocketAddr)]) -> TestResult<Postfix> {
        let name = format!("sm{port}");
        let mut args = vec![
            Self::script().to_string(),
            "start".into(),
            name.clone(),
            port.to_string(),
        ];
        for (domain, to) in relays {
            args.push(domain.to_string());
            args.push(to.to_string());
        }
        let out = ctx(
            tokio::process::Command::new("bash").args(&args).output().await,
            "postfix-instance.sh",
        )?;
        if !out.status.success() {
            return Err(format!(
                "Postfix did not start (scripts/test.sh installs postfix; the test needs root): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(Postfix { name, port })
    }

    fn maildir(&self) -> PathBuf {
        PathBuf::from(format!("/var/lib/postfix-{}-vmail/postfix.test/carol", self.name))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(format!("/var/log/postfix-{}.log", self.name)).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .args([Self::script(), "stop", &self.name])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_takes_our_mail_over_tls_and_relays_mail_to_us_over_tls() -> TestResult {
    // sealmail -> Postfix: a's static route for postfix.test; Postfix offers STARTTLS.
    let port = common::free_addr()?.port();
    let w = world(
        true,
        &format!("\n[delivery.routes]\n\"postfix.test\" = \"mail.postfix.test:{port}\"\n"),
    )
    .await?;
    w.base.dns.add_a("mail.postfix.test", [127, 0, 0, 1].into());
    // Postfix relays b.test mail to b, and a.test mail (its DSNs) to a.
    let postfix = Postfix::start(port, &[("b.test", w.b.mx), ("a.test", w.a.mx)]).await?;
    let a = &w.a;
    // Postfix offers DSN: it gets NOTIFY=SUCCESS, ENVID and ORCPT, and reports the delivery
    // itself. The ENVID holds an encoded space and "+": sent decoded, the space would end the
    // parameter and Postfix would refuse the MAIL command.
    a.submit_with(
        "alice@a.test",
        "carol@postfix.test",
        "to-postfix",
        " ENVID=QQ+20314+2B1",
        " NOTIFY=SUCCESS ORCPT=rfc822;carol@postfix.test",
    )
    .await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let delivered = loop {
        if let Some(message) = maildir_messages(&postfix.maildir()).into_iter().next() {
            break message;
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "Postfix did not store the message; queue:\n{}\nPostfix log:\n{}",
                a.admin(&["queue", "list"])?,
                postfix.log()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(delivered.contains("Subject: to-postfix") && delivered.contains("DKIM-Signature:"));
    // Postfix's Received line (smtpd_tls_received_header) records the TLS we negotiated.
    assert!(
        delivered.contains("(using TLSv1.3 with cipher") || delivered.contains("(using TLSv1.2 with cipher"),
        "{delivered}"
    );
    a.wait_for_queue(Duration::from_secs(10), |q| q.contains("the queue is empty"))
        .await?;
    let notices = a
        .wait_for_mail("alice@a.test", "INBOX", 1, Duration::from_secs(30))
        .await
        .map_err(|e| format!("{e}\nPostfix log:\n{}", postfix.log()))?;
    let notice = &notices[0];
    for needed in [
        "Reporting-MTA: dns; mail.postfix.test",
        // Postfix got the ENVID intact (it shows it decoded).
        "Original-Envelope-Id: QQ 314+1",
        "Original-Recipient: rfc822;carol@postfix.test",
        "Action: delivered",
    ] {
        assert!(notice.contains(needed), "{needed}:\n{notice}");
    }
    assert_eq!(notices.len(), 1, "no relayed notice of a's own: {notices:?}");

    // Postfix -> sealmail: Postfix relays b.test mail to b with mandatory TLS.
    let tcp = ctx(
        tokio::net::TcpStream::connect(("127.0.0.1", postfix.port)).await,
        "connect to Postfix",
    )?;
    let mut c = LineClient::new(tcp);
    c.smtp_reply().await?;
    c.dialog(&[
        ("EHLO client.postfix.test", "250"),
        ("MAIL FROM:<dave@postfix.test>", "250"),
        ("RCPT TO:<bob@b.test>", "250"),
        ("DATA", "354"),
    ])
    .await?;
    c.command(
        "From: <dave@postfix.test>\r\nTo: <bob@b.test>\r\nSubject: from-postfix\r\nDate: Sun, 29 Nov 2026 12:00:00 +0000\r\nMessage-ID: <p1@postfix.test>\r\n\r\nRelayed by Postfix.\r\n.",
        "250",
    )
    .await?;
    c.command("QUIT", "221").await?;
    let inbox =
        w.b.wait_for_mail("bob@b.test", "INBOX", 1, Duration::from_secs(30))
            .await
            .map_err(|e| format!("{e}\nPostfix log:\n{}", postfix.log()))?;
    let message = &inbox[0];
    assert!(message.contains("Subject: from-postfix"), "{message}");
    let received = header_value(message, "Received").ok_or("no Received")?;
    assert!(
        received.contains("from mail.postfix.test") && received.contains("tls TLS_"),
        "{received}"
    );
    assert!(
        postfix.log().contains("TLS connection established to 127.0.0.1"),
        "Postfix logged the TLS session:\n{}",
        postfix.log()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smarthost_gets_everything_over_verified_tls_with_authentication() -> TestResult {
    let base = Base::new().await?;
    let work = &base.work;
    // b is the smarthost: alice@a.test has an account there too.
    let mut b = base.b(Some(&base.ca))?;
    b.admin(&["domain", "add", "a.test"])?;
    b.admin(&["user", "add", "alice@a.test", "--password-stdin"])?;
    let password_file = work.path().join("relay-password");
    ctx(
        sealmail_safeio::write_private(&password_file, format!("{}\n", common::TEST_PASSWORD).as_bytes()),
        "password file",
    )?;
    // smtp_port 25: were the relay not used, nothing would arrive.
    let relay = format!(
        "relay = \"mail.b.test:{}\"\nrelay_tls = \"implicit\"\nrelay_username = \"alice@a.test\"\nrelay_password_file = \"{}\"\n",
        b.submission.port(),
        password_file.display()
    );
    let mut a = base.a(25, &relay)?;
    // A password file others can read: the server refuses to start and says how to fix it.
    use std::os::unix::fs::PermissionsExt;
    ctx(
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o644)),
        "chmod",
    )?;
    let refused = a
        .start()
        .await
        .err()
        .ok_or("started with a readable password file")?;
    assert!(
        refused.contains("relay password") && refused.contains("0600"),
        "{refused}"
    );
    ctx(
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)),
        "chmod",
    )?;
    b.start().await?;
    a.start().await?;
    a.submit("alice@a.test", "bob@b.test", "via-smarthost", false)
        .await?;
    let inbox = b
        .wait_for_mail("bob@b.test", "INBOX", 1, Duration::from_secs(20))
        .await?;
    let received = header_value(&inbox[0], "Received").ok_or("no Received")?;
    // b's submission took it from a, authenticated, over TLS.
    assert!(
        received.contains("from mail.a.test") && received.contains("with ESMTPSA"),
        "{received}"
    );
    a.wait_for_queue(Duration::from_secs(10), |q| q.contains("the queue is empty"))
        .await?;
    // The session was with the smarthost, not with b.test's MX: nothing for b.test's TLS report.
    let results = a.tls_results().await?;
    assert!(results.is_empty(), "{results:?}");

    // A wrong password: nothing is sent, the message waits and says why.
    ctx(
        sealmail_safeio::write_private(&password_file, b"not the password\n"),
        "password file",
    )?;
    let mut process = a.process.take().ok_or("a is not running")?;
    process.signal(nix::sys::signal::Signal::SIGTERM)?;
    process.wait_exit(Duration::from_secs(10)).await?;
    a.start().await?;
    a.submit("alice@a.test", "bob@b.test", "refused", false).await?;
    let queue = a
        .wait_for_queue(Duration::from_secs(20), |q| q.contains("attempts=1"))
        .await?;
    assert!(queue.contains("refused our credentials"), "{queue}");
    assert_eq!(b.mailbox("bob@b.test", "INBOX").await?.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_hosts_are_tried_in_preference_order_and_a_domain_without_mx_is_its_own_mx() -> TestResult {
    let w = world(true, "").await?;
    // b.test's best MX (127.0.0.2) does not answer; the next one is b itself.
    w.base.dns.remove("b.test");
    w.base.dns.add_mx("b.test", 10, "mx-down.b.test");
    w.base.dns.add_mx("b.test", 20, "mail.b.test");
    w.base.dns.add_a("mx-down.b.test", [127, 0, 0, 2].into());
    // implicit.test has no MX, only an address (RFC 5321 5.1 implicit MX); b serves it too.
    w.base.dns.add_a("implicit.test", [127, 0, 0, 1].into());
    w.b.admin(&["domain", "add", "implicit.test"])?;
    w.b.admin(&["user", "add", "carol@implicit.test", "--password-stdin"])?;
    w.a.submit("alice@a.test", "bob@b.test", "second-mx", false)
        .await?;
    w.a.submit("alice@a.test", "carol@implicit.test", "implicit-mx", false)
        .await?;
    let bob =
        w.b.wait_for_mail("bob@b.test", "INBOX", 1, Duration::from_secs(20))
            .await?;
    assert!(bob[0].contains("Subject: second-mx"));
    let carol =
        w.b.wait_for_mail("carol@implicit.test", "INBOX", 1, Duration::from_secs(20))
            .await?;
    assert!(carol[0].contains("Subject: implicit-mx"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_ta_takes_precedence_over_mta_sts_and_requiretls_is_honoured() -> TestResult {
    let base = Base::new().await?;
    let (dns, work) = (&base.dns, &base.work);
    let private_ca = TestCa::new("b's own CA, vouched for by DANE only")?;
    // MTA-STS enforce for b.test: on its own it would refuse b's certificate (unknown CA).
    let https = base.mta_sts_enforce().await?;

    let mut b = base.b(Some(&private_ca))?;
    // b presents its chain with the private CA, and DANE-TA (2 0 1) names that CA.
    let chain_file = b.dir.path().join("tls/0.pem");
    let mut chain = ctx(std::fs::read_to_string(&chain_file), "chain")?;
    chain.push_str(&private_ca.pem);
    ctx(std::fs::write(&chain_file, chain), "chain")?;
    let ca_pem = work.path().join("private-ca.pem");
    private_ca.write(&ca_pem)?;
    let ca_der = sealmail_testkit::pem_certificate_der(&ca_pem)?;
    let tlsa_name = format!("_{}._tcp.mail.b.test", b.mx.port());
    dns.add(
        &tlsa_name,
        Rec::Tlsa(2, 0, 1, sha2::Sha256::digest(&ca_der).to_vec()),
    );
    dns.secure(&tlsa_name);
    dns.secure("b.test");

    let mut a = base.a(b.mx.port(), &format!("mta_sts_port = {}\n", https.addr.port()))?;
    b.start().await?;
    a.start().await?;
    // A REQUIRETLS message: DANE verifies b and b offers REQUIRETLS, so it may go.
    a.submit("alice@a.test", "bob@b.test", "dane-ta", true).await?;
    let inbox = b
        .wait_for_mail("bob@b.test", "INBOX", 1, Duration::from_secs(20))
        .await?;
    assert!(inbox[0].contains("Subject: dane-ta"));
    // Recorded for TLS-RPT as a TLSA success.
    let results = a.tls_results().await?;
    assert!(
        results
            .iter()
            .any(|r| r.result.policy_type == "tlsa" && r.result.result_type == "success"),
        "{results:?}"
    );
    Ok(())
}

/// Gzip-compressed JSON, decompressed and parsed.
fn gunzip_json(compressed: &[u8]) -> TestResult<serde_json::Value> {
    let mut json = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(compressed), &mut json)
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&json).map_err(|e| e.to_string())
}

/// The day's TLS report (RFC 8460) goes to the addresses b.test publishes in
/// `_smtp._tls.b.test`: by mail, as a DKIM-signed `multipart/report` whose gzip-compressed JSON
/// counts the day's sessions, and by HTTPS POST; once per day however often it is asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_reports_go_to_the_published_addresses_once_a_day() -> TestResult {
    let w = world(true, "").await?;
    let cert = w
        .base
        .ca
        .issue(&["reports.b.test"], w.base.work.path(), "reports")?;
    let https = HttpsServer::start(&cert, "thanks").await?;
    let url = format!("https://reports.b.test:{}/tlsrpt", https.addr.port());
    w.base.dns.add_a("reports.b.test", [127, 0, 0, 1].into());
    w.base.dns.add_txt(
        "_smtp._tls.b.test",
        &format!("v=TLSRPTv1; rua=mailto:bob@b.test,{url}"),
    );
    for i in 0..2 {
        w.a.submit("alice@a.test", "bob@b.test", &format!("counted-{i}"), false)
            .await?;
    }
    w.b.wait_for_mail("bob@b.test", "INBOX", 2, Duration::from_secs(20))
        .await?;
    let today = time::OffsetDateTime::now_utc().date().to_string();
    let out = w.a.admin(&["tls-report", "--send", "--day", &today])?;
    assert!(out.contains("b.test: queued to bob@b.test"), "{out}");
    assert!(out.contains(&format!("b.test: posted to {url}")), "{out}");
    let posts = https.posts();
    assert_eq!(posts.len(), 1, "{out}");
    assert_eq!(posts[0].0, "/tlsrpt");
    let posted = gunzip_json(&posts[0].1)?;
    assert_eq!(
        posted["policies"][0]["policy"]["policy-domain"], "b.test",
        "{posted}"
    );
    let inbox =
        w.b.wait_for_mail("bob@b.test", "INBOX", 3, Duration::from_secs(20))
            .await?;
    let report = inbox
        .iter()
        .find(|m| m.contains("TLS-Report-Domain: b.test"))
        .ok_or(format!("no report: {inbox:?}"))?;
    assert!(
        report.contains("Subject: Report Domain: b.test Submitter: "),
        "{report}"
    );
    assert!(report.contains("report-type=\"tlsrpt\""), "{report}");
    let results = header_value(report, "Authentication-Results").ok_or("no A-R")?;
    assert!(
        results.contains("dkim=pass")
            && results.contains("header.d=a.test")
            && results.contains("dmarc=pass"),
        "{results}"
    );
    // The attachment: base64 of gzip of the JSON.
    let start = report
        .find("Content-Type: application/tlsrpt+gzip")
        .ok_or("no attachment")?;
    let body = report[start..]
        .split("\r\n\r\n")
        .nth(1)
        .ok_or("no attachment body")?;
    let encoded: String = body.lines().take_while(|l| !l.starts_with("--")).collect();
    let compressed = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| e.to_string())?;
    let json = gunzip_json(&compressed)?;
    assert_eq!(json, posted, "the same report both ways");
    let policy = &json["policies"][0];
    assert_eq!(policy["policy"]["policy-domain"], "b.test", "{json}");
    assert_eq!(policy["summary"]["total-successful-session-count"], 2, "{json}");
    assert_eq!(json["date-range"]["start-datetime"], format!("{today}T00:00:00Z"));

    // Asked again: not sent twice.
    let out = w.a.admin(&["tls-report", "--send", "--day", &today])?;
    assert!(out.contains("b.test: sent before"), "{out}");
    assert_eq!(https.posts().len(), 1);
    Ok(())
}

/// MTA-STS exists against forged MX answers. A forger who names a host of their own, with TLSA
/// records in their own signed zone, must not get the mail through DANE (which comes before
/// MTA-STS): DANE applies only to MX hosts from a DNSSEC-validated answer (RFC 7672 2.2.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_mx_cannot_bring_dane_in_over_mta_sts() -> TestResult {
    let base = Base::new().await?;
    let dns = &base.dns;
    let https = base.mta_sts_enforce().await?;
    // The forged, unvalidated MX answer names mx.forger.test (b itself plays the forger's
    // server, with a self-signed certificate), whose TLSA record is validated and matches.
    let mut b = base.b(None)?;
    dns.remove("b.test");
    dns.add_mx("b.test", 10, "mx.forger.test");
    dns.add_a("mx.forger.test", [127, 0, 0, 1].into());
    let tlsa_name = format!("_{}._tcp.mx.forger.test", b.mx.port());
    dns.add(&tlsa_name, Rec::Tlsa(3, 1, 1, tlsa_311(&b.cert())?));
    dns.secure(&tlsa_name);
    let mut a = base.a(b.mx.port(), &format!("mta_sts_port = {}\n", https.addr.port()))?;
    b.start().await?;
    a.start().await?;

    a.submit("alice@a.test", "bob@b.test", "forged-mx", false).await?;
    let queue = a
        .wait_for_queue(Duration::from_secs(20), |q| q.contains("attempts=2"))
        .await?;
    assert!(
        queue.contains("bob@b.test pending") && queue.contains("not listed in b.test's MTA-STS policy"),
        "MTA-STS decides, not the forger's TLSA record: {queue}"
    );
    assert!(b.mailbox("bob@b.test", "INBOX").await?.is_empty());

    // Had DNSSEC vouched for that MX answer, DANE would apply and its record matches.
    dns.secure("b.test");
    let inbox = b
        .wait_for_mail("bob@b.test", "INBOX", 1, Duration::from_secs(20))
        .await?;
    assert!(inbox[0].contains("Subject: forged-mx"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_that_cannot_be_delivered_in_time_bounces_with_the_last_error() -> TestResult {
    // b is never started; a gives up after 3 seconds.
    let base = Base::new().await?;
    let b = base.b(Some(&base.ca))?;
    let mut a = base.a(b.mx.port(), "give_up_secs = 3\n")?;
    a.start().await?;
    a.submit("alice@a.test", "bob@b.test", "too-late", false).await?;
    let bounces = a
        .wait_for_mail("alice@a.test", "INBOX", 1, Duration::from_secs(30))
        .await?;
    let dsn = &bounces[0];
    assert!(
        dsn.contains("Final-Recipient: rfc822; bob@b.test") && dsn.contains("Status: 4.4.7"),
        "{dsn}"
    );
    assert!(
        dsn.contains("gave up after") && dsn.contains("mail.b.test"),
        "{dsn}"
    );
    a.wait_for_queue(Duration::from_secs(10), |q| q.contains("the queue is empty"))
        .await?;
    Ok(())
}

/// A hostile "MX" on loopback: it answers each connection with `script` (raw bytes) and then
/// holds the connection open until the client gives up. Stands for the network outside.
async fn hostile_server(scripts: Vec<Vec<u8>>) -> TestResult<(u16, tokio::task::JoinHandle<()>)> {
    let port = common::free_addr()?.port();
    let listener = ctx(tokio::net::TcpListener::bind(("127.0.0.1", port)).await, "bind")?;
    let task = tokio::spawn(async move {
        let mut scripts = scripts.into_iter().cycle();
        while let Ok((mut tcp, _)) = listener.accept().await {
            let script = scripts.next().unwrap_or_default();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let _ = tcp.write_all(&script).await;
                let mut sink = vec![0u8; 4096];
                while let Ok(n) = tcp.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    Ok((port, task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_replies_defer_with_a_bounded_reason_and_the_sender_stays_sane() -> TestResult {
    let base = Base::new().await?;
    base.dns.add_a("mail.evil.test", [127, 0, 0, 1].into());
    // One connection gets an endless reply line, the next a well-formed greeting refusal of
    // 100 lines of 4000 characters (400 KB, all of it "the reason"), the next a reply that is
    // not SMTP, the next more lines than any reply may have.
    let mut long = Vec::new();
    for _ in 0..100 {
        long.extend_from_slice(format!("554-{}\r\n", "x".repeat(4000)).as_bytes());
    }
    long.extend_from_slice(b"554 go away\r\n");
    let mut many = b"220 hi\r\n".to_vec();
    for _ in 0..200 {
        many.extend_from_slice(format!("250-{}\r\n", "y".repeat(100)).as_bytes());
    }
    let (port, _server) = hostile_server(vec![
        [b"220-".as_slice(), &vec![b'A'; 100_000]].concat(),
        long,
        b"HTTP/1.1 200 OK\r\n\r\n".to_vec(),
        many,
    ])
    .await?;
    let mut a = base.a(
        25,
        &format!("\n[delivery.routes]\n\"evil.test\" = \"mail.evil.test:{port}\"\n"),
    )?;
    a.start().await?;
    a.submit("alice@a.test", "victim@evil.test", "hostile", false)
        .await?;
    // Every attempt's stored reason (the 400 KB refusal among them) stays short.
    let longest = std::sync::atomic::AtomicUsize::new(0);
    let refused_seen = std::sync::atomic::AtomicBool::new(false);
    let queue = a
        .wait_for_queue(Duration::from_secs(30), |q| {
            longest.fetch_max(q.len(), std::sync::atomic::Ordering::SeqCst);
            if q.contains("greeting: 554") {
                refused_seen.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            q.contains("attempts=5")
        })
        .await?;
    assert!(queue.contains("victim@evil.test pending"), "{queue}");
    let longest = longest.load(std::sync::atomic::Ordering::SeqCst);
    assert!(longest < 3000, "the stored reason is bounded: {longest} bytes");
    assert!(
        refused_seen.load(std::sync::atomic::Ordering::SeqCst),
        "the long refusal was stored (cut)"
    );
    // The sender still delivers elsewhere: a local message and the queue listing work.
    a.submit("alice@a.test", "alice@a.test", "still-fine", false)
        .await?;
    a.wait_for_mail("alice@a.test", "INBOX", 1, Duration::from_secs(10))
        .await?;
    Ok(())
}

/// A queued message with a bare LF (or CR, or NUL) is refused by the SMTP client, never
/// "repaired" on the way out: the signature covers the bytes, and a next hop could read such
/// a line end as the end of the data. Queued here straight into the store, as an import or an
/// older version could have left it; a well-formed message queued beside it is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smtp_client_refuses_to_send_bare_line_ends() -> TestResult {
    use sealmail_store::{AcceptedMessage, OutboundCopy, QueueRecipient};
    let base = Base::new().await?;
    base.dns.add_a("mail.plain.test", [127, 0, 0, 1].into());
    let port = common::free_addr()?.port();
    let maildir = base.work.path().join("maildir");
    let _receiver = plaintext_receiver(port, &maildir).await?;
    let mut a = base.a(
        25,
        &format!("\n[delivery.routes]\n\"plain.test\" = \"mail.plain.test:{port}\"\n"),
    )?;
    a.start().await?;
    let store = ctx(
        sealmail_store::SqliteStore::open(&a.data(), 4).await,
        "open store",
    )?;
    let queue = |content: &[u8], to: &str| {
        let to = sealmail_types::EmailAddress::parse(to).map_err(|e| e.to_string());
        let content = content.to_vec();
        let store = &store;
        async move {
            let accepted = AcceptedMessage {
                local: None,
                outbound: Some(OutboundCopy {
                    content,
                    sender: "alice@a.test".into(),
                    recipients: vec![QueueRecipient {
                        address: to?,
                        dsn_notify: None,
                        dsn_orcpt: None,
                    }],
                    // A decoded value as rows before xtext was kept encoded could hold.
                    dsn_envid: Some("old\r\nRSET".into()),
                    dsn_ret: None,
                    require_tls: false,
                }),
            };
            ctx(store.accept_message(accepted).await, "queue").map(|_| ())
        }
    };
    queue(b"Subject: lf\r\n\r\nbare\nLF\r\n", "lf@plain.test").await?;
    queue(b"Subject: cr\r\n\r\nbare\rCR\r\n", "cr@plain.test").await?;
    queue(b"Subject: nul\r\n\r\na\0b\r\n", "nul@plain.test").await?;
    queue(b"Subject: fine\r\n\r\nall good\r\n", "ok@plain.test").await?;
    let bounces = a
        .wait_for_mail("alice@a.test", "INBOX", 3, Duration::from_secs(30))
        .await?;
    for (who, problem) in [("lf", "a bare LF"), ("cr", "a bare CR"), ("nul", "a NUL byte")] {
        let bounce = bounces
            .iter()
            .find(|b| b.contains(&format!("Final-Recipient: rfc822; {who}@plain.test")))
            .ok_or(format!("no bounce for {who}: {bounces:?}"))?;
        assert!(
            bounce.contains("Status: 5.6.0") && bounce.contains(problem),
            "{bounce}"
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let delivered = loop {
        let delivered = maildir_messages(&maildir);
        if !delivered.is_empty() || std::time::Instant::now() > deadline {
            break delivered;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert!(delivered[0].contains("all good"), "{}", delivered[0]);
    Ok(())
}
