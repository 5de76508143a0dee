//! The checks that connect to a domain's mail servers: every MX host on the SMTP port
//! (STARTTLS), and the submission and IMAP servers the domain's SRV records name or that are
//! given with `--host` (implicit TLS and STARTTLS). Each is reached, its greeting read (no software version in it), its
//! capabilities read (STARTTLS offered; no AUTH and IMAP LOGINDISABLED before TLS), and its TLS
//! looked at: the version and suite rustls negotiates, the certificate (chain against the
//! system's roots and `--ca-file`, name, days left, key size), and whether TLS 1.0 or 1.1 is
//! accepted, probed with a raw ClientHello since rustls cannot speak them.
//!
//! Every read is bounded (line length, line count, time): a server that says too much or
//! nothing is a finding, never a hang.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sealmail_dns::Dns;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::report::{Check, Pillar, Status};

/// The longest a connection attempt, a read, or a TLS handshake may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest one connection may be used, however its server dribbles its bytes.
pub const CONNECTION_BUDGET: Duration = Duration::from_secs(60);
/// The longest all checks of one server may take (three connections).
pub const TARGET_BUDGET: Duration = Duration::from_secs(150);
/// MX hosts checked (the most preferred first); the rest are named in a finding.
pub const MAX_MX_CHECKED: usize = 10;
/// Submission and IMAP servers checked (SRV records, then `--host`); the rest likewise.
pub const MAX_CLIENT_SERVERS: usize = 16;
/// The longest protocol line read, and the most lines of one reply.
const MAX_LINE: usize = 2048;
const MAX_REPLY_LINES: usize = 100;
/// Days before expiry from which a certificate is a WARN.
const EXPIRY_WARN_DAYS: i64 = 14;

/// The ports checked (`--port NAME=PORT,...` changes them for test installations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub smtp: u16,
    pub submissions: u16,
    pub submission: u16,
    pub imaps: u16,
    pub imap: u16,
    pub https: u16,
}

impl Default for Ports {
    fn default() -> Ports {
        Ports {
            smtp: 25,
            submissions: 465,
            submission: 587,
            imaps: 993,
            imap: 143,
            https: 443,
        }
    }
}

impl Ports {
    /// `NAME=PORT[,NAME=PORT...]` over the defaults.
    pub fn parse(text: &str) -> Result<Ports, String> {
        let mut ports = Ports::default();
        for pair in text.split(',').filter(|p| !p.is_empty()) {
            let (name, port) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair}: give NAME=PORT"))?;
            let port: u16 = port
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{pair}: {port} is not a port"))?;
            let slot = match name {
                "smtp" => &mut ports.smtp,
                "submissions" => &mut ports.submissions,
                "submission" => &mut ports.submission,
                "imaps" => &mut ports.imaps,
                "imap" => &mut ports.imap,
                "https" => &mut ports.https,
                other => {
                    return Err(format!(
                        "{other} is not a port name (smtp, submissions, submission, imaps, imap, https)"
                    ));
                }
            };
            *slot = port;
        }
        Ok(ports)
    }
}

/// A client service (RFC 6186, RFC 8314).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Submission over implicit TLS (465).
    Submissions,
    /// Submission with STARTTLS (587).
    Submission,
    /// IMAP over implicit TLS (993).
    Imaps,
    /// IMAP with STARTTLS (143).
    Imap,
}

impl Service {
    fn start(self) -> Start {
        match self {
            Service::Submissions | Service::Imaps => Start::Implicit,
            Service::Submission => Start::SmtpStarttls,
            Service::Imap => Start::ImapStarttls,
        }
    }
}

/// A submission or IMAP server to check: from the domain's SRV records, or a `--host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientServer {
    pub service: Service,
    pub host: String,
    pub port: u16,
    /// Named by an SRV record: it must answer (a `--host` port that is closed is only noted).
    pub published: bool,
}

impl ClientServer {
    /// The four client services of each of `hosts`, on `ports`.
    pub fn on_hosts(hosts: &[String], ports: Ports) -> Vec<ClientServer> {
        hosts
            .iter()
            .flat_map(|host| {
                [
                    (Service::Submissions, ports.submissions),
                    (Service::Submission, ports.submission),
                    (Service::Imaps, ports.imaps),
                    (Service::Imap, ports.imap),
                ]
                .map(|(service, port)| ClientServer {
                    service,
                    host: host.trim_end_matches('.').to_ascii_lowercase(),
                    port,
                    published: false,
                })
            })
            .collect()
    }
}

/// How a service starts TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    SmtpStarttls,
    ImapStarttls,
    Implicit,
}

