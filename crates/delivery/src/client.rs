//! The SMTP client side of one connection (RFC 5321): greeting, EHLO, STARTTLS (RFC 3207),
//! MAIL/RCPT (pipelined when offered, RFC 2920) and DATA with dot-stuffing.
//!
//! Replies are read with our own small reader rather than smtp-proto's incremental parser: we
//! only need "code, text lines" with hard limits on line length, line count and time, which the
//! reader below enforces in a few lines; smtp-proto's receiver is shaped for its server.

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use sealmail_types::line::{ProtocolLine, unsafe_content};

/// Longest reply line read (RFC 5321 4.5.3.1.5 says 512; real servers send a little more).
const MAX_REPLY_LINE: usize = 4096;
/// Most lines in one multi-line reply (an EHLO reply has a few dozen at most).
const MAX_REPLY_LINES: usize = 128;
/// Longest reply text kept (in the queue, logs and DSNs).
const MAX_SUMMARY: usize = 1000;

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The text of each line, after the code and separator.
    pub lines: Vec<String>,
}

impl Reply {
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// "CODE text" on one line, as logs, DSNs and `queue show` print it; at most
    /// `MAX_SUMMARY` characters, control characters blanked (a hostile server's 128 lines of
    /// 4 KiB are not kept with every recipient).
    pub fn summary(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" "))
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(MAX_SUMMARY)
            .collect()
    }

    /// The enhanced status code (RFC 3463) at the start of the text, if any.
    pub fn enhanced(&self) -> Option<&str> {
        let first = self.lines.first()?.split_whitespace().next()?;
        let parts: Vec<&str> = first.split('.').collect();
        let ok = parts.len() == 3
            && matches!(parts[0], "2" | "4" | "5")
            && parts[1..]
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
        ok.then_some(first)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connection to {0} failed: {1}")]
    Connect(String, String),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("connection error: {0}")]
    Io(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// Nothing was sent: the line or message would have carried a bare CR, LF or NUL.
    #[error("not sent: {0}")]
    Unsafe(String),
}

/// What the server offered in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub starttls: bool,
    pub requiretls: bool,
    pub pipelining: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub dsn: bool,
    pub size: Option<u64>,
}

impl Capabilities {
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let keyword = words.next().unwrap_or_default().to_ascii_uppercase();
            match keyword.as_str() {
                "STARTTLS" => caps.starttls = true,
                "REQUIRETLS" => caps.requiretls = true,
                "PIPELINING" => caps.pipelining = true,
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "DSN" => caps.dsn = true,
                "SIZE" => caps.size = words.next().and_then(|n| n.parse().ok()).filter(|n| *n > 0),
                _ => {}
            }
        }
        caps
    }
}

/// TLS as negotiated on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    pub version: &'static str,
    pub cipher: &'static str,
}

pub struct SmtpClient {
    stream: BufReader<Box<dyn Io>>,
    timeout: Duration,
    pub capabilities: Capabilities,
    pub tls: Option<TlsInfo>,
}

