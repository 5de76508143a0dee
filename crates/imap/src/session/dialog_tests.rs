//! Unit tests of the session's state machine: socket-free, a scripted [`Client`], fakes for
//! logins and abuse reporting, a real store; and the whole driver over a duplex with STARTTLS.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sealmail_guard::Abuse;
use sealmail_net::budget::BodyBudget;
use sealmail_net::{ConnError, Line};
use sealmail_testkit::fakes::{self, FakeAbuse, FakeLogins};
use sealmail_testkit::{TestResult, ctx};

use crate::framing::{Frame, Limits, Refusal};
use crate::session::{Client, ImapContext, Next, Session};

/// Lines the client will send inside a command, and what the session sent along the way;
/// with a budget, how much of it was free at each send.
#[derive(Default)]
struct Script {
    lines: VecDeque<Vec<u8>>,
    sent: Vec<u8>,
    budget: Option<BodyBudget>,
    free_at_send: Vec<usize>,
}

#[async_trait::async_trait]
impl Client for Script {
    async fn send(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        self.sent.extend_from_slice(bytes);
        if let Some(budget) = &self.budget {
            self.free_at_send.push(budget.available());
        }
        Ok(())
    }

    async fn read_response_line(&mut self, _max: usize, _wait: Duration) -> Result<Line, ConnError> {
        self.lines
            .pop_front()
            .map(Line::Complete)
            .ok_or(ConnError::Closed)
    }
}

struct World {
    _dir: tempfile::TempDir,
    store: Arc<sealmail_store::SqliteStore>,
    abuse: Arc<FakeAbuse>,
    ctx: Arc<ImapContext>,
    budget: BodyBudget,
}

async fn world(max_errors: u32) -> TestResult<World> {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let store = fakes::store(dir.path()).await?;
    let abuse = Arc::new(FakeAbuse::default());
    let budget = BodyBudget::new(1 << 20);
    let ctx = Arc::new(ImapContext {
        hostname: "imap.a.test".into(),
        store: store.clone(),
        logins: Arc::new(FakeLogins {
            store: store.clone(),
            ban_after: 3,
            failures: std::sync::Mutex::new(0),
        }),
        abuse: abuse.clone(),
        limits: Limits {
            max_line: crate::MAX_COMMAND_LINE,
            max_append: 1 << 20,
            max_literal: crate::MAX_SMALL_LITERAL,
            max_literals: crate::MAX_LITERALS_PER_COMMAND,
            max_command: crate::MAX_COMMAND,
            max_unauthenticated_literal: crate::MAX_UNAUTHENTICATED_LITERAL,
            max_unauthenticated_command: crate::MAX_UNAUTHENTICATED_COMMAND,
            idle: Duration::from_secs(1800),
            unauthenticated_idle: Duration::from_secs(60),
        },
        budget: budget.clone(),
        max_errors,
        mailbox_quota: 0,
    });
    Ok(World {
        _dir: dir,
        store,
        abuse,
        ctx,
        budget,
    })
}

fn peer() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 9], 40000))
}

/// Runs one command line; returns what the driver would do next and the responses.
async fn run(w: &World, session: &mut Session, line: &str) -> TestResult<(Next, String)> {
    let frame = Frame::Command(format!("{line}\r\n").into_bytes(), w.budget.reservation());
    let mut script = Script::default();
    let next = ctx(session.frame(frame, &mut script).await, "command")?;
    let mut out = String::from_utf8_lossy(&script.sent).into_owned();
    out.push_str(&String::from_utf8_lossy(&session.out));
    session.out.clear();
    Ok((next, out))
}

