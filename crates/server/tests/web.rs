//! The `https` and `http` listeners end to end, asked by curl: the MTA-STS policy (the one
//! `domain dns` gives the id of, parsed by our own delivery code), Thunderbird autoconfig and
//! Autodiscover by Host name, the settings page, HSTS, 404 with nothing for names we do not
//! serve, and the `http` listener's redirect.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use sealmail_testkit::pki::TestCa;
use sealmail_testkit::{TestResult, ctx};

const DOMAIN: &str = "example.test";
const HOST: &str = "mail.example.test";

/// What curl got: status, headers (lower-case names) and body.
struct Fetched {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Fetched {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `curl` for `url` with the name resolved to 127.0.0.1 and `ca` trusted; `extra` adds options.
fn curl(url: &str, name: &str, port: u16, ca: &Path, extra: &[&str]) -> TestResult<Fetched> {
    let resolve = format!("{name}:{port}:127.0.0.1");
    let output = ctx(
        Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-D",
                "-",
                "--resolve",
                &resolve,
                "--cacert",
            ])
            .arg(ca)
            .args(extra)
            .arg(url)
            .output(),
        "curl",
    )?;
    if !output.status.success() {
        return Err(format!("curl {url}: {}", String::from_utf8_lossy(&output.stderr)));
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no header end")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or("no status")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Fetched {
        status,
        headers,
        body: body.to_string(),
    })
}

struct Site {
    _dir: tempfile::TempDir,
    _process: sealmail_testkit::Sealmail,
    dir: PathBuf,
    config: PathBuf,
    ca: PathBuf,
    https: SocketAddr,
    http: SocketAddr,
    imaps: SocketAddr,
    submissions: SocketAddr,
    submission: SocketAddr,
}

/// A server for example.test with every web name in a certificate from a test CA.
async fn site(extra: &str) -> TestResult<Site> {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let (https, http) = (common::free_addr()?, common::free_addr()?);
    let (imaps, submissions, submission) = (common::free_addr()?, common::free_addr()?, common::free_addr()?);
    let config = common::config_with_users(
        dir.path(),
        DOMAIN,
        &["alice"],
        &[
            ("submission", submission, "starttls"),
            ("submission", submissions, "implicit"),
            ("imap", imaps, "implicit"),
            ("https", https, "implicit"),
            ("http", http, "none"),
        ],
        extra,
    )?;
    let ca = TestCa::new("web test CA")?;
    let names = [
        HOST,
        "mta-sts.example.test",
        "autoconfig.example.test",
        "autodiscover.example.test",
        "other.test",
    ];
    let ca_file = common::install_issued(dir.path(), &ca, &names)?;
    let process = common::serve(dir.path(), &config).await?;
    Ok(Site {
        dir: dir.path().to_path_buf(),
        _dir: dir,
        _process: process,
        config,
        ca: ca_file,
        https,
        http,
        imaps,
        submissions,
        submission,
    })
}

