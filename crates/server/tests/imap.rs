//! IMAP against a real sealmail over real TLS: Python's imaplib and mbsync as independent
//! clients, and raw sessions for what needs exact control (several sessions on one mailbox,
//! IDLE timing, authorization, hostile input, integrity failures).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Instance, TEST_PASSWORD, mailbox_contents};
use sealmail_testkit::{LineClient, TestResult, client_config, ctx, tls_connect};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

type Client = LineClient<TlsStream<TcpStream>>;

/// A server with users alice and bob of example.test, submission and IMAP over implicit TLS.
struct Server {
    dir: tempfile::TempDir,
    config: PathBuf,
    submission: SocketAddr,
    imap: SocketAddr,
    process: Option<sealmail_testkit::Sealmail>,
}

impl Server {
    async fn start(extra: &str) -> TestResult<Server> {
        let dir = ctx(tempfile::tempdir(), "tempdir")?;
        let (submission, imap) = (common::free_addr()?, common::free_addr()?);
        let listeners = [("submission", submission, "implicit"), ("imap", imap, "implicit")];
        let config =
            common::config_with_users(dir.path(), "example.test", &["alice", "bob"], &listeners, extra)?;
        let process = Some(common::serve(dir.path(), &config).await?);
        Ok(Server {
            dir,
            config,
            submission,
            imap,
            process,
        })
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("tls/0.pem")
    }

    async fn connect(&self, addr: SocketAddr) -> TestResult<Client> {
        let config = client_config(&[&self.cert()], rustls::DEFAULT_VERSIONS, &[])?;
        Ok(LineClient::new(
            tls_connect(addr, config, "mail.example.test").await?,
        ))
    }

    /// An IMAP session logged in as `user`.
    async fn login(&self, user: &str) -> TestResult<Client> {
        let mut c = self.connect(self.imap).await?;
        c.line().await?;
        let reply = c
            .imap("l", &format!("LOGIN {user}@example.test \"{TEST_PASSWORD}\""))
            .await?;
        expect_ok(&reply)?;
        Ok(c)
    }

    /// Submits `body` from alice to `to` over SMTP.
    async fn submit(&self, to: &str, body: &str) -> TestResult {
        let mut c = self.connect(self.submission).await?;
        c.smtp_reply().await?;
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("\0alice@example.test\0{TEST_PASSWORD}"));
        c.dialog(&[
            ("EHLO client.test".to_string(), "250"),
            (format!("AUTH PLAIN {auth}"), "235"),
            ("MAIL FROM:<alice@example.test>".to_string(), "250"),
            (format!("RCPT TO:<{to}>"), "250"),
            ("DATA".to_string(), "354"),
        ])
        .await?;
        c.command(
            &format!("From: alice@example.test\r\nTo: {to}\r\n{body}\r\n."),
            "250",
        )
        .await?;
        Ok(())
    }
}

fn expect_ok(reply: &[String]) -> TestResult {
    match reply.last() {
        Some(last) if last.split(' ').nth(1) == Some("OK") => Ok(()),
        _ => Err(format!("expected OK, got {reply:?}")),
    }
}

fn tagged(reply: &[String]) -> &str {
    reply.last().map(String::as_str).unwrap_or("")
}

fn has_line(reply: &[String], needle: &str) -> bool {
    reply.iter().any(|l| l.contains(needle))
}

#[tokio::test]
async fn python_imaplib_reads_what_smtp_stored_byte_for_byte() -> TestResult {
    let instance = Instance::quickstart().await?;
    let out = ctx(tempfile::tempdir(), "tempdir")?;
    common::run_python_client("imaplib_client.py", &instance, out.path())?;

    // What imaplib fetched is exactly what the store holds (the messages now sit in Trash,
    // Archive and INBOX after the script's MOVE, COPY and EXPUNGE; look everywhere).
    let mut stored = Vec::new();
    for mailbox in ["INBOX", "Trash", "Drafts"] {
        stored.extend(mailbox_contents(&instance.data_dir(), "bob@example.test", mailbox).await?);
    }
    for name in ["multipart", "large", "small"] {
        let fetched = ctx(
            std::fs::read(out.path().join(format!("fetched-{name}.eml"))),
            "fetched",
        )?;
        let sent = ctx(std::fs::read(out.path().join(format!("sent-{name}.eml"))), "sent")?;
        assert!(
            fetched.ends_with(&sent),
            "{name}: fetched bytes do not end with the sent bytes"
        );
        let moved_or_kept = stored.contains(&fetched);
        // "large" and "small" were expunged by the script; "multipart" was moved to Trash.
        if name == "multipart" {
            assert!(moved_or_kept, "{name}: fetched bytes differ from the store's");
        }
    }
    Ok(())
}

#[tokio::test]
async fn two_sessions_see_each_others_flags_expunges_and_moves() -> TestResult {
    let server = Server::start("").await?;
    for i in 1..=4 {
        server
            .submit("bob@example.test", &format!("Subject: m{i}\r\n\r\nbody {i}"))
            .await?;
    }
    let mut a = server.login("bob").await?;
    let mut b = server.login("bob").await?;
    let selected = a.imap("s", "SELECT INBOX").await?;
    assert!(has_line(&selected, "* 4 EXISTS"), "{selected:?}");
    expect_ok(&b.imap("s", "SELECT INBOX").await?)?;

    // A flags message 2: B hears about it on its next command.
    let stored = a.imap("a1", "STORE 2 +FLAGS (\\Flagged)").await?;
    // A selected first: the messages are recent in A only.
    assert!(
        has_line(&stored, "* 2 FETCH (FLAGS (\\Recent \\Flagged))"),
        "{stored:?}"
    );
    let noop = b.imap("b1", "NOOP").await?;
    assert!(has_line(&noop, "* 2 FETCH (UID 2 FLAGS (\\Flagged))"), "{noop:?}");
    // A does not hear its own change twice.
    let noop = a.imap("a2", "NOOP").await?;
    assert_eq!(noop.len(), 1, "{noop:?}");

    // A expunges message 1. B is told only when it may be: not during FETCH by sequence number.
    expect_ok(&a.imap("a3", "STORE 1 +FLAGS.SILENT (\\Deleted)").await?)?;
    let expunged = a.imap("a4", "EXPUNGE").await?;
    assert!(has_line(&expunged, "* 1 EXPUNGE"), "{expunged:?}");
    let fetch = b.imap("b2", "FETCH 1:4 (UID)").await?;
    assert!(!has_line(&fetch, "EXPUNGE"), "EXPUNGE during FETCH: {fetch:?}");
    assert!(
        has_line(&fetch, "* 4 FETCH (UID 4)"),
        "sequence numbers kept during FETCH: {fetch:?}"
    );
    let noop = b.imap("b3", "NOOP").await?;
    assert!(has_line(&noop, "* 1 EXPUNGE"), "{noop:?}");
    let fetch = b.imap("b4", "FETCH 1:* (UID FLAGS)").await?;
    assert!(
        has_line(&fetch, "* 1 FETCH (UID 2 FLAGS (\\Flagged))"),
        "{fetch:?}"
    );
    assert!(has_line(&fetch, "* 3 FETCH (UID 4 FLAGS ())"), "{fetch:?}");

    // B moves UID 3 to Archive; A sees it leave, and the copy is in Archive with a new UID.
    expect_ok(&b.imap("b5", "CREATE Archive").await?)?;
    let moved = b.imap("b6", "UID MOVE 3 Archive").await?;
    assert!(
        has_line(&moved, "[COPYUID ") && has_line(&moved, " 3 1]"),
        "{moved:?}"
    );
    assert!(has_line(&moved, "* 2 EXPUNGE"), "{moved:?}");
    let noop = a.imap("a5", "NOOP").await?;
    assert!(has_line(&noop, "* 2 EXPUNGE"), "{noop:?}");
    let status = a.imap("a6", "STATUS Archive (MESSAGES UIDNEXT)").await?;
    assert!(has_line(&status, "(MESSAGES 1 UIDNEXT 2)"), "{status:?}");

    // New mail appears in both.
    server
        .submit("bob@example.test", "Subject: m5\r\n\r\nbody 5")
        .await?;
    for (c, tag) in [(&mut a, "a7"), (&mut b, "b7")] {
        let noop = c.imap(tag, "NOOP").await?;
        assert!(has_line(&noop, "* 3 EXISTS"), "{noop:?}");
    }
    Ok(())
}

/// The words sealmail ends a session with when its login no longer stands.
const LOGIN_REVOKED: &str = "* BYE [ALERT] Your login is no longer valid";

/// Sessions of alice (one in IDLE, one idle between commands) and of bob, all logged in.
async fn alice_twice_and_bob(server: &Server) -> TestResult<(Client, Client, Client)> {
    let mut idling = server.login("alice").await?;
    expect_ok(&idling.imap("s", "SELECT INBOX").await?)?;
    idling.send("i IDLE\r\n").await?;
    let continuation = idling.line().await?;
    assert!(continuation.starts_with("+ "), "{continuation}");
    let waiting = server.login("alice").await?;
    let bob = server.login("bob").await?;
    Ok((idling, waiting, bob))
}

/// The session is told why with BYE, then closed, within the bounded wait of `line` (10 s),
/// without sending anything.
async fn expect_revoked(session: &mut Client, which: &str) -> TestResult {
    let bye = session.line().await.map_err(|e| format!("{which}: {e}"))?;
    assert!(bye.starts_with(LOGIN_REVOKED), "{which}: {bye}");
    assert!(session.closed().await, "{which}: still open after BYE");
    Ok(())
}

