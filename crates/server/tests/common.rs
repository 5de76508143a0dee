//! Shared set-up for the server's end-to-end tests: real `sealmail` processes, real sockets,
//! real TLS, real SQLite files in temporary folders.

#![allow(dead_code)]

use sealmail_store::{AccountStore, MailStore};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sealmail_testkit::{Sealmail, TestResult, ctx, wait_for_port};

pub const BIN: &str = env!("CARGO_BIN_EXE_sealmail");

pub fn bin() -> &'static Path {
    Path::new(BIN)
}

/// Runs a sealmail command to completion: (exit code, stdout, stderr).
pub fn run(cwd: &Path, args: &[&str], stdin: Option<&str>) -> TestResult<(i32, String, String)> {
    use std::io::Write;
    let mut child = std::process::Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env_remove("SEALMAIL_CONFIG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(mut input) = child.stdin.take()
        && let Some(text) = stdin
    {
        ctx(input.write_all(text.as_bytes()), "stdin")?;
    }
    let out = ctx(child.wait_with_output(), "wait")?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The quickstart's six ports, in its order: mx, submission/implicit, submission/starttls,
/// imap/starttls, imap/implicit, https.
pub const QUICKSTART_PORTS: [u16; 6] = [2525, 2465, 2587, 2143, 2993, 2443];

pub struct Instance {
    pub process: Sealmail,
    pub root: tempfile::TempDir,
    pub offset: u16,
}

impl Instance {
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("sealmail-data")
    }

    pub fn cert(&self) -> PathBuf {
        self.data_dir().join("tls/cert.pem")
    }

    pub fn addr(&self, base_port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], base_port + self.offset))
    }

    /// Starts `sealmail quickstart` in a new temporary folder and waits until it serves.
    pub async fn quickstart() -> TestResult<Instance> {
        let root = ctx(tempfile::tempdir(), "tempdir")?;
        let offset = sealmail_testkit::free_port_offset();
        let offset_arg = offset.to_string();
        let nameserver = sealmail_testkit::dns::empty_server()?.to_string();
        let process = Sealmail::spawn(
            bin(),
            &[
                "quickstart",
                "--port-offset",
                &offset_arg,
                "--nameserver",
                &nameserver,
            ],
            root.path(),
            root.path(),
        )?;
        let instance = Instance {
            process,
            root,
            offset,
        };
        instance
            .process
            .wait_for_log("sealmail ready", Duration::from_secs(60))
            .await?;
        for port in QUICKSTART_PORTS {
            wait_for_port(instance.addr(port), Duration::from_secs(10)).await?;
        }
        Ok(instance)
    }

    pub fn client(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> TestResult<Arc<rustls::ClientConfig>> {
        sealmail_testkit::client_config(&[&self.cert()], versions, &[])
    }
}

/// Writes a config with one certificate per host name (generated) and the given listeners
/// and extra TOML; returns the config path.
pub fn write_config(
    dir: &Path,
    hostnames: &[&str],
    listeners: &[(&str, SocketAddr, &str)],
    extra: &str,
) -> TestResult<PathBuf> {
    let mut text = format!("hostname = {:?}\ndata_dir = \"data\"\n", hostnames[0]);
    for (i, host) in hostnames.iter().enumerate() {
        let files = sealmail_config::CertificateFiles {
            cert: dir.join(format!("tls/{i}.pem")),
            key: dir.join(format!("tls/{i}.key")),
        };
        ctx(
            sealmail_tls::selfsigned::generate(&[host.to_string()], &files, 30),
            "generate certificate",
        )?;
        text.push_str(&format!(
            "[[tls.certificate]]\ncert = \"tls/{i}.pem\"\nkey = \"tls/{i}.key\"\n"
        ));
    }
    for (role, addr, tls) in listeners {
        text.push_str(&format!(
            "[[listener]]\nrole = {role:?}\nbind = \"{addr}\"\ntls = {tls:?}\n"
        ));
    }
    text.push_str(extra);
    if !extra.contains("[dns]") {
        // No test may ask the machine's resolver: an empty local server answers instead.
        text.push('\n');
        text.push_str(&dns_section(sealmail_testkit::dns::empty_server()?));
    }
    if !extra.contains("[server]") {
        // The tests run as root on CI machines.
        text.push_str("\n[server]\nallow_root = true\n");
    }
    let path = dir.join("sealmail.toml");
    ctx(std::fs::write(&path, text), "write config")?;
    Ok(path)
}

