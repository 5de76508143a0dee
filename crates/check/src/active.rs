//! `sealmail check --active`: what an attacker would try, tried against servers the user runs
//! (the command asks for `--i-run-this-server`). Each MX host's SMTP port is tried as an open
//! relay (RFC 5321 3.6.2 and 7.1, with the address tricks of RFC 2505 2.6 and old sendmail's),
//! for SMTP smuggling (the CVE-2023-51764 family: an end of data other than `<CRLF>.<CRLF>`,
//! RFC 5321 4.1.1.4), for STARTTLS command injection (CVE-2011-0411: commands sent with
//! STARTTLS answered inside TLS, RFC 3207 4.2) and for taking a password in plaintext (RFC
//! 4954 4); the submission and IMAP STARTTLS ports of the `--host` hosts for the last two
//! (IMAP: LOGIN before STARTTLS, RFC 9051 6.2.3).
//!
//! No probe can get a message delivered by a server that is not vulnerable: relay probes stop
//! at RCPT (then RSET and QUIT), and smuggling probes never send a real `<CRLF>.<CRLF>` but
//! drop the connection, so the unfinished transaction is discarded (RFC 5321 3.8). Only
//! reserved names (RFC 2606 `.invalid`) stand for the outside world, and the only credential
//! ever sent is a bogus one.
//!
//! A sealmail server counts a refused relay recipient as 4 points and an unknown local user as
//! 2 toward a ban at 20 within `security.failure_window_secs` (`sealmail-guard`), and a session
//! with `smtp.max_errors` errors as 4. So every sender and every address trick is tried once,
//! not every pairing of them, and postmaster is asked for once before the smuggling probes (at
//! most 18 points in all), no connection gets near 10 errors,
//! the AUTH probe stops where a server that refuses plaintext passwords refuses it (no
//! password check, no authentication failure), and servers sharing one address and port are
//! probed once. Two MX addresses of one sealmail server (or cluster) still add up: that, and a
//! second run within the window, can ban (docs/CHECK-JSON.md says so). Every connection is bounded like those of [`crate::servers`], and all probes
//! of one server together by [`TARGET_BUDGET`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sealmail_dns::Dns;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::report::{Check, Pillar, Status};
use crate::servers::{ClientServer, Plain, STEP_TIMEOUT, TARGET_BUDGET, address, shown};

/// The outside world of the relay probes: a reserved name that can never be delivered to.
const OUTSIDE: &str = "relay-test.invalid";
/// The local part of the relay probes' recipients.
const PROBE_USER: &str = "relay-probe";
/// How we greet.
const EHLO_NAME: &str = "check.sealmail.invalid";
/// How long a smuggling probe waits for the server to take a false ending as the end of the
/// data: a vulnerable server answers at once (it has the whole message), so a few seconds.
pub const SMUGGLING_WAIT: Duration = Duration::from_secs(5);
/// How long the injection probe waits inside TLS for an answer to the injected command.
pub const INJECTION_WAIT: Duration = Duration::from_secs(3);
/// The most read inside TLS after an injection: the start of one answer is enough.
const INJECTION_READ: usize = 512;

/// The protocol a probed port speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    /// An MX host's SMTP port: every probe.
    Mx,
    /// Submission with STARTTLS (587): plaintext AUTH and STARTTLS injection.
    Submission,
    /// IMAP with STARTTLS (143): plaintext LOGIN and STARTTLS injection.
    Imap,
}

/// One port to probe.
#[derive(Debug, Clone)]
struct Target {
    host: String,
    port: u16,
    service: Service,
}

impl Target {
    fn id(&self, check: &str) -> String {
        format!("{check}:{}:{}", self.host, self.port)
    }
}