/// One service to look at.
#[derive(Clone)]
struct Target {
    host: String,
    port: u16,
    start: Start,
    /// MX hosts and published client servers must answer; a `--host` port that is closed is
    /// only noted.
    required: bool,
    /// An MX host: its TLSA records are checked against its certificate, knowing the domain
    /// and whether its MX answer was DNSSEC-validated.
    mx: Option<(String, Option<bool>)>,
}

impl Target {
    fn id(&self, check: &str) -> String {
        format!("{check}:{}:{}", self.host, self.port)
    }
}

/// The MX hosts checked (each once, the [`MAX_MX_CHECKED`] most preferred first) and those
/// left out.
pub(crate) fn distinct_mx(mx_hosts: &[String]) -> (Vec<&String>, Vec<&String>) {
    let mut mx: Vec<&String> = Vec::new();
    for host in mx_hosts {
        if !mx.contains(&host) {
            mx.push(host);
        }
    }
    let rest = mx.split_off(mx.len().min(MAX_MX_CHECKED));
    (mx, rest)
}

/// Every server check: `mx_hosts` (most preferred first) on `smtp_port`, and the client
/// servers (from SRV records and `--host`; at most [`MAX_CLIENT_SERVERS`], duplicates once).
/// The servers are looked at in parallel, each within [`TARGET_BUDGET`].
pub async fn check_servers(
    dns: &Dns,
    domain: &str,
    mx_hosts: &[String],
    mx_validated: Option<bool>,
    clients: &[ClientServer],
    smtp_port: u16,
    roots: Arc<RootCertStore>,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let (mx, rest) = distinct_mx(mx_hosts);
    if !rest.is_empty() {
        let rest: Vec<&str> = rest.iter().map(|h| h.as_str()).collect();
        checks.push(Check::new(
            "mx-not-checked",
            Pillar::ProtocolSupport,
            Status::Info,
            format!(
                "only the {MAX_MX_CHECKED} most preferred MX hosts were checked; not: {}",
                rest.join(", ")
            ),
        ));
    }
    let mut targets: Vec<Target> = mx
        .iter()
        .map(|host| Target {
            host: host.to_string(),
            port: smtp_port,
            start: Start::SmtpStarttls,
            required: true,
            mx: Some((domain.to_string(), mx_validated)),
        })
        .collect();
    let mut client_targets: Vec<Target> = Vec::new();
    for client in clients {
        let target = Target {
            host: client.host.clone(),
            port: client.port,
            start: client.service.start(),
            required: client.published,
            mx: None,
        };
        match client_targets
            .iter_mut()
            .find(|t| t.host == target.host && t.port == target.port)
        {
            Some(known) => known.required |= target.required,
            None => client_targets.push(target),
        }
    }
    if client_targets.len() > MAX_CLIENT_SERVERS {
        let rest: Vec<String> = client_targets[MAX_CLIENT_SERVERS..]
            .iter()
            .map(|t| format!("{}:{}", t.host, t.port))
            .collect();
        checks.push(Check::new(
            "clients-not-checked",
            Pillar::ProtocolSupport,
            Status::Info,
            format!(
                "only {MAX_CLIENT_SERVERS} submission and IMAP servers were checked; not: {}",
                rest.join(", ")
            ),
        ));
        client_targets.truncate(MAX_CLIENT_SERVERS);
    }
    targets.extend(client_targets);
    let mut running = tokio::task::JoinSet::new();
    for (order, target) in targets.into_iter().enumerate() {
        let (dns, roots) = (dns.clone(), roots.clone());
        running.spawn(async move {
            let found = match tokio::time::timeout(TARGET_BUDGET, check_target(&dns, &target, roots)).await {
                Ok(found) => found,
                Err(_) => vec![
                    Check::new(
                        &target.id("protocol"),
                        Pillar::ProtocolSupport,
                        Status::Fail,
                        format!(
                            "the checks of this server did not finish within {} s",
                            TARGET_BUDGET.as_secs()
                        ),
                    )
                    .with_fix("check why the server answers so slowly"),
                ],
            };
            (order, found)
        });
    }
    let mut results: Vec<(usize, Vec<Check>)> = Vec::new();
    while let Some(joined) = running.join_next().await {
        if let Ok(result) = joined {
            results.push(result);
        }
    }
    // The report lists servers in a fixed order, whichever finished first.
    results.sort_by_key(|(order, _)| *order);
    checks.extend(results.into_iter().flat_map(|(_, found)| found));
    checks
}