async fn login_with(server: &Server, user: &str, password: &str) -> TestResult<Vec<String>> {
    let mut c = server.connect(server.imap).await?;
    c.line().await?;
    c.imap("l", &format!("LOGIN {user}@example.test \"{password}\""))
        .await
}

#[tokio::test]
async fn a_password_change_by_the_cli_ends_the_accounts_sessions_within_seconds() -> TestResult {
    let server = Server::start("").await?;
    let (mut idling, mut waiting, mut bob) = alice_twice_and_bob(&server).await?;

    // The CLI is another process: the server learns of the change through the store only.
    let (code, out, err) = common::admin(
        server.dir.path(),
        &server.config,
        &["user", "passwd", "alice@example.test"],
    )?;
    assert_eq!(code, 0, "{err}");
    let new_password = out
        .lines()
        .find_map(|l| l.strip_prefix("new password (shown once): "))
        .ok_or(format!("no new password in {out:?}"))?
        .to_string();

    expect_revoked(&mut idling, "alice in IDLE").await?;
    expect_revoked(&mut waiting, "alice between commands").await?;
    expect_ok(&bob.imap("n", "NOOP").await?)?;

    // Both logins above put the old password in the login cache: it must not let it in.
    let old = login_with(&server, "alice", TEST_PASSWORD).await?;
    assert!(tagged(&old).contains("NO [AUTHENTICATIONFAILED]"), "{old:?}");
    expect_ok(&login_with(&server, "alice", &new_password).await?)?;
    Ok(())
}

#[tokio::test]
async fn removing_an_account_with_the_cli_ends_its_sessions_within_seconds() -> TestResult {
    let server = Server::start("").await?;
    let (mut idling, mut waiting, mut bob) = alice_twice_and_bob(&server).await?;

    let (code, _, err) = common::admin(
        server.dir.path(),
        &server.config,
        &["user", "remove", "alice@example.test"],
    )?;
    assert_eq!(code, 0, "{err}");

    expect_revoked(&mut idling, "alice in IDLE").await?;
    expect_revoked(&mut waiting, "alice between commands").await?;
    expect_ok(&bob.imap("n", "NOOP").await?)?;
    let gone = login_with(&server, "alice", TEST_PASSWORD).await?;
    assert!(tagged(&gone).contains("NO [AUTHENTICATIONFAILED]"), "{gone:?}");
    Ok(())
}

#[tokio::test]
async fn idle_sees_a_message_delivered_by_smtp_within_a_second() -> TestResult {
    let server = Server::start("").await?;
    let mut idle = server.login("bob").await?;
    expect_ok(&idle.imap("s", "SELECT INBOX").await?)?;
    idle.send("i IDLE\r\n").await?;
    let continuation = idle.line().await?;
    assert!(continuation.starts_with("+ "), "{continuation}");
    for round in 1..=3 {
        let started = Instant::now();
        server
            .submit("bob@example.test", &format!("Subject: push {round}\r\n\r\nhello"))
            .await?;
        let accepted = started.elapsed();
        let line = idle.line().await?;
        assert_eq!(line, format!("* {round} EXISTS"));
        let seen = started.elapsed();
        assert!(
            seen - accepted < Duration::from_secs(1),
            "EXISTS came {:?} after the 250",
            seen - accepted
        );
        // The IDLE session is the first to learn of each message: recent here.
        assert_eq!(idle.line().await?, format!("* {round} RECENT"));
    }
    // Flag changes by another session also arrive during IDLE.
    let mut other = server.login("bob").await?;
    expect_ok(&other.imap("s", "SELECT INBOX").await?)?;
    expect_ok(&other.imap("f", "STORE 2 +FLAGS (\\Seen)").await?)?;
    assert_eq!(idle.line().await?, "* 2 FETCH (UID 2 FLAGS (\\Recent \\Seen))");
    idle.send("DONE\r\n").await?;
    assert_eq!(idle.line().await?, "i OK IDLE terminated");
    expect_ok(&idle.imap("n", "NOOP").await?)?;
    Ok(())
}

fn index_of(reply: &[String], needle: &str) -> Option<usize> {
    reply.iter().position(|l| l.contains(needle))
}

/// RFC 3501 2.3.2: a new message is `\Recent` in the first session to learn of it and in no
/// other; EXAMINE and STATUS look without taking; SEARCH RECENT/NEW/OLD agree; a copy is
/// recent in its new mailbox.
#[tokio::test]
async fn recent_belongs_to_the_first_session_that_sees_a_message() -> TestResult {
    let server = Server::start("").await?;
    for n in 1..=2 {
        server
            .submit("bob@example.test", &format!("Subject: m{n}\r\n\r\nhello"))
            .await?;
    }
    let mut a = server.login("bob").await?;
    let status = a.imap("s1", "STATUS INBOX (MESSAGES RECENT SIZE)").await?;
    assert!(has_line(&status, "(MESSAGES 2 RECENT 2 SIZE "), "{status:?}");
    // STATUS=SIZE (RFC 8438) is the sum of the messages' RFC822.SIZE.
    let size: u64 = status[0]
        .rsplit("SIZE ")
        .next()
        .and_then(|s| s.trim_end_matches(')').parse().ok())
        .ok_or(format!("no SIZE: {status:?}"))?;
    let examined = a.imap("e", "EXAMINE INBOX").await?;
    assert!(has_line(&examined, "* 2 RECENT"), "{examined:?}");
    expect_ok(&a.imap("u", "UNSELECT").await?)?;
    let selected = a.imap("s2", "SELECT INBOX").await?;
    assert!(
        has_line(&selected, "* 2 RECENT"),
        "EXAMINE took nothing: {selected:?}"
    );
    let fetched = a.imap("f1", "FETCH 1:* (FLAGS)").await?;
    assert!(has_line(&fetched, "* 1 FETCH (FLAGS (\\Recent))"), "{fetched:?}");
    let sizes = a.imap("z", "FETCH 1:* (RFC822.SIZE)").await?;
    let total: u64 = sizes
        .iter()
        .filter_map(|l| l.split("RFC822.SIZE ").nth(1))
        .filter_map(|n| n.trim_end_matches(')').parse::<u64>().ok())
        .sum();
    assert_eq!(total, size, "{sizes:?}");
    assert!(has_line(&a.imap("r1", "SEARCH RECENT").await?, "* SEARCH 1 2"));
    expect_ok(&a.imap("st", "STORE 1 +FLAGS.SILENT (\\Seen)").await?)?;
    assert!(has_line(&a.imap("r2", "SEARCH NEW").await?, "* SEARCH 2"));
    let old = a.imap("r3", "SEARCH OLD").await?;
    assert!(old.iter().any(|l| l == "* SEARCH"), "{old:?}");

    // A second session: nothing is recent for it.
    let mut b = server.login("bob").await?;
    let selected = b.imap("s", "SELECT INBOX").await?;
    assert!(has_line(&selected, "* 0 RECENT"), "{selected:?}");
    let fetched = b.imap("f", "FETCH 1:* (FLAGS)").await?;
    assert!(!has_line(&fetched, "\\Recent"), "{fetched:?}");
    let status = b.imap("st", "STATUS INBOX (RECENT)").await?;
    assert!(has_line(&status, "(RECENT 0)"), "{status:?}");

    // A new message goes to whichever session hears of it first: here b.
    server
        .submit("bob@example.test", "Subject: m3\r\n\r\nhello")
        .await?;
    let noop = b.imap("n", "NOOP").await?;
    assert!(
        has_line(&noop, "* 3 EXISTS") && has_line(&noop, "* 1 RECENT"),
        "{noop:?}"
    );
    let noop = a.imap("n", "NOOP").await?;
    assert!(
        has_line(&noop, "* 3 EXISTS") && has_line(&noop, "* 2 RECENT"),
        "{noop:?}"
    );
    assert!(has_line(&b.imap("r", "SEARCH RECENT").await?, "* SEARCH 3"));

    // A copy is recent in the mailbox it lands in, for the next session there.
    expect_ok(&a.imap("c", "COPY 1 Trash").await?)?;
    let status = a.imap("t", "STATUS Trash (RECENT)").await?;
    assert!(has_line(&status, "(RECENT 1)"), "{status:?}");
    let selected = b.imap("t", "SELECT Trash").await?;
    assert!(has_line(&selected, "* 1 RECENT"), "{selected:?}");
    Ok(())
}

