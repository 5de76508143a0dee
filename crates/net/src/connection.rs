//! One client connection: bounded line reads with a deadline, writes, and the STARTTLS upgrade.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio_rustls::server::TlsStream;
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor};
use tokio_util::sync::CancellationToken;

use sealmail_config::{Role, TlsMode};
use sealmail_types::proof::TlsActive;

/// Bytes read from the socket at a time; also the most a client can make us buffer ahead.
const READ_BUFFER: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("the client closed the connection")]
    Closed,
    #[error("the client sent nothing for {0:?}")]
    Timeout(Duration),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("TLS is already active")]
    AlreadyTls,
    #[error("TLS is not available on this connection")]
    NoTls,
    /// The handshake failed after the client's hello was accepted: we had done our part of the
    /// key exchange. A client that closes then is a prober (a scanner reads our ServerHello and
    /// hangs up); one that sends garbage is worse ([`ConnError::is_handshake_garbage`]).
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    /// The handshake failed at or before the client's hello (nothing sent, an unreadable hello,
    /// no version, cipher suite or group in common): it cost us no key exchange.
    #[error("TLS handshake refused at the client's hello: {0}")]
    HelloRefused(std::io::Error),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl ConnError {
    /// A handshake that cost us a key exchange and was then dropped (a hang-up or an alert
    /// after our ServerHello), or that never came or finished in time.
    pub fn is_handshake_abandoned(&self) -> bool {
        matches!(self, ConnError::Timeout(_))
            || (matches!(self, ConnError::Handshake(_)) && !self.is_handshake_garbage())
    }

    /// Whether this is a handshake that went wrong after our key share in a way no honest
    /// client or scanner causes: a malformed or unexpected message, a record that does not
    /// decrypt. A client that just closes the connection (scanners do, after reading our
    /// ServerHello) is not garbage; the per-address connection rate limits stop floods of those.
    pub fn is_handshake_garbage(&self) -> bool {
        let ConnError::Handshake(e) = self else {
            return false;
        };
        let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return false;
        };
        // An alert is the client's considered refusal (say, of our certificate), not garbage.
        !matches!(
            tls,
            rustls::Error::PeerIncompatible(_) | rustls::Error::AlertReceived(_)
        )
    }
}

/// Facts about a connection that do not change during it.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub role: Role,
    pub tls_mode: TlsMode,
}

/// How much of a too-long line is kept.
pub const TOO_LONG_PREFIX: usize = 64;

/// A line read from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// The line without its line ending (CRLF or, leniently here, LF: the protocol decides).
    Complete(Vec<u8>),
    /// The line was longer than the limit; it was read to its end and thrown away, except its
    /// first bytes (at most [`TOO_LONG_PREFIX`]), so that IMAP can still answer with the tag.
    TooLong(Vec<u8>),
}

/// Any byte stream a [`Connection`] can run over: a TCP socket, or (in tests and fuzzing) one
/// end of `tokio::io::duplex`. Sessions cannot tell them apart, TLS included.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ByteStream for T {}

type AnyStream = Box<dyn ByteStream>;

