//! SMTP server for the `mx` and `submission` roles: RFC 5321 with STARTTLS (RFC 3207), AUTH
//! (RFC 4954), SIZE (RFC 1870), PIPELINING (RFC 2920), 8BITMIME, SMTPUTF8 (RFC 6531),
//! ENHANCEDSTATUSCODES (RFC 2034/3463), CHUNKING (RFC 3030) and, on submission, DSN (RFC 3461).
//!
//! `session` decides every answer without touching a socket; this module is the driver: it
//! reads command lines (bounded, with timeouts), DATA through the strict [`data::DataReceiver`],
//! BDAT chunks byte-exact, runs SASL exchanges, and writes replies (grouped while the client
//! pipelines). `mx` receives for local users and never relays; `submission` requires TLS and
//! AUTH and accepts mail only from the user's own address. A message gets `250` only after the
//! store has made it durable.

pub mod data;
#[cfg(test)]
mod fakes;
pub mod message;
pub mod pipeline;
pub mod reply;
pub mod session;

/// The budget lives in `sealmail-net` because IMAP's APPEND draws on the same one.
pub use sealmail_net::budget;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use sealmail_guard::access::{SaslAnswer, SaslChannel};
use sealmail_net::{ConnError, Connection, Handler, Line};

use crate::data::DataReceiver;
use crate::reply::Reply;
use crate::session::{Action, Chunk, Session};

pub use session::SmtpContext;

/// A SASL response line is at most this long (base64 of sasl::MAX_RESPONSE plus slack).
const MAX_AUTH_LINE: usize = 12 * 1024;

pub struct SmtpHandler {
    ctx: Arc<SmtpContext>,
}

impl SmtpHandler {
    pub fn new(ctx: SmtpContext) -> SmtpHandler {
        SmtpHandler { ctx: Arc::new(ctx) }
    }
}

/// How a session ended, for the log.
enum End {
    Quit,
    Dropped(ConnError),
}

#[async_trait::async_trait]
impl Handler for SmtpHandler {
    async fn handle(&self, conn: Connection) {
        let peer = conn.info().peer;
        let session = Session::new(self.ctx.clone(), conn.info().role, peer, conn.tls().cloned());
        match serve(&self.ctx, conn, session).await {
            End::Quit => tracing::debug!(%peer, "SMTP session ended"),
            End::Dropped(e) => tracing::debug!(%peer, error = %e, "SMTP session dropped"),
        }
    }

    fn busy_reply(&self) -> &'static [u8] {
        b"421 4.7.0 Too many connections, try again later\r\n"
    }

    fn banned_reply(&self) -> &'static [u8] {
        b"421 4.7.0 Access denied for this address; try again later\r\n"
    }
}

async fn send(conn: &mut Connection, session: &mut Session, reply: &Reply) -> Result<bool, ConnError> {
    conn.reply(&reply.to_bytes()).await?;
    if let Some(bye) = session.count_error(reply).await {
        conn.write_all(&bye.to_bytes()).await?;
        return Ok(false);
    }
    Ok(true)
}

/// Tells the client the server is closing the connection (RFC 5321 3.8), as well as it still
/// can: a client that is already gone cannot be told, and the connection ends either way.
async fn say_421(conn: &mut Connection, ctx: &SmtpContext, code: &'static str, text: &str) {
    let bye = Reply::new(421, code, format!("{} {text}", ctx.hostname));
    let _ = conn.write_all(&bye.to_bytes()).await;
}