impl SmtpClient {
    /// Connects and reads the greeting; a greeting that is not 220 is returned as the error
    /// text (the caller tries the next host).
    pub async fn connect(
        addr: std::net::SocketAddr,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<(SmtpClient, Reply), ClientError> {
        let tcp = tcp_connect(addr, connect_timeout).await?;
        let mut client = SmtpClient {
            stream: BufReader::new(Box::new(tcp)),
            timeout,
            capabilities: Capabilities::default(),
            tls: None,
        };
        let greeting = client.read_reply("the greeting").await?;
        Ok((client, greeting))
    }

    pub async fn read_reply(&mut self, waiting_for: &'static str) -> Result<Reply, ClientError> {
        tokio::time::timeout(self.timeout, self.read_reply_inner())
            .await
            .map_err(|_| ClientError::Timeout(waiting_for))?
    }

    async fn read_reply_inner(&mut self) -> Result<Reply, ClientError> {
        read_reply_from(&mut self.stream).await
    }

    /// Several commands in one write (RFC 2920 pipelining); each goes through
    /// [`ProtocolLine`], so a value with a line break cannot start a command of its own.
    pub async fn send_commands(&mut self, lines: &[String]) -> Result<(), ClientError> {
        let mut batch = String::new();
        for line in lines {
            let line = ProtocolLine::new(line.as_str()).map_err(|e| ClientError::Unsafe(e.to_string()))?;
            batch.push_str(&line.to_wire());
        }
        self.write(batch.as_bytes()).await
    }

    /// Ends a DATA that a server opened although no recipient was accepted.
    pub async fn end_empty_data(&mut self) -> Result<Reply, ClientError> {
        self.write(b".\r\n").await?;
        self.read_reply("the reply to an empty message").await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let stream = self.stream.get_mut();
        tokio::time::timeout(self.timeout, async {
            stream.write_all(bytes).await?;
            stream.flush().await
        })
        .await
        .map_err(|_| ClientError::Timeout("the server to take our data"))?
        .map_err(|e| ClientError::Io(e.to_string()))
    }

    pub async fn command(&mut self, line: &str, waiting_for: &'static str) -> Result<Reply, ClientError> {
        let line = ProtocolLine::new(line).map_err(|e| ClientError::Unsafe(e.to_string()))?;
        self.write(line.to_wire().as_bytes()).await?;
        self.read_reply(waiting_for).await
    }

    /// EHLO, falling back to HELO when the server does not know EHLO.
    pub async fn ehlo(&mut self, hostname: &str) -> Result<Reply, ClientError> {
        let reply = self
            .command(&format!("EHLO {hostname}"), "the EHLO reply")
            .await?;
        if reply.code == 250 {
            self.capabilities = Capabilities::from_ehlo(&reply);
            return Ok(reply);
        }
        self.capabilities = Capabilities::default();
        self.command(&format!("HELO {hostname}"), "the HELO reply").await
    }

    /// STARTTLS and the handshake. The server's 220 must be the last thing it sent before the
    /// handshake: bytes after it would be plaintext injected into the TLS session.
    pub async fn starttls(
        mut self,
        config: Arc<ClientConfig>,
        server_name: ServerName<'static>,
    ) -> Result<SmtpClient, (Option<Reply>, ClientError)> {
        let reply = match self.command("STARTTLS", "the STARTTLS reply").await {
            Ok(reply) => reply,
            Err(e) => return Err((None, e)),
        };
        if reply.code != 220 {
            let text = reply.summary();
            return Err((
                Some(reply),
                ClientError::Protocol(format!("STARTTLS refused: {text}")),
            ));
        }
        if !self.stream.buffer().is_empty() {
            return Err((
                Some(reply),
                ClientError::Protocol("the server sent data after its STARTTLS reply".into()),
            ));
        }
        let inner = self.stream.into_inner();
        let (stream, info) = handshake(inner, config, server_name, self.timeout)
            .await
            .map_err(|e| (None, e))?;
        Ok(SmtpClient {
            stream: BufReader::new(stream),
            timeout: self.timeout,
            capabilities: Capabilities::default(),
            tls: Some(info),
        })
    }

    /// Connects with TLS from the first byte (a port 465 smarthost) and reads the greeting.
    pub async fn connect_tls(
        addr: std::net::SocketAddr,
        connect_timeout: Duration,
        timeout: Duration,
        config: Arc<ClientConfig>,
        server_name: ServerName<'static>,
    ) -> Result<(SmtpClient, Reply), ClientError> {
        let tcp = tcp_connect(addr, connect_timeout).await?;
        let (stream, info) = handshake(Box::new(tcp), config, server_name, timeout).await?;
        let mut client = SmtpClient {
            stream: BufReader::new(stream),
            timeout,
            capabilities: Capabilities::default(),
            tls: Some(info),
        };
        let greeting = client.read_reply("the greeting").await?;
        Ok((client, greeting))
    }

    /// Sends the message after DATA's 354: dot-stuffed, the final dot. A message with a bare
    /// CR, a bare LF or a NUL is refused, never repaired: the next hop could read such line
    /// ends differently from us (SMTP smuggling), and the signature covers the bytes as they are.
    pub async fn send_data(&mut self, content: &[u8]) -> Result<Reply, ClientError> {
        if let Some(problem) = unsafe_content(content) {
            return Err(ClientError::Unsafe(format!("the message has {problem}")));
        }
        let out = dot_stuff(content);
        self.write(&out).await?;
        self.read_reply("the reply to the message").await
    }

    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.command("QUIT", "the QUIT reply")).await;
    }
}

/// Reads one reply (RFC 5321 4.2: one or more lines with the same code, the last one with a
/// space after the code) from any buffered reader, with the line length and count limits.
/// Public so the fuzz target can drive it over an in-memory reader.
pub async fn read_reply_from<R: AsyncBufRead + Unpin>(stream: &mut R) -> Result<Reply, ClientError> {
    let mut lines = Vec::new();
    let mut code = 0;
    loop {
        let mut line = Vec::new();
        let read = (&mut *stream)
            .take(MAX_REPLY_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| ClientError::Io(e.to_string()))?;
        if read == 0 {
            return Err(ClientError::Io("the server closed the connection".into()));
        }
        if line.last() != Some(&b'\n') {
            return Err(ClientError::Protocol("reply line too long".into()));
        }
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches(['\r', '\n']);
        let bytes = line.as_bytes();
        if bytes.len() < 3 || !bytes[..3].iter().all(u8::is_ascii_digit) {
            return Err(ClientError::Protocol(format!("malformed reply line {line:?}")));
        }
        let this_code: u16 = line[..3].parse().unwrap_or(0);
        if !(200..600).contains(&this_code) || (code != 0 && this_code != code) {
            return Err(ClientError::Protocol(format!("malformed reply line {line:?}")));
        }
        code = this_code;
        let more = bytes.get(3) == Some(&b'-');
        lines.push(line.get(4..).unwrap_or_default().to_string());
        if !more {
            return Ok(Reply { code, lines });
        }
        if lines.len() >= MAX_REPLY_LINES {
            return Err(ClientError::Protocol("reply has too many lines".into()));
        }
    }
}