enum Stream {
    Plain(AnyStream),
    Tls(Box<TlsStream<AnyStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Timeouts that apply to one connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For the whole TLS handshake, the client's hello included.
    pub handshake: Duration,
    /// For each command line, literal or chunk, and each write.
    pub command: Duration,
}

impl Timeouts {
    /// The same limit for the handshake and each command (tests, fuzzing).
    pub fn uniform(limit: Duration) -> Timeouts {
        Timeouts {
            handshake: limit,
            command: limit,
        }
    }
}

pub struct Connection {
    info: ConnectionInfo,
    stream: BufReader<Stream>,
    /// Replies held back while the client has more pipelined commands waiting (RFC 2920).
    pending: Vec<u8>,
    tls: Option<TlsActive>,
    /// None where STARTTLS is not possible (a connection made without a TLS configuration).
    acceptor: Option<TlsAcceptor>,
    timeouts: Timeouts,
    shutdown: CancellationToken,
}

impl Connection {
    /// A plaintext connection over any byte stream; with a TLS configuration the client may
    /// upgrade it ([`Connection::start_tls`]), without one STARTTLS is refused. The listener
    /// makes its STARTTLS connections with this; tests and the fuzz targets drive sessions
    /// over `tokio::io::duplex` with the same buffering, limits and deadlines.
    pub fn over_stream(
        info: ConnectionInfo,
        stream: impl ByteStream + 'static,
        tls: Option<Arc<rustls::ServerConfig>>,
        timeouts: Timeouts,
        shutdown: CancellationToken,
    ) -> Connection {
        Connection {
            info,
            stream: BufReader::with_capacity(READ_BUFFER, Stream::Plain(Box::new(stream))),
            pending: Vec::new(),
            tls: None,
            acceptor: tls.map(TlsAcceptor::from),
            timeouts,
            shutdown,
        }
    }

    /// Runs the TLS handshake first, on a fresh stream (implicit TLS).
    pub async fn implicit_tls(
        info: ConnectionInfo,
        stream: impl ByteStream + 'static,
        tls: Arc<rustls::ServerConfig>,
        timeouts: Timeouts,
        shutdown: CancellationToken,
    ) -> Result<Connection, ConnError> {
        let acceptor = TlsAcceptor::from(tls);
        let (tls, active) = handshake(&acceptor, Box::new(stream), timeouts.handshake).await?;
        Ok(Connection {
            info,
            stream: BufReader::with_capacity(READ_BUFFER, Stream::Tls(Box::new(tls))),
            pending: Vec::new(),
            tls: Some(active),
            acceptor: Some(acceptor),
            timeouts,
            shutdown,
        })
    }

    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// The proof that TLS is active, if it is.
    pub fn tls(&self) -> Option<&TlsActive> {
        self.tls.as_ref()
    }

    /// Cancelled when the server starts shutting down.
    pub fn shutdown_signal(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Upgrades a plaintext connection to TLS. Call it after sending the protocol's "go ahead"
    /// reply. Every byte the client sent before the handshake is discarded, never processed.
    pub async fn start_tls(mut self) -> Result<Connection, ConnError> {
        if self.tls.is_some() {
            return Err(ConnError::AlreadyTls);
        }
        let Some(acceptor) = self.acceptor.take() else {
            return Err(ConnError::NoTls);
        };
        self.flush_pending().await?;
        let pipelined = self.stream.buffer().len();
        if pipelined > 0 {
            tracing::warn!(
                peer = %self.info.peer,
                bytes = pipelined,
                "discarded bytes sent before the TLS handshake (possible STARTTLS command injection)"
            );
        }
        // into_inner() drops the read buffer, and with it anything pipelined after STARTTLS.
        let Stream::Plain(plain) = self.stream.into_inner() else {
            return Err(ConnError::NoTls);
        };
        let (tls, active) = handshake(&acceptor, plain, self.timeouts.handshake).await?;
        Ok(Connection {
            info: self.info,
            stream: BufReader::with_capacity(READ_BUFFER, Stream::Tls(Box::new(tls))),
            pending: Vec::new(),
            tls: Some(active),
            acceptor: Some(acceptor),
            timeouts: self.timeouts,
            shutdown: self.shutdown,
        })
    }

    /// Reads one line of at most `max` octets (line ending excluded) within the command timeout.
    /// Returns [`ConnError::ShuttingDown`] if the server starts shutting down while waiting.
    pub async fn read_line(&mut self, max: usize) -> Result<Line, ConnError> {
        let limit = self.timeouts.command;
        self.read_line_within(max, limit).await
    }

    /// As [`Connection::read_line`], with a protocol's own time limit (IMAP's idle autologout
    /// is at least 30 minutes, RFC 9051 section 5.4).
    pub async fn read_line_within(&mut self, max: usize, limit: Duration) -> Result<Line, ConnError> {
        if !self.has_complete_line() {
            self.flush_pending().await?;
        }
        let shutdown = self.shutdown.clone();
        tokio::select! {
            biased;
            result = tokio::time::timeout(limit, read_bounded_line(&mut self.stream, max)) => {
                result.map_err(|_| ConnError::Timeout(limit))?
            }
            _ = shutdown.cancelled() => Err(ConnError::ShuttingDown),
        }
    }

    /// Reads exactly `buf.len()` bytes within the command timeout (for literals and chunks).
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ConnError> {
        let limit = self.timeouts.command;
        match tokio::time::timeout(limit, self.stream.read_exact(buf)).await {
            Err(_) => Err(ConnError::Timeout(limit)),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ConnError::Closed),
            Ok(Err(e)) => Err(ConnError::Io(e)),
            Ok(Ok(_)) => Ok(()),
        }
    }