async fn serve(ctx: &SmtpContext, mut conn: Connection, mut session: Session) -> End {
    if let Err(e) = conn.write_all(&session.greeting().to_bytes()).await {
        return End::Dropped(e);
    }
    let max_line = ctx.config.max_line_length.saturating_sub(2);
    loop {
        // An authenticated session whose password changes (or whose account goes) is closed
        // with 421 as soon as the change is seen, not at its next command: a client idling
        // between messages would otherwise hold the connection open on a revoked login, and
        // RFC 5321 3.8 lets a server that must close send 421 unprompted.
        // A chunked (BDAT) transaction holds its chunks' memory between commands: past its
        // deadline a silent client is closed, as a client silent during DATA would be.
        let chunks_deadline = session.chunks_deadline();
        let read = tokio::select! {
            biased;
            () = session.login_revoked() => {
                let _ = conn.write_all(&session.login_revoked_reply().to_bytes()).await;
                break;
            }
            () = until(chunks_deadline) => {
                say_421(&mut conn, ctx, "4.4.2", "The chunked transaction took too long, closing connection").await;
                break;
            }
            read = conn.read_line(max_line) => read,
        };
        // The poll may have moved while the command was arriving (or waiting, pipelined).
        if session.login_revoked_now().await {
            let _ = conn.write_all(&session.login_revoked_reply().to_bytes()).await;
            break;
        }
        let line = match read {
            Ok(Line::Complete(line)) => line,
            Ok(Line::TooLong(_)) => {
                let too_long = session.line_too_long();
                match send(&mut conn, &mut session, &too_long).await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => return End::Dropped(e),
                }
            }
            Err(ConnError::ShuttingDown) => {
                say_421(&mut conn, ctx, "4.3.2", "Service shutting down").await;
                break;
            }
            Err(ConnError::Timeout(_)) => {
                say_421(&mut conn, ctx, "4.4.2", "Timeout, closing connection").await;
                break;
            }
            Err(e) => return End::Dropped(e),
        };
        let reply = match session.command(&line).await {
            Action::Reply(reply) => reply,
            Action::Close(reply) => {
                let _ = conn.write_all(&reply.to_bytes()).await;
                break;
            }
            Action::StartTls(reply) => {
                if let Err(e) = conn.write_all(&reply.to_bytes()).await {
                    return End::Dropped(e);
                }
                match conn.start_tls().await {
                    Ok(upgraded) => conn = upgraded,
                    Err(e) => return End::Dropped(e),
                }
                session.tls_started(conn.tls().cloned());
                continue;
            }
            Action::ReceiveData => {
                if let Err(e) = conn
                    .write_all(&Reply::bare(354, "End data with <CR><LF>.<CR><LF>").to_bytes())
                    .await
                {
                    return End::Dropped(e);
                }
                match receive_data(ctx, &mut conn).await {
                    // A message sent on a login revoked meanwhile is not accepted.
                    Ok(_) if session.login_revoked_now().await => {
                        let _ = conn.write_all(&session.login_revoked_reply().to_bytes()).await;
                        break;
                    }
                    // The reservation is held until the message is stored.
                    Ok((data, _reservation)) => session.data_received(data).await,
                    Err(ConnError::Timeout(_)) => {
                        say_421(&mut conn, ctx, "4.4.2", "Timeout during DATA").await;
                        break;
                    }
                    Err(e) => return End::Dropped(e),
                }
            }
            Action::ReceiveChunk { size, last, keep } => {
                let limits = ChunkLimits {
                    max_message_size: ctx.config.max_message_size,
                    timeout: ctx.config.data_timeout,
                };
                match receive_chunk(&mut conn, size, keep, limits, &ctx.body_budget).await {
                    Ok(_) if last && session.login_revoked_now().await => {
                        let _ = conn.write_all(&session.login_revoked_reply().to_bytes()).await;
                        break;
                    }
                    Ok(chunk) => session.chunk_received(chunk, last).await,
                    Err(ConnError::Timeout(_)) => {
                        say_421(&mut conn, ctx, "4.4.2", "Timeout during BDAT").await;
                        break;
                    }
                    Err(e) => return End::Dropped(e),
                }
            }
            Action::Authenticate(mechanism, initial) => {
                let mut channel = SmtpSasl { conn: &mut conn };
                match session.run_auth(mechanism, initial, &mut channel).await {
                    Ok(reply) => reply,
                    Err(e) => return End::Dropped(e),
                }
            }
        };
        match send(&mut conn, &mut session, &reply).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return End::Dropped(e),
        }
    }
    conn.close().await;
    End::Quit
}