pub(crate) async fn address(dns: &Dns, host: &str) -> Result<std::net::IpAddr, String> {
    if let Ok(ip) = host.parse() {
        return Ok(ip);
    }
    let name = format!("{}.", host.trim_end_matches('.'));
    match tokio::time::timeout(STEP_TIMEOUT, dns.resolver().lookup_ip(name.as_str())).await {
        Ok(Ok(ips)) => ips.iter().next().ok_or_else(|| "no address".to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no DNS answer in time".to_string()),
    }
}

/// A plain connection with bounded line reads, all within one deadline.
pub(crate) struct Plain {
    pub(crate) stream: TcpStream,
    pub(crate) buffer: Vec<u8>,
    deadline: tokio::time::Instant,
}

impl Plain {
    pub(crate) async fn connect(addr: SocketAddr) -> Result<Plain, String> {
        match tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => Ok(Plain {
                stream,
                buffer: Vec::new(),
                deadline: tokio::time::Instant::now() + CONNECTION_BUDGET,
            }),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} s", STEP_TIMEOUT.as_secs())),
        }
    }

    pub(crate) async fn line(&mut self) -> Result<String, String> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Ok(String::from_utf8_lossy(&line).trim_end().to_string());
            }
            if self.buffer.len() > MAX_LINE {
                return Err(format!("a line longer than {MAX_LINE} bytes"));
            }
            let mut chunk = [0u8; 1024];
            let until = self.deadline.min(tokio::time::Instant::now() + STEP_TIMEOUT);
            let read = tokio::time::timeout_at(until, self.stream.read(&mut chunk))
                .await
                .map_err(|_| {
                    format!(
                        "no complete answer in time ({} s a step, {} s a connection)",
                        STEP_TIMEOUT.as_secs(),
                        CONNECTION_BUDGET.as_secs()
                    )
                })?
                .map_err(|e| e.to_string())?;
            if read == 0 {
                return Err("the server closed the connection".to_string());
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }

    /// An SMTP reply: its code and the text of its lines.
    pub(crate) async fn smtp_reply(&mut self) -> Result<(u16, Vec<String>), String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await?;
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| format!("not an SMTP reply: {}", shown(&line)))?;
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_string());
            if last {
                return Ok((code, lines));
            }
            if lines.len() >= MAX_REPLY_LINES {
                return Err(format!("a reply of more than {MAX_REPLY_LINES} lines"));
            }
        }
    }

    /// Sends `line` and reads its SMTP reply.
    pub(crate) async fn smtp_command(&mut self, line: &str) -> Result<(u16, Vec<String>), String> {
        self.send(line).await?;
        self.smtp_reply().await
    }

    /// Sends `TAG COMMAND` and reads the lines up to its tagged reply.
    pub(crate) async fn imap_command(
        &mut self,
        tag: &str,
        command: &str,
    ) -> Result<(Vec<String>, String), String> {
        self.send(&format!("{tag} {command}")).await?;
        self.imap_reply(tag).await
    }

    pub(crate) async fn send(&mut self, line: &str) -> Result<(), String> {
        let data = format!("{line}\r\n");
        let until = self.deadline.min(tokio::time::Instant::now() + STEP_TIMEOUT);
        tokio::time::timeout_at(until, self.stream.write_all(data.as_bytes()))
            .await
            .map_err(|_| "the server does not read".to_string())?
            .map_err(|e| e.to_string())
    }

    /// The IMAP lines up to the tagged reply of `tag`: untagged lines and the tagged one.
    pub(crate) async fn imap_reply(&mut self, tag: &str) -> Result<(Vec<String>, String), String> {
        let mut untagged = Vec::new();
        loop {
            let line = self.line().await?;
            if let Some(rest) = line.strip_prefix(&format!("{tag} ")) {
                return Ok((untagged, rest.to_ascii_uppercase()));
            }
            untagged.push(line);
            if untagged.len() >= MAX_REPLY_LINES {
                return Err(format!("more than {MAX_REPLY_LINES} lines"));
            }
        }
    }
}