/// A keyword new to the mailbox is announced with `* FLAGS` (and PERMANENTFLAGS) to every
/// session before any FETCH shows it; a keyword named NIL cannot be set.
#[tokio::test]
async fn a_new_keyword_is_announced_in_flags_before_any_fetch_shows_it() -> TestResult {
    let server = Server::start("").await?;
    server
        .submit("bob@example.test", "Subject: k\r\n\r\nhello")
        .await?;
    let mut a = server.login("bob").await?;
    let mut b = server.login("bob").await?;
    expect_ok(&a.imap("s", "SELECT INBOX").await?)?;
    let selected = b.imap("s", "SELECT INBOX").await?;
    assert!(!has_line(&selected, "$Important"), "{selected:?}");

    let stored = b.imap("k", "STORE 1 +FLAGS ($Important)").await?;
    let flags = index_of(&stored, "* FLAGS (").ok_or(format!("no FLAGS: {stored:?}"))?;
    let fetch = index_of(&stored, "* 1 FETCH").ok_or(format!("no FETCH: {stored:?}"))?;
    assert!(
        flags < fetch && stored[flags].contains("$Important"),
        "{stored:?}"
    );
    assert!(
        has_line(&stored, "[PERMANENTFLAGS (")
            && stored
                .iter()
                .any(|l| l.contains("PERMANENTFLAGS") && l.contains("$Important")),
        "{stored:?}"
    );

    let noop = a.imap("n", "NOOP").await?;
    let flags = index_of(&noop, "* FLAGS (").ok_or(format!("no FLAGS: {noop:?}"))?;
    let fetch = index_of(&noop, "* 1 FETCH").ok_or(format!("no FETCH: {noop:?}"))?;
    assert!(flags < fetch && noop[flags].contains("$Important"), "{noop:?}");
    assert!(noop[fetch].contains("$Important"), "{noop:?}");
    // Once announced, not again.
    let again = b.imap("k2", "STORE 1 -FLAGS ($Important)").await?;
    assert!(!has_line(&again, "* FLAGS ("), "{again:?}");
    // APPEND with a new keyword: announced to a session with the mailbox selected before the
    // new message, and to the appending session itself.
    let note = "Subject: n\r\n\r\nnote\r\n";
    let appended = a
        .imap(
            "ap",
            &format!("APPEND INBOX ($Later) {{{}+}}\r\n{note}", note.len()),
        )
        .await?;
    expect_ok(&appended)?;
    assert!(
        has_line(&appended, "* FLAGS (") && has_line(&appended, "$Later"),
        "{appended:?}"
    );
    let noop = b.imap("n2", "NOOP").await?;
    let flags = index_of(&noop, "* FLAGS (").ok_or(format!("no FLAGS: {noop:?}"))?;
    let exists = index_of(&noop, "* 2 EXISTS").ok_or(format!("no EXISTS: {noop:?}"))?;
    assert!(flags < exists && noop[flags].contains("$Later"), "{noop:?}");

    let nil = b.imap("nil", "STORE 1 +FLAGS (NIL)").await?;
    assert!(tagged(&nil).starts_with("nil NO"), "{nil:?}");

    // At most 256 keywords per mailbox: then new ones are refused and \* is no longer offered.
    for batch in 0..4 {
        let keywords: Vec<String> = (0..64).map(|i| format!("k{batch}_{i}")).collect();
        let reply = b
            .imap("many", &format!("STORE 1 FLAGS ({})", keywords.join(" ")))
            .await?;
        assert!(tagged(&reply).starts_with("many OK") || batch == 3, "{reply:?}");
        if batch == 3 {
            // 2 ($Important, $Later) + 192 + 64 would be 258.
            assert!(tagged(&reply).starts_with("many NO [LIMIT]"), "{reply:?}");
        }
    }
    let reply = b.imap("fill", "STORE 1 FLAGS (k3_0 k3_1 k3_2 k3_3 k3_4 k3_5 k3_6 k3_7 k3_8 k3_9 k3_10 k3_11 k3_12 k3_13 k3_14 k3_15 k3_16 k3_17 k3_18 k3_19 k3_20 k3_21 k3_22 k3_23 k3_24 k3_25 k3_26 k3_27 k3_28 k3_29 k3_30 k3_31 k3_32 k3_33 k3_34 k3_35 k3_36 k3_37 k3_38 k3_39 k3_40 k3_41 k3_42 k3_43 k3_44 k3_45 k3_46 k3_47 k3_48 k3_49 k3_50 k3_51 k3_52 k3_53 k3_54 k3_55 k3_56 k3_57 k3_58 k3_59 k3_60 k3_61)").await?;
    assert!(tagged(&reply).starts_with("fill OK"), "{reply:?}");
    let permanent = reply
        .iter()
        .find(|l| l.contains("PERMANENTFLAGS"))
        .ok_or(format!("{reply:?}"))?;
    assert!(!permanent.contains("\\*"), "{permanent}");
    let full = b.imap("full", "STORE 1 +FLAGS (one_more)").await?;
    assert!(tagged(&full).starts_with("full NO [LIMIT]"), "{full:?}");
    Ok(())
}

/// RFC 5258 and RFC 3501 6.3.6/6.3.9 over the wire: a deleted mailbox stays subscribed and
/// is listed as \NonExistent; RECURSIVEMATCH without SUBSCRIBED is BAD and with it gives
/// CHILDINFO; LSUB % shows an unsubscribed parent of a subscribed child as \Noselect.
#[tokio::test]
async fn list_extended_and_lsub_follow_subscriptions_of_deleted_and_nested_mailboxes() -> TestResult {
    let server = Server::start("").await?;
    let mut c = server.login("bob").await?;
    for name in ["p", "p/kept", "p/gone", "p/deep", "p/deep/child"] {
        expect_ok(&c.imap("c", &format!("CREATE {name}")).await?)?;
    }
    for name in ["p/kept", "p/gone", "p/deep/child"] {
        expect_ok(&c.imap("s", &format!("SUBSCRIBE {name}")).await?)?;
    }
    expect_ok(&c.imap("d", "DELETE p/gone").await?)?;
    let listed = c.imap("l1", "LIST (SUBSCRIBED) \"\" p/*").await?;
    assert!(
        has_line(&listed, "* LIST (\\NonExistent \\Subscribed) \"/\" \"p/gone\""),
        "{listed:?}"
    );
    assert!(
        has_line(&listed, "* LIST (\\Subscribed \\HasNoChildren) \"/\" \"p/kept\""),
        "{listed:?}"
    );
    assert_eq!(listed.len(), 4, "{listed:?}");
    let bad = c.imap("l2", "LIST (RECURSIVEMATCH) \"\" p/*").await?;
    assert!(tagged(&bad).starts_with("l2 BAD"), "{bad:?}");
    let recursive = c.imap("l3", "LIST (SUBSCRIBED RECURSIVEMATCH) \"\" p/%").await?;
    assert!(
        has_line(
            &recursive,
            "* LIST (\\HasChildren) \"/\" \"p/deep\" (\"CHILDINFO\" (\"SUBSCRIBED\"))"
        ),
        "{recursive:?}"
    );
    let lsub = c.imap("l4", "LSUB \"\" p/%").await?;
    assert!(
        has_line(&lsub, "* LSUB (\\Noselect) \"/\" \"p/deep\""),
        "{lsub:?}"
    );
    assert!(
        has_line(&lsub, "* LSUB (\\Noselect) \"/\" \"p/gone\""),
        "{lsub:?}"
    );
    assert!(has_line(&lsub, "* LSUB () \"/\" \"p/kept\""), "{lsub:?}");
    // Unsubscribing the deleted name ends it.
    expect_ok(&c.imap("u", "UNSUBSCRIBE p/gone").await?)?;
    let listed = c.imap("l5", "LIST (SUBSCRIBED) \"\" p/*").await?;
    assert!(!has_line(&listed, "p/gone"), "{listed:?}");
    Ok(())
}

fn number_after(reply: &[String], key: &str) -> TestResult<u64> {
    reply
        .iter()
        .find_map(|l| l.split(key).nth(1))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .ok_or(format!("no {key} in {reply:?}"))
}

/// RFC 7162 QRESYNC: enabled, expunges are VANISHED; SELECT (QRESYNC ...) and
/// UID FETCH (CHANGEDSINCE n VANISHED) tell a returning client what went and what changed.
#[tokio::test]
async fn qresync_reports_vanished_messages_and_changes_since_a_modseq() -> TestResult {
    let server = Server::start("").await?;
    for n in 1..=3 {
        server
            .submit("bob@example.test", &format!("Subject: q{n}\r\n\r\nhello"))
            .await?;
    }
    let mut a = server.login("bob").await?;
    let early = a.imap("q0", "SELECT INBOX (QRESYNC (1 1))").await?;
    assert!(
        tagged(&early).starts_with("q0 BAD"),
        "QRESYNC before ENABLE: {early:?}"
    );
    let enabled = a.imap("e", "ENABLE QRESYNC").await?;
    assert!(has_line(&enabled, "* ENABLED QRESYNC"), "{enabled:?}");
    let selected = a.imap("s", "SELECT INBOX").await?;
    let validity = number_after(&selected, "UIDVALIDITY ")?;
    let before = number_after(&selected, "HIGHESTMODSEQ ")?;
    let mut other = server.login("bob").await?;
    expect_ok(&other.imap("s", "SELECT INBOX").await?)?;

    expect_ok(&a.imap("f", "STORE 2 +FLAGS.SILENT (\\Seen)").await?)?;
    expect_ok(&a.imap("d", "STORE 1 +FLAGS.SILENT (\\Deleted)").await?)?;
    let expunged = a.imap("x", "EXPUNGE").await?;
    assert!(
        has_line(&expunged, "* VANISHED 1") && !has_line(&expunged, "EXPUNGE\r"),
        "{expunged:?}"
    );
    assert!(!expunged.iter().any(|l| l.ends_with(" EXPUNGE")), "{expunged:?}");
    // A session without QRESYNC still gets EXPUNGE.
    let noop = other.imap("n", "NOOP").await?;
    assert!(has_line(&noop, "* 1 EXPUNGE"), "{noop:?}");

    // A client coming back with what it knew: UID 1 is gone, UID 2 changed, UID 3 did not.
    let mut back = server.login("bob").await?;
    expect_ok(&back.imap("e", "ENABLE QRESYNC").await?)?;
    let resync = back
        .imap("s", &format!("SELECT INBOX (QRESYNC ({validity} {before}))"))
        .await?;
    assert!(has_line(&resync, "* VANISHED (EARLIER) 1"), "{resync:?}");
    assert!(
        resync
            .iter()
            .any(|l| l.starts_with("* 1 FETCH (UID 2 FLAGS (\\Seen) MODSEQ (")),
        "{resync:?}"
    );
    assert!(!has_line(&resync, "UID 3"), "{resync:?}");
    // Known UIDs narrow it: 2:3 lost nothing.
    let narrow = back
        .imap("s2", &format!("SELECT INBOX (QRESYNC ({validity} {before} 2:3))"))
        .await?;
    assert!(!has_line(&narrow, "VANISHED"), "{narrow:?}");
    // Another UIDVALIDITY: nothing is resynchronized.
    let stale = back
        .imap(
            "s3",
            &format!("SELECT INBOX (QRESYNC ({} {before}))", validity + 1),
        )
        .await?;
    assert!(
        !has_line(&stale, "VANISHED") && !has_line(&stale, "FETCH"),
        "{stale:?}"
    );

    let fetched = back
        .imap(
            "u",
            &format!("UID FETCH 1:* (FLAGS) (CHANGEDSINCE {before} VANISHED)"),
        )
        .await?;
    assert!(has_line(&fetched, "* VANISHED (EARLIER) 1"), "{fetched:?}");
    assert!(
        has_line(&fetched, "UID 2") && !has_line(&fetched, "UID 3"),
        "{fetched:?}"
    );
    let plain = back
        .imap(
            "p",
            &format!("FETCH 1:* (FLAGS) (CHANGEDSINCE {before} VANISHED)"),
        )
        .await?;
    assert!(
        tagged(&plain).starts_with("p BAD"),
        "VANISHED needs UID FETCH: {plain:?}"
    );
    Ok(())
}

