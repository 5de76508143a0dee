//! IMAP server: IMAP4rev1 (RFC 3501) with the IMAP4rev2 (RFC 9051) behaviour clients rely on,
//! and the extensions ordinary clients use (IDLE, UIDPLUS, MOVE, LITERAL+, SASL-IR, ID, ENABLE,
//! NAMESPACE, UNSELECT, CHILDREN, SPECIAL-USE, LIST-EXTENDED/LIST-STATUS basics, CONDSTORE,
//! APPENDLIMIT).
//!
//! Layers: [`framing`] reads one whole command off the connection with limits; [`session`]
//! decodes it (imap-codec, with the rewrites of [`esearch`] and [`list`]'s extended syntax) and
//! runs it against the store, its commands in `session/commands/` by concern. The session never
//! touches the socket: its responses go to `session.out`, which this driver sends, and what
//! cannot wait for the end of a command (FETCH batches, AUTHENTICATE) goes through the
//! `session::Client` trait the driver implements. This file is the driver: the greeting, the
//! read-run-write loop, STARTTLS, IDLE and the ends of a session.
//!
//! Before TLS only CAPABILITY, NOOP, LOGOUT, ID and STARTTLS are useful: LOGINDISABLED is
//! advertised and LOGIN/AUTHENTICATE answer `NO [PRIVACYREQUIRED]`. `\Recent` is kept as RFC
//! 3501 2.3.2 says (each new message is recent in the first session to learn of it; see
//! `selected`), since we advertise IMAP4rev1.

pub mod esearch;
pub mod fetch;
pub mod framing;
pub mod list;
pub mod search;
pub mod selected;
pub mod sequence;
pub mod session;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use sealmail_net::{ConnError, Connection, Handler, Line};

pub use framing::Limits;
pub use session::{ImapContext, Next, Session};

use framing::Stage;

/// Default limits for the command framing.
pub const MAX_COMMAND_LINE: usize = 64 * 1024;
pub const MAX_SMALL_LITERAL: u64 = 64 * 1024;
pub const MAX_LITERALS_PER_COMMAND: usize = 64;
/// Lines and literals of one command after login, besides APPEND's message.
pub const MAX_COMMAND: u64 = 1024 * 1024;
/// Before login a literal carries a user name or a password: 4 KiB is plenty.
pub const MAX_UNAUTHENTICATED_LITERAL: u64 = 4 * 1024;
/// Before login a whole command (LOGIN with two literals, AUTHENTICATE with SASL-IR) fits here.
pub const MAX_UNAUTHENTICATED_COMMAND: u64 = 16 * 1024;
/// BAD responses in a row after which a session is ended with BYE.
pub const MAX_ERRORS: u32 = 10;
/// Ends a session whose login no longer stands. RFC 3501 7.1: ALERT text must be shown to the
/// user, who needs to know why the client logs in again (or cannot).
const LOGIN_REVOKED_BYE: &[u8] =
    b"* BYE [ALERT] Your login is no longer valid: the credential it used was changed or revoked, or the account removed\r\n";

pub struct ImapHandler {
    ctx: Arc<ImapContext>,
}

impl ImapHandler {
    pub fn new(ctx: ImapContext) -> ImapHandler {
        ImapHandler { ctx: Arc::new(ctx) }
    }
}

#[async_trait::async_trait]
impl Handler for ImapHandler {
    async fn handle(&self, conn: Connection) {
        let peer = conn.info().peer;
        let session = Session::new(self.ctx.clone(), peer, conn.tls().cloned());
        if let Err(e) = serve(&self.ctx, conn, session).await {
            tracing::debug!(%peer, error = %e, "IMAP session dropped");
        }
    }

    fn busy_reply(&self) -> &'static [u8] {
        b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n"
    }

    fn banned_reply(&self) -> &'static [u8] {
        b"* BYE [UNAVAILABLE] Access denied for this address; try again later\r\n"
    }
}

/// How many unauthenticated command timeouts a client gets in all before it must have logged
/// in: the per-command timeout alone would let a client that never logs in keep its connection
/// with a NOOP now and then.
const UNAUTHENTICATED_TIMEOUTS_IN_ALL: u32 = 5;