/// Text from a server, safe to print: control characters shown as `?`, at most 200 chars.
pub(crate) fn shown(text: &str) -> String {
    text.chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Known mail software names; a version number next to one in a greeting tells an attacker
/// which exploits to try.
const SOFTWARE: &[&str] = &[
    "postfix",
    "exim",
    "sendmail",
    "microsoft",
    "exchange",
    "haraka",
    "opensmtpd",
    "dovecot",
    "courier",
    "zimbra",
    "qmail",
    "sealmail",
    "stalwart",
    "maddy",
    "cyrus",
    "mailenable",
    "mdaemon",
    "hmailserver",
    "axigen",
    "kerio",
    "smartermail",
    "icewarp",
];

/// The software and version a greeting discloses, if it does.
fn disclosed_version(greeting: &str) -> Option<String> {
    let lower = greeting.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ';' || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    for (i, word) in words.iter().enumerate() {
        let Some(name) = SOFTWARE.iter().find(|name| word.starts_with(**name)) else {
            continue;
        };
        // "Postfix 3.7.1", "Exim/4.96", "sendmail 8.15.2", "Version: 15.2".
        let after = word.get(name.len()..).unwrap_or("");
        let candidates = [
            after.trim_start_matches(['/', '-']),
            words.get(i + 1).copied().unwrap_or("").trim_matches(['[', ']']),
            words.get(i + 2).copied().unwrap_or("").trim_matches(['[', ']']),
        ];
        if let Some(version) = candidates.iter().find(|c| looks_like_version(c)) {
            return Some(format!("{name} {version}"));
        }
    }
    // "..., Version: 6.0.3790.1830" (Microsoft, MailEnable).
    words
        .windows(2)
        .find(|pair| pair[0].trim_end_matches(':') == "version" && looks_like_version(pair[1]))
        .map(|pair| format!("version {}", pair[1]))
}

fn looks_like_version(text: &str) -> bool {
    let text = text.trim_start_matches('v');
    let mut parts = text.split('.');
    let first = parts.next().unwrap_or("");
    let second = parts.next().unwrap_or("");
    !first.is_empty()
        && first.bytes().all(|b| b.is_ascii_digit())
        && second.bytes().next().is_some_and(|b| b.is_ascii_digit())
}

async fn check_target(dns: &Dns, target: &Target, roots: Arc<RootCertStore>) -> Vec<Check> {
    let mut presented = None;
    let mut checks = connect_and_check(dns, target, roots, &mut presented).await;
    // Also for an MX host that cannot be reached: its TLSA records are still what senders see.
    if let Some((domain, mx_validated)) = &target.mx {
        let answer = crate::dane::lookup(dns, &target.host).await;
        checks.push(crate::dane::check(
            &target.host,
            answer,
            presented.as_deref(),
            *mx_validated,
            domain,
        ));
    }
    checks
}

/// The checks over the network; `presented` gets the chain the server's TLS presented.
async fn connect_and_check(
    dns: &Dns,
    target: &Target,
    roots: Arc<RootCertStore>,
    presented: &mut Option<Vec<CertificateDer<'static>>>,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let reach_id = target.id("reachable");
    let ip = match address(dns, &target.host).await {
        Ok(ip) => ip,
        Err(why) => {
            checks.push(
                Check::new(
                    &reach_id,
                    Pillar::ProtocolSupport,
                    if target.required {
                        Status::Fail
                    } else {
                        Status::Info
                    },
                    format!("{} has no address ({why})", target.host),
                )
                .with_fix(format!("publish an A or AAAA record for {}", target.host)),
            );
            return checks;
        }
    };
    let addr = SocketAddr::new(ip, target.port);
    let plain = match Plain::connect(addr).await {
        Ok(plain) => plain,
        Err(why) => {
            let (status, fix) = if target.required {
                (
                    Status::Fail,
                    format!("let the internet reach {addr} (firewall, listener)"),
                )
            } else {
                (Status::Info, String::new())
            };
            let mut check = Check::new(
                &reach_id,
                Pillar::ProtocolSupport,
                status,
                format!("{addr} cannot be reached: {why}"),
            );
            if target.required {
                check = check.with_fix(fix);
            }
            checks.push(check);
            return checks;
        }
    };
    checks.push(Check::new(
        &reach_id,
        Pillar::ProtocolSupport,
        Status::Pass,
        format!("{addr} answers"),
    ));
    if let Some(stream) = preamble(plain, target, &mut checks).await {
        let (found, chain) = modern_tls(stream, target, roots).await;
        checks.extend(found);
        *presented = chain;
        checks.extend(legacy_tls(addr, target).await);
    }
    checks
}

/// The plaintext part: greeting, capabilities, STARTTLS; the stream ready for a TLS
/// ClientHello, or `None` (with the findings) when TLS cannot start.
async fn preamble(mut plain: Plain, target: &Target, checks: &mut Vec<Check>) -> Option<TcpStream> {
    let failed = |checks: &mut Vec<Check>, what: &str, why: String| {
        checks.push(protocol_failure(target, what, &why));
    };
    match target.start {
        Start::Implicit => Some(plain.stream),
        Start::SmtpStarttls => {
            let greeting = match plain.smtp_reply().await {
                Ok((220, lines)) => lines.join(" "),
                Ok((code, lines)) => {
                    failed(
                        checks,
                        "the greeting",
                        format!("{code} {}", shown(&lines.join(" "))),
                    );
                    return None;
                }
                Err(why) => {
                    failed(checks, "the greeting", why);
                    return None;
                }
            };
            checks.push(banner_check(target, &greeting));
            if let Err(why) = plain.send("EHLO check.sealmail.invalid").await {
                failed(checks, "EHLO", why);
                return None;
            }
            let capabilities: Vec<String> = match plain.smtp_reply().await {
                Ok((250, lines)) => lines
                    .iter()
                    .skip(1)
                    .map(|l| l.split_whitespace().next().unwrap_or("").to_ascii_uppercase())
                    .collect(),
                Ok((code, lines)) => {
                    failed(checks, "EHLO", format!("{code} {}", shown(&lines.join(" "))));
                    return None;
                }
                Err(why) => {
                    failed(checks, "EHLO", why);
                    return None;
                }
            };
            checks.push(if capabilities.iter().any(|c| c == "AUTH" || c.starts_with("AUTH=")) {
                Check::new(
                    &target.id("auth-before-tls"),
                    Pillar::Confidentiality,
                    Status::Fail,
                    "AUTH is offered before STARTTLS: passwords may cross in plaintext",
                )
                .with_fix("offer AUTH only after STARTTLS (Postfix: smtpd_tls_auth_only = yes; sealmail never offers it)")
            } else {
                Check::new(
                    &target.id("auth-before-tls"),
                    Pillar::Confidentiality,
                    Status::Pass,
                    "no AUTH before STARTTLS",
                )
            });
            if !capabilities.iter().any(|c| c == "STARTTLS") {
                checks.push(
                    Check::new(
                        &target.id("starttls"),
                        Pillar::Encryption,
                        Status::Fail,
                        "STARTTLS is not offered: mail to this server travels in plaintext",
                    )
                    .with_fix("configure a certificate and offer STARTTLS (Postfix: smtpd_tls_security_level = may)"),
                );
                return None;
            }
            if let Err(why) = plain.send("STARTTLS").await {
                failed(checks, "STARTTLS", why);
                return None;
            }
            match plain.smtp_reply().await {
                Ok((220, _)) => {}
                Ok((code, lines)) => {
                    checks.push(
                        Check::new(
                            &target.id("starttls"),
                            Pillar::Encryption,
                            Status::Fail,
                            format!(
                                "STARTTLS is offered but refused: {code} {}",
                                shown(&lines.join(" "))
                            ),
                        )
                        .with_fix("check the server's TLS configuration (certificate and key readable)"),
                    );
                    return None;
                }
                Err(why) => {
                    failed(checks, "STARTTLS", why);
                    return None;
                }
            }
            started_tls(plain, target, checks, "220 reply")
        }
        Start::ImapStarttls => {
            let greeting = match plain.line().await {
                Ok(line) if line.to_ascii_uppercase().starts_with("* OK") => line,
                Ok(line) => {
                    failed(checks, "the greeting", shown(&line));
                    return None;
                }
                Err(why) => {
                    failed(checks, "the greeting", why);
                    return None;
                }
            };
            checks.push(banner_check(target, &greeting));
            if let Err(why) = plain.send("c1 CAPABILITY").await {
                failed(checks, "CAPABILITY", why);
                return None;
            }
            let capabilities: Vec<String> = match plain.imap_reply("c1").await {
                Ok((lines, status)) if status.starts_with("OK") => lines
                    .iter()
                    .map(|l| l.to_ascii_uppercase())
                    .filter_map(|l| l.strip_prefix("* CAPABILITY ").map(str::to_string))
                    .flat_map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                    .collect(),
                Ok((_, status)) => {
                    failed(checks, "CAPABILITY", shown(&status));
                    return None;
                }
                Err(why) => {
                    failed(checks, "CAPABILITY", why);
                    return None;
                }
            };
            checks.push(if capabilities.iter().any(|c| c == "LOGINDISABLED") {
                Check::new(
                    &target.id("auth-before-tls"),
                    Pillar::Confidentiality,
                    Status::Pass,
                    "LOGINDISABLED before STARTTLS",
                )
            } else {
                Check::new(
                    &target.id("auth-before-tls"),
                    Pillar::Confidentiality,
                    Status::Fail,
                    "LOGIN is allowed before STARTTLS (no LOGINDISABLED): passwords may cross in plaintext",
                )
                .with_fix("refuse LOGIN before TLS (Dovecot: disable_plaintext_auth = yes)")
            });
            if !capabilities.iter().any(|c| c == "STARTTLS") {
                checks.push(
                    Check::new(
                        &target.id("starttls"),
                        Pillar::Encryption,
                        Status::Fail,
                        "STARTTLS is not offered",
                    )
                    .with_fix("offer STARTTLS, or close this port and use implicit TLS on 993"),
                );
                return None;
            }
            if let Err(why) = plain.send("c2 STARTTLS").await {
                failed(checks, "STARTTLS", why);
                return None;
            }
            match plain.imap_reply("c2").await {
                Ok((_, status)) if status.starts_with("OK") => {}
                Ok((_, status)) => {
                    failed(checks, "STARTTLS", shown(&status));
                    return None;
                }
                Err(why) => {
                    failed(checks, "STARTTLS", why);
                    return None;
                }
            }
            started_tls(plain, target, checks, "OK")
        }
    }
}

/// STARTTLS was accepted: the stream for the handshake, unless the server sent bytes after its
/// `reply`, which would be read as TLS (the injection RFC 3207 forbids).
fn started_tls(plain: Plain, target: &Target, checks: &mut Vec<Check>, reply: &str) -> Option<TcpStream> {
    checks.push(Check::new(
        &target.id("starttls"),
        Pillar::Encryption,
        Status::Pass,
        "STARTTLS offered",
    ));
    if plain.buffer.is_empty() {
        return Some(plain.stream);
    }
    checks.push(protocol_failure(
        target,
        "STARTTLS",
        &format!("the server sent data after its {reply}"),
    ));
    None
}

/// A session that did not go as its protocol says.
fn protocol_failure(target: &Target, what: &str, why: &str) -> Check {
    Check::new(
        &target.id("protocol"),
        Pillar::ProtocolSupport,
        Status::Fail,
        format!("{what}: {why}"),
    )
    .with_fix("check the server's log for why the session failed")
}

fn banner_check(target: &Target, greeting: &str) -> Check {
    match disclosed_version(greeting) {
        Some(version) => Check::new(
            &target.id("banner"),
            Pillar::ServerSecurity,
            Status::Warn,
            format!(
                "the greeting names the software and its version ({version}): `{}`",
                shown(greeting)
            ),
        )
        .with_fix("leave the version out of the greeting (Postfix: smtpd_banner = $myhostname ESMTP)"),
        None => Check::new(
            &target.id("banner"),
            Pillar::ServerSecurity,
            Status::Pass,
            "the greeting names no software version",
        ),
    }
}

/// Checks the chain with webpki and remembers the outcome, then lets the handshake go on, so
/// that a server with a bad certificate is still looked at (and the certificate reported).
#[derive(Debug)]
struct Recorder {
    webpki: Arc<WebPkiServerVerifier>,
    outcome: Mutex<Option<Verification>>,
}

/// The chain a server presented, and what webpki said of it.
type Verification = (Vec<CertificateDer<'static>>, Result<(), rustls::Error>);

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result = self
            .webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map(|_| ());
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some((chain, result));
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// The TLS handshake rustls makes (1.2 or 1.3, forward-secret AEAD only): the version and
/// suite, and the certificate; with the chain the server presented (for the DANE check).
async fn modern_tls(
    stream: TcpStream,
    target: &Target,
    roots: Arc<RootCertStore>,
) -> (Vec<Check>, Option<Vec<CertificateDer<'static>>>) {
    let provider = Arc::new(sealmail_tls::restricted_provider());
    let webpki = match WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build() {
        Ok(webpki) => webpki,
        Err(e) => {
            return (
                vec![Check::new(
                    &target.id("tls"),
                    Pillar::Encryption,
                    Status::Fail,
                    format!("no verifier: {e}"),
                )],
                None,
            );
        }
    };
    let recorder = Arc::new(Recorder {
        webpki,
        outcome: Mutex::new(None),
    });
    let config = match rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    {
        Ok(builder) => builder
            .dangerous()
            .with_custom_certificate_verifier(recorder.clone())
            .with_no_client_auth(),
        Err(e) => {
            return (
                vec![Check::new(
                    &target.id("tls"),
                    Pillar::Encryption,
                    Status::Fail,
                    e.to_string(),
                )],
                None,
            );
        }
    };
    let Ok(name) = ServerName::try_from(target.host.to_string()) else {
        return (
            vec![Check::new(
                &target.id("tls"),
                Pillar::Encryption,
                Status::Fail,
                "not a host name",
            )],
            None,
        );
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let handshake = tokio::time::timeout(STEP_TIMEOUT, connector.connect(name, stream)).await;
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            return (
                vec![
                    Check::new(
                        &target.id("tls"),
                        Pillar::Encryption,
                        Status::Fail,
                        format!("no TLS 1.2 or 1.3 handshake with a forward-secret AEAD suite: {e}"),
                    )
                    .with_fix("allow TLS 1.2 and 1.3 with ECDHE and AES-GCM or ChaCha20-Poly1305"),
                ],
                None,
            );
        }
        Err(_) => {
            return (
                vec![Check::new(
                    &target.id("tls"),
                    Pillar::Encryption,
                    Status::Fail,
                    format!(
                        "the TLS handshake did not finish within {} s",
                        STEP_TIMEOUT.as_secs()
                    ),
                )],
                None,
            );
        }
    };
    let (_, session) = tls.get_ref();
    let version = match session.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2",
        _ => "TLS",
    };
    let suite = session
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    let mut checks = vec![Check::new(
        &target.id("tls"),
        Pillar::Encryption,
        Status::Pass,
        format!("{version}, {suite} (forward secret, AEAD)"),
    )];
    let outcome = recorder.outcome.lock().unwrap_or_else(|p| p.into_inner()).take();
    let chain = match outcome {
        Some((chain, result)) => {
            checks.push(certificate_check(target, &chain, result));
            Some(chain)
        }
        None => {
            checks.push(Check::new(
                &target.id("certificate"),
                Pillar::Encryption,
                Status::Fail,
                "the handshake finished without a certificate to check",
            ));
            None
        }
    };
    (checks, chain)
}