/// RFC 3516: APPEND takes a literal8; binary content (a NUL) is refused with UNKNOWN-CTE, as
/// is a FETCH BINARY of a part in an encoding BINARY cannot undo.
#[tokio::test]
async fn binary_append_and_unknown_transfer_encodings() -> TestResult {
    let server = Server::start("").await?;
    let mut c = server.login("bob").await?;
    let text = b"Subject: eight\r\n\r\ncaf\xc3\xa9\r\n";
    c.send(&format!("a APPEND INBOX ~{{{}}}\r\n", text.len())).await?;
    assert!(c.line().await?.starts_with("+ "));
    c.send_bytes(text).await?;
    c.send("\r\n").await?;
    let appended = c.imap_until("a").await?;
    expect_ok(&appended)?;
    let nul = b"Subject: nul\r\n\r\na\0b\r\n";
    c.send(&format!("b APPEND INBOX ~{{{}}}\r\n", nul.len())).await?;
    assert!(c.line().await?.starts_with("+ "));
    c.send_bytes(nul).await?;
    c.send("\r\n").await?;
    let refused = c.imap_until("b").await?;
    assert!(tagged(&refused).starts_with("b NO [UNKNOWN-CTE]"), "{refused:?}");

    let uu = "Subject: uu\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n--B--\r\n";
    c.send(&format!("c APPEND INBOX {{{}+}}\r\n{uu}\r\n", uu.len()))
        .await?;
    expect_ok(&c.imap_until("c").await?)?;
    expect_ok(&c.imap("s", "SELECT INBOX").await?)?;
    let fetched = c.imap("f", "FETCH 2 (BINARY.PEEK[1])").await?;
    assert!(tagged(&fetched).starts_with("f NO [UNKNOWN-CTE]"), "{fetched:?}");
    assert!(has_line(&fetched, "BINARY[1] NIL"), "{fetched:?}");
    Ok(())
}

/// RFC 4731 ESEARCH in IMAP4rev1, and IMAP4rev2 (RFC 9051) once enabled: ESEARCH for every
/// SEARCH, no \Recent or RECENT, UTF-8 mailbox names.
#[tokio::test]
async fn esearch_and_imap4rev2() -> TestResult {
    let server = Server::start("").await?;
    for n in 1..=3 {
        server
            .submit("bob@example.test", &format!("Subject: r{n}\r\n\r\nhello"))
            .await?;
    }
    let mut a = server.login("bob").await?;
    let caps = a.imap("c", "CAPABILITY").await?;
    assert!(
        has_line(&caps, " IMAP4rev1 IMAP4rev2 ") && has_line(&caps, " ESEARCH "),
        "{caps:?}"
    );
    expect_ok(&a.imap("s", "SELECT INBOX").await?)?;
    let found = a.imap("s1", "UID SEARCH RETURN (MIN MAX COUNT) ALL").await?;
    assert!(
        has_line(&found, "* ESEARCH (TAG \"s1\") UID MIN 1 MAX 3 COUNT 3"),
        "{found:?}"
    );
    expect_ok(&a.imap("st", "STORE 2 +FLAGS.SILENT (\\Seen)").await?)?;
    let found = a.imap("s2", "SEARCH RETURN () UNSEEN").await?;
    assert!(has_line(&found, "* ESEARCH (TAG \"s2\") ALL 1,3"), "{found:?}");
    let none = a
        .imap("s3", "SEARCH RETURN (COUNT) SUBJECT nothing-like-this")
        .await?;
    assert!(has_line(&none, "* ESEARCH (TAG \"s3\") COUNT 0"), "{none:?}");
    // SEARCHRES (RFC 5182): SAVE keeps the result for `$`, by sequence number or UID.
    let save = a.imap("s4", "SEARCH RETURN (SAVE) UNSEEN").await?;
    assert!(
        tagged(&save).starts_with("s4 OK") && !has_line(&save, "ESEARCH"),
        "{save:?}"
    );
    let fetched = a.imap("s6", "FETCH $ (UID)").await?;
    assert!(
        has_line(&fetched, "* 1 FETCH (UID 1)") && has_line(&fetched, "* 3 FETCH (UID 3)"),
        "{fetched:?}"
    );
    assert!(!has_line(&fetched, "* 2 FETCH"), "{fetched:?}");
    let again = a.imap("s7", "UID SEARCH RETURN (ALL) OR $ SUBJECT r2").await?;
    assert!(
        has_line(&again, "* ESEARCH (TAG \"s7\") UID ALL 1:3"),
        "{again:?}"
    );
    let empty = a
        .imap("s8", "SEARCH RETURN (SAVE) SUBJECT nothing-like-this")
        .await?;
    expect_ok(&empty)?;
    let nothing = a.imap("s9", "FETCH $ (FLAGS)").await?;
    assert!(
        tagged(&nothing).starts_with("s9 OK") && !has_line(&nothing, "FETCH ("),
        "{nothing:?}"
    );
    // An empty `$` in a command that then fails to parse does not make the next one a no-op.
    let broken = a.imap("s10", "FETCH $ (BOGUS)").await?;
    assert!(tagged(&broken).starts_with("s10 BAD"), "{broken:?}");
    let stored = a.imap("s11", "STORE 1 +FLAGS (\\Flagged)").await?;
    assert!(has_line(&stored, "\\Flagged"), "the STORE ran: {stored:?}");
    // `$` as a keyword is not the saved result.
    let keyword = a.imap("s12", "SEARCH KEYWORD $").await?;
    assert!(tagged(&keyword).starts_with("s12 OK"), "{keyword:?}");
    let plain = a.imap("s5", "SEARCH UNSEEN").await?;
    assert!(
        has_line(&plain, "* SEARCH 1 3"),
        "rev1 SEARCH unchanged: {plain:?}"
    );

    let mut b = server.login("bob").await?;
    let enabled = b.imap("e", "ENABLE IMAP4rev2").await?;
    assert!(has_line(&enabled, "* ENABLED IMAP4rev2"), "{enabled:?}");
    server
        .submit("bob@example.test", "Subject: r4\r\n\r\nhello")
        .await?;
    let selected = b.imap("s", "SELECT INBOX").await?;
    assert!(
        has_line(&selected, "* 4 EXISTS") && !has_line(&selected, "RECENT"),
        "{selected:?}"
    );
    let fetched = b.imap("f", "FETCH 4 (FLAGS)").await?;
    assert!(
        has_line(&fetched, "* 4 FETCH (FLAGS ())"),
        "no \\Recent in IMAP4rev2: {fetched:?}"
    );
    let found = b.imap("s2", "SEARCH UNSEEN").await?;
    assert!(has_line(&found, "* ESEARCH (TAG \"s2\") ALL 1,3:4"), "{found:?}");
    expect_ok(&b.imap("c", "CREATE \"Réunions\"").await?)?;
    let listed = b.imap("l", "LIST \"\" \"R*\"").await?;
    assert!(
        has_line(&listed, "Réunions"),
        "UTF-8 names in IMAP4rev2: {listed:?}"
    );
    // Invisible characters would let two names look alike: refused.
    let hidden = b.imap("h", "CREATE \"R\u{200B}éunions\"").await?;
    assert!(tagged(&hidden).starts_with("h NO"), "{hidden:?}");
    // The same section twice is one; more than 8 that copy message bytes is too many.
    let twice = b.imap("t", "FETCH 1 (BODY.PEEK[TEXT] BODY.PEEK[TEXT])").await?;
    assert_eq!(
        twice.iter().filter(|l| l.contains("BODY[TEXT]")).count(),
        1,
        "{twice:?}"
    );
    let sections: Vec<String> = (1..=9).map(|i| format!("BODY.PEEK[{i}]")).collect();
    let many = b.imap("m", &format!("FETCH 1 ({})", sections.join(" "))).await?;
    assert!(tagged(&many).starts_with("m BAD"), "{many:?}");
    Ok(())
}