impl Site {
    fn get(&self, name: &str, path: &str) -> TestResult<Fetched> {
        let url = format!("https://{name}:{}{path}", self.https.port());
        curl(&url, name, self.https.port(), &self.ca, &[])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mta_sts_policy_is_served_as_domain_dns_announces_it() -> TestResult {
    let site = site("").await?;
    let (code, zone, err) = common::admin(&site.dir, &site.config, &["domain", "dns", DOMAIN])?;
    assert_eq!(code, 0, "{err}");
    for name in ["mta-sts", "autoconfig", "autodiscover"] {
        let cname = format!("{name}.{DOMAIN}.\tIN\tCNAME\t{HOST}.");
        assert!(zone.contains(&cname), "{cname:?} missing from:\n{zone}");
    }
    assert!(!zone.contains("No https listener"), "{zone}");
    let id = zone
        .lines()
        .find(|l| l.starts_with("_mta-sts."))
        .and_then(|l| l.split("id=").nth(1))
        .map(|rest| rest.trim_end_matches('"').to_string())
        .ok_or(format!("no _mta-sts record in:\n{zone}"))?;

    let fetched = site.get("mta-sts.example.test", "/.well-known/mta-sts.txt")?;
    assert_eq!(fetched.status, 200);
    // The certificate is from a CA: enforce, our host as the MX, a week.
    assert_eq!(
        fetched.body,
        "version: STSv1\r\nmode: enforce\r\nmx: mail.example.test\r\nmax_age: 604800\r\n"
    );
    assert_eq!(fetched.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(
        fetched.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    // Our delivery code reads it as a policy for our MX.
    let policy = ctx(
        sealmail_delivery::mta_sts::Policy::parse(&id, &fetched.body),
        "parse policy",
    )?;
    assert!(policy.allows(HOST), "{policy:?}");
    assert!(!policy.allows("mx.elsewhere.test"));
    // The id is the text's: the policy printed by `domain dns` is the one served.
    let printed: String = zone
        .lines()
        .filter_map(|l| l.strip_prefix(";   "))
        .map(|l| format!("{l}\r\n"))
        .collect();
    assert_eq!(printed, fetched.body);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chosen_mode_and_max_age_change_the_policy_and_its_id() -> TestResult {
    let site =
        site("[mta_sts]\nmode = \"testing\"\nmax_age_secs = 86400\nmx = [\"mx2.example.test\"]\n").await?;
    let fetched = site.get("mta-sts.example.test", "/.well-known/mta-sts.txt")?;
    assert_eq!(
        fetched.body,
        "version: STSv1\r\nmode: testing\r\nmx: mail.example.test\r\nmx: mx2.example.test\r\nmax_age: 86400\r\n"
    );
    let (_, zone, _) = common::admin(&site.dir, &site.config, &["domain", "dns", DOMAIN])?;
    let id_line = zone
        .lines()
        .find(|l| l.starts_with("_mta-sts."))
        .ok_or("no _mta-sts line")?;
    // The default policy's id is not announced any more: senders will fetch the new one.
    let default = sealmail_web::policy::MtaStsPolicy {
        mode: sealmail_config::MtaStsMode::Enforce,
        mx: vec![HOST.to_string()],
        max_age_secs: 604_800,
    };
    assert!(!id_line.contains(&default.id()), "{id_line}");
    let printed: String = zone
        .lines()
        .filter_map(|l| l.strip_prefix(";   "))
        .map(|l| format!("{l}\r\n"))
        .collect();
    assert_eq!(printed, fetched.body);
    Ok(())
}

/// Parses XML with Python's ElementTree and prints what `script` prints.
fn python_xml(xml: &str, script: &str) -> TestResult<String> {
    let output = ctx(
        Command::new("python3")
            .args(["-c", script])
            .env("XML", xml)
            .output(),
        "python3",
    )?;
    if !output.status.success() {
        return Err(format!(
            "python: {}\n{xml}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The servers of a Thunderbird config: "kind type host port socketType username" lines.
const THUNDERBIRD_SERVERS: &str = r#"
import os, xml.etree.ElementTree as ET
root = ET.fromstring(os.environ["XML"])
assert root.tag == "clientConfig" and root.get("version") == "1.1", root.tag
provider = root.find("emailProvider")
print("provider", provider.get("id"), provider.findtext("domain"))
for kind in ("incomingServer", "outgoingServer"):
    for s in provider.findall(kind):
        print(kind, s.get("type"), s.findtext("hostname"), s.findtext("port"),
              s.findtext("socketType"), s.findtext("authentication"), s.findtext("username"))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_clients_find_only_tls_endpoints_implicit_first() -> TestResult {
    let site = site("").await?;
    let expected = format!(
        "provider example.test example.test\n\
         incomingServer imap {HOST} {} SSL password-cleartext %EMAILADDRESS%\n\
         outgoingServer smtp {HOST} {} SSL password-cleartext %EMAILADDRESS%\n\
         outgoingServer smtp {HOST} {} STARTTLS password-cleartext %EMAILADDRESS%\n",
        site.imaps.port(),
        site.submissions.port(),
        site.submission.port()
    );
    // Where Thunderbird looks: autoconfig.DOMAIN, and the well-known path on our host name
    // with the address.
    for (name, path) in [
        (
            "autoconfig.example.test",
            "/mail/config-v1.1.xml?emailaddress=alice%40example.test",
        ),
        (
            "autoconfig.example.test",
            "/.well-known/autoconfig/mail/config-v1.1.xml",
        ),
        (
            HOST,
            "/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=alice%40example.test",
        ),
    ] {
        let fetched = site.get(name, path)?;
        assert_eq!(fetched.status, 200, "{name}{path}");
        assert_eq!(
            fetched.header("content-type"),
            Some("application/xml; charset=utf-8")
        );
        assert_eq!(
            python_xml(&fetched.body, THUNDERBIRD_SERVERS)?,
            expected,
            "{name}{path}"
        );
    }
    // Our host name asked about a domain we do not serve: nothing.
    let foreign = site.get(
        HOST,
        "/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=a%40other.test",
    )?;
    assert_eq!((foreign.status, foreign.body.as_str()), (404, ""));

    // Autodiscover (POX), as Outlook asks.
    let request = "<?xml version=\"1.0\" encoding=\"utf-8\"?><Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006\"><Request><EMailAddress>alice@example.test</EMailAddress><AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>";
    let url = format!(
        "https://autodiscover.example.test:{}/Autodiscover/Autodiscover.xml",
        site.https.port()
    );
    let post = [
        "-X",
        "POST",
        "-H",
        "Content-Type: text/xml",
        "--data-binary",
        request,
    ];
    let fetched = curl(
        &url,
        "autodiscover.example.test",
        site.https.port(),
        &site.ca,
        &post,
    )?;
    assert_eq!(fetched.status, 200, "{}", fetched.body);
    let protocols = python_xml(
        &fetched.body,
        r#"
import os, xml.etree.ElementTree as ET
ns = {"r": "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"}
root = ET.fromstring(os.environ["XML"])
for p in root.findall(".//r:Protocol", ns):
    print(p.findtext("r:Type", namespaces=ns), p.findtext("r:Server", namespaces=ns),
          p.findtext("r:Port", namespaces=ns), p.findtext("r:SSL", namespaces=ns),
          p.findtext("r:Encryption", namespaces=ns), p.findtext("r:LoginName", namespaces=ns))
"#,
    )?;
    assert_eq!(
        protocols,
        format!(
            "IMAP {HOST} {} on None alice@example.test\n\
             SMTP {HOST} {} on None alice@example.test\n\
             SMTP {HOST} {} off TLS alice@example.test\n",
            site.imaps.port(),
            site.submissions.port(),
            site.submission.port()
        )
    );
    let other = request.replace("alice@example.test", "alice@other.test");
    let post = ["-X", "POST", "--data-binary", other.as_str()];
    let fetched = curl(
        &url,
        "autodiscover.example.test",
        site.https.port(),
        &site.ca,
        &post,
    )?;
    assert_eq!((fetched.status, fetched.body.as_str()), (404, ""));
    let big = "x".repeat(20_000);
    let post = ["-X", "POST", "--data-binary", big.as_str()];
    let fetched = curl(
        &url,
        "autodiscover.example.test",
        site.https.port(),
        &site.ca,
        &post,
    )?;
    assert_eq!(fetched.status, 413);

    // The page to type the settings by hand: on the host name under /setup (its / is the
    // login form), on autoconfig.DOMAIN at /.
    let page = site.get(HOST, "/setup")?;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    for port in [site.imaps.port(), site.submissions.port(), site.submission.port()] {
        assert!(page.body.contains(&format!("<td>{port}</td>")), "{}", page.body);
    }
    assert!(!page.body.contains("<script>"), "no inline script: {}", page.body);
    assert!(
        page.header("content-security-policy")
            .is_some_and(|csp| csp.starts_with("default-src 'self';") && !csp.contains("unsafe")),
        "{:?}",
        page.headers
    );
    let page = site.get("autoconfig.example.test", "/")?;
    assert_eq!(page.status, 200);
    for port in [site.imaps.port(), site.submissions.port(), site.submission.port()] {
        assert!(page.body.contains(&format!("<td>{port}</td>")), "{}", page.body);
    }
    assert_eq!(
        page.header("content-security-policy"),
        Some("default-src 'none'; frame-ancestors 'none'")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_and_paths_we_do_not_serve_get_404_and_nothing_else() -> TestResult {
    let site = site("").await?;
    for (name, path) in [
        // In the certificate, but not a domain served here.
        ("other.test", "/"),
        ("other.test", "/.well-known/mta-sts.txt"),
        // A served name, a path it does not have.
        ("mta-sts.example.test", "/"),
        ("mta-sts.example.test", "/.well-known/mta-sts.txt.bak"),
        ("autoconfig.example.test", "/.well-known/mta-sts.txt"),
        (HOST, "/../etc/passwd"),
        (HOST, "/.well-known/"),
    ] {
        let fetched = site.get(name, path)?;
        assert_eq!((fetched.status, fetched.body.as_str()), (404, ""), "{name}{path}");
        assert!(fetched.header("server").is_none(), "{:?}", fetched.headers);
    }
    // A Host header naming someone else on our address.
    let url = format!("https://{HOST}:{}/", site.https.port());
    let forged = curl(
        &url,
        HOST,
        site.https.port(),
        &site.ca,
        &["-H", "Host: mta-sts.other.test"],
    )?;
    assert_eq!((forged.status, forged.body.as_str()), (404, ""));
    // Only GET and HEAD for the policy.
    let url = format!(
        "https://mta-sts.example.test:{}/.well-known/mta-sts.txt",
        site.https.port()
    );
    let delete = curl(
        &url,
        "mta-sts.example.test",
        site.https.port(),
        &site.ca,
        &["-X", "DELETE"],
    )?;
    assert_eq!(delete.status, 404);

    // The http listener: our names go to HTTPS, others get nothing; no HSTS in plaintext.
    let http = |name: &str, path: &str| {
        let url = format!("http://{name}:{}{path}", site.http.port());
        curl(&url, name, site.http.port(), &site.ca, &[])
    };
    let redirect = http("mta-sts.example.test", "/.well-known/mta-sts.txt")?;
    assert_eq!(redirect.status, 301);
    assert_eq!(
        redirect.header("location").map(str::to_string),
        Some(format!(
            "https://mta-sts.example.test:{}/.well-known/mta-sts.txt",
            site.https.port()
        ))
    );
    assert!(redirect.header("strict-transport-security").is_none());
    let foreign = http("other.test", "/")?;
    assert_eq!((foreign.status, foreign.body.as_str()), (404, ""));
    // No challenge is under way: the ACME path answers nothing.
    let challenge = http(HOST, "/.well-known/acme-challenge/abc")?;
    assert_eq!((challenge.status, challenge.body.as_str()), (404, ""));
    Ok(())
}

/// Clients the https listener cannot serve (a browser offering only HTTP/2, an ACME validator
/// arriving when no challenge is under way) are refused at their hello and never banned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hellos_we_cannot_serve_are_refused_without_counting_toward_a_ban() -> TestResult {
    let site = site("").await?;
    let client = [127, 0, 0, 2];
    for alpn in [b"h2".as_slice(), b"acme-tls/1".as_slice()] {
        let mut config = (*sealmail_testkit::client_config(
            &[site.ca.as_path()],
            &[&rustls::version::TLS13, &rustls::version::TLS12],
            &[],
        )?)
        .clone();
        config.alpn_protocols = vec![alpn.to_vec()];
        let config = std::sync::Arc::new(config);
        for _ in 0..30 {
            let tcp = sealmail_testkit::tcp_from(client, site.https).await?;
            let refused = sealmail_testkit::tls_upgrade(tcp, config.clone(), "mta-sts.example.test").await;
            assert!(refused.is_err(), "{:?} was served", String::from_utf8_lossy(alpn));
        }
    }
    let url = format!(
        "https://mta-sts.example.test:{}/.well-known/mta-sts.txt",
        site.https.port()
    );
    let fetched = curl(
        &url,
        "mta-sts.example.test",
        site.https.port(),
        &site.ca,
        &["--interface", "127.0.0.2"],
    )?;
    assert_eq!(fetched.status, 200, "the address was banned");
    let (_, events, _) = common::admin(&site.dir, &site.config, &["security", "events", "--since", "1h"])?;
    assert!(
        !events.contains("ban_added") && !events.contains("tls_failure"),
        "{events}"
    );
    Ok(())
}