#[tokio::test]
async fn before_tls_only_the_harmless_commands_work() -> TestResult {
    let w = world(10).await?;
    let mut session = Session::new(w.ctx.clone(), peer(), None);
    assert!(session.greeting().contains("STARTTLS LOGINDISABLED"));
    for (line, expected) in [
        (
            "a CAPABILITY",
            "* CAPABILITY IMAP4rev1 IMAP4rev2 STARTTLS LOGINDISABLED\r\na OK",
        ),
        ("b LOGIN alice@a.test secret", "b NO [PRIVACYREQUIRED]"),
        ("c AUTHENTICATE PLAIN", "c NO [PRIVACYREQUIRED]"),
        ("d SELECT INBOX", "d BAD Log in first"),
        ("e FROBNICATE", "e BAD Syntax error or unknown command"),
        ("f NOOP", "f OK"),
        ("g ID NIL", "* ID (\"name\" \"sealmail\")\r\ng OK"),
    ] {
        let (next, out) = run(&w, &mut session, line).await?;
        assert!(matches!(next, Next::Continue), "{line}");
        assert!(out.starts_with(expected), "{line}: {out:?}");
    }
    let (next, out) = run(&w, &mut session, "h STARTTLS").await?;
    assert!(matches!(next, Next::StartTls));
    assert_eq!(out, "h OK Begin TLS negotiation now\r\n");
    let (next, out) = run(&w, &mut session, "i LOGOUT").await?;
    assert!(matches!(next, Next::Close));
    assert_eq!(out, "* BYE Logging out\r\ni OK LOGOUT completed\r\n");
    assert!(w.abuse.kinds().is_empty());
    Ok(())
}

#[tokio::test]
async fn a_flood_of_bad_commands_ends_the_session_and_is_reported() -> TestResult {
    let w = world(3).await?;
    let mut session = Session::new(w.ctx.clone(), peer(), None);
    let (next, _) = run(&w, &mut session, "a BOGUS").await?;
    assert!(matches!(next, Next::Continue));
    // A refusal from the framing counts as a BAD too.
    let refused = Frame::Refused {
        tag: Some("b".into()),
        reason: Refusal::LineTooLong,
    };
    let next = ctx(session.frame(refused, &mut Script::default()).await, "refused")?;
    assert!(matches!(next, Next::Continue));
    // An OK in between resets the count (BADs in a row end the session).
    run(&w, &mut session, "c NOOP").await?;
    run(&w, &mut session, "d BOGUS").await?;
    run(&w, &mut session, "e BOGUS").await?;
    let (next, out) = run(&w, &mut session, "f BOGUS").await?;
    assert!(matches!(next, Next::Close), "{out}");
    assert!(out.ends_with("* BYE Too many errors\r\n"), "{out:?}");
    assert_eq!(w.abuse.kinds(), vec![Abuse::ProtocolErrors]);
    Ok(())
}

#[tokio::test]
async fn an_over_budget_refusal_is_a_no_not_the_clients_error() -> TestResult {
    let w = world(1).await?;
    let mut session = Session::new(w.ctx.clone(), peer(), None);
    let refused = Frame::Refused {
        tag: Some("a".into()),
        reason: Refusal::OverBudget,
    };
    let next = ctx(session.frame(refused, &mut Script::default()).await, "refused")?;
    assert!(
        matches!(next, Next::Continue),
        "max_errors = 1 must not end the session on a NO"
    );
    assert!(String::from_utf8_lossy(&session.out).starts_with("a NO [LIMIT]"));
    assert!(w.abuse.kinds().is_empty());
    Ok(())
}

/// A command's literals hold their share of the message budget until the command has run:
/// a FETCH that streams (it sends along the way) still finds the share taken.
#[tokio::test]
async fn a_commands_budget_share_is_held_while_it_runs() -> TestResult {
    use sealmail_store::{AccountStore, MailStore, NewMessage};
    let w = world(10).await?;
    let alice = ctx(sealmail_types::EmailAddress::parse(fakes::ALICE), "address")?;
    let account = ctx(w.store.account(&alice).await, "account")?.ok_or("no alice")?;
    let inbox = ctx(w.store.mailbox(account.id, "INBOX").await, "inbox")?.ok_or("no INBOX")?;
    // Past the 256 KiB at which FETCH sends what it has.
    let big = format!("Subject: big\r\n\r\n{}\r\n", "x".repeat(300 * 1024));
    ctx(
        w.store
            .store_message(NewMessage {
                content: big.into_bytes(),
                mailboxes: vec![inbox.id],
                internal_date: 0,
                flags: Vec::new(),
            })
            .await,
        "store",
    )?;
    let mut session = Session::new(w.ctx.clone(), peer(), None);
    // As after a login (the fake's login needs TLS, which this socket-free test has not).
    session.account = Some(account);
    run(&w, &mut session, "a SELECT INBOX").await?;
    let before = w.budget.available();
    let mut reservation = w.budget.reservation();
    assert!(reservation.grow_to(4096));
    let frame = Frame::Command(b"b FETCH 1 BODY.PEEK[]\r\n".to_vec(), reservation);
    let mut script = Script {
        budget: Some(w.budget.clone()),
        ..Script::default()
    };
    let next = ctx(session.frame(frame, &mut script).await, "fetch")?;
    assert!(matches!(next, Next::Continue));
    assert!(!script.free_at_send.is_empty(), "the FETCH did not stream");
    assert!(
        script.free_at_send.iter().all(|&free| free == before - 4096),
        "the share was given back while the command ran: {:?} free, {before} before",
        script.free_at_send
    );
    assert_eq!(
        w.budget.available(),
        before,
        "the share is given back after the command"
    );
    Ok(())
}