/// Sleeps until `deadline`; forever when there is none.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Reads DATA to its end marker within the data timeout, never holding more than the size limit.
async fn receive_data(
    ctx: &SmtpContext,
    conn: &mut Connection,
) -> Result<(data::Data, budget::Reservation), ConnError> {
    let deadline = Instant::now() + ctx.config.data_timeout;
    let mut receiver = DataReceiver::new(ctx.config.max_message_size);
    let mut reservation = ctx.body_budget.reservation_for(conn.info().peer.ip());
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let input = conn.fill(left).await?;
        let (used, done) = receiver.feed(input);
        conn.consume(used);
        if !reservation.grow_to(receiver.buffered()) {
            receiver.abandon();
        }
        if let Some(data) = done {
            return Ok((data, reservation));
        }
    }
}

/// The bounds of one BDAT chunk read.
#[derive(Debug, Clone, Copy)]
pub struct ChunkLimits {
    /// A chunk larger than this alone is read and dropped ([`Chunk::TooBig`]).
    pub max_message_size: usize,
    /// The whole chunk must arrive within this.
    pub timeout: Duration,
}

/// Reads exactly `size` octets of a BDAT chunk (RFC 3030: the server reads a chunk even when it
/// refuses it, to stay in step); keeps them only when `keep` and within the size limit.
/// Public so that the BDAT fuzz target drives it over an in-memory stream (docs/FUZZING.md).
pub async fn receive_chunk(
    conn: &mut Connection,
    size: usize,
    keep: bool,
    limits: ChunkLimits,
    body_budget: &budget::BodyBudget,
) -> Result<Chunk, ConnError> {
    let deadline = Instant::now() + limits.timeout;
    let too_big = size > limits.max_message_size;
    // Memory is reserved as the chunk's bytes arrive, never for its announced size: a client
    // that announces a large chunk and sends nothing holds nothing.
    let mut reservation = body_budget.reservation_for(conn.info().peer.ip());
    let mut no_memory = false;
    let mut keep = keep && !too_big;
    let mut chunk = Vec::with_capacity(if keep { size.min(64 * 1024) } else { 0 });
    let mut left = size;
    while left > 0 {
        let wait = deadline.saturating_duration_since(Instant::now());
        let input = conn.fill(wait).await?;
        let take = input.len().min(left);
        if keep && !reservation.grow_to(chunk.len() + take) {
            keep = false;
            no_memory = true;
            chunk = Vec::new();
        }
        if keep {
            chunk.extend_from_slice(&input[..take]);
        }
        conn.consume(take);
        left -= take;
    }
    Ok(match (keep, too_big, no_memory) {
        (true, _, _) => Chunk::Data(chunk),
        (false, true, _) => Chunk::TooBig,
        (false, false, true) => Chunk::NoMemory,
        (false, false, false) => Chunk::Dropped,
    })
}

/// SASL challenges as 334 replies, answers as base64 lines; "*" cancels (RFC 4954 section 4).
struct SmtpSasl<'a> {
    conn: &'a mut Connection,
}

#[async_trait::async_trait]
impl SaslChannel for SmtpSasl<'_> {
    type Error = ConnError;

    async fn challenge(&mut self, data: &[u8]) -> Result<SaslAnswer, ConnError> {
        self.conn
            .write_all(format!("334 {}\r\n", BASE64.encode(data)).as_bytes())
            .await?;
        let line = match self.conn.read_line(MAX_AUTH_LINE).await? {
            Line::Complete(line) => line,
            Line::TooLong(_) => return Ok(SaslAnswer::Invalid("Authentication exchange line is too long")),
        };
        if line == b"*" {
            return Ok(SaslAnswer::Cancelled);
        }
        Ok(match BASE64.decode(&line) {
            Ok(response) => SaslAnswer::Data(response),
            Err(_) => SaslAnswer::Invalid("Invalid base64 in authentication response"),
        })
    }
}