/// Every active probe of `domain`'s servers: `mx_hosts` (most preferred first, the first
/// [`crate::servers::MAX_MX_CHECKED`] as in [`crate::servers::check_servers`]) on `smtp_port`, and the
/// submission and IMAP STARTTLS servers among `clients` (the caller passes only those the
/// user named with `--host`). Servers are probed in parallel, each within [`TARGET_BUDGET`]; an address and
/// port shared by several names is probed once.
pub async fn probe_servers(
    dns: &Dns,
    domain: &str,
    mx_hosts: &[String],
    clients: &[ClientServer],
    smtp_port: u16,
) -> Vec<Check> {
    let (mx, _) = crate::servers::distinct_mx(mx_hosts);
    let mut targets: Vec<Target> = mx
        .iter()
        .map(|host| Target {
            host: host.to_string(),
            port: smtp_port,
            service: Service::Mx,
        })
        .collect();
    for client in clients.iter().take(crate::servers::MAX_CLIENT_SERVERS) {
        let service = match client.service {
            crate::servers::Service::Submission => Service::Submission,
            crate::servers::Service::Imap => Service::Imap,
            // Implicit TLS has no plaintext phase to attack.
            crate::servers::Service::Submissions | crate::servers::Service::Imaps => continue,
        };
        targets.push(Target {
            host: client.host.clone(),
            port: client.port,
            service,
        });
    }
    let mut checks = Vec::new();
    let mut probed: Vec<(SocketAddr, Target)> = Vec::new();
    for target in targets {
        let ip = match address(dns, &target.host).await {
            Ok(ip) => ip,
            Err(why) => {
                // The server checks report the missing address; this only says why no probe ran.
                checks.push(Check::new(
                    &target.id("active"),
                    Pillar::ServerSecurity,
                    Status::Info,
                    format!("not probed: {} has no address ({why})", target.host),
                ));
                continue;
            }
        };
        let addr = SocketAddr::new(ip, target.port);
        // Probing one server twice would count twice against us on a server that bans.
        if let Some((_, first)) = probed.iter().find(|(a, _)| *a == addr) {
            checks.push(Check::new(
                &target.id("active"),
                Pillar::ServerSecurity,
                Status::Info,
                format!("{addr} is also {}: probed once, as that", first.host),
            ));
            continue;
        }
        probed.push((addr, target));
    }
    let domain = domain.trim_end_matches('.').to_string();
    let mut running = tokio::task::JoinSet::new();
    for (order, (addr, target)) in probed.into_iter().enumerate() {
        let domain = domain.clone();
        running.spawn(async move {
            let found = match tokio::time::timeout(TARGET_BUDGET, probe_target(addr, &target, &domain)).await
            {
                Ok(found) => found,
                Err(_) => vec![
                    Check::new(
                        &target.id("active"),
                        Pillar::ServerSecurity,
                        Status::Info,
                        format!(
                            "the active probes of this server did not finish within {} s",
                            TARGET_BUDGET.as_secs()
                        ),
                    )
                    .incomplete(),
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
    results.sort_by_key(|(order, _)| *order);
    checks.extend(results.into_iter().flat_map(|(_, found)| found));
    checks
}

async fn probe_target(addr: SocketAddr, target: &Target, domain: &str) -> Vec<Check> {
    // One connection first: an unreachable server is reported once (by the server checks),
    // not once per probe after a connection timeout each.
    match Plain::connect(addr).await {
        Ok(plain) => drop(plain),
        Err(why) => {
            return vec![Check::new(
                &target.id("active"),
                Pillar::ServerSecurity,
                Status::Info,
                format!("not probed: {addr} cannot be reached ({why})"),
            )];
        }
    }
    let mut checks = Vec::new();
    match target.service {
        Service::Mx | Service::Submission => {
            checks.push(plaintext_auth_smtp(addr, target).await);
            checks.push(injection_smtp(addr, target).await);
        }
        Service::Imap => {
            checks.push(plaintext_login_imap(addr, target).await);
            checks.push(injection_imap(addr, target).await);
        }
    }
    if target.service == Service::Mx {
        checks.push(open_relay(addr, target, domain).await);
        checks.push(smuggling(addr, target, domain).await);
    }
    checks
}

/// A probe that could not be made: noted, and the report cannot be an A.
fn not_probed(id: &str, pillar: Pillar, why: &str) -> Check {
    Check::new(id, pillar, Status::Info, format!("could not be probed: {why}")).incomplete()
}

/// An SMTP connection past the greeting and EHLO, with the EHLO keywords (upper case).
async fn smtp_start(addr: SocketAddr) -> Result<(Plain, Vec<String>), String> {
    let mut plain = Plain::connect(addr).await?;
    match plain.smtp_reply().await? {
        (220, _) => {}
        (code, lines) => return Err(format!("greeting {code} {}", shown(&lines.join(" ")))),
    }
    plain.send(&format!("EHLO {EHLO_NAME}")).await?;
    match plain.smtp_reply().await? {
        (250, lines) => {
            let keywords = lines
                .iter()
                .skip(1)
                .map(|l| l.split_whitespace().next().unwrap_or("").to_ascii_uppercase())
                .collect();
            Ok((plain, keywords))
        }
        (code, lines) => Err(format!("EHLO: {code} {}", shown(&lines.join(" ")))),
    }
}

/// Ends an SMTP session politely; its answer does not matter.
async fn quit(mut plain: Plain) {
    if plain.send("QUIT").await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), plain.smtp_reply()).await;
    }
}

/// Sends bytes as they are (no line ending added), within the step timeout.
async fn send_raw(plain: &mut Plain, bytes: &[u8]) -> Result<(), String> {
    tokio::time::timeout(STEP_TIMEOUT, plain.stream.write_all(bytes))
        .await
        .map_err(|_| "the server does not read".to_string())?
        .map_err(|e| e.to_string())
}

/// `CODE text` of a reply, safe to print.
fn reply_text(code: u16, lines: &[String]) -> String {
    format!("{code} {}", shown(&lines.join(" ")))
}

// ---- Plaintext AUTH ----------------------------------------------------------------------

/// AUTH before STARTTLS with a bogus credential: a server that evaluates it (334 for more,
/// 535 wrong password, 2xx) takes passwords in plaintext; one that refuses it as needing TLS
/// (530, 538, 523) or does not offer AUTH here (502, 503, 504) does not. Only `AUTH PLAIN`
/// with `\0check-probe.invalid\0x` is sent; a 334 is cancelled with `*` (RFC 4954 4) before
/// anything else. When PLAIN is not offered but LOGIN is, `AUTH LOGIN` is sent and its
/// username prompt cancelled: no credential at all.
async fn plaintext_auth_smtp(addr: SocketAddr, target: &Target) -> Check {
    let id = target.id("plaintext-auth");
    let (mut plain, keywords) = match smtp_start(addr).await {
        Ok(started) => started,
        Err(why) => return not_probed(&id, Pillar::ServerSecurity, &why),
    };
    let credential = base64::engine::general_purpose::STANDARD.encode(b"\0check-probe.invalid\0x");
    let mut answer = ask_auth(&mut plain, &format!("AUTH PLAIN {credential}")).await;
    // PLAIN not offered (504): LOGIN, if the EHLO offered it, without any credential.
    let login_offered = keywords.iter().any(|k| k == "AUTH" || k.starts_with("AUTH="));
    if matches!(answer, Ok((504, _))) && login_offered {
        answer = ask_auth(&mut plain, "AUTH LOGIN").await;
    }
    quit(plain).await;
    let fail = |reply: String| {
        Check::new(
            &id,
            Pillar::ServerSecurity,
            Status::Fail,
            format!(
                "a password is taken before STARTTLS, in plaintext: {reply}{}",
                loopback_note(addr)
            ),
        )
        .with_fix(
            "take passwords only after STARTTLS (Postfix: smtpd_tls_auth_only = yes; Exim: server_advertise_condition = ${if def:tls_in_cipher}; sealmail does by default)",
        )
    };
    match answer {
        Ok((code, lines)) if code == 334 || code == 535 || (200..300).contains(&code) => {
            fail(reply_text(code, &lines))
        }
        Ok((code @ (523 | 530 | 538), lines)) => Check::new(
            &id,
            Pillar::ServerSecurity,
            Status::Pass,
            format!(
                "AUTH before STARTTLS is refused as needing TLS: {}",
                reply_text(code, &lines)
            ),
        ),
        Ok((code, lines)) if (500..600).contains(&code) => Check::new(
            &id,
            Pillar::ServerSecurity,
            Status::Pass,
            format!("AUTH before STARTTLS is refused: {}", reply_text(code, &lines)),
        ),
        Ok((code, lines)) => not_probed(
            &id,
            Pillar::ServerSecurity,
            &format!("AUTH got no clear answer: {}", reply_text(code, &lines)),
        ),
        Err(why) => not_probed(&id, Pillar::ServerSecurity, &why),
    }
}

/// Sends an AUTH command and reads its reply; a 334 challenge is cancelled with `*` so that no
/// credential (and no failed login) follows.
async fn ask_auth(plain: &mut Plain, command: &str) -> Result<(u16, Vec<String>), String> {
    plain.send(command).await?;
    let reply = plain.smtp_reply().await?;
    if reply.0 == 334 {
        plain.send("*").await?;
        let _ = plain.smtp_reply().await;
    }
    Ok(reply)
}

/// IMAP LOGIN before STARTTLS with a bogus credential: `NO [AUTHENTICATIONFAILED]` (or OK)
/// means the password was checked, so it could have crossed in plaintext; `BAD`, `NO
/// [PRIVACYREQUIRED]` or a refusal naming TLS means it was not (RFC 9051 6.2.3, LOGINDISABLED).
/// Said of a password taken in plaintext over loopback, which some servers trust.
fn loopback_note(addr: SocketAddr) -> &'static str {
    if addr.ip().is_loopback() {
        " (probed over loopback: Dovecot and some other servers treat local connections as secure, so probe from another host to see what remote clients get)"
    } else {
        ""
    }
}

async fn plaintext_login_imap(addr: SocketAddr, target: &Target) -> Check {
    let id = target.id("plaintext-auth");
    let mut plain = match imap_start(addr).await {
        Ok(plain) => plain,
        Err(why) => return not_probed(&id, Pillar::ServerSecurity, &why),
    };
    let answer = plain.imap_command("p1", "LOGIN check-probe.invalid x").await;
    if plain.send("p2 LOGOUT").await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), plain.imap_reply("p2")).await;
    }
    let (untagged, status) = match answer {
        Ok(answer) => answer,
        Err(why) => return not_probed(&id, Pillar::ServerSecurity, &why),
    };
    let evaluated = login_evaluated(&untagged, &status);
    if evaluated {
        Check::new(
            &id,
            Pillar::ServerSecurity,
            Status::Fail,
            format!(
                "LOGIN before STARTTLS is evaluated, so passwords cross in plaintext: `{}`{}",
                shown(&status),
                loopback_note(addr)
            ),
        )
        .with_fix("refuse LOGIN and AUTHENTICATE before TLS (Dovecot: ssl = required, or disable_plaintext_auth = yes; sealmail does by default)")
    } else if status.starts_with("NO") || status.starts_with("BAD") {
        Check::new(
            &id,
            Pillar::ServerSecurity,
            Status::Pass,
            format!("LOGIN before STARTTLS is refused: `{}`", shown(&status)),
        )
    } else {
        not_probed(
            &id,
            Pillar::ServerSecurity,
            &format!("LOGIN got no clear answer: `{}`", shown(&status)),
        )
    }
}