/// A free loopback address (outside the ephemeral port range, see `testkit::free_port`).
pub fn free_addr() -> TestResult<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], sealmail_testkit::free_port())))
}

/// Starts `sealmail serve` with a config and waits until it serves.
pub async fn serve(dir: &Path, config: &Path) -> TestResult<Sealmail> {
    let config = config.to_string_lossy().into_owned();
    let process = Sealmail::spawn(bin(), &["--config", &config, "serve"], dir, dir)?;
    process
        .wait_for_log("sealmail ready", Duration::from_secs(60))
        .await?;
    Ok(process)
}

/// The quickstart users' passwords, by address.
pub fn credentials(instance: &Instance) -> TestResult<std::collections::HashMap<String, String>> {
    let text = ctx(
        std::fs::read_to_string(instance.data_dir().join("quickstart-credentials.txt")),
        "credentials",
    )?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, p)| (a.to_string(), p.to_string()))
        .collect())
}

/// The messages in a user's mailbox, read from the running instance's store.
pub async fn mailbox_contents(data_dir: &Path, user: &str, mailbox: &str) -> TestResult<Vec<Vec<u8>>> {
    let store = ctx(
        sealmail_store::SqliteStore::open(data_dir, 16).await,
        "open store",
    )?;
    let address = ctx(sealmail_types::EmailAddress::parse(user), "address")?;
    let account = ctx(store.account(&address).await, "account")?.ok_or("no such account")?;
    let mailbox = ctx(store.mailbox(account.id, mailbox).await, "mailbox")?.ok_or("no such mailbox")?;
    let mut out = Vec::new();
    for message in ctx(store.messages(mailbox.id).await, "messages")? {
        out.push(ctx(store.read_message(message.id).await, "read")?);
    }
    Ok(out)
}

/// The password `config_with_users` gives every user.
pub const TEST_PASSWORD: &str = "a long enough password";

/// Runs `sealmail --config CONFIG ARGS...` in `dir`, with `TEST_PASSWORD` on standard input.
pub fn admin(dir: &Path, config: &Path, args: &[&str]) -> TestResult<(i32, String, String)> {
    let config = config.to_string_lossy().into_owned();
    let mut all = vec!["--config", config.as_str()];
    all.extend_from_slice(args);
    run(dir, &all, Some(&format!("{TEST_PASSWORD}\n")))
}

/// `write_config` with one certificate for mail.DOMAIN, plus DOMAIN and `users` (password
/// `TEST_PASSWORD`) added through the command line; returns the config path.
pub fn config_with_users(
    dir: &Path,
    domain: &str,
    users: &[&str],
    listeners: &[(&str, SocketAddr, &str)],
    extra: &str,
) -> TestResult<PathBuf> {
    let config = write_config(dir, &[&format!("mail.{domain}")], listeners, extra)?;
    let (code, _, err) = admin(dir, &config, &["domain", "add", domain])?;
    if code != 0 {
        return Err(format!("domain add: {err}"));
    }
    for user in users {
        let (code, _, err) = admin(
            dir,
            &config,
            &["user", "add", &format!("{user}@{domain}"), "--password-stdin"],
        )?;
        if code != 0 {
            return Err(format!("user add {user}: {err}"));
        }
    }
    Ok(config)
}

/// Runs one of the independent Python clients in `tests/interop/` against a quickstart
/// instance: ports, CA file, both users' passwords and `out` (where it writes what it sent and
/// received) go in its environment. Fails unless it exits 0 and says "all scenarios passed".
pub fn run_python_client(script: &str, instance: &Instance, out: &Path) -> TestResult<String> {
    let passwords = credentials(instance)?;
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(script);
    let output = ctx(
        std::process::Command::new("python3")
            .arg(path)
            .env("MX_PORT", instance.addr(2525).port().to_string())
            .env("SUBMISSION_TLS_PORT", instance.addr(2465).port().to_string())
            .env("SUBMISSION_STARTTLS_PORT", instance.addr(2587).port().to_string())
            .env("IMAP_STARTTLS_PORT", instance.addr(2143).port().to_string())
            .env("IMAP_TLS_PORT", instance.addr(2993).port().to_string())
            .env("CA_FILE", instance.cert())
            .env("OUT_DIR", out)
            .env("ALICE_PASSWORD", &passwords["alice@example.test"])
            .env("BOB_PASSWORD", &passwords["bob@example.test"])
            .output(),
        "python3",
    )?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() || !stdout.contains("all scenarios passed") {
        return Err(format!("{script} failed:\n{stdout}\n{stderr}"));
    }
    Ok(stdout)
}