/// RFC 6855 4: APPEND's `UTF8 (literal8)` data item, for messages with UTF-8 headers, once
/// UTF8=ACCEPT is enabled (BAD before).
#[tokio::test]
async fn append_takes_utf8_data_after_enable_utf8_accept() -> TestResult {
    let server = Server::start("").await?;
    let mut c = server.login("bob").await?;
    let message = "From: Zoë <zoe@example.test>\r\nSubject: Grüße\r\n\r\nhallo\r\n";
    let append = |tag: &str| format!("{tag} APPEND INBOX UTF8 (~{{{}}}\r\n", message.len());
    c.send(&append("a")).await?;
    let early = c.line().await?;
    if early.starts_with("+ ") {
        c.send(&format!("{message})\r\n")).await?;
        let refused = c.imap_until("a").await?;
        assert!(tagged(&refused).starts_with("a BAD"), "{refused:?}");
    } else {
        assert!(early.starts_with("a BAD"), "{early}");
    }
    expect_ok(&c.imap("e", "ENABLE UTF8=ACCEPT").await?)?;
    c.send(&append("b")).await?;
    assert!(c.line().await?.starts_with("+ "));
    c.send(&format!("{message})\r\n")).await?;
    let appended = c.imap_until("b").await?;
    expect_ok(&appended)?;
    expect_ok(&c.imap("s", "SELECT INBOX").await?)?;
    let fetched = c.imap("f", "FETCH 1 (BODY.PEEK[])").await?;
    assert!(
        has_line(&fetched, "Subject: Grüße") && has_line(&fetched, "hallo"),
        "{fetched:?}"
    );
    assert!(
        !has_line(&fetched, "UTF8 ("),
        "the data item is not stored: {fetched:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_user_can_never_reach_another_users_mailboxes() -> TestResult {
    let server = Server::start("").await?;
    server
        .submit("bob@example.test", "Subject: bob's secret\r\n\r\nfor bob only")
        .await?;
    let mut bob = server.login("bob").await?;
    expect_ok(&bob.imap("c", "CREATE Private").await?)?;
    let mut alice = server.login("alice").await?;
    for name in [
        "bob@example.test/INBOX",
        "\"bob@example.test/INBOX\"",
        "../bob@example.test/INBOX",
        "\"#users/bob/INBOX\"",
        "\"~bob/INBOX\"",
        "\"Other Users/bob/INBOX\"",
        "\"/INBOX/../bob\"",
        "Private",
        "\"bob/Private\"",
        // INBOX spelled in modified UTF-7: refused, not resolved to anyone's INBOX.
        "&AEkATgBCAE8AWA-",
        "{22}\r\nbob@example.test/INBOX",
    ] {
        let name = if name.starts_with('{') {
            // A literal: send it with LITERAL+ so no continuation is needed.
            name.replacen("}", "+}", 1)
        } else {
            name.to_string()
        };
        let select = alice.imap("s", &format!("SELECT {name}")).await?;
        assert!(tagged(&select).starts_with("s NO"), "SELECT {name}: {select:?}");
        let status = alice.imap("t", &format!("STATUS {name} (MESSAGES)")).await?;
        assert!(tagged(&status).starts_with("t NO"), "STATUS {name}: {status:?}");
        let append = alice
            .imap("a", &format!("APPEND {name} {{6+}}\r\nx: y\r\n"))
            .await?;
        assert!(tagged(&append).starts_with("a NO"), "APPEND {name}: {append:?}");
    }
    // Alice's own INBOX is hers: empty, and LIST shows only her mailboxes.
    let select = alice.imap("s", "SELECT INBOX").await?;
    assert!(has_line(&select, "* 0 EXISTS"), "{select:?}");
    let copy = alice.imap("c", "COPY 1 \"bob@example.test/INBOX\"").await?;
    assert!(
        tagged(&copy).starts_with("c BAD") || tagged(&copy).starts_with("c NO"),
        "{copy:?}"
    );
    let list = alice.imap("l", "LIST \"\" *").await?;
    assert!(!has_line(&list, "Private") && !has_line(&list, "bob"), "{list:?}");
    let search = alice.imap("q", "SEARCH TEXT secret").await?;
    assert!(
        has_line(&search, "* SEARCH") && !has_line(&search, "* SEARCH 1"),
        "{search:?}"
    );
    // Bob's mail is untouched.
    let mut bob_select = bob.imap("s", "SELECT INBOX").await?;
    bob_select.retain(|l| l.contains("EXISTS"));
    assert_eq!(bob_select, ["* 1 EXISTS"]);
    Ok(())
}

#[tokio::test]
async fn hostile_input_gets_bad_and_the_session_goes_on() -> TestResult {
    let server = Server::start("[smtp]\nmax_message_size = 100000\n").await?;
    let mut c = server.login("bob").await?;
    for garbage in [
        "x1 FROBNICATE",
        "x2 FETCH",
        "x3 SELECT",
        "x4 FETCH 1:* (BODY[HEADER.FIELDS ()])",
        "x5 SEARCH (((((((((((((((((((((((((((((((((((((((((((((((((ALL)))))))))))))))))))))))))))))))))))))))))))))))))",
        "x6 LOGIN a b c d",
        "x7 STORE 1 +FLAGS (\\Recent",
    ] {
        let tag = garbage.split(' ').next().unwrap_or_default();
        let reply = c.imap(tag, garbage).await?;
        assert!(
            tagged(&reply).starts_with(&format!("{tag} BAD"))
                || tagged(&reply).starts_with(&format!("{tag} NO")),
            "{garbage}: {reply:?}"
        );
    }
    expect_ok(&c.imap("ok1", "NOOP").await?)?;

    // A line longer than the limit.
    let long = format!("y1 SEARCH SUBJECT \"{}\"", "a".repeat(70 * 1024));
    let reply = c.imap("y1", &long).await?;
    assert!(tagged(&reply).starts_with("y1 BAD"), "{reply:?}");
    // A synchronizing literal over the limit is refused before it is sent ...
    expect_ok(&c.imap("s", "SELECT INBOX").await?)?;
    c.send("y2 APPEND INBOX {200000}\r\n").await?;
    let refused = c.line().await?;
    assert!(refused.starts_with("y2 BAD [TOOBIG]"), "{refused}");
    // ... and a non-synchronizing one is read and thrown away, keeping the session in step.
    // The literal is full of commands; none of them may run.
    let literal = format!("{}{}", "y3 LOGOUT\r\n".repeat(18181), "x".repeat(9));
    assert_eq!(literal.len(), 200000);
    let payload = format!("y3 APPEND INBOX {{200000+}}\r\n{literal}\r\n");
    c.send(&payload).await?;
    let reply = c.imap_until("y3").await?;
    assert!(tagged(&reply).starts_with("y3 BAD [TOOBIG]"), "{reply:?}");
    expect_ok(&c.imap("ok2", "NOOP").await?)?;
    // An acceptable literal is taken after "+".
    c.send("y4 APPEND INBOX {11}\r\n").await?;
    assert!(c.line().await?.starts_with("+ "));
    c.send("x: y\r\n\r\nhi\r\n").await?;
    let appended = c.imap_until("y4").await?;
    assert!(tagged(&appended).starts_with("y4 OK [APPENDUID "), "{appended:?}");
    // Sequence numbers past the end are an error, UIDs past the end are not.
    assert!(tagged(&c.imap("z1", "FETCH 5 FLAGS").await?).starts_with("z1 BAD"));
    expect_ok(&c.imap("z2", "UID FETCH 500:600 FLAGS").await?)?;
    assert!(tagged(&c.imap("z3", "FETCH 1:4294967295 FLAGS").await?).starts_with("z3 BAD"));
    expect_ok(&c.imap("z4", "UID FETCH 1:4294967295 FLAGS").await?)?;

    // Enough errors end the session.
    let mut errors = 0;
    loop {
        c.send("e BOGUS\r\n").await?;
        let line = c.line().await?;
        errors += 1;
        if line.starts_with("* BYE") {
            break;
        }
        assert!(errors <= 10, "no BYE after {errors} errors");
    }
    assert!(c.closed().await);
    Ok(())
}

#[tokio::test]
async fn a_message_that_fails_its_integrity_check_gives_no_and_a_log_entry() -> TestResult {
    let mut server = Server::start("").await?;
    server
        .submit(
            "bob@example.test",
            "Subject: fragile\r\n\r\nMARKER-7f3a9 original",
        )
        .await?;
    // Flip one byte of the stored message on disk while the server is stopped.
    if let Some(mut process) = server.process.take() {
        process.signal(nix::sys::signal::Signal::SIGTERM)?;
        process.wait_exit(Duration::from_secs(20)).await?;
    }
    // Opening and closing the store moves everything from the WAL into the database file.
    let data = server.dir.path().join("data");
    ctx(sealmail_store::SqliteStore::open(&data, 16).await, "open store")?
        .close()
        .await;
    let db = data.join(sealmail_store::DB_FILE);
    let mut bytes = ctx(std::fs::read(&db), "read db")?;
    let mut flipped = 0;
    for at in 0..bytes.len().saturating_sub(12) {
        if &bytes[at..at + 12] == b"MARKER-7f3a9" {
            bytes[at] ^= 0x20;
            flipped += 1;
        }
    }
    assert!(flipped > 0, "marker not found in the database file");
    ctx(std::fs::write(&db, bytes), "write db")?;
    server.process = Some(common::serve(server.dir.path(), &server.config).await?);

    let mut c = server.login("bob").await?;
    expect_ok(&c.imap("s", "SELECT INBOX").await?)?;
    let fetch = c.imap("f", "FETCH 1 BODY.PEEK[]").await?;
    assert!(tagged(&fetch).starts_with("f NO [CORRUPTION]"), "{fetch:?}");
    assert!(
        !has_line(&fetch, "mARKER"),
        "corrupted bytes were served: {fetch:?}"
    );
    // Metadata that needs no content is still served, and the session goes on.
    let flags = c.imap("g", "FETCH 1 (UID RFC822.SIZE)").await?;
    expect_ok(&flags)?;
    let process = server.process.as_ref().ok_or("no server")?;
    process
        .wait_for_log("failed its integrity check", Duration::from_secs(5))
        .await?;
    Ok(())
}

/// mbsync's configuration for syncing bob's mailboxes into a local Maildir.
fn mbsync_config(server: &Server, maildir: &Path, password_file: &Path) -> String {
    format!(
        "IMAPAccount bob\nHost 127.0.0.1\nPort {port}\nUser bob@example.test\nPassCmd \"cat {pass}\"\nSSLType IMAPS\nCertificateFile {cert}\nAuthMechs LOGIN\n\n\
         IMAPStore remote\nAccount bob\n\n\
         MaildirStore local\nPath {maildir}/\nInbox {maildir}/INBOX\nSubFolders Verbatim\n\n\
         Channel bob\nFar :remote:\nNear :local:\nPatterns *\nCreate Near\nSync Pull\nSyncState *\n",
        port = server.imap.port(),
        pass = password_file.display(),
        cert = server.cert().display(),
        maildir = maildir.display(),
    )
}

/// The messages in a Maildir folder, as mbsync wrote them less its two documented changes: it
/// stores lines with LF endings (the local convention) and adds an `X-TUID:` header to track
/// each new message. Both are undone here so the rest can be compared byte for byte.
fn maildir_messages(dir: &Path) -> TestResult<Vec<Vec<u8>>> {
    let mut messages = Vec::new();
    for sub in ["cur", "new"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for entry in entries.flatten() {
            let bytes = ctx(std::fs::read(entry.path()), "read maildir file")?;
            let mut message = Vec::with_capacity(bytes.len());
            for line in bytes.split_inclusive(|&b| b == b'\n') {
                if line.starts_with(b"X-TUID: ") {
                    continue;
                }
                message.extend_from_slice(line);
            }
            messages.push(message);
        }
    }
    messages.sort();
    Ok(messages)
}

fn lf_endings(message: &[u8]) -> Vec<u8> {
    message.split(|&b| b == b'\r').collect::<Vec<_>>().concat()
}

#[tokio::test]
async fn mbsync_syncs_every_mailbox_into_an_identical_maildir() -> TestResult {
    if std::process::Command::new("mbsync")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err("mbsync (Debian package isync) is not installed; scripts/test.sh installs it".into());
    }
    let server = Server::start("").await?;
    for i in 1..=3 {
        server
            .submit(
                "bob@example.test",
                &format!("Subject: sync {i}\r\n\r\nline {i}\r\nGr\u{fc}\u{df}e"),
            )
            .await?;
    }
    let mut c = server.login("bob").await?;
    expect_ok(&c.imap("c", "CREATE Projects/Alpha").await?)?;
    expect_ok(
        &c.imap(
            "a",
            "APPEND Projects/Alpha (\\Seen \\Flagged) {26+}\r\nSubject: alpha\r\n\r\nnotes\r\n",
        )
        .await?,
    )?;

    let work = ctx(tempfile::tempdir(), "tempdir")?;
    let maildir = work.path().join("Mail");
    ctx(std::fs::create_dir(&maildir), "maildir")?;
    let password = work.path().join("password");
    ctx(std::fs::write(&password, TEST_PASSWORD), "password file")?;
    let config = work.path().join("mbsyncrc");
    ctx(
        std::fs::write(&config, mbsync_config(&server, &maildir, &password)),
        "mbsyncrc",
    )?;
    let output = ctx(
        std::process::Command::new("mbsync")
            .arg("-c")
            .arg(&config)
            .arg("-a")
            .env("HOME", work.path())
            .output(),
        "mbsync",
    )?;
    assert!(
        output.status.success(),
        "mbsync failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let data = server.dir.path().join("data");
    for (mailbox, folder) in [
        ("INBOX", "INBOX"),
        ("Projects/Alpha", "Projects/Alpha"),
        ("Sent", "Sent"),
    ] {
        let mut stored: Vec<Vec<u8>> = mailbox_contents(&data, "bob@example.test", mailbox)
            .await?
            .iter()
            .map(|m| lf_endings(m))
            .collect();
        stored.sort();
        let synced = maildir_messages(&maildir.join(folder))?;
        assert_eq!(synced.len(), stored.len(), "{mailbox}: message count");
        for (synced, stored) in synced.iter().zip(&stored) {
            assert!(
                synced == stored,
                "{mailbox}: a Maildir file differs from the stored message:\n{}\n---\n{}",
                String::from_utf8_lossy(synced),
                String::from_utf8_lossy(stored)
            );
        }
    }
    // Flags travel too: the appended message is seen and flagged ("FS" in the file name).
    let alpha = std::fs::read_dir(maildir.join("Projects/Alpha/cur"))
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    assert!(alpha.iter().any(|name| name.ends_with(":2,FS")), "{alpha:?}");
    Ok(())
}

#[tokio::test]
async fn imap_password_guessing_gets_the_address_banned() -> TestResult {
    let server = Server::start("[security]\nauth_failures = 3\n").await?;
    let config = client_config(&[&server.cert()], rustls::DEFAULT_VERSIONS, &[])?;
    let attacker = [127, 0, 0, 6];
    let mut c = LineClient::new(
        sealmail_testkit::tls_upgrade(
            sealmail_testkit::tcp_from(attacker, server.imap).await?,
            config.clone(),
            "mail.example.test",
        )
        .await?,
    );
    c.line().await?;
    let mut last = Vec::new();
    for attempt in 1..=3 {
        last = c
            .imap(
                &format!("g{attempt}"),
                &format!("LOGIN alice@example.test \"guess {attempt}\""),
            )
            .await?;
        assert!(
            tagged(&last).starts_with(&format!("g{attempt} NO [AUTHENTICATIONFAILED]")),
            "{last:?}"
        );
    }
    assert!(
        has_line(&last, "* BYE"),
        "the banning failure ends the session: {last:?}"
    );
    // A new connection from the same address is refused before TLS; a neighbour logs in.
    let mut refused = LineClient::new(sealmail_testkit::tcp_from(attacker, server.imap).await?);
    assert!(refused.closed().await, "banned address got a session");
    let mut neighbour = LineClient::new(
        sealmail_testkit::tls_upgrade(
            sealmail_testkit::tcp_from([127, 0, 0, 7], server.imap).await?,
            config,
            "mail.example.test",
        )
        .await?,
    );
    neighbour.line().await?;
    expect_ok(
        &neighbour
            .imap("l", &format!("LOGIN alice@example.test \"{TEST_PASSWORD}\""))
            .await?,
    )?;
    Ok(())
}

#[tokio::test]
async fn sasl_ir_login_mechanism_examine_unselect_and_check() -> TestResult {
    let server = Server::start("").await?;
    server
        .submit("bob@example.test", "Subject: read only\r\n\r\nbody")
        .await?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);

    // AUTHENTICATE PLAIN with an initial response (SASL-IR): no round trip.
    let mut c = server.connect(server.imap).await?;
    c.line().await?;
    let reply = c
        .imap(
            "a",
            &format!(
                "AUTHENTICATE PLAIN {}",
                b64(&format!("\0bob@example.test\0{TEST_PASSWORD}"))
            ),
        )
        .await?;
    assert!(
        tagged(&reply).starts_with("a OK [CAPABILITY IMAP4rev1 "),
        "{reply:?}"
    );

    // AUTHENTICATE LOGIN: username and password challenges.
    let mut l = server.connect(server.imap).await?;
    l.line().await?;
    l.send("b AUTHENTICATE LOGIN\r\n").await?;
    assert_eq!(l.line().await?, format!("+ {}", b64("Username:")));
    l.send(&format!("{}\r\n", b64("bob@example.test"))).await?;
    assert_eq!(l.line().await?, format!("+ {}", b64("Password:")));
    l.send(&format!("{}\r\n", b64(TEST_PASSWORD))).await?;
    assert!(l.line().await?.starts_with("b OK "));
    // A cancelled exchange is BAD and logs nobody in.
    let mut x = server.connect(server.imap).await?;
    x.line().await?;
    x.send("c AUTHENTICATE PLAIN\r\n").await?;
    assert_eq!(x.line().await?, "+ ");
    x.send("*\r\n").await?;
    assert!(x.line().await?.starts_with("c BAD"));
    assert!(tagged(&x.imap("d", "SELECT INBOX").await?).starts_with("d BAD"));

    // EXAMINE is read-only: no flag changes, and BODY[] does not set \Seen.
    let examined = c.imap("e", "EXAMINE INBOX").await?;
    assert!(tagged(&examined).starts_with("e OK [READ-ONLY]"), "{examined:?}");
    assert!(has_line(&examined, "[PERMANENTFLAGS ()]"), "{examined:?}");
    assert!(tagged(&c.imap("f", "STORE 1 +FLAGS (\\Flagged)").await?).starts_with("f NO [READ-ONLY]"));
    assert!(tagged(&c.imap("g", "EXPUNGE").await?).starts_with("g NO [READ-ONLY]"));
    let fetched = c.imap("h", "FETCH 1 (BODY[TEXT] FLAGS)").await?;
    // Recent (no session took it yet: EXAMINE only looks), and not \Seen.
    assert!(has_line(&fetched, "FLAGS (\\Recent)"), "{fetched:?}");
    expect_ok(&c.imap("i", "CHECK").await?)?;
    expect_ok(&c.imap("j", "UNSELECT").await?)?;
    assert!(
        tagged(&c.imap("k", "FETCH 1 FLAGS").await?).starts_with("k BAD"),
        "no mailbox after UNSELECT"
    );
    // Read-write again: BODY[] now sets \Seen.
    expect_ok(&c.imap("m", "SELECT INBOX").await?)?;
    let fetched = c.imap("n", "FETCH 1 (BODY[TEXT])").await?;
    assert!(has_line(&fetched, "FLAGS (\\Recent \\Seen)"), "{fetched:?}");
    Ok(())
}