/// The whole driver over a duplex: STARTTLS with the listeners' TLS policy, a pipelined
/// command after STARTTLS thrown away, LOGIN and AUTHENTICATE (its continuation through the
/// session's `Client`), APPEND and FETCH of the message back.
#[tokio::test]
async fn a_session_over_a_duplex_with_starttls_login_append_and_fetch() -> TestResult {
    use base64::Engine as _;
    use sealmail_net::{Connection, ConnectionInfo, Handler as _, Timeouts};
    use sealmail_testkit::LineClient;

    let w = world(10).await?;
    let certs = ctx(tempfile::tempdir(), "tempdir")?;
    let (server_tls, client_tls) = sealmail_testkit::pki::tls_pair(certs.path(), "imap.a.test")?;
    let (client, server) = tokio::io::duplex(64 * 1024);
    let info = ConnectionInfo {
        peer: peer(),
        local: SocketAddr::from(([192, 0, 2, 1], 143)),
        role: sealmail_config::Role::Imap,
        tls_mode: sealmail_config::TlsMode::StartTls,
    };
    let conn = Connection::over_stream(
        info,
        server,
        Some(server_tls),
        Timeouts::uniform(Duration::from_secs(10)),
        tokio_util::sync::CancellationToken::new(),
    );
    let handler = crate::ImapHandler { ctx: w.ctx.clone() };
    let served = tokio::spawn(async move { handler.handle(conn).await });

    let mut plain = LineClient::new(client);
    assert!(plain.line().await?.starts_with("* OK [CAPABILITY"));
    plain.send("a STARTTLS\r\nb LOGIN alice@a.test x\r\n").await?;
    assert_eq!(
        plain.imap_until("a").await?,
        vec!["a OK Begin TLS negotiation now"]
    );
    let tls = sealmail_testkit::tls_upgrade(plain.into_inner(), client_tls, "imap.a.test").await?;
    let mut client = LineClient::new(tls);
    // The first answer inside TLS is to this command: `b` was thrown away.
    let caps = client.imap("c", "CAPABILITY").await?;
    assert!(
        caps[0].contains("AUTH=PLAIN") && !caps[0].contains("STARTTLS"),
        "{caps:?}"
    );
    let wrong = client.imap("d", "LOGIN alice@a.test wrong").await?;
    assert!(wrong[0].starts_with("d NO [AUTHENTICATIONFAILED]"), "{wrong:?}");
    client.send("e AUTHENTICATE PLAIN\r\n").await?;
    assert_eq!(client.line().await?, "+ ");
    let response = base64::engine::general_purpose::STANDARD.encode(format!(
        "\0{}\0{}",
        fakes::ALICE,
        fakes::ALICE_PASSWORD
    ));
    client.send(&format!("{response}\r\n")).await?;
    let logged_in = client.imap_until("e").await?;
    assert!(logged_in[0].starts_with("e OK [CAPABILITY"), "{logged_in:?}");
    let message = "From: bob@b.test\r\nSubject: hi\r\n\r\nhello\r\n";
    client
        .send(&format!("f APPEND INBOX {{{}+}}\r\n{message}\r\n", message.len()))
        .await?;
    let appended = client.imap_until("f").await?;
    assert!(appended[0].starts_with("f OK [APPENDUID "), "{appended:?}");
    client.imap("g", "SELECT INBOX").await?;
    let fetched = client
        .imap("h", "FETCH 1 (BODY[HEADER.FIELDS (SUBJECT)])")
        .await?;
    assert!(fetched.iter().any(|l| l == "Subject: hi"), "{fetched:?}");
    assert!(fetched.last().is_some_and(|l| l.starts_with("h OK")));
    client.imap("i", "LOGOUT").await?;
    ctx(served.await, "session task")?;
    Ok(())
}