async fn serve(ctx: &ImapContext, mut conn: Connection, mut session: Session) -> Result<(), ConnError> {
    conn.write_all(session.greeting().as_bytes()).await?;
    let login_by =
        tokio::time::Instant::now() + ctx.limits.unauthenticated_idle * UNAUTHENTICATED_TIMEOUTS_IN_ALL;
    loop {
        let stage = session.stage();
        if stage == Stage::NotAuthenticated && tokio::time::Instant::now() >= login_by {
            let _ = conn.write_all(b"* BYE Log in sooner; closing\r\n").await;
            break;
        }
        let read = tokio::select! {
            biased;
            () = session.login_revoked() => {
                let _ = conn.write_all(LOGIN_REVOKED_BYE).await;
                break;
            }
            read = framing::read_command(&mut conn, &ctx.limits, stage, &ctx.budget) => read,
        };
        // The poll may have moved while the command was arriving (or waiting, pipelined).
        if session.login_revoked_now().await {
            let _ = conn.write_all(LOGIN_REVOKED_BYE).await;
            break;
        }
        let frame = match read {
            Ok(frame) => frame,
            Err(ConnError::ShuttingDown) => {
                let _ = conn
                    .write_all(b"* BYE [UNAVAILABLE] Server shutting down\r\n")
                    .await;
                break;
            }
            Err(ConnError::Timeout(_)) => {
                let bye: &[u8] = match stage {
                    Stage::NotAuthenticated => b"* BYE Autologout; log in sooner\r\n",
                    Stage::Authenticated => b"* BYE Autologout; idle for too long\r\n",
                };
                let _ = conn.write_all(bye).await;
                break;
            }
            Err(e) => return Err(e),
        };
        let next = session.frame(frame, &mut conn).await?;
        if !session.out.is_empty() {
            conn.write_all(&session.out).await?;
            session.out.clear();
        }
        match next {
            Next::Continue => {}
            Next::Close => break,
            Next::StartTls => {
                conn = conn.start_tls().await?;
                session.set_tls(conn.tls().cloned());
            }
            Next::Idle(tag) => {
                if !idle(ctx, &mut conn, &mut session, &tag).await? {
                    break;
                }
            }
        }
    }
    conn.close().await;
    Ok(())
}

/// RFC 2177 IDLE: report changes as they happen until the client sends DONE. Returns false
/// when the session must end.
async fn idle(
    ctx: &ImapContext,
    conn: &mut Connection,
    session: &mut Session,
    tag: &str,
) -> Result<bool, ConnError> {
    conn.write_all(b"+ idling\r\n").await?;
    let shutdown = conn.shutdown_signal().clone();
    let mut watch = session.selected.as_ref().map(|s| s.watch.clone());
    let deadline = tokio::time::sleep(ctx.limits.idle);
    tokio::pin!(deadline);
    loop {
        let changed = async {
            match watch.as_mut() {
                Some(w) => w.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => {
                conn.write_all(b"* BYE [UNAVAILABLE] Server shutting down\r\n").await?;
                return Ok(false);
            }
            _ = &mut deadline => {
                conn.write_all(b"* BYE Autologout; idle for too long\r\n").await?;
                return Ok(false);
            }
            () = session.login_revoked() => {
                conn.write_all(LOGIN_REVOKED_BYE).await?;
                return Ok(false);
            }
            alive = changed => {
                if !alive {
                    watch = None;
                    continue;
                }
                if let Some(w) = watch.as_mut() {
                    w.borrow_and_update();
                }
                session.idle_update().await;
                if !session.out.is_empty() {
                    conn.write_all(&session.out).await?;
                    session.out.clear();
                }
            }
            ready = conn.fill(ctx.limits.idle) => {
                ready?;
                let line = match conn.read_line_within(64, Duration::from_secs(60)).await? {
                    Line::Complete(line) => line,
                    Line::TooLong(_) => Vec::new(),
                };
                let reply = if line.eq_ignore_ascii_case(b"DONE") {
                    format!("{tag} OK IDLE terminated\r\n")
                } else {
                    format!("{tag} BAD Expected DONE\r\n")
                };
                session.idle_update().await;
                session.out.extend_from_slice(reply.as_bytes());
                conn.write_all(&session.out).await?;
                session.out.clear();
                return Ok(true);
            }
        }
    }
}