fn certificate_check(
    target: &Target,
    chain: &[CertificateDer<'static>],
    result: Result<(), rustls::Error>,
) -> Check {
    use rustls::CertificateError;
    let id = target.id("certificate");
    let Some(leaf) = chain.first() else {
        return Check::new(&id, Pillar::Encryption, Status::Fail, "no certificate");
    };
    let renew = "renew it (sealmail: ACME renews by itself, `sealmail cert status` shows it)";
    let (key, days_left) = leaf_facts(leaf.as_ref());
    match result {
        Ok(()) if key.1 => Check::new(
            &id,
            Pillar::Encryption,
            Status::Fail,
            format!("valid for {}, but its {} is too weak", target.host, key.0),
        )
        .with_fix("issue a certificate with an RSA key of 2048 bits or more, or an ECDSA key"),
        Ok(()) if days_left.is_some_and(|days| days < EXPIRY_WARN_DAYS) => Check::new(
            &id,
            Pillar::Encryption,
            Status::Warn,
            format!(
                "valid for {}, expires in {} days",
                target.host,
                days_left.unwrap_or(0)
            ),
        )
        .with_fix(renew),
        Ok(()) => Check::new(
            &id,
            Pillar::Encryption,
            Status::Pass,
            format!(
                "valid for {}, {} days left, {}",
                target.host,
                days_left.map_or("unknown".to_string(), |d| d.to_string()),
                key.0
            ),
        ),
        Err(rustls::Error::InvalidCertificate(CertificateError::Expired))
        | Err(rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })) => Check::new(
            &id,
            Pillar::Encryption,
            Status::Fail,
            "the certificate has expired",
        )
        .with_fix(renew),
        Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
        | Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })) => {
            Check::new(
                &id,
                Pillar::Encryption,
                Status::Fail,
                format!("the certificate is not valid for {}", target.host),
            )
            .with_fix(format!("issue a certificate that names {}", target.host))
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => Check::new(
            &id,
            Pillar::Encryption,
            Status::Fail,
            "the certificate is not from a trusted authority (self-signed, or the chain is incomplete)",
        )
        .with_fix("use a certificate from a public CA (sealmail: [acme]) and serve the whole chain"),
        Err(other) => Check::new(
            &id,
            Pillar::Encryption,
            Status::Fail,
            format!("the certificate is not valid: {other}"),
        )
        .with_fix(renew),
    }
}