/// The resident memory of a process, in KiB (Linux /proc).
fn resident_kib(pid: i32) -> TestResult<u64> {
    let status = ctx(
        std::fs::read_to_string(format!("/proc/{pid}/status")),
        "/proc status",
    )?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS in /proc status".to_string())
}

impl Server {
    /// An IMAP session over TLS from the loopback address `source` (distinct addresses keep
    /// the per-address connection caps out of the way), greeting read.
    async fn connect_from(&self, source: [u8; 4]) -> TestResult<Client> {
        let config = client_config(&[&self.cert()], rustls::DEFAULT_VERSIONS, &[])?;
        let tcp = sealmail_testkit::tcp_from(source, self.imap).await?;
        let mut c = LineClient::new(sealmail_testkit::tls_upgrade(tcp, config, "mail.example.test").await?);
        c.line().await?;
        Ok(c)
    }
}

#[tokio::test]
async fn clients_that_have_not_logged_in_cannot_make_the_server_hold_memory() -> TestResult {
    let server = Server::start("").await?;
    let pid = server.process.as_ref().ok_or("no server")?.pid();
    // One session first, so that what any session costs (TLS, tasks) is in the baseline.
    let mut warm = server.connect_from([127, 0, 0, 9]).await?;
    expect_ok(&warm.imap("n", "NOOP").await?)?;
    let before = resident_kib(pid)?;

    // The attack: 20 sessions from 20 addresses, none logged in, each announcing a 50 MiB
    // APPEND. Each must be refused before "+", so no client ever sends, and the server never
    // holds, the message.
    let mut attackers = Vec::new();
    let mut answers = Vec::new();
    for i in 0..20u8 {
        let mut c = server.connect_from([127, 0, 0, 10 + i]).await?;
        c.send("a APPEND INBOX {52428800}\r\n").await?;
        answers.push(c.line().await?);
        attackers.push(c);
    }
    let after = resident_kib(pid)?;
    eprintln!("server VmRSS: {before} KiB before, {after} KiB after 20 unauthenticated 50 MiB APPENDs");
    assert!(
        after.saturating_sub(before) < 8 * 1024,
        "the server grew from {before} KiB to {after} KiB"
    );
    for answer in &answers {
        assert!(answer.starts_with("a BAD Log in first"), "{answer}");
    }
    // Each session is still in step.
    for c in &mut attackers {
        expect_ok(&c.imap("n", "NOOP").await?)?;
    }

    // Before login a literal is for a user name or a password: 4 KiB at most, refused before
    // "+" beyond that, and read and thrown away when it was not asked for ({n+}).
    let mut c = server.connect_from([127, 0, 0, 40]).await?;
    c.send("b LOGIN {52428800}\r\n").await?;
    let refused = c.line().await?;
    assert!(refused.starts_with("b BAD [TOOBIG]"), "{refused}");
    c.send(&format!("d LOGIN {{5000+}}\r\n{}\r\n", "x".repeat(5000)))
        .await?;
    let reply = c.imap_until("d").await?;
    assert!(tagged(&reply).starts_with("d BAD [TOOBIG]"), "{reply:?}");
    // Small literals, but too many bytes for one command together.
    let piece = format!("{{4000+}}\r\n{}", "y".repeat(4000));
    c.send(&format!("e LOGIN {}\r\n", piece.repeat(5))).await?;
    let reply = c.imap_until("e").await?;
    assert!(tagged(&reply).starts_with("e BAD [TOOBIG]"), "{reply:?}");
    // What LOGIN needs still works, synchronizing literals included.
    c.send("l LOGIN {16}\r\n").await?;
    assert!(c.line().await?.starts_with("+ "));
    c.send(&format!("bob@example.test {{{}}}\r\n", TEST_PASSWORD.len()))
        .await?;
    assert!(c.line().await?.starts_with("+ "));
    c.send(&format!("{TEST_PASSWORD}\r\n")).await?;
    expect_ok(&c.imap_until("l").await?)?;
    Ok(())
}