    fn has_complete_line(&self) -> bool {
        self.stream.buffer().contains(&b'\n')
    }

    /// Queues a reply; it is sent at once unless the client has already sent the next command
    /// (pipelining, RFC 2920 section 3.1: replies may be grouped), and at the latest before
    /// the next read waits for the network.
    pub async fn reply(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        self.pending.extend_from_slice(bytes);
        if self.has_complete_line() && self.pending.len() < READ_BUFFER {
            return Ok(());
        }
        self.flush_pending().await
    }

    async fn flush_pending(&mut self) -> Result<(), ConnError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.write_all(&pending).await
    }

    /// Waits up to `limit` for input and returns what is buffered (at least one byte).
    /// Use [`Connection::consume`] to mark bytes as processed. For bulk data (SMTP DATA, BDAT,
    /// IMAP literals) where the caller enforces its own size limit.
    pub async fn fill(&mut self, limit: Duration) -> Result<&[u8], ConnError> {
        if self.stream.buffer().is_empty() {
            self.flush_pending().await?;
        }
        match tokio::time::timeout(limit, self.stream.fill_buf()).await {
            Err(_) => Err(ConnError::Timeout(limit)),
            Ok(Err(e)) => Err(ConnError::Io(e)),
            Ok(Ok([])) => Err(ConnError::Closed),
            Ok(Ok(bytes)) => Ok(bytes),
        }
    }

    /// Marks `n` bytes returned by [`Connection::fill`] as processed.
    pub fn consume(&mut self, n: usize) {
        self.stream.consume(n);
    }

    /// Writes and flushes a reply (after any queued ones).
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        let limit = self.timeouts.command;
        let pending = std::mem::take(&mut self.pending);
        let write = async {
            if !pending.is_empty() {
                self.stream.get_mut().write_all(&pending).await?;
            }
            self.stream.get_mut().write_all(bytes).await?;
            self.stream.get_mut().flush().await
        };
        tokio::time::timeout(limit, write)
            .await
            .map_err(|_| ConnError::Timeout(limit))?
            .map_err(ConnError::Io)
    }

    /// The application protocol agreed in the TLS handshake (ALPN), if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self.stream.get_ref() {
            Stream::Tls(tls) => tls.get_ref().1.alpn_protocol(),
            Stream::Plain(_) => None,
        }
    }

    /// The byte stream, for a protocol driven by a library of its own (HTTP, by hyper), with
    /// whatever the client already sent still buffered in front of it. Replies queued and not
    /// yet written are lost: call it before writing any.
    pub fn into_stream(self) -> impl ByteStream + 'static {
        self.stream
    }

    /// Closes the connection cleanly (TLS close_notify where TLS is active).
    pub async fn close(mut self) {
        let _ = self.flush_pending().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.stream.get_mut().shutdown()).await;
    }
}