/// The `[dns]` section that points a test server at the test's own DNS server.
pub fn dns_section(server: SocketAddr) -> String {
    format!("[dns]\nnameservers = [\"{server}\"]\ntimeout_secs = 1\nattempts = 1\n")
}

/// Serves every TXT and SRV record of `sealmail domain dns` output in the DNS server.
pub fn publish(dns: &sealmail_testkit::dns::DnsServer, zone: &str) {
    for line in zone.lines().filter(|l| !l.starts_with(';')) {
        let fields: Vec<&str> = line.splitn(4, '\t').collect();
        if let [name, "IN", "SRV", value] = fields.as_slice() {
            let parts: Vec<&str> = value.split(' ').collect();
            if let [priority, weight, port, target] = parts.as_slice()
                && let (Ok(priority), Ok(weight), Ok(port)) = (priority.parse(), weight.parse(), port.parse())
            {
                let srv = sealmail_testkit::dns::Rec::Srv(priority, weight, port, target.to_string());
                dns.add(name, srv);
            }
        }
        if let [name, "IN", "CNAME", target] = fields.as_slice() {
            dns.add(name, sealmail_testkit::dns::Rec::Cname(target.to_string()));
        }
        if let [name, "IN", "TXT", value] = fields.as_slice() {
            let strings: Vec<Vec<u8>> = value
                .split('"')
                .enumerate()
                .filter(|(i, _)| i % 2 == 1)
                .map(|(_, s)| s.as_bytes().to_vec())
                .collect();
            dns.add(name, sealmail_testkit::dns::Rec::Txt(strings));
        }
    }
}

/// Replaces the first certificate `write_config` generated (`tls/0`) by one `ca` issues for
/// `names`; returns the CA's file, for clients to trust.
pub fn install_issued(dir: &Path, ca: &sealmail_testkit::pki::TestCa, names: &[&str]) -> TestResult<PathBuf> {
    let issued = ca.issue(names, &dir.join("issued"), "issued")?;
    ctx(std::fs::copy(&issued.cert, dir.join("tls/0.pem")), "copy cert")?;
    ctx(std::fs::copy(&issued.key, dir.join("tls/0.key")), "copy key")?;
    let trust = dir.join("issued/ca.pem");
    ca.write(&trust)?;
    Ok(trust)
}

/// `sealmail check` asking the test DNS server `dns`: (exit code, stdout, stderr).
pub fn check(
    dir: &Path,
    dns: &sealmail_testkit::dns::DnsServer,
    args: &[&str],
) -> TestResult<(i32, String, String)> {
    let server = dns.addr().to_string();
    let mut all = vec!["check", "--nameserver", server.as_str()];
    all.extend_from_slice(args);
    run(dir, &all, None)
}

/// `sealmail check --format json`, which must exit 0: its report.
pub fn json_check(
    dir: &Path,
    dns: &sealmail_testkit::dns::DnsServer,
    args: &[&str],
) -> TestResult<serde_json::Value> {
    let mut all = vec!["--format", "json"];
    all.extend_from_slice(args);
    let (code, out, err) = check(dir, dns, &all)?;
    if code != 0 {
        return Err(format!("check {args:?}: {code} {err}"));
    }
    ctx(serde_json::from_str(&out), "the JSON report")
}

/// The check `id` of a JSON report.
pub fn finding<'a>(report: &'a serde_json::Value, id: &str) -> TestResult<&'a serde_json::Value> {
    report["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["id"] == id))
        .ok_or_else(|| format!("no check {id} in {report:#}"))
}