/// `content` as DATA sends it (RFC 5321 4.5.2): a dot at a line start doubled, a final CRLF
/// when missing, then the end marker `.CRLF`. The caller has refused unsafe content first.
pub fn dot_stuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 64 + 8);
    let mut line_start = true;
    for &byte in content {
        if line_start && byte == b'.' {
            out.push(b'.');
        }
        out.push(byte);
        line_start = byte == b'\n';
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

async fn tcp_connect(addr: std::net::SocketAddr, limit: Duration) -> Result<TcpStream, ClientError> {
    let tcp = tokio::time::timeout(limit, TcpStream::connect(addr))
        .await
        .map_err(|_| ClientError::Connect(addr.to_string(), "timed out".into()))?
        .map_err(|e| ClientError::Connect(addr.to_string(), e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

async fn handshake(
    inner: Box<dyn Io>,
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    timeout: Duration,
) -> Result<(Box<dyn Io>, TlsInfo), ClientError> {
    let connector = TlsConnector::from(config);
    let tls = match tokio::time::timeout(timeout, connector.connect(server_name, inner)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(ClientError::Tls(e.to_string())),
        Err(_) => return Err(ClientError::Timeout("the TLS handshake")),
    };
    let (_, session) = tls.get_ref();
    let info = TlsInfo {
        version: session
            .protocol_version()
            .map(sealmail_tls::version_name)
            .unwrap_or("unknown"),
        cipher: session
            .negotiated_cipher_suite()
            .map(sealmail_tls::suite_name)
            .unwrap_or("unknown"),
    };
    Ok((Box::new(tls), info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replies_are_read_from_any_buffered_reader() {
        let mut input: &[u8] = b"250-mx.example\r\n250 PIPELINING\r\n550 5.1.1 no\r\n";
        let first = read_reply_from(&mut input).await.map_err(|e| e.to_string());
        assert_eq!(
            first,
            Ok(Reply {
                code: 250,
                lines: vec!["mx.example".into(), "PIPELINING".into()]
            })
        );
        let second = read_reply_from(&mut input).await.map_err(|e| e.to_string());
        assert_eq!(second.map(|r| r.code), Ok(550));
        assert!(read_reply_from(&mut input).await.is_err());
        let mut mixed: &[u8] = b"250-a\r\n251 b\r\n";
        assert!(read_reply_from(&mut mixed).await.is_err());
    }

    #[test]
    fn dot_stuffing_doubles_leading_dots_and_ends_the_data() {
        assert_eq!(dot_stuff(b""), b".\r\n");
        assert_eq!(dot_stuff(b".a\r\nb\r\n.\r\n"), b"..a\r\nb\r\n..\r\n.\r\n");
        assert_eq!(dot_stuff(b"x"), b"x\r\n.\r\n");
    }

    #[test]
    fn enhanced_codes_are_recognised_only_when_well_formed() {
        let reply = |text: &str| Reply {
            code: 550,
            lines: vec![text.to_string()],
        };
        assert_eq!(reply("5.1.1 no such user").enhanced(), Some("5.1.1"));
        assert_eq!(reply("no such user").enhanced(), None);
        assert_eq!(reply("5.1 x").enhanced(), None);
        assert_eq!(reply("7.1.1 x").enhanced(), None);
    }

    #[test]
    fn reply_summaries_are_bounded_and_on_one_line() {
        let reply = Reply {
            code: 451,
            lines: vec!["x".repeat(4000); 128],
        };
        assert_eq!(reply.summary().chars().count(), MAX_SUMMARY);
        let reply = Reply {
            code: 550,
            lines: vec!["no\rsuch\tuser".into(), "second".into()],
        };
        assert_eq!(reply.summary(), "550 no such user second");
    }

    #[test]
    fn ehlo_keywords_are_read_case_blind() {
        let caps = Capabilities::from_ehlo(&Reply {
            code: 250,
            lines: vec![
                "mx.b.test greets you".into(),
                "pipelining".into(),
                "SIZE 1000".into(),
                "STARTTLS".into(),
                "RequireTLS".into(),
                "DSN".into(),
            ],
        });
        assert!(caps.pipelining && caps.starttls && caps.requiretls && caps.dsn);
        assert_eq!(caps.size, Some(1000));
        assert!(!caps.smtputf8);
    }
}