/// The TLS handshake in two steps, so that a failure can be told apart by what it cost: first
/// the client's hello is read and parsed (a client that sends nothing, or garbage, costs us
/// nothing), then rustls answers it; a hello we have nothing in common with is refused before
/// any key exchange (rustls's `PeerIncompatible`). Only what fails after that is
/// [`ConnError::Handshake`].
async fn handshake(
    acceptor: &TlsAcceptor,
    stream: AnyStream,
    limit: Duration,
) -> Result<(TlsStream<AnyStream>, TlsActive), ConnError> {
    let deadline = tokio::time::Instant::now() + limit;
    let hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
    let result = match tokio::time::timeout_at(deadline, hello).await {
        Err(_) => Err(ConnError::Timeout(limit)),
        Ok(Err(e)) => Err(ConnError::HelloRefused(e)),
        Ok(Ok(start)) if !alpn_in_common(&start.client_hello(), &acceptor.config().alpn_protocols) => {
            // rustls would refuse this only after its TLS 1.3 key exchange: refuse it now.
            drop(start);
            Err(ConnError::HelloRefused(std::io::Error::other(
                "no application protocol (ALPN) in common",
            )))
        }
        Ok(Ok(start)) => {
            // The certificate rustls will present is the one our resolver picks for this hello
            // (it is deterministic), hashed now for `tls-server-end-point`.
            let end_point = acceptor
                .config()
                .cert_resolver
                .resolve(start.client_hello())
                .and_then(|key| {
                    key.cert
                        .first()
                        .map(|leaf| sealmail_tls::channel::server_end_point(leaf))
                });
            match tokio::time::timeout_at(deadline, start.into_stream(acceptor.config().clone())).await {
                Err(_) => Err(ConnError::Timeout(limit)),
                Ok(Err(e)) if is_hello_refusal(&e) => Err(ConnError::HelloRefused(e)),
                Ok(Err(e)) => Err(ConnError::Handshake(e)),
                Ok(Ok(tls)) => Ok((tls, end_point)),
            }
        }
    };
    let (tls, end_point) = result.inspect_err(|_| sealmail_metrics::TLS_HANDSHAKE_FAILURES.inc())?;
    let session = tls.get_ref().1;
    if let (Some(version), Some(suite)) = (session.protocol_version(), session.negotiated_cipher_suite()) {
        let suite = suite.suite();
        sealmail_metrics::tls_seen(
            &version
                .as_str()
                .map_or_else(|| format!("{version:?}"), str::to_string),
            &suite
                .as_str()
                .map_or_else(|| format!("{suite:?}"), str::to_string),
        );
    }
    let client_certificate = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| sealmail_tls::channel::client_certificate(leaf.as_ref()));
    let active =
        TlsActive::from_completed_handshake(session, end_point, client_certificate).ok_or_else(|| {
            ConnError::Handshake(std::io::Error::other("handshake reported complete but is not"))
        })?;
    Ok((tls, active))
}

/// Whether a listener with `ours` (ALPN) can serve a hello: it offers no ALPN, we have none
/// (mail listeners), or one protocol is in both lists (as rustls decides, RFC 7301 3.2).
fn alpn_in_common(hello: &rustls::server::ClientHello<'_>, ours: &[Vec<u8>]) -> bool {
    let Some(mut offered) = hello.alpn() else {
        return true;
    };
    ours.is_empty() || offered.any(|protocol| ours.iter().any(|o| o.as_slice() == protocol))
}

/// rustls refused the hello itself, before any key share of ours: no version, cipher suite,
/// group or signature scheme in common, or no certificate for what it asks (our resolver runs
/// before the key exchange: an `acme-tls/1` hello for a name with no challenge under way).
/// Late ACME validators and clients of the wrong protocol are not abuse. (rustls reports the
/// resolver's refusal only as this `General` text; a test in crates/server/tests/web.rs holds
/// it to that.)
fn is_hello_refusal(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|tls| {
            matches!(tls, rustls::Error::PeerIncompatible(_))
                || matches!(tls, rustls::Error::General(text) if text.contains("no server certificate"))
        })
}

