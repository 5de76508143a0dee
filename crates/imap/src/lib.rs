//! IMAP server (RFC 3501 / RFC 9051, STARTTLS RFC 3501 section 6.2.1, RFC 8314).
//!
//! This is the foundation's greeter: it greets with capabilities, answers CAPABILITY, NOOP and
//! LOGOUT, and upgrades with STARTTLS. Before TLS it advertises LOGINDISABLED and refuses LOGIN
//! and AUTHENTICATE with `NO [PRIVACYREQUIRED]`. Everything else answers until the IMAP issue lands.

use sealmail_net::{ConnError, Connection, Handler, Line};

/// Longest command line accepted (literals are not supported by the greeter).
pub const MAX_COMMAND_LINE: usize = 8 * 1024;
/// Errors after which a session is ended with BYE.
pub const MAX_ERRORS: u32 = 10;

pub struct ImapHandler {
    hostname: String,
    idle_timeout: std::time::Duration,
}

impl ImapHandler {
    pub fn new(hostname: &str, idle_timeout: std::time::Duration) -> ImapHandler {
        ImapHandler {
            hostname: hostname.to_string(),
            idle_timeout,
        }
    }
}

fn capabilities(tls: bool) -> &'static str {
    if tls {
        "IMAP4rev1"
    } else {
        "IMAP4rev1 STARTTLS LOGINDISABLED"
    }
}

enum Next {
    Continue,
    StartTls,
    Close,
}

#[async_trait::async_trait]
impl Handler for ImapHandler {
    async fn handle(&self, mut conn: Connection) {
        let peer = conn.info().peer;
        let greeting = format!(
            "* OK [CAPABILITY {}] {} sealmail ready\r\n",
            capabilities(conn.tls().is_some()),
            self.hostname
        );
        if conn.write_all(greeting.as_bytes()).await.is_err() {
            return;
        }
        let mut errors = 0;
        loop {
            let line = match conn.read_line_within(MAX_COMMAND_LINE, self.idle_timeout).await {
                Ok(Line::Complete(line)) => line,
                Ok(Line::TooLong) => {
                    errors += 1;
                    if errors >= MAX_ERRORS || conn.write_all(b"* BAD Line too long\r\n").await.is_err() {
                        break;
                    }
                    continue;
                }
                Err(ConnError::ShuttingDown) => {
                    let _ = conn
                        .write_all(b"* BYE [UNAVAILABLE] Server shutting down\r\n")
                        .await;
                    break;
                }
                Err(ConnError::Timeout(_)) => {
                    let _ = conn.write_all(b"* BYE Autologout; idle for too long\r\n").await;
                    break;
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "IMAP session ended");
                    return;
                }
            };
            let (reply, next) = command(&conn, &line);
            if reply.contains(" BAD ") {
                errors += 1;
                if errors >= MAX_ERRORS {
                    let _ = conn.write_all(b"* BYE Too many errors\r\n").await;
                    break;
                }
            }
            if conn.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
            match next {
                Next::Continue => {}
                Next::Close => break,
                Next::StartTls => match conn.start_tls().await {
                    Ok(upgraded) => conn = upgraded,
                    Err(e) => {
                        tracing::info!(%peer, error = %e, "STARTTLS handshake failed");
                        return;
                    }
                },
            }
        }
        conn.close().await;
    }

    fn busy_reply(&self) -> &'static [u8] {
        b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n"
    }

    fn banned_reply(&self) -> &'static [u8] {
        b"* BYE [UNAVAILABLE] Access denied for this address; try again later\r\n"
    }
}

fn command(conn: &Connection, line: &[u8]) -> (String, Next) {
    let text = String::from_utf8_lossy(line);
    let mut words = text.splitn(3, ' ');
    let tag = words.next().unwrap_or("");
    let verb = words.next().unwrap_or("").to_ascii_uppercase();
    let valid_tag = !tag.is_empty()
        && tag
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"(){%*\"\\+".contains(&b));
    if !valid_tag || verb.is_empty() {
        return ("* BAD Missing tag or command\r\n".to_string(), Next::Continue);
    }
    let tls = conn.tls().is_some();
    let done = |s: &str| (format!("{tag} {s}\r\n"), Next::Continue);
    match verb.as_str() {
        "CAPABILITY" => (
            format!(
                "* CAPABILITY {}\r\n{tag} OK CAPABILITY completed\r\n",
                capabilities(tls)
            ),
            Next::Continue,
        ),
        "NOOP" => done("OK NOOP completed"),
        "LOGOUT" => (
            format!("* BYE Logging out\r\n{tag} OK LOGOUT completed\r\n"),
            Next::Close,
        ),
        "STARTTLS" if tls => done("BAD TLS is already active"),
        "STARTTLS" => (format!("{tag} OK Begin TLS negotiation now\r\n"), Next::StartTls),
        "LOGIN" | "AUTHENTICATE" if !tls => {
            done("NO [PRIVACYREQUIRED] Use STARTTLS first; passwords are never sent in the clear")
        }
        "LOGIN" | "AUTHENTICATE" => done("NO [UNAVAILABLE] Authentication is not available yet"),
        _ => done("BAD Command unknown or not available yet"),
    }
}
