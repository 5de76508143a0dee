//! SMTP server for the `mx` and `submission` roles (RFC 5321, STARTTLS RFC 3207, RFC 8314).
//!
//! This is the foundation's greeter: it greets, answers EHLO/HELO, NOOP, RSET, VRFY, QUIT and
//! upgrades with STARTTLS, so that every listener is protocol-correct from the start. Mail
//! transactions (MAIL, RCPT, DATA, BDAT, AUTH) answer `502 5.5.1` until the SMTP issue lands;
//! on a submission listener without TLS they already answer `530 5.7.0` (RFC 3207 section 4).

use sealmail_config::Role;
use sealmail_net::{ConnError, Connection, Handler, Line};

/// RFC 5321 section 4.5.3.1.4: a command line is at most 512 octets including CRLF.
pub const MAX_COMMAND_LINE: usize = 510;
/// Errors after which a session is ended with 421.
pub const MAX_ERRORS: u32 = 10;

pub struct SmtpHandler {
    hostname: String,
}

impl SmtpHandler {
    pub fn new(hostname: &str) -> SmtpHandler {
        SmtpHandler {
            hostname: hostname.to_string(),
        }
    }
}

enum Next {
    Continue,
    StartTls,
    Close,
}

#[async_trait::async_trait]
impl Handler for SmtpHandler {
    async fn handle(&self, mut conn: Connection) {
        let peer = conn.info().peer;
        if conn
            .write_all(format!("220 {} ESMTP sealmail\r\n", self.hostname).as_bytes())
            .await
            .is_err()
        {
            return;
        }
        let mut errors = 0;
        loop {
            let line = match conn.read_line(MAX_COMMAND_LINE).await {
                Ok(Line::Complete(line)) => line,
                Ok(Line::TooLong) => {
                    errors += 1;
                    if self
                        .reply_error(&mut conn, errors, "500 5.5.2 Line too long\r\n")
                        .await
                    {
                        break;
                    }
                    continue;
                }
                Err(ConnError::ShuttingDown) => {
                    let bye = format!("421 4.3.2 {} Service shutting down\r\n", self.hostname);
                    let _ = conn.write_all(bye.as_bytes()).await;
                    break;
                }
                Err(ConnError::Timeout(_)) => {
                    let bye = format!("421 4.4.2 {} Timeout, closing connection\r\n", self.hostname);
                    let _ = conn.write_all(bye.as_bytes()).await;
                    break;
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "SMTP session ended");
                    return;
                }
            };
            let (reply, next) = self.command(&conn, &line);
            if reply.starts_with('5') {
                errors += 1;
                if self.reply_error(&mut conn, errors, &reply).await {
                    break;
                }
            } else if conn.write_all(reply.as_bytes()).await.is_err() {
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
        b"421 4.7.0 Too many connections, try again later\r\n"
    }
}

impl SmtpHandler {
    /// Sends an error reply; returns true when the session must end because of too many errors.
    async fn reply_error(&self, conn: &mut Connection, errors: u32, reply: &str) -> bool {
        if errors >= MAX_ERRORS {
            let bye = format!(
                "421 4.7.0 {} Too many errors, closing connection\r\n",
                self.hostname
            );
            let _ = conn.write_all(bye.as_bytes()).await;
            return true;
        }
        conn.write_all(reply.as_bytes()).await.is_err()
    }

    fn command(&self, conn: &Connection, line: &[u8]) -> (String, Next) {
        let text = String::from_utf8_lossy(line);
        let (verb, arg) = match text.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.trim()),
            None => (text.to_ascii_uppercase(), ""),
        };
        let tls = conn.tls().is_some();
        let submission = conn.info().role == Role::Submission;
        let reply = |s: &str| (format!("{s}\r\n"), Next::Continue);
        match verb.as_str() {
            "EHLO" | "HELO" if arg.is_empty() => reply("501 5.5.4 Syntax: EHLO hostname"),
            "EHLO" => {
                let mut r = format!("250-{} greets {}\r\n", self.hostname, arg);
                if !tls {
                    r.push_str("250-STARTTLS\r\n");
                }
                r.push_str("250 ENHANCEDSTATUSCODES\r\n");
                (r, Next::Continue)
            }
            "HELO" => reply(&format!("250 {}", self.hostname)),
            "STARTTLS" if tls => reply("503 5.5.1 TLS already active"),
            "STARTTLS" if !arg.is_empty() => reply("501 5.5.4 STARTTLS takes no parameters"),
            "STARTTLS" => ("220 2.0.0 Ready to start TLS\r\n".to_string(), Next::StartTls),
            "NOOP" => reply("250 2.0.0 OK"),
            "RSET" => reply("250 2.0.0 OK"),
            "VRFY" | "EXPN" => {
                reply("252 2.5.0 Cannot verify the user; send mail and delivery will be attempted")
            }
            "QUIT" => (
                format!("221 2.0.0 {} closing connection\r\n", self.hostname),
                Next::Close,
            ),
            "MAIL" | "RCPT" | "DATA" | "BDAT" | "AUTH" if submission && !tls => {
                reply("530 5.7.0 Must issue a STARTTLS command first")
            }
            "MAIL" | "RCPT" | "DATA" | "BDAT" | "AUTH" | "HELP" => {
                reply("502 5.5.1 Command not implemented yet")
            }
            _ => reply("500 5.5.1 Command unrecognised"),
        }
    }
}