/// Whether an IMAP server checked a LOGIN sent before TLS, from its tagged reply `status`
/// (upper case, without the tag) and the untagged lines before it: `OK` or `NO
/// [AUTHENTICATIONFAILED]` say it did; `NO [PRIVACYREQUIRED]`, or a `NO` whose text or alerts
/// name TLS or plaintext (Dovecot's older wording), say it refused; `BAD` is a refusal too.
fn login_evaluated(untagged: &[String], status: &str) -> bool {
    // Not a CAPABILITY line: its STARTTLS would read as a refusal naming TLS.
    let alerts: Vec<&String> = untagged
        .iter()
        .filter(|l| !l.to_ascii_uppercase().starts_with("* CAPABILITY"))
        .collect();
    let said = format!("{alerts:?} {status}").to_ascii_uppercase();
    let refused_for_tls = ["PRIVACYREQUIRED", "TLS", "SSL", "SECURE", "PLAINTEXT", "ENCRYPT"]
        .iter()
        .any(|word| said.contains(word));
    status.starts_with("OK")
        || status.contains("AUTHENTICATIONFAILED")
        || (status.starts_with("NO") && !refused_for_tls)
}

/// An IMAP connection past its `* OK` greeting.
async fn imap_start(addr: SocketAddr) -> Result<Plain, String> {
    let mut plain = Plain::connect(addr).await?;
    let greeting = plain.line().await?;
    if !greeting.to_ascii_uppercase().starts_with("* OK") {
        return Err(format!("greeting `{}`", shown(&greeting)));
    }
    Ok(plain)
}