#[tokio::test]
async fn append_draws_on_the_message_budget_smtp_uses_and_gets_no_limit_past_it() -> TestResult {
    let server = Server::start("[smtp]\nmax_message_size = 65536\nmax_buffered_bytes = 65536\n").await?;
    let mut imap = server.login("bob").await?;
    let message = format!("Subject: big\r\n\r\n{}", "z".repeat(40_000 - 16));
    assert_eq!(message.len(), 40_000);

    // An SMTP session holds 40,000 bytes of a message in chunks (BDAT without LAST).
    let mut smtp = server.connect(server.submission).await?;
    smtp.smtp_reply().await?;
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("\0alice@example.test\0{TEST_PASSWORD}"));
    smtp.dialog(&[
        ("EHLO client.test".to_string(), "250"),
        (format!("AUTH PLAIN {auth}"), "235"),
        ("MAIL FROM:<alice@example.test>".to_string(), "250"),
        ("RCPT TO:<bob@example.test>".to_string(), "250"),
    ])
    .await?;
    smtp.send(&format!("BDAT {}\r\n{message}", message.len())).await?;
    assert!(smtp.smtp_reply().await?.starts_with("250"));

    // What is left of the 64 KiB budget cannot hold another 40,000: refused before "+" ...
    imap.send("a APPEND INBOX {40000}\r\n").await?;
    let refused = imap.line().await?;
    assert!(refused.starts_with("a NO [LIMIT]"), "{refused}");
    // ... or, sent unasked, read, dropped and refused, with the session in step.
    imap.send(&format!("b APPEND INBOX {{40000+}}\r\n{message}\r\n"))
        .await?;
    let reply = imap.imap_until("b").await?;
    assert!(tagged(&reply).starts_with("b NO [LIMIT]"), "{reply:?}");
    expect_ok(&imap.imap("n", "NOOP").await?)?;

    // The SMTP session gives its share back; now the APPEND fits.
    smtp.command("RSET", "250").await?;
    imap.send("c APPEND INBOX {40000}\r\n").await?;
    assert!(imap.line().await?.starts_with("+ "));
    imap.send(&format!("{message}\r\n")).await?;
    let appended = imap.imap_until("c").await?;
    assert!(tagged(&appended).starts_with("c OK [APPENDUID "), "{appended:?}");
    let data = server.dir.path().join("data");
    assert_eq!(
        mailbox_contents(&data, "bob@example.test", "INBOX").await?,
        vec![message.into_bytes()]
    );
    Ok(())
}