/// Reads up to and including '\n'; keeps at most `max` octets of content. A longer line is
/// consumed to its end (so the session can go on) and reported as [`Line::TooLong`].
async fn read_bounded_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Line, ConnError> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Err(ConnError::Closed);
        }
        let (chunk, found_end) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        let used = chunk.len();
        // +2 leaves room for the CRLF that is stripped below.
        if !too_long && line.len() + used > max + 2 {
            too_long = true;
            line.truncate(TOO_LONG_PREFIX);
            line.shrink_to_fit();
        }
        if too_long {
            let keep = TOO_LONG_PREFIX.saturating_sub(line.len()).min(used);
            line.extend_from_slice(&chunk[..keep]);
        } else {
            line.extend_from_slice(chunk);
        }
        reader.consume(used);
        if found_end {
            break;
        }
    }
    if too_long {
        while matches!(line.last(), Some(b'\r' | b'\n')) {
            line.pop();
        }
        return Ok(Line::TooLong(line));
    }
    line.pop(); // '\n'
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    if line.len() > max {
        line.truncate(TOO_LONG_PREFIX);
        return Ok(Line::TooLong(line));
    }
    Ok(Line::Complete(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Result<Line, String>> {
        let mut reader = BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        loop {
            match read_bounded_line(&mut reader, max).await {
                Err(ConnError::Closed) => break,
                other => out.push(other.map_err(|e| e.to_string())),
            }
        }
        out
    }

    #[tokio::test]
    async fn lines_are_split_and_bounded() {
        let got = lines(b"EHLO a\r\nNOOP\nXXXXXXXXXXXXXXXXXXXXXXXXX\r\nQUIT\r\n", 10).await;
        assert_eq!(
            got,
            vec![
                Ok(Line::Complete(b"EHLO a".to_vec())),
                Ok(Line::Complete(b"NOOP".to_vec())),
                Ok(Line::TooLong(b"XXXXXXXXXXXXXXXXXXXXXXXXX".to_vec())),
                Ok(Line::Complete(b"QUIT".to_vec())),
            ]
        );
        // Exactly at the limit is allowed; one more octet is not.
        let got = lines(b"0123456789\r\n0123456789a\r\n", 10).await;
        assert_eq!(
            got,
            vec![
                Ok(Line::Complete(b"0123456789".to_vec())),
                Ok(Line::TooLong(b"0123456789a".to_vec()))
            ]
        );
    }

    #[tokio::test]
    async fn an_unterminated_line_ends_as_closed_without_growing() {
        let got = lines(&vec![b'a'; 100_000], 10).await;
        assert!(got.is_empty());
    }

    #[tokio::test]
    async fn a_connection_over_any_stream_reads_bounded_lines_and_refuses_starttls() {
        use tokio::io::AsyncWriteExt as _;
        let (mut client, server) = tokio::io::duplex(1024);
        let info = ConnectionInfo {
            peer: SocketAddr::from(([127, 0, 0, 2], 40000)),
            local: SocketAddr::from(([127, 0, 0, 1], 143)),
            role: Role::Imap,
            tls_mode: TlsMode::StartTls,
        };
        let mut conn = Connection::over_stream(
            info,
            server,
            None,
            Timeouts::uniform(Duration::from_secs(5)),
            CancellationToken::new(),
        );
        let sent = client.write_all(b"a NOOP\r\nb LOGOUT and more\r\n").await;
        assert!(sent.is_ok());
        assert_eq!(
            conn.read_line(64).await.ok(),
            Some(Line::Complete(b"a NOOP".to_vec()))
        );
        assert_eq!(
            conn.read_line(8).await.ok(),
            Some(Line::TooLong(b"b LOGOUT and more".to_vec()))
        );
        assert!(conn.reply(b"* OK\r\n").await.is_ok());
        assert!(matches!(conn.start_tls().await, Err(ConnError::NoTls)));
    }

    fn test_info(tls_mode: TlsMode) -> ConnectionInfo {
        ConnectionInfo {
            peer: SocketAddr::from(([127, 0, 0, 2], 40000)),
            local: SocketAddr::from(([127, 0, 0, 1], 587)),
            role: Role::Submission,
            tls_mode,
        }
    }

    /// STARTTLS over a duplex: the real handshake with the listeners' TLS policy, the proof
    /// made, and what the client pipelined after STARTTLS thrown away, not read in TLS.
    #[tokio::test]
    async fn starttls_over_a_duplex_discards_pipelined_bytes_and_proves_tls() -> Result<(), String> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (server_tls, client_tls) = sealmail_testkit::pki::tls_pair(dir.path(), "mail.example.test")?;
        let (client, server) = tokio::io::duplex(64 * 1024);
        let mut conn = Connection::over_stream(
            test_info(TlsMode::StartTls),
            server,
            Some(server_tls),
            Timeouts::uniform(Duration::from_secs(5)),
            CancellationToken::new(),
        );
        let mut client = client;
        client
            .write_all(b"STARTTLS\r\nINJECTED\r\n")
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(
            conn.read_line(64).await.ok(),
            Some(Line::Complete(b"STARTTLS".to_vec()))
        );
        assert!(conn.tls().is_none());
        conn.reply(b"220 go ahead\r\n").await.map_err(|e| e.to_string())?;
        let upgrade = tokio::spawn(conn.start_tls());
        // The client reads the go-ahead, then shakes hands.
        let mut go_ahead = [0u8; 14];
        client
            .read_exact(&mut go_ahead)
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(&go_ahead, b"220 go ahead\r\n");
        let mut tls_client = sealmail_testkit::tls_upgrade(client, client_tls, "mail.example.test").await?;
        let mut conn = upgrade
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let proof = conn.tls().ok_or("no TlsActive after the handshake")?;
        assert!(proof.version == "TLSv1.3" || proof.version == "TLSv1.2");
        assert_eq!(proof.server_name.as_deref(), Some("mail.example.test"));
        tls_client
            .write_all(b"EHLO inside\r\n")
            .await
            .map_err(|e| e.to_string())?;
        tls_client.flush().await.map_err(|e| e.to_string())?;
        // The first line read inside TLS is the client's, not the injected one.
        assert_eq!(
            conn.read_line(64).await.ok(),
            Some(Line::Complete(b"EHLO inside".to_vec()))
        );
        assert!(matches!(conn.start_tls().await, Err(ConnError::AlreadyTls)));
        Ok(())
    }

    /// Implicit TLS over a duplex; a client that offers only TLS 1.1 is refused at its hello.
    #[tokio::test]
    async fn implicit_tls_over_a_duplex_refuses_old_versions_at_the_hello() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (server_tls, client_tls) = sealmail_testkit::pki::tls_pair(dir.path(), "mail.example.test")?;
        let (client, server) = tokio::io::duplex(64 * 1024);
        let accept = tokio::spawn(Connection::implicit_tls(
            test_info(TlsMode::Implicit),
            server,
            server_tls.clone(),
            Timeouts::uniform(Duration::from_secs(5)),
            CancellationToken::new(),
        ));
        let _tls_client = sealmail_testkit::tls_upgrade(client, client_tls, "mail.example.test").await?;
        let conn = accept
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        assert!(conn.tls().is_some());

        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let accept = tokio::spawn(Connection::implicit_tls(
            test_info(TlsMode::Implicit),
            server,
            server_tls,
            Timeouts::uniform(Duration::from_secs(5)),
            CancellationToken::new(),
        ));
        let hello = sealmail_testkit::client_hello(sealmail_testkit::TLS1_1, &[0xc02f], "mail.example.test");
        let answer = sealmail_testkit::send_client_hello(&mut client, &hello).await?;
        assert!(
            matches!(answer, sealmail_testkit::HelloAnswer::Alert(_)),
            "{answer:?}"
        );
        let refused = accept.await.map_err(|e| e.to_string())?;
        assert!(
            matches!(refused, Err(ConnError::HelloRefused(_))),
            "a TLS 1.1 hello must be refused before any key exchange"
        );
        Ok(())
    }
}