/// The certificate's key (for people, and whether it is too weak: RSA under 2048 bits) and
/// its days left, when it can be read.
fn leaf_facts(der: &[u8]) -> ((String, bool), Option<i64>) {
    use x509_parser::prelude::{FromDer, X509Certificate};
    use x509_parser::public_key::PublicKey;
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return (("key of an unreadable kind".to_string(), false), None);
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let days_left = (cert.validity().not_after.timestamp() - now) / 86_400;
    let key = match cert.public_key().parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            let bits = rsa.key_size();
            (format!("RSA key of {bits} bits"), bits < 2048)
        }
        Ok(PublicKey::EC(point)) => (format!("EC key of {} bits", point.key_size()), false),
        Ok(_) | Err(_) => ("key".to_string(), false),
    };
    (key, Some(days_left))
}

/// TLS 1.0 and 1.1 (RFC 8996 deprecates them): a raw ClientHello offering only that version,
/// on a fresh connection through the same preamble; a ServerHello at that version means the
/// server accepts it.
async fn legacy_tls(addr: SocketAddr, target: &Target) -> Vec<Check> {
    use crate::tls::HelloAnswer;
    let mut accepted = Vec::new();
    let mut unprobed = Vec::new();
    for version in [crate::tls::TLS1_0, crate::tls::TLS1_1] {
        let label = if version == crate::tls::TLS1_0 {
            "TLS 1.0"
        } else {
            "TLS 1.1"
        };
        let Ok(plain) = Plain::connect(addr).await else {
            unprobed.push(label);
            continue;
        };
        let mut ignored = Vec::new();
        let Some(mut stream) = preamble(plain, target, &mut ignored).await else {
            unprobed.push(label);
            continue;
        };
        let hello = crate::tls::client_hello(version, crate::tls::LEGACY_SUITES, &target.host);
        match crate::tls::send_client_hello(&mut stream, &hello, STEP_TIMEOUT).await {
            // The version the ServerHello chose (a server asked for 1.1 may settle on 1.0).
            Ok(HelloAnswer::ServerHello(chosen)) if chosen <= version => {
                let chosen = match chosen {
                    crate::tls::TLS1_1 => "TLS 1.1",
                    crate::tls::TLS1_0 => "TLS 1.0",
                    _ => "SSL 3.0",
                };
                if !accepted.contains(&chosen) {
                    accepted.push(chosen);
                }
            }
            // An alert, a higher version, or the connection closed: refused.
            Ok(HelloAnswer::ServerHello(_) | HelloAnswer::Alert(_) | HelloAnswer::Closed) => {}
            Ok(HelloAnswer::Other) | Err(_) => unprobed.push(label),
        }
    }
    let id = target.id("tls-legacy");
    if !accepted.is_empty() {
        vec![
            Check::new(
                &id,
                Pillar::Encryption,
                Status::Fail,
                format!("accepts {} (deprecated by RFC 8996)", accepted.join(" and ")),
            )
            .with_fix("allow only TLS 1.2 and 1.3 (Postfix: smtpd_tls_protocols = >=TLSv1.2; OpenSSL: MinProtocol = TLSv1.2)"),
        ]
    } else if !unprobed.is_empty() {
        vec![Check::new(
            &id,
            Pillar::Encryption,
            Status::Info,
            format!(
                "{} could not be probed (no connection, or no clear answer)",
                unprobed.join(" and ")
            ),
        )]
    } else {
        vec![Check::new(
            &id,
            Pillar::Encryption,
            Status::Pass,
            "TLS 1.0 and 1.1 are refused",
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greetings_that_name_a_version_are_found() {
        assert_eq!(
            disclosed_version("mx.example.org ESMTP Postfix 3.7.11 (Debian)"),
            Some("postfix 3.7.11".to_string())
        );
        assert_eq!(
            disclosed_version("mail.example.org ESMTP Exim 4.96 Mon, 1 Dec 2026"),
            Some("exim 4.96".to_string())
        );
        assert_eq!(
            disclosed_version("* OK [CAPABILITY IMAP4rev1] Dovecot/2.3.19 ready."),
            Some("dovecot 2.3.19".to_string())
        );
        assert_eq!(
            disclosed_version("mx.example.org ESMTP Postfix (Debian/GNU)"),
            None
        );
        assert_eq!(disclosed_version("mail.example.test ESMTP sealmail"), None);
        assert_eq!(disclosed_version("mx ESMTP 10.2.3.4 ready"), None);
        assert_eq!(
            disclosed_version("mx Microsoft ESMTP MAIL Service, Version: 6.0.3790.1830 ready"),
            Some("version 6.0.3790.1830".to_string())
        );
        assert_eq!(
            disclosed_version("mx ESMTP Postfix [3.7.1]"),
            Some("postfix 3.7.1".to_string())
        );
    }

    #[test]
    fn ports_are_read_over_the_defaults() {
        let ports = Ports::parse("smtp=2525,imaps=2993").unwrap_or(Ports {
            smtp: 0,
            ..Ports::default()
        });
        assert_eq!((ports.smtp, ports.imaps, ports.submission), (2525, 2993, 587));
        assert!(Ports::parse("pop3=110").is_err());
        assert!(Ports::parse("smtp=0").is_err());
        assert!(Ports::parse("smtp").is_err());
    }
}