#[tokio::test]
async fn clients_that_do_not_log_in_are_logged_out_after_the_short_timeout() -> TestResult {
    let server = Server::start("[limits]\nimap_unauthenticated_timeout_secs = 2\n").await?;
    // Silent after the greeting.
    let mut silent = server.connect(server.imap).await?;
    silent.line().await?;
    // Sending a command so slowly that it is never finished.
    let mut slow = server.connect(server.imap).await?;
    slow.line().await?;
    slow.send("a LOGIN bob@example.test").await?;
    // A logged-in session keeps the long timeout.
    let mut logged_in = server.login("bob").await?;

    for c in [&mut silent, &mut slow] {
        let bye = c.line().await?;
        assert!(bye.starts_with("* BYE Autologout"), "{bye}");
        assert!(c.closed().await);
    }
    expect_ok(&logged_in.imap("n", "NOOP").await?)?;

    // A client that keeps sending NOOPs in time but never logs in is closed after five
    // timeouts (10 s here) in all.
    let mut chatty = server.connect(server.imap).await?;
    chatty.line().await?;
    let started = std::time::Instant::now();
    let bye = loop {
        if started.elapsed() > Duration::from_secs(20) {
            return Err("a client that never logs in kept its connection for 20 s".into());
        }
        chatty.send("n NOOP\r\n").await?;
        let line = chatty.line().await?;
        if line.starts_with("* BYE") {
            break line;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    };
    assert!(bye.starts_with("* BYE Log in sooner"), "{bye}");
    assert!(started.elapsed() >= Duration::from_secs(9), "closed too early");
    Ok(())
}

#[tokio::test]
async fn repeated_sequence_sets_get_each_message_once_and_list_patterns_past_the_caps_get_bad() -> TestResult
{
    let server = Server::start("").await?;
    for i in 1..=3 {
        server
            .submit("bob@example.test", &format!("Subject: r{i}\r\n\r\nbody {i}"))
            .await?;
    }
    let mut c = server.login("bob").await?;
    expect_ok(&c.imap("s", "SELECT INBOX").await?)?;
    // 10,000 times "1:*" in one command (60 KB): each message is answered once.
    let repeated = vec!["1:*"; 10_000].join(",");
    let fetch = c.imap("f", &format!("FETCH {repeated} (UID)")).await?;
    expect_ok(&fetch)?;
    assert_eq!(fetch.len(), 4, "{:?}", &fetch[..fetch.len().min(8)]);
    let fetch = c.imap("u", &format!("UID FETCH {repeated},2 (FLAGS)")).await?;
    assert_eq!(fetch.len(), 4, "{:?}", &fetch[..fetch.len().min(8)]);
    let search = c.imap("q", &format!("SEARCH {repeated} BODY \"BODY 2\"")).await?;
    assert!(has_line(&search, "* SEARCH 2"), "{search:?}");
    // LIST patterns past the caps are refused, not run.
    let list = c.imap("l", &format!("LIST \"\" \"{}\"", "*a".repeat(40))).await?;
    assert!(tagged(&list).starts_with("l BAD"), "{list:?}");
    Ok(())
}

#[tokio::test]
async fn mailbox_names_with_control_characters_are_refused_and_never_echoed() -> TestResult {
    let server = Server::start("").await?;
    let mut c = server.login("bob").await?;
    // "&AA0ACg-" is CR LF in modified UTF-7; after it, a forged response.
    let hostile = "\"&AA0ACg-* OK [ALERT] forged&AA0ACg-\"";
    for (tag, command) in [
        ("c", format!("CREATE {hostile}")),
        ("d", format!("DELETE {hostile}")),
        ("r", format!("RENAME {hostile} Other")),
        ("s", format!("SUBSCRIBE {hostile}")),
        ("t", format!("STATUS {hostile} (MESSAGES)")),
        ("x", format!("SELECT {hostile}")),
    ] {
        let reply = c.imap(tag, &command).await?;
        assert!(
            tagged(&reply).starts_with(&format!("{tag} NO"))
                || tagged(&reply).starts_with(&format!("{tag} BAD")),
            "{command}: {reply:?}"
        );
        assert_eq!(reply.len(), 1, "{command}: {reply:?}");
        // Nothing of a reply is left over for the next command.
        assert_eq!(
            c.imap("n", "NOOP").await?,
            ["n OK NOOP completed"],
            "after {command}"
        );
    }
    let list = c.imap("l", "LIST \"\" *").await?;
    assert!(!has_line(&list, "forged"), "{list:?}");
    Ok(())
}

#[tokio::test]
async fn renaming_a_non_ascii_parent_takes_its_children_along() -> TestResult {
    let server = Server::start("").await?;
    let mut c = server.login("bob").await?;
    // "Ärger" is "&AMQ-rger" on the wire.
    expect_ok(&c.imap("c", "CREATE &AMQ-rger/x").await?)?;
    expect_ok(&c.imap("r", "RENAME &AMQ-rger B").await?)?;
    expect_ok(&c.imap("s", "SELECT B/x").await?)?;
    let list = c.imap("l", "LIST \"\" *").await?;
    assert!(has_line(&list, "\"B/x\""), "{list:?}");
    assert!(!has_line(&list, "&AMQ-rger"), "{list:?}");
    Ok(())
}

/// `limits.mailbox_quota`: a full account refuses new mail on SMTP (552 5.2.2, also for a
/// declared SIZE that would not fit) and on IMAP APPEND and COPY (`NO [OVERQUOTA]`, MOVE still
/// works), and IMAP QUOTA (RFC 9208) reports its use and limit in KiB.
#[tokio::test]
async fn a_full_mailbox_refuses_new_mail_and_reports_its_quota() -> TestResult {
    let server = Server::start("[limits]\nmailbox_quota = 8192\n").await?;
    let mut imap = server.login("bob").await?;
    let capabilities = imap.imap("c", "CAPABILITY").await?;
    assert!(has_line(&capabilities, "QUOTA=RES-STORAGE"), "{capabilities:?}");
    let roots = imap.imap("q", "GETQUOTAROOT INBOX").await?;
    expect_ok(&roots)?;
    assert!(has_line(&roots, "* QUOTAROOT \"INBOX\" \"\""), "{roots:?}");
    assert!(has_line(&roots, "* QUOTA \"\" (STORAGE 0 8)"), "{roots:?}");

    // About 4.5 KiB stored (with the headers submission adds): under the quota.
    server
        .submit(
            "bob@example.test",
            &format!("Subject: one\r\n\r\n{}", "a".repeat(3000)),
        )
        .await?;
    let quota = imap.imap("g", "GETQUOTA \"\"").await?;
    expect_ok(&quota)?;
    let used_kib: u64 = quota
        .iter()
        .find_map(|l| {
            l.strip_prefix("* QUOTA \"\" (STORAGE ")?
                .strip_suffix(" 8)")?
                .parse()
                .ok()
        })
        .ok_or(format!("no STORAGE line: {quota:?}"))?;
    assert!((4..=6).contains(&used_kib), "{quota:?}");
    // SMTP: a declared size that would pass the quota is refused at RCPT.
    let mut smtp = server.connect(server.submission).await?;
    smtp.smtp_reply().await?;
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("\0alice@example.test\0{TEST_PASSWORD}"));
    smtp.dialog(&[
        ("EHLO client.test".to_string(), "250"),
        (format!("AUTH PLAIN {auth}"), "235"),
        ("MAIL FROM:<alice@example.test> SIZE=5000".to_string(), "250"),
        ("RCPT TO:<bob@example.test>".to_string(), "552 5.2.2"),
        // alice has room.
        ("RCPT TO:<alice@example.test>".to_string(), "250"),
        ("RSET".to_string(), "250"),
    ])
    .await?;
    // IMAP: an APPEND that would pass the quota is refused; bob still reads his mail.
    let append = imap
        .imap(
            "a",
            &format!("APPEND INBOX {{5000+}}\r\nSubject: x\r\n\r\n{}", "b".repeat(4986)),
        )
        .await?;
    assert!(tagged(&append).starts_with("a NO [OVERQUOTA]"), "{append:?}");
    imap.imap("s", "SELECT INBOX").await?;
    // A COPY would double the message: refused; a MOVE does not add anything.
    let copy = imap.imap("k", "COPY 1 Trash").await?;
    assert!(tagged(&copy).starts_with("k NO [OVERQUOTA]"), "{copy:?}");
    expect_ok(&imap.imap("m", "MOVE 1 Trash").await?)?;
    // Fill it up: another 4.5 KiB fits (nothing declared), then the mailbox is full.
    server
        .submit(
            "bob@example.test",
            &format!("Subject: two\r\n\r\n{}", "c".repeat(3000)),
        )
        .await?;
    smtp.dialog(&[
        ("MAIL FROM:<alice@example.test>".to_string(), "250"),
        ("RCPT TO:<bob@example.test>".to_string(), "552 5.2.2"),
    ])
    .await?;
    let set = imap.imap("t", "SETQUOTA \"\" (STORAGE 100000)").await?;
    assert!(tagged(&set).starts_with("t NO"), "{set:?}");
    // Deleting mail makes room again.
    imap.imap("d", "SELECT Trash").await?;
    imap.imap("e", "STORE 1 +FLAGS (\\Deleted)").await?;
    expect_ok(&imap.imap("x", "EXPUNGE").await?)?;
    smtp.dialog(&[("RCPT TO:<bob@example.test>".to_string(), "250")])
        .await?;
    Ok(())
}

/// The number of SEARCH keys on message content and of LIST patterns is capped: each
/// multiplies the work of one command.
#[tokio::test]
async fn search_and_list_refuse_commands_that_multiply_their_own_cost() -> TestResult {
    let server = Server::start("").await?;
    server
        .submit("bob@example.test", "Subject: hello\r\n\r\nworld")
        .await?;
    let mut imap = server.login("bob").await?;
    imap.imap("s", "SELECT INBOX").await?;
    let keys = |n: usize| vec!["BODY o"; n].join(" ");
    let many = imap.imap("a", &format!("SEARCH {}", keys(33))).await?;
    assert!(tagged(&many).starts_with("a BAD"), "{many:?}");
    let fine = imap.imap("b", &format!("SEARCH {}", keys(32))).await?;
    expect_ok(&fine)?;
    assert!(has_line(&fine, "* SEARCH 1"), "{fine:?}");
    let patterns = vec!["\"%\""; 33].join(" ");
    let list = imap.imap("c", &format!("LIST \"\" ({patterns})")).await?;
    assert!(
        tagged(&list).starts_with("c BAD") || tagged(&list).starts_with("c NO"),
        "{list:?}"
    );
    expect_ok(&imap.imap("n", "NOOP").await?)?;
    Ok(())
}