// ---- STARTTLS command injection ----------------------------------------------------------

/// Accepts any certificate: the injection probe only needs a TLS session to read in, and the
/// server checks judge the certificate. Signatures are still verified, so the handshake is a
/// real one.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What came back inside TLS after a command was sent together with STARTTLS.
enum Injected {
    /// The server answered it: the start of the answer.
    Answered(String),
    /// Nothing within [`INJECTION_WAIT`], or the connection closed.
    Silent,
    /// The connection closed instead of the handshake.
    Closed,
    /// The handshake failed (why): nothing can be said.
    NoTls(String),
}

/// The TLS handshake on `stream` (any certificate), then whatever the server sends within
/// [`INJECTION_WAIT`].
async fn read_inside_tls(stream: TcpStream, host: &str) -> Injected {
    let provider = Arc::new(sealmail_tls::restricted_provider());
    let config = match rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    {
        Ok(builder) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
        Err(e) => return Injected::NoTls(e.to_string()),
    };
    let Ok(name) = ServerName::try_from(host.to_string()) else {
        return Injected::NoTls("not a host name".to_string());
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = match tokio::time::timeout(STEP_TIMEOUT, connector.connect(name, stream)).await {
        Ok(Ok(tls)) => tls,
        // Closed before any TLS answer: the server dropped a client that pipelined after
        // STARTTLS (Dovecot does), which is a refusal. A TLS mismatch ends in an alert instead.
        Ok(Err(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            return Injected::Closed;
        }
        Ok(Err(e)) => return Injected::NoTls(e.to_string()),
        Err(_) => return Injected::NoTls(format!("no handshake within {} s", STEP_TIMEOUT.as_secs())),
    };
    let mut answer = vec![0u8; INJECTION_READ];
    match tokio::time::timeout(INJECTION_WAIT, tls.read(&mut answer)).await {
        Ok(Ok(read)) if read > 0 => {
            let text = String::from_utf8_lossy(&answer[..read]);
            Injected::Answered(shown(text.lines().next().unwrap_or("")))
        }
        _ => Injected::Silent,
    }
}

fn injection_check(target: &Target, injected: Injected, command: &str) -> Check {
    let id = target.id("starttls-injection");
    match injected {
        Injected::Answered(answer) => Check::new(
            &id,
            Pillar::Encryption,
            Status::Fail,
            format!(
                "`{command}`, sent in plaintext with STARTTLS, was answered inside TLS (`{}`): an attacker on the path can inject commands into the encrypted session (CVE-2011-0411)",
                answer
            ),
        )
        .with_fix("update the server: after STARTTLS it must discard what the client sent before the handshake (RFC 3207 4.2; Postfix 2.8.4 and later, Dovecot, sealmail do)"),
        Injected::Silent => Check::new(
            &id,
            Pillar::Encryption,
            Status::Pass,
            format!("`{command}`, sent in plaintext with STARTTLS, was not answered inside TLS"),
        ),
        Injected::Closed => Check::new(
            &id,
            Pillar::Encryption,
            Status::Pass,
            format!("`{command}`, sent in plaintext with STARTTLS, made the server close the connection instead of starting TLS"),
        ),
        Injected::NoTls(why) => Check::new(
            &id,
            Pillar::Encryption,
            Status::Info,
            format!("no TLS handshake after STARTTLS with a pipelined command ({why}): the server may have refused the command, or speaks no TLS rustls does"),
        )
        .incomplete(),
    }
}

/// SMTP: `STARTTLS\r\nNOOP\r\n` in one write; a reply to NOOP inside TLS is a FAIL.
async fn injection_smtp(addr: SocketAddr, target: &Target) -> Check {
    let id = target.id("starttls-injection");
    let (mut plain, keywords) = match smtp_start(addr).await {
        Ok(started) => started,
        Err(why) => return not_probed(&id, Pillar::Encryption, &why),
    };
    if !keywords.iter().any(|k| k == "STARTTLS") {
        quit(plain).await;
        return Check::new(
            &id,
            Pillar::Encryption,
            Status::Info,
            "STARTTLS is not offered: nothing to inject into (see the starttls check)",
        );
    }
    if let Err(why) = send_raw(&mut plain, b"STARTTLS\r\nNOOP\r\n").await {
        return not_probed(&id, Pillar::Encryption, &why);
    }
    match plain.smtp_reply().await {
        Ok((220, _)) => {}
        Ok((code, lines)) => {
            return Check::new(
                &id,
                Pillar::Encryption,
                Status::Pass,
                format!(
                    "STARTTLS with a pipelined command is refused: {}",
                    reply_text(code, &lines)
                ),
            );
        }
        Err(why) => return not_probed(&id, Pillar::Encryption, &why),
    }
    if !plain.buffer.is_empty() {
        // NOOP answered in plaintext, before TLS: not the injection, but no TLS can follow.
        return not_probed(
            &id,
            Pillar::Encryption,
            "the server answered in plaintext after its 220",
        );
    }
    injection_check(target, read_inside_tls(plain.stream, &target.host).await, "NOOP")
}

/// IMAP: `p2 STARTTLS\r\np3 NOOP\r\n` in one write; a reply to p3 inside TLS is a FAIL.
async fn injection_imap(addr: SocketAddr, target: &Target) -> Check {
    let id = target.id("starttls-injection");
    let mut plain = match imap_start(addr).await {
        Ok(plain) => plain,
        Err(why) => return not_probed(&id, Pillar::Encryption, &why),
    };
    let capabilities = plain.imap_command("p1", "CAPABILITY").await;
    let offered = match capabilities {
        Ok((lines, _)) => lines
            .iter()
            .any(|l| l.to_ascii_uppercase().split_whitespace().any(|w| w == "STARTTLS")),
        Err(why) => return not_probed(&id, Pillar::Encryption, &why),
    };
    if !offered {
        return Check::new(
            &id,
            Pillar::Encryption,
            Status::Info,
            "STARTTLS is not offered: nothing to inject into (see the starttls check)",
        );
    }
    if let Err(why) = send_raw(&mut plain, b"p2 STARTTLS\r\np3 NOOP\r\n").await {
        return not_probed(&id, Pillar::Encryption, &why);
    }
    match plain.imap_reply("p2").await {
        Ok((_, status)) if status.starts_with("OK") => {}
        Ok((_, status)) => {
            return Check::new(
                &id,
                Pillar::Encryption,
                Status::Pass,
                format!(
                    "STARTTLS with a pipelined command is refused: `{}`",
                    shown(&status)
                ),
            );
        }
        Err(why) => return not_probed(&id, Pillar::Encryption, &why),
    }
    if !plain.buffer.is_empty() {
        return not_probed(
            &id,
            Pillar::Encryption,
            "the server answered in plaintext after its OK",
        );
    }
    injection_check(
        target,
        read_inside_tls(plain.stream, &target.host).await,
        "p3 NOOP",
    )
}

// ---- Open relay --------------------------------------------------------------------------

/// One relay attempt: a recipient outside the domain, however spelled.
struct RelayTry {
    /// For people: the variant tried.
    label: &'static str,
    address: String,
}

/// What the server answered to one relay attempt.
enum RelayAnswer {
    /// 2xx to RCPT: it would relay.
    Accepted(String),
    Refused,
    /// The sender was refused (5xx to MAIL): nothing relayed, but the recipient not tried.
    SenderRefused,
    /// 4xx (greylisting, a temporary failure): it may relay later.
    Deferred(String),
    /// The attempt could not be made.
    Unprobed(String),
}

/// The relay attempts, by sender: the sender from the domain itself (the classic
/// misconfiguration), the null sender and an outside sender, each once, and each address
/// trick once (see the module comment for why not every pairing).
fn relay_plan(domain: &str) -> Vec<(String, Vec<RelayTry>)> {
    let outside = format!("{PROBE_USER}@{OUTSIDE}");
    vec![
        (
            format!("postmaster@{domain}"),
            vec![RelayTry {
                label: "an outside recipient, with a sender of the domain itself",
                address: outside.clone(),
            }],
        ),
        (
            String::new(),
            vec![RelayTry {
                label: "a source route through this server, with the null sender",
                address: format!("@{domain}:{outside}"),
            }],
        ),
        (
            outside.clone(),
            vec![
                RelayTry {
                    label: "the percent hack",
                    address: format!("{PROBE_USER}%{OUTSIDE}@{domain}"),
                },
                RelayTry {
                    label: "an outside address quoted as the local part",
                    address: format!("\"{outside}\"@{domain}"),
                },
                RelayTry {
                    label: "two @",
                    address: format!("{outside}@{domain}"),
                },
                RelayTry {
                    label: "a bang path",
                    address: format!("{OUTSIDE}!{PROBE_USER}@{domain}"),
                },
            ],
        ),
    ]
}

/// The relay attempts of one sender on one connection: MAIL, one RCPT per attempt, RSET and
/// QUIT. Never DATA.
async fn relay_session(addr: SocketAddr, sender: &str, tries: &[RelayTry]) -> Vec<RelayAnswer> {
    let all = |answer: &dyn Fn() -> RelayAnswer| tries.iter().map(|_| answer()).collect::<Vec<_>>();
    let mut plain = match smtp_start(addr).await {
        Ok((plain, _)) => plain,
        Err(why) => return all(&|| RelayAnswer::Unprobed(why.clone())),
    };
    let mail = plain.smtp_command(&format!("MAIL FROM:<{sender}>")).await;
    match mail {
        Ok((code, _)) if (200..300).contains(&code) => {}
        // A server that refuses the sender relays nothing for it.
        Ok((code, _)) if (500..600).contains(&code) => {
            quit(plain).await;
            return all(&|| RelayAnswer::SenderRefused);
        }
        Ok((code, lines)) => {
            quit(plain).await;
            let why = format!("MAIL FROM:<{sender}>: {}", reply_text(code, &lines));
            return all(&|| RelayAnswer::Deferred(why.clone()));
        }
        Err(why) => return all(&|| RelayAnswer::Unprobed(why.clone())),
    }
    let mut answers = Vec::new();
    for relay in tries {
        let rcpt = plain.smtp_command(&format!("RCPT TO:<{}>", relay.address)).await;
        answers.push(match rcpt {
            Ok((code, lines)) if (200..300).contains(&code) => {
                RelayAnswer::Accepted(reply_text(code, &lines))
            }
            Ok((code, _)) if (500..600).contains(&code) => RelayAnswer::Refused,
            Ok((code, lines)) => RelayAnswer::Deferred(reply_text(code, &lines)),
            Err(why) => RelayAnswer::Unprobed(why),
        });
    }
    if plain.send("RSET").await.is_ok() {
        let _ = plain.smtp_reply().await;
    }
    quit(plain).await;
    answers
}

/// Open relay: any 2xx to an outside recipient is a FAIL.
async fn open_relay(addr: SocketAddr, target: &Target, domain: &str) -> Check {
    let id = target.id("open-relay");
    let mut accepted = Vec::new();
    let mut unclear = Vec::new();
    let mut refused = Vec::new();
    let mut recipient_answered = false;
    for (sender, tries) in relay_plan(domain) {
        let answers = relay_session(addr, &sender, &tries).await;
        for (relay, answer) in tries.iter().zip(answers) {
            let tried = format!("<{}> from <{sender}> ({})", relay.address, relay.label);
            match answer {
                RelayAnswer::Accepted(reply) => accepted.push(format!("{tried}: {reply}")),
                RelayAnswer::Refused => {
                    recipient_answered = true;
                    refused.push(relay.label.to_string())
                }
                RelayAnswer::SenderRefused => {
                    refused.push(format!("{} (the sender was refused)", relay.label))
                }
                RelayAnswer::Deferred(reply) => unclear.push(format!("{tried}: {reply}")),
                RelayAnswer::Unprobed(why) => unclear.push(format!("{tried}: {why}")),
            }
        }
    }
    if !accepted.is_empty() {
        Check::new(
            &id,
            Pillar::ServerSecurity,
            Status::Fail,
            format!(
                "accepts mail for outside recipients from this unauthenticated client (an open relay): {}",
                accepted.join("; ")
            ),
        )
        .with_fix(
            "accept mail from unauthenticated clients only for your own domains (Postfix: smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination, with mynetworks = 127.0.0.0/8 only; allow_percent_hack = no; swap_bangpath = no); if this client's address is in the server's trusted networks, run the check from outside them. A catch-all mailbox also accepts the tricks that name your domain: check where such mail goes",
        )
    } else if !unclear.is_empty() {
        Check::new(
            &id,
            Pillar::ServerSecurity,
            Status::Info,
            format!(
                "no relay attempt accepted, but some had no clear answer: {}",
                unclear.join("; ")
            ),
        )
        .incomplete()
    } else if !recipient_answered {
        // Every sender refused at MAIL (a blocklist of this address, say): no recipient was
        // ever tried, so nothing is known of relaying.
        Check::new(
            &id,
            Pillar::ServerSecurity,
            Status::Info,
            format!(
                "not probed: every sender was refused before a recipient could be tried: {}",
                refused.join("; ")
            ),
        )
        .incomplete()
    } else {
        Check::new(
            &id,
            Pillar::ServerSecurity,
            Status::Pass,
            format!("every relay attempt was refused: {}", refused.join("; ")),
        )
    }
}

// ---- SMTP smuggling ----------------------------------------------------------------------

/// The false ends of data tried, one connection each: bare LF and bare CR forms, and a NUL
/// that a receiver stripping NULs would read as `<CRLF>.<CRLF>`.
const FALSE_ENDINGS: [(&str, &[u8]); 6] = [
    ("<LF>.<LF>", b"\n.\n"),
    ("<CR>.<CR>", b"\r.\r"),
    ("<CRLF>.<LF>", b"\r\n.\n"),
    ("<LF>.<CRLF>", b"\n.\r\n"),
    ("<CRLF>.<CR>", b"\r\n.\r"),
    ("<CRLF>.<NUL><CRLF>", b"\r\n.\0\r\n"),
];

/// How a server took one false ending.
enum Smuggled {
    /// 2xx: it ended the data there and took the message.
    Ended(String),
    /// 4xx: it ended the data there, and deferred the message.
    EndedDeferred(String),
    /// No answer, a 5xx, or the connection closed: not taken as the end.
    NotEnded,
    Unprobed(String),
}

/// MAIL FROM:<> and RCPT TO:<postmaster@domain>, which every server must accept (RFC 5321
/// 4.5.1), on `plain`: the transaction a smuggling probe needs.
async fn postmaster_transaction(plain: &mut Plain, domain: &str) -> Result<(), String> {
    for command in [
        "MAIL FROM:<>".to_string(),
        format!("RCPT TO:<postmaster@{domain}>"),
    ] {
        plain.send(&command).await?;
        match plain.smtp_reply().await? {
            (code, _) if (200..300).contains(&code) => {}
            (code, lines) => return Err(format!("{command}: {}", reply_text(code, &lines))),
        }
    }
    Ok(())
}

/// One false ending on its own connection: the postmaster transaction, DATA, a short message
/// ending in `ending`, then [`SMUGGLING_WAIT`] for an answer. The connection is dropped
/// without a real end of data.
async fn smuggle(addr: SocketAddr, domain: &str, label: &str, ending: &[u8]) -> Smuggled {
    let mut plain = match smtp_start(addr).await {
        Ok((plain, _)) => plain,
        Err(why) => return Smuggled::Unprobed(why),
    };
    if let Err(why) = postmaster_transaction(&mut plain, domain).await {
        quit(plain).await;
        return Smuggled::Unprobed(why);
    }
    let data = plain.smtp_command("DATA").await;
    match data {
        Ok((354, _)) => {}
        Ok((code, lines)) => {
            quit(plain).await;
            return Smuggled::Unprobed(format!("DATA: {}", reply_text(code, &lines)));
        }
        Err(why) => return Smuggled::Unprobed(format!("DATA: {why}")),
    }
    let postmaster = format!("postmaster@{domain}");
    let mut message = format!(
        "From: sealmail check <{postmaster}>\r\nTo: <{postmaster}>\r\nSubject: sealmail check --active: SMTP smuggling probe\r\nMessage-ID: <smuggling-probe@{EHLO_NAME}>\r\n\r\nThis message was sent by `sealmail check --active`. If it was delivered, this server\r\ntook {label} as the end of the data: it is open to SMTP smuggling."
    )
    .into_bytes();
    message.extend_from_slice(ending);
    if let Err(why) = send_raw(&mut plain, &message).await {
        return Smuggled::Unprobed(why);
    }
    // Dropping `plain` afterwards closes the connection: no real end of data is ever sent.
    match tokio::time::timeout(SMUGGLING_WAIT, plain.smtp_reply()).await {
        Ok(Ok((code, lines))) if (200..300).contains(&code) => Smuggled::Ended(reply_text(code, &lines)),
        Ok(Ok((code, lines))) if (400..500).contains(&code) => {
            Smuggled::EndedDeferred(reply_text(code, &lines))
        }
        // A server still reading data says nothing; a rejection here may only be the message
        // refused (a DMARC milter, say) after the false ending ended the data. Whether the
        // server went back to reading commands tells: a NOOP answered means it did (no
        // ending above followed by `NOOP<CRLF>` makes a real end of data).
        Ok(Ok((code, lines))) => {
            let rejected = reply_text(code, &lines);
            let answered = match plain.send("NOOP").await {
                Ok(()) => tokio::time::timeout(SMUGGLING_WAIT, plain.smtp_reply()).await,
                Err(_) => return Smuggled::NotEnded,
            };
            match answered {
                Ok(Ok((noop, _))) if (200..300).contains(&noop) => {
                    Smuggled::Ended(format!("{rejected}, then NOOP answered: it read commands"))
                }
                _ => Smuggled::NotEnded,
            }
        }
        Ok(Err(_)) | Err(_) => Smuggled::NotEnded,
    }
}

/// SMTP smuggling: every false ending, in parallel (each waits [`SMUGGLING_WAIT`]).
async fn smuggling(addr: SocketAddr, target: &Target, domain: &str) -> Check {
    let id = target.id("smtp-smuggling");
    // The recipient first, on one connection: a server without postmaster refuses it once,
    // not once per ending (a sealmail server counts each unknown recipient against us).
    let accepted = match smtp_start(addr).await {
        Ok((mut plain, _)) => {
            let accepted = postmaster_transaction(&mut plain, domain).await;
            if plain.send("RSET").await.is_ok() {
                let _ = plain.smtp_reply().await;
            }
            quit(plain).await;
            accepted
        }
        Err(why) => Err(why),
    };
    if let Err(why) = accepted {
        if !why.starts_with("RCPT") {
            return not_probed(&id, Pillar::ServerSecurity, &why);
        }
        let why = format!(
            "{why}; the probe needs postmaster@{domain}, which every mail server must accept (RFC 5321 4.5.1)"
        );
        return not_probed(&id, Pillar::ServerSecurity, &why).with_fix(format!(
            "accept mail for postmaster@{domain} (sealmail: sealmail user add postmaster@{domain})"
        ));
    }
    let mut running = tokio::task::JoinSet::new();
    for (order, (label, ending)) in FALSE_ENDINGS.into_iter().enumerate() {
        let domain = domain.to_string();
        running.spawn(async move { (order, smuggle(addr, &domain, label, ending).await) });
    }
    let mut answers = Vec::new();
    while let Some(joined) = running.join_next().await {
        if let Ok(answer) = joined {
            answers.push(answer);
        }
    }
    answers.sort_by_key(|(order, _)| *order);
    let (mut ended, mut deferred, mut unprobed) = (Vec::new(), Vec::new(), Vec::new());
    for (order, answer) in answers {
        let label = FALSE_ENDINGS[order].0;
        match answer {
            Smuggled::Ended(reply) => ended.push(format!("{label} ({reply})")),
            Smuggled::EndedDeferred(reply) => deferred.push(format!("{label} ({reply})")),
            Smuggled::NotEnded => {}
            Smuggled::Unprobed(why) => unprobed.push(format!("{label}: {why}")),
        }
    }
    let fix = "end the data only at <CRLF>.<CRLF> and refuse bare CR, bare LF and NUL in messages (Postfix 3.9: smtpd_forbid_bare_newline = reject; Exim 4.97.1 or later; sealmail does)";
    let all = FALSE_ENDINGS.map(|(label, _)| label).join(", ");
    if !ended.is_empty() {
        Check::new(
            &id,
            Pillar::ServerSecurity,
            Status::Fail,
            format!(
                "took {} as the end of the data: a sender can smuggle a second, forged message through this server (CVE-2023-51764 family); the probe message went to postmaster@{domain}",
                ended.join(", ")
            ),
        )
        .with_fix(fix)
    } else if !deferred.is_empty() {
        Check::new(
            &id,
            Pillar::ServerSecurity,
            Status::Warn,
            format!(
                "took {} as the end of the data, and deferred the message: a later try may be accepted (SMTP smuggling)",
                deferred.join(", ")
            ),
        )
        .with_fix(fix)
    } else if unprobed.len() == FALSE_ENDINGS.len() {
        not_probed(&id, Pillar::ServerSecurity, &unprobed.join("; "))
    } else if !unprobed.is_empty() {
        Check::new(
            &id,
            Pillar::ServerSecurity,
            Status::Info,
            format!(
                "no false ending was taken as the end of the data, but some could not be tried: {}",
                unprobed.join("; ")
            ),
        )
        .incomplete()
    } else {
        Check::new(
            &id,
            Pillar::ServerSecurity,
            Status::Pass,
            format!("no false ending was taken as the end of the data ({all})"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imap_login_replies_are_told_apart() {
        let none: Vec<String> = Vec::new();
        let dovecot_alert = vec![
            "* BAD [ALERT] Plaintext authentication not allowed without SSL/TLS, but your client did it anyway.".to_string(),
        ];
        for (untagged, status, evaluated) in [
            // sealmail, Dovecot 2.3, Dovecot 2.2's wording, Cyrus with LOGINDISABLED.
            (&none, "NO [PRIVACYREQUIRED] USE STARTTLS FIRST", false),
            (
                &dovecot_alert,
                "NO [PRIVACYREQUIRED] PLAINTEXT AUTHENTICATION DISALLOWED",
                false,
            ),
            (
                &none,
                "NO PLAINTEXT AUTHENTICATION DISALLOWED ON NON-SECURE (SSL/TLS) CONNECTIONS.",
                false,
            ),
            (&none, "BAD LOGIN NOT SUPPORTED", false),
            // Checked: the password crossed in plaintext.
            (&none, "NO [AUTHENTICATIONFAILED] AUTHENTICATION FAILED.", true),
            (&none, "NO LOGIN FAILED", true),
            (&none, "OK LOGGED IN", true),
        ] {
            assert_eq!(login_evaluated(untagged, status), evaluated, "{status}");
        }
        // A CAPABILITY line naming STARTTLS is no refusal.
        let capability = vec!["* CAPABILITY IMAP4rev1 STARTTLS".to_string()];
        assert!(login_evaluated(&capability, "NO LOGIN FAILED"));
    }

    #[test]
    fn the_relay_plan_tries_each_sender_and_trick_once_within_a_sealmail_ban_budget() {
        let plan = relay_plan("example.test");
        let senders: Vec<&str> = plan.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(
            senders,
            ["postmaster@example.test", "", "relay-probe@relay-test.invalid"]
        );
        let addresses: Vec<&str> = plan
            .iter()
            .flat_map(|(_, tries)| tries.iter().map(|t| t.address.as_str()))
            .collect();
        assert_eq!(
            addresses,
            [
                "relay-probe@relay-test.invalid",
                "@example.test:relay-probe@relay-test.invalid",
                "relay-probe%relay-test.invalid@example.test",
                "\"relay-probe@relay-test.invalid\"@example.test",
                "relay-probe@relay-test.invalid@example.test",
                "relay-test.invalid!relay-probe@example.test",
            ]
        );
        // Outside recipients cost a sealmail server's client 4 points each, local ones at most
        // 2: under the 20 that ban, and no connection near smtp.max_errors (10).
        let outside = addresses.iter().filter(|a| !a.ends_with("@example.test")).count();
        assert!(outside * 4 + (addresses.len() - outside) * 2 < 20);
        assert!(plan.iter().all(|(_, tries)| tries.len() < 10));
        // Only reserved names stand for the outside world.
        assert!(addresses.iter().all(|a| a.contains(".invalid")));
    }
}
