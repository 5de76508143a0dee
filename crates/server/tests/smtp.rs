//! SMTP end to end over real TLS sockets against a real `sealmail` process: policy (relay,
//! unknown users, spoofing, AUTH and MAIL before TLS), limits, smuggling variants, pipelining,
//! BDAT, SMTPUTF8, byte-exact storage, the queue, and kill -9 during a burst of submissions.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use rustls::version::TLS13;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use common::{Instance, credentials, mailbox_contents};
use sealmail_testkit::{LineClient, TestResult, ctx, tls_connect, tls_upgrade};

const MX: u16 = 2525;
const SUBMISSION_TLS: u16 = 2465;
const SUBMISSION_STARTTLS: u16 = 2587;
const NAME: &str = "mail.example.test";

type Client = LineClient<TlsStream<TcpStream>>;

/// MX over STARTTLS, greeted with EHLO after the upgrade.
async fn mx(instance: &Instance) -> TestResult<Client> {
    let mut c = LineClient::new(ctx(TcpStream::connect(instance.addr(MX)).await, "connect")?);
    c.smtp_reply().await?;
    c.send("EHLO sender.test\r\n").await?;
    c.smtp_reply().await?;
    c.send("STARTTLS\r\n").await?;
    let ready = c.smtp_reply().await?;
    assert!(ready.starts_with("220"), "{ready}");
    let tls = tls_upgrade(c.into_inner(), instance.client(&[&TLS13])?, NAME).await?;
    let mut c = LineClient::new(tls);
    c.command("EHLO sender.test", "250").await?;
    Ok(c)
}

/// Submission over implicit TLS, authenticated as `user`.
async fn submission(instance: &Instance, user: &str) -> TestResult<Client> {
    let password = credentials(instance)?.get(user).cloned().ok_or("no password")?;
    let tls = tls_connect(instance.addr(SUBMISSION_TLS), instance.client(&[&TLS13])?, NAME).await?;
    let mut c = LineClient::new(tls);
    c.smtp_reply().await?;
    let ehlo = c.command("EHLO client.test", "250").await?;
    assert!(
        ehlo.contains("AUTH SCRAM-SHA-256-PLUS SCRAM-SHA-256 PLAIN LOGIN"),
        "{ehlo}"
    );
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    c.command(&format!("AUTH PLAIN {token}"), "235 2.7.0").await?;
    Ok(c)
}

async fn send_message(c: &mut Client, from: &str, to: &str, body: &[u8]) -> TestResult<String> {
    c.command(&format!("MAIL FROM:<{from}>"), "250").await?;
    c.command(&format!("RCPT TO:<{to}>"), "250").await?;
    c.command("DATA", "354").await?;
    c.send_bytes(body).await?;
    c.send(".\r\n").await?;
    c.smtp_reply().await
}

/// The part of a stored message after the headers sealmail added (Return-Path,
/// Authentication-Results, Received, DKIM-Signature).
fn original(stored: &[u8]) -> &[u8] {
    let mut rest = stored;
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|i| i + 2)
            .unwrap_or(rest.len());
        let line = &rest[..line_end];
        let folded = line.starts_with(b"\t") || line.starts_with(b" ");
        let ours = [
            &b"Return-Path:"[..],
            b"Authentication-Results:",
            b"Received:",
            b"DKIM-Signature:",
        ];
        if ours.iter().any(|p| line.starts_with(p)) || folded {
            rest = &rest[line_end..];
        } else {
            return rest;
        }
    }
}

#[tokio::test]
async fn mx_delivers_8bit_mail_byte_for_byte_with_trace_headers() -> TestResult {
    let instance = Instance::quickstart().await?;
    let mut c = mx(&instance).await?;
    let body = "From: sender@remote.test\r\nTo: alice@example.test\r\nSubject: 8-bit\r\n\r\nGrüße aus Köln, ça va? \u{1F600}\r\n..a line that starts with a dot\r\n".as_bytes();
    // Dot-stuff the body as a client must.
    let stuffed = String::from_utf8_lossy(body).replace("\r\n.", "\r\n..");
    let reply = send_message(
        &mut c,
        "sender@remote.test",
        "alice@example.test",
        stuffed.as_bytes(),
    )
    .await?;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    c.command("QUIT", "221").await?;

    let stored = mailbox_contents(&instance.data_dir(), "alice@example.test", "INBOX").await?;
    assert_eq!(stored.len(), 1);
    let message = &stored[0];
    let text = String::from_utf8_lossy(message);
    // Return-Path, then our Authentication-Results (nothing is published for remote.test in
    // the test's DNS: every check finds nothing), then Received.
    assert!(
        text.starts_with(
            "Return-Path: <sender@remote.test>\r\nAuthentication-Results: mail.example.test;\r\n"
        ),
        "{text}"
    );
    for result in [
        "spf=none",
        "smtp.mailfrom=sender@remote.test",
        "smtp.helo=sender.test",
        "dmarc=none",
    ] {
        assert!(text.contains(result), "{result} missing: {text}");
    }
    assert!(
        text.contains(
            "\r\nReceived: from sender.test ([127.0.0.1])\r\n\tby mail.example.test (sealmail node "
        ),
        "{text}"
    );
    assert!(String::from_utf8_lossy(message).contains("\tfor <alice@example.test>;"));
    assert_eq!(original(message), body, "content changed in storage");
    Ok(())
}

#[tokio::test]
async fn mx_refuses_relay_and_unknown_users_and_offers_no_auth() -> TestResult {
    let instance = Instance::quickstart().await?;
    let mut c = mx(&instance).await?;
    let ehlo = c.command("EHLO again.test", "250").await?;
    assert!(!ehlo.contains("AUTH"), "AUTH offered on mx: {ehlo}");
    c.command("AUTH PLAIN AGFsaWNlAHg=", "503 5.5.1").await?;
    c.command("MAIL FROM:<spammer@remote.test>", "250").await?;
    c.command("RCPT TO:<victim@elsewhere.test>", "550 5.7.1").await?;
    c.command("RCPT TO:<nobody@example.test>", "550 5.1.1").await?;
    c.command("RCPT TO:<Alice@EXAMPLE.test>", "250").await?;
    c.command("RSET", "250").await?;
    c.command("VRFY alice", "252").await?;
    c.command("EXPN staff", "252").await?;
    c.command("HELP", "214").await?;
    Ok(())
}

/// mx does not offer DSN (it delivers or refuses before answering, and "delivered" notices
/// would go to unverified senders), so DSN parameters are refused as unknown (RFC 5321
/// 4.1.1.11) and the sender's server reports "relayed" to its user.
#[tokio::test]
async fn mx_offers_no_dsn_and_refuses_its_parameters() -> TestResult {
    let instance = Instance::quickstart().await?;
    let mut c = mx(&instance).await?;
    let ehlo = c.command("EHLO again.test", "250").await?;
    assert!(!ehlo.contains("DSN"), "DSN offered on mx: {ehlo}");
    c.command("MAIL FROM:<someone@remote.test> RET=FULL", "555 5.5.4")
        .await?;
    c.command("MAIL FROM:<someone@remote.test> ENVID=x1", "555 5.5.4")
        .await?;
    c.command("MAIL FROM:<someone@remote.test>", "250").await?;
    c.command("RCPT TO:<alice@example.test> NOTIFY=SUCCESS", "555 5.5.4")
        .await?;
    c.command(
        "RCPT TO:<alice@example.test> ORCPT=rfc822;alice@example.test",
        "555 5.5.4",
    )
    .await?;
    c.command("RCPT TO:<alice@example.test>", "250").await?;
    Ok(())
}

/// ENVID and ORCPT arrive as xtext; decoded, `+0D+0A` is a line break that, written into the
/// MAIL or RCPT line sent to the next hop, would start an SMTP command of the user's choosing.
#[tokio::test]
async fn submission_refuses_dsn_parameters_that_decode_to_anything_but_printable_ascii() -> TestResult {
    let instance = Instance::quickstart().await?;
    let mut c = submission(&instance, "alice@example.test").await?;
    for envid in [
        "x+0D+0ARCPT+20TO:<victim@remote.test>",
        "x+0A",
        "x+0D",
        "x+00",
        "x+09",
        "caf+C3+A9",
        "x+7F",
    ] {
        c.command(
            &format!("MAIL FROM:<alice@example.test> ENVID={envid}"),
            "501 5.5.4",
        )
        .await?;
    }
    // A new session: each refusal counts towards the error limit.
    let mut c = submission(&instance, "alice@example.test").await?;
    c.command("MAIL FROM:<alice@example.test> ENVID=QQ+20314+2B1", "250")
        .await?;
    for orcpt in [
        "rfc822;a+0D+0ADATA@remote.test",
        "rfc822;a+0A@remote.test",
        "rfc822;a+00@remote.test",
    ] {
        c.command(&format!("RCPT TO:<carol@remote.test> ORCPT={orcpt}"), "501 5.5.4")
            .await?;
    }
    c.command(
        "RCPT TO:<carol@remote.test> ORCPT=rfc822;carol+2Btag@remote.test",
        "250",
    )
    .await?;
    c.command("RSET", "250").await?;
    Ok(())
}

#[tokio::test]
async fn submission_requires_tls_then_auth_and_refuses_spoofing() -> TestResult {
    let instance = Instance::quickstart().await?;
    // STARTTLS submission: nothing before TLS.
    let mut plain = LineClient::new(ctx(
        TcpStream::connect(instance.addr(SUBMISSION_STARTTLS)).await,
        "connect",
    )?);
    plain.smtp_reply().await?;
    plain.send("EHLO c.test\r\n").await?;
    let ehlo = plain.smtp_reply().await?;
    assert!(!ehlo.contains("AUTH"), "AUTH offered before TLS: {ehlo}");
    plain
        .dialog(&[
            ("AUTH PLAIN AGFsaWNlAHg=", "530 5.7.0"),
            ("MAIL FROM:<alice@example.test>", "530 5.7.0"),
        ])
        .await?;

    // After TLS, MAIL still needs AUTH; a wrong password fails.
    let tls = tls_connect(instance.addr(SUBMISSION_TLS), instance.client(&[&TLS13])?, NAME).await?;
    let mut c = LineClient::new(tls);
    c.smtp_reply().await?;
    c.command("EHLO c.test", "250").await?;
    c.command("MAIL FROM:<alice@example.test>", "530 5.7.0").await?;
    let wrong = base64::engine::general_purpose::STANDARD.encode("\0alice@example.test\0wrong-password");
    c.command(&format!("AUTH PLAIN {wrong}"), "535 5.7.8").await?;
    // LOGIN, step by step.
    let password = credentials(&instance)?
        .get("alice@example.test")
        .cloned()
        .ok_or("no password")?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    c.command("AUTH LOGIN", "334 VXNlcm5hbWU6").await?;
    c.command(&b64("alice@example.test"), "334 UGFzc3dvcmQ6").await?;
    c.command(&b64(&password), "235").await?;

    c.command("MAIL FROM:<bob@example.test>", "553 5.7.1").await?;
    c.command("MAIL FROM:<>", "553 5.7.1").await?;
    // Envelope right, header From someone else's: refused after DATA.
    let forged = b"From: Bob <bob@example.test>\r\nSubject: pay this invoice\r\n\r\nx\r\n";
    let reply = send_message(&mut c, "alice@example.test", "bob@example.test", forged).await?;
    assert!(reply.starts_with("553 5.7.1"), "{reply}");
    assert!(
        mailbox_contents(&instance.data_dir(), "bob@example.test", "INBOX")
            .await?
            .is_empty()
    );
    Ok(())
}

#[tokio::test]
async fn submission_stores_local_mail_with_added_headers_and_queues_remote_mail() -> TestResult {
    let instance = Instance::quickstart().await?;
    let mut c = submission(&instance, "alice@example.test").await?;
    let body = b"From: Alice <alice@example.test>\r\nTo: bob@example.test, carol@remote.test\r\nSubject: hello\r\n\r\nHi!\r\n";
    c.command(
        "MAIL FROM:<alice@example.test> BODY=8BITMIME RET=HDRS ENVID=env-123",
        "250",
    )
    .await?;
    c.command(
        "RCPT TO:<bob@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.test",
        "250",
    )
    .await?;
    c.command(
        "RCPT TO:<carol@remote.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;carol@remote.test",
        "250",
    )
    .await?;
    c.command("DATA", "354").await?;
    c.send_bytes(body).await?;
    c.command(".", "250 2.0.0").await?;

    let stored = mailbox_contents(&instance.data_dir(), "bob@example.test", "INBOX").await?;
    assert_eq!(stored.len(), 1);
    let text = String::from_utf8_lossy(&stored[0]).into_owned();
    assert!(text.contains("with ESMTPSA (TLSv1.3)"), "{text}");
    assert!(
        text.contains("\r\nMessage-ID: <") && text.contains("@mail.example.test>\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nDate: "), "{text}");
    assert!(text.ends_with("Subject: hello\r\n\r\nHi!\r\n"), "{text}");

    // bob's NOTIFY=SUCCESS: alice has the "delivered" notice as soon as the message is accepted.
    let inbox = mailbox_contents(&instance.data_dir(), "alice@example.test", "INBOX").await?;
    let delivered = inbox
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .find(|m| m.contains("Action: delivered"))
        .ok_or("no delivered notice for bob")?;
    for needed in [
        "Subject: Successful Mail Delivery Report",
        "Original-Envelope-Id: env-123",
        "Original-Recipient: rfc822;bob@example.test",
        "Final-Recipient: rfc822; bob@example.test",
        "Status: 2.0.0",
        "Subject: hello",
    ] {
        assert!(delivered.contains(needed), "{needed}:\n{delivered}");
    }
    assert!(
        !delivered.contains("Final-Recipient: rfc822; carol@remote.test"),
        "{delivered}"
    );

    // The remote copy was queued with its DSN parameters; remote.test does not exist (the
    // test's DNS knows nothing), so delivery fails for good and alice gets a DSN that carries
    // them (NOTIFY=FAILURE asked for it, ORCPT comes back as Original-Recipient).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let dsn = loop {
        let inbox = mailbox_contents(&instance.data_dir(), "alice@example.test", "INBOX").await?;
        if let Some(dsn) = inbox
            .iter()
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .find(|m| m.contains("Action: failed"))
        {
            break dsn;
        }
        if std::time::Instant::now() > deadline {
            return Err("no DSN for the remote recipient".into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(
        dsn.contains("Final-Recipient: rfc822; carol@remote.test"),
        "{dsn}"
    );
    assert!(
        dsn.contains("Original-Recipient: rfc822;carol@remote.test"),
        "{dsn}"
    );
    assert!(dsn.contains("Status: 5.1.2"), "{dsn}");
    assert!(
        !dsn.contains("Final-Recipient: rfc822; bob@example.test"),
        "the local recipient was delivered: {dsn}"
    );
    Ok(())
}

/// Sends raw bytes after MAIL/RCPT/DATA and returns every reply line that follows, until the
/// server goes quiet; the caller judges them.
async fn raw_data_exchange(c: &mut Client, payload: &[u8]) -> TestResult<Vec<String>> {
    c.command("MAIL FROM:<sender@remote.test>", "250").await?;
    c.command("RCPT TO:<alice@example.test>", "250").await?;
    c.command("DATA", "354").await?;
    c.send_bytes(payload).await?;
    let mut replies = Vec::new();
    while let Ok(Ok(line)) = tokio::time::timeout(Duration::from_millis(700), c.line()).await {
        replies.push(line);
    }
    Ok(replies)
}

#[tokio::test]
async fn smtp_smuggling_variants_never_create_a_second_message() -> TestResult {
    let instance = Instance::quickstart().await?;
    let variants: [&[u8]; 7] = [
        b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r", b".\n",
    ];
    for (i, fake_end) in variants.iter().enumerate() {
        let mut c = mx(&instance).await?;
        let mut payload = format!("Subject: variant {i}\r\n\r\nhello").into_bytes();
        payload.extend_from_slice(fake_end);
        payload.extend_from_slice(
            b"MAIL FROM:<ceo@example.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nSubject: SMUGGLED\r\n\r\nwire money\r\n.\r\n",
        );
        let replies = raw_data_exchange(&mut c, &payload).await?;
        let what = format!("variant {fake_end:?}: {replies:?}");
        assert_eq!(replies.len(), 1, "{what}");
        assert!(replies[0].starts_with("550 5.5.2"), "{what}");
        c.command("NOOP", "250").await?;
    }
    let stored = mailbox_contents(&instance.data_dir(), "alice@example.test", "INBOX").await?;
    assert!(stored.is_empty(), "{} message(s) stored", stored.len());

    // The honest ending still works on the same kind of session.
    let mut c = mx(&instance).await?;
    let reply = send_message(
        &mut c,
        "sender@remote.test",
        "alice@example.test",
        b"Subject: fine\r\n\r\nok\r\n",
    )
    .await?;
    assert!(reply.starts_with("250"), "{reply}");
    assert_eq!(
        mailbox_contents(&instance.data_dir(), "alice@example.test", "INBOX")
            .await?
            .len(),
        1
    );
    Ok(())
}

#[tokio::test]
async fn pipelined_transactions_get_their_replies_in_order() -> TestResult {
    let instance = Instance::quickstart().await?;
    let mut c = mx(&instance).await?;
    c.send("MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<nobody@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    .await?;
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(c.smtp_reply().await?[..3].to_string());
    }
    assert_eq!(codes, ["250", "250", "550", "250", "354"]);
    c.send("Subject: pipelined\r\n\r\nbody\r\n.\r\nMAIL FROM:<b@remote.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n").await?;
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(c.smtp_reply().await?[..3].to_string());
    }
    assert_eq!(codes, ["250", "250", "250", "354"]);
    c.send("Subject: second\r\n\r\nx\r\n.\r\nQUIT\r\n").await?;
    assert!(c.smtp_reply().await?.starts_with("250"));
    assert!(c.smtp_reply().await?.starts_with("221"));
    assert_eq!(
        mailbox_contents(&instance.data_dir(), "bob@example.test", "INBOX")
            .await?
            .len(),
        2
    );
    assert_eq!(
        mailbox_contents(&instance.data_dir(), "alice@example.test", "INBOX")
            .await?
            .len(),
        1
    );
    Ok(())
}

#[tokio::test]
async fn bdat_chunks_are_stored_verbatim() -> TestResult {
    let instance = Instance::quickstart().await?;
    let mut c = mx(&instance).await?;
    let part1 = b"Subject: chunked\r\n\r\nline one\r\n.not stuffed\r\n";
    let part2 = b"no stuffing in BDAT\r\n.\r\nstill data\r\n";
    c.command("MAIL FROM:<a@remote.test>", "250").await?;
    c.command("RCPT TO:<bob@example.test>", "250").await?;
    c.send(&format!("BDAT {}\r\n", part1.len())).await?;
    c.send_bytes(part1).await?;
    assert!(c.smtp_reply().await?.starts_with("250"));
    c.send(&format!("BDAT {} LAST\r\n", part2.len())).await?;
    c.send_bytes(part2).await?;
    let reply = c.smtp_reply().await?;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    // BDAT without a transaction: the chunk is read (the session stays in step) and refused.
    c.send("BDAT 5 LAST\r\nhello").await?;
    assert!(c.smtp_reply().await?.starts_with("503"));
    c.command("NOOP", "250").await?;

    let stored = mailbox_contents(&instance.data_dir(), "bob@example.test", "INBOX").await?;
    let mut expected = part1.to_vec();
    expected.extend_from_slice(part2);
    assert_eq!(original(&stored[0]), expected.as_slice());
    Ok(())
}

/// One BDAT transaction of `chunks` on `c`; the reply to the last chunk.
async fn bdat_exchange(c: &mut Client, chunks: &[&[u8]]) -> TestResult<String> {
    c.command("MAIL FROM:<a@remote.test>", "250").await?;
    c.command("RCPT TO:<bob@example.test>", "250").await?;
    let mut reply = String::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = if i + 1 == chunks.len() { " LAST" } else { "" };
        c.send(&format!("BDAT {}{last}\r\n", chunk.len())).await?;
        c.send_bytes(chunk).await?;
        reply = c.smtp_reply().await?;
    }
    Ok(reply)
}

#[tokio::test]
async fn bdat_refuses_bare_cr_bare_lf_and_nul_like_data() -> TestResult {
    let instance = Instance::quickstart().await?;
    let mut c = mx(&instance).await?;
    // Each of these would reach the next hop as a line end (or an end of data) that we did
    // not see: smuggling through BDAT, which is not dot-stuffed.
    let cases: [(&[&[u8]], &str); 5] = [
        (
            &[b"Subject: a\r\n\r\nhi\r.\rMAIL FROM:<ceo@example.test>\r\n"],
            "550 5.5.2",
        ),
        (&[b"Subject: b\r\n\r\nhi\n.\nRCPT TO:<x@y.test>\r\n"], "550 5.5.2"),
        // A CR at the end of one chunk and no LF at the start of the next.
        (&[b"Subject: c\r\n\r\nhi\r", b"X\r\n"], "550 5.5.2"),
        (&[b"Subject: d\r\n\r\nhi\r\n\0.\r\n"], "550 5.6.0"),
        (&[b"Subject: e\r\n\r\nhi\r\n", b".\0\r\nforged\r\n"], "550 5.6.0"),
    ];
    for (chunks, expected) in cases {
        let reply = bdat_exchange(&mut c, chunks).await?;
        assert!(reply.starts_with(expected), "{chunks:?}: {reply}");
        c.command("NOOP", "250").await?;
    }
    // DATA refuses NUL bytes the same way.
    c.command("MAIL FROM:<a@remote.test>", "250").await?;
    c.command("RCPT TO:<bob@example.test>", "250").await?;
    c.command("DATA", "354").await?;
    c.send_bytes(b"Subject: f\r\n\r\nhi\r\n.\0\r\nforged\r\n.\r\n")
        .await?;
    let reply = c.smtp_reply().await?;
    assert!(reply.starts_with("550 5.6.0"), "{reply}");
    let stored = mailbox_contents(&instance.data_dir(), "bob@example.test", "INBOX").await?;
    assert!(stored.is_empty(), "{} message(s) stored", stored.len());
    // A CR LF split over two chunks is fine.
    let reply = bdat_exchange(&mut c, &[b"Subject: g\r\n\r\nhi\r", b"\nbye\r\n"]).await?;
    assert!(reply.starts_with("250"), "{reply}");
    Ok(())
}

#[tokio::test]
async fn a_stalled_bdat_transaction_gives_its_memory_back() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let mx_addr = common::free_addr()?;
    let extra = "[smtp]\nmax_message_size = 65536\nmax_buffered_bytes = 65536\ndata_timeout_secs = 2\n";
    let listeners = [("mx", mx_addr, "starttls")];
    let config = common::config_with_users(dir.path(), "example.test", &["bob"], &listeners, extra)?;
    let _server = common::serve(dir.path(), &config).await?;
    let open = || async {
        let mut c = LineClient::new(ctx(TcpStream::connect(mx_addr).await, "connect")?);
        c.smtp_reply().await?;
        c.dialog(&[
            ("EHLO s.test", "250"),
            ("MAIL FROM:<x@s.test>", "250"),
            ("RCPT TO:<bob@example.test>", "250"),
        ])
        .await?;
        Ok::<_, String>(c)
    };
    let line = format!("{}\r\n", "x".repeat(78));
    let chunk = format!("Subject: big\r\n\r\n{}", line.repeat(500));
    assert!(chunk.len() > 40_000);
    // A sends a non-final chunk of ~40 KiB and then nothing more: past the transaction's
    // deadline (2 s here, shorter than the command timeout) it is closed.
    let mut a = open().await?;
    a.send(&format!("BDAT {}\r\n", chunk.len())).await?;
    a.send(&chunk).await?;
    assert!(a.smtp_reply().await?.starts_with("250"));
    let bye = tokio::time::timeout(Duration::from_secs(10), a.line())
        .await
        .map_err(|_| "A was not closed at its deadline")??;
    assert!(
        bye.starts_with("421 4.4.2") && bye.contains("took too long"),
        "{bye}"
    );
    assert!(a.closed().await);
    // Its chunk no longer holds the budget: B's 40 KiB fit.
    let mut b = open().await?;
    b.send(&format!("BDAT {} LAST\r\n", chunk.len())).await?;
    b.send(&chunk).await?;
    let reply = b.smtp_reply().await?;
    assert!(reply.starts_with("250"), "B was refused: {reply}");
    Ok(())
}

#[tokio::test]
async fn limits_on_size_lines_recipients_and_errors() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let mx_addr = common::free_addr()?;
    let extra = "[smtp]\nmax_message_size = 2048\nmax_recipients = 2\nmax_errors = 4\n";
    let listeners = [("mx", mx_addr, "starttls")];
    let config = common::config_with_users(
        dir.path(),
        "example.test",
        &["alice", "bob", "carol"],
        &listeners,
        extra,
    )?;
    let _server = common::serve(dir.path(), &config).await?;
    let client = sealmail_testkit::client_config(&[&dir.path().join("tls/0.pem")], &[&TLS13], &[])?;
    let connect = || async {
        let mut c = LineClient::new(ctx(TcpStream::connect(mx_addr).await, "connect")?);
        c.smtp_reply().await?;
        c.send("STARTTLS\r\n").await?;
        c.smtp_reply().await?;
        let mut c = LineClient::new(tls_upgrade(c.into_inner(), client.clone(), NAME).await?);
        c.command("EHLO s.test", "250-mail.example.test").await?;
        Ok::<Client, String>(c)
    };

    let mut c = connect().await?;
    let ehlo = c.command("EHLO s.test", "250").await?;
    assert!(ehlo.contains("SIZE 2048"), "{ehlo}");
    c.command("MAIL FROM:<a@remote.test> SIZE=4096", "552 5.3.4")
        .await?;
    c.command("MAIL FROM:<a@remote.test>", "250").await?;
    c.command("RCPT TO:<alice@example.test>", "250").await?;
    c.command("RCPT TO:<bob@example.test>", "250").await?;
    c.command("RCPT TO:<carol@example.test>", "452 4.5.3").await?;
    c.command("DATA", "354").await?;
    c.send(&format!("Subject: big\r\n\r\n{}\r\n.\r\n", "x".repeat(3000)))
        .await?;
    assert!(c.smtp_reply().await?.starts_with("552 5.3.4"));
    c.command(&format!("NOOP {}", "y".repeat(600)), "500 5.5.2")
        .await?;
    c.command("NOOP", "250").await?;
    // Errors add up to a 421 and a closed connection.
    c.command("BOGUS", "500").await?;
    c.send("BOGUS\r\n").await?;
    let last = c.smtp_reply().await?;
    assert!(last.contains("421 4.7.0"), "{last}");
    assert!(c.closed().await);
    assert!(
        mailbox_contents(&dir.path().join("data"), "alice@example.test", "INBOX")
            .await?
            .is_empty()
    );
    Ok(())
}

#[tokio::test]
async fn smtputf8_addresses_are_accepted_only_with_smtputf8() -> TestResult {
    let instance = Instance::quickstart().await?;
    let config = instance
        .data_dir()
        .join("sealmail.toml")
        .to_string_lossy()
        .into_owned();
    let (code, _, err) = common::run(
        instance.root.path(),
        &[
            "--config",
            &config,
            "user",
            "add",
            "jörg@example.test",
            "--password-stdin",
        ],
        Some("a long enough password\n"),
    )?;
    assert_eq!(code, 0, "{err}");
    let mut c = mx(&instance).await?;
    let ehlo = c.command("EHLO s.test", "250").await?;
    assert!(ehlo.contains("SMTPUTF8"));
    c.command("MAIL FROM:<sender@remote.test>", "250").await?;
    c.command("RCPT TO:<jörg@example.test>", "553 5.6.7").await?;
    c.command("RSET", "250").await?;
    c.command("MAIL FROM:<sénder@remote.test> SMTPUTF8", "250")
        .await?;
    c.command("RCPT TO:<jörg@example.test>", "250").await?;
    c.command("DATA", "354").await?;
    c.send("Subject: Grüße\r\n\r\nhallo\r\n.\r\n").await?;
    assert!(c.smtp_reply().await?.starts_with("250"));
    let stored = mailbox_contents(&instance.data_dir(), "jörg@example.test", "INBOX").await?;
    assert_eq!(stored.len(), 1);
    assert!(String::from_utf8_lossy(&stored[0]).contains("with UTF8SMTPS"));
    Ok(())
}

/// Submits messages as fast as possible on several sessions; returns every Subject that got 250.
async fn burst(
    instance: &Instance,
    sessions: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<String> {
    let mut tasks = Vec::new();
    for s in 0..sessions {
        let addr: SocketAddr = instance.addr(SUBMISSION_TLS);
        let client = instance.client(&[&TLS13]);
        let password = credentials(instance)
            .ok()
            .and_then(|c| c.get("alice@example.test").cloned());
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let (Ok(client), Some(password)) = (client, password) else {
                return acked;
            };
            let Ok(tls) = tls_connect(addr, client, NAME).await else {
                return acked;
            };
            let mut c = LineClient::new(tls);
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("\0alice@example.test\0{password}"));
            if c.smtp_reply().await.is_err()
                || c.command("EHLO b.test", "250").await.is_err()
                || c.command(&format!("AUTH PLAIN {token}"), "235").await.is_err()
            {
                return acked;
            }
            for n in 0.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let subject = format!("burst-{s}-{n}");
                let body = format!("From: alice@example.test\r\nSubject: {subject}\r\n\r\nx\r\n");
                match send_message(&mut c, "alice@example.test", "bob@example.test", body.as_bytes()).await {
                    Ok(reply) if reply.starts_with("250") => acked.push(subject),
                    _ => break,
                }
            }
            acked
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        if let Ok(acked) = t.await {
            all.extend(acked);
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_loses_no_acknowledged_message() -> TestResult {
    let mut instance = Instance::quickstart().await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let senders = {
        let burst = burst(&instance, 8, stop.clone());
        let killer = async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let killed = instance.process.signal(nix::sys::signal::Signal::SIGKILL);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            killed
        };
        let (acked, killed) = tokio::join!(burst, killer);
        killed?;
        acked
    };
    instance.process.wait_exit(Duration::from_secs(10)).await?;
    assert!(
        senders.len() > 20,
        "only {} messages acknowledged before the kill",
        senders.len()
    );

    let stored = mailbox_contents(&instance.data_dir(), "bob@example.test", "INBOX").await?;
    let subjects: Vec<String> = stored
        .iter()
        .filter_map(|m| {
            let text = String::from_utf8_lossy(m);
            text.lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
        })
        .collect();
    for subject in &senders {
        assert!(
            subjects.contains(subject),
            "{subject} got 250 but is not in the store"
        );
    }
    let unique: std::collections::HashSet<&String> = subjects.iter().collect();
    assert_eq!(unique.len(), subjects.len(), "a message was stored twice");
    Ok(())
}

/// Decodes the body of a Go string literal as Go's fuzz corpus writes it ([]byte("...")).
fn go_string(literal: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut chars = literal.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let escape = chars.next().ok_or("dangling backslash")?;
        let mut hex = |n: usize| -> Result<u32, String> {
            let digits: String = (0..n).filter_map(|_| chars.next()).collect();
            u32::from_str_radix(&digits, 16).map_err(|e| format!("bad escape {digits:?}: {e}"))
        };
        match escape {
            'n' => out.push(b'\n'),
            'r' => out.push(b'\r'),
            't' => out.push(b'\t'),
            'a' => out.push(7),
            'b' => out.push(8),
            'f' => out.push(12),
            'v' => out.push(11),
            '\\' => out.push(b'\\'),
            '"' => out.push(b'"'),
            '\'' => out.push(b'\''),
            'x' => out.push(hex(2)? as u8),
            'u' | 'U' => {
                let code = hex(if escape == 'u' { 4 } else { 8 })?;
                let c = char::from_u32(code).ok_or("bad code point")?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            other => return Err(format!("unknown escape \\{other}")),
        }
    }
    Ok(out)
}

#[tokio::test]
async fn chasquid_fuzz_seeds_get_protocol_replies_and_leave_the_server_healthy() -> TestResult {
    let instance = Instance::quickstart().await?;
    let seeds = std::path::Path::new(&sealmail_testkit::testdata())
        .join("chasquid/internal/smtpsrv/testdata/fuzz/FuzzConnection");
    let entries = std::fs::read_dir(&seeds).map_err(|e| {
        format!(
            "chasquid's SMTP fuzz seeds are missing at {} (set SEALMAIL_TESTDATA to the shared testdata): {e}",
            seeds.display()
        )
    })?;
    let mut replayed = 0;
    for entry in entries {
        let path = ctx(entry, "dir entry")?.path();
        let text = ctx(std::fs::read_to_string(&path), "seed")?;
        let Some(literal) = text
            .lines()
            .find_map(|l| l.strip_prefix("[]byte(\"").and_then(|l| l.strip_suffix("\")")))
        else {
            continue;
        };
        let input = go_string(literal)?;
        let mut c = LineClient::new(ctx(TcpStream::connect(instance.addr(MX)).await, "connect")?);
        c.smtp_reply().await?;
        c.send_bytes(&input).await?;
        // Every line the server sends back is a well-formed reply, until it goes quiet or closes.
        while let Ok(Ok(line)) = tokio::time::timeout(Duration::from_millis(500), c.line()).await {
            let well_formed = line.len() >= 4
                && line.as_bytes()[..3].iter().all(u8::is_ascii_digit)
                && matches!(line.as_bytes()[3], b' ' | b'-');
            assert!(well_formed, "{}: malformed reply {line:?}", path.display());
        }
        replayed += 1;
    }
    assert!(replayed >= 10, "only {replayed} seeds replayed");
    // The server is still healthy.
    let mut c = mx(&instance).await?;
    c.command("NOOP", "250").await?;
    Ok(())
}

#[tokio::test]
async fn bodies_in_flight_share_a_memory_budget_and_the_excess_gets_452() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let mx_addr = common::free_addr()?;
    let extra = "[smtp]\nmax_message_size = 65536\nmax_buffered_bytes = 65536\n";
    let listeners = [("mx", mx_addr, "starttls")];
    let config = common::config_with_users(dir.path(), "example.test", &["alice"], &listeners, extra)?;
    let _server = common::serve(dir.path(), &config).await?;
    let open = || async {
        let mut c = LineClient::new(ctx(TcpStream::connect(mx_addr).await, "connect")?);
        c.smtp_reply().await?;
        c.dialog(&[
            ("EHLO s.test", "250"),
            ("MAIL FROM:<x@s.test>", "250"),
            ("RCPT TO:<alice@example.test>", "250"),
            ("DATA", "354"),
        ])
        .await?;
        Ok::<_, String>(c)
    };
    let line = format!("{}\r\n", "x".repeat(78));
    let body = format!("Subject: big\r\n\r\n{}", line.repeat(500));
    assert!(body.len() > 40_000);

    // A holds ~40 KiB while B sends another 40 KiB: B's would exceed the 64 KiB budget.
    let mut a = open().await?;
    a.send(&body).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut b = open().await?;
    b.send(&format!("{body}.\r\n")).await?;
    let refused = b.smtp_reply().await?;
    assert!(refused.starts_with("452 4.3.1"), "{refused}");
    a.send(".\r\n").await?;
    assert!(
        a.smtp_reply().await?.starts_with("250"),
        "the first message was lost"
    );
    // With A's memory given back, B's retry goes through.
    b.dialog(&[
        ("MAIL FROM:<x@s.test>", "250"),
        ("RCPT TO:<alice@example.test>", "250"),
        ("DATA", "354"),
    ])
    .await?;
    b.send(&format!("{body}.\r\n")).await?;
    assert!(b.smtp_reply().await?.starts_with("250"));
    assert_eq!(
        mailbox_contents(&dir.path().join("data"), "alice@example.test", "INBOX")
            .await?
            .len(),
        2
    );
    Ok(())
}

/// One client (here one loopback address) holds at most its share of the body budget (an
/// eighth, but at least one largest message): its second body in flight gets 452 while
/// another address still gets its message through.
#[tokio::test]
async fn one_client_cannot_hold_more_than_its_share_of_the_body_budget() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let mx_addr = common::free_addr()?;
    let extra = "[smtp]\nmax_message_size = 204800\nmax_buffered_bytes = 2097152\n";
    let listeners = [("mx", mx_addr, "starttls")];
    let config = common::config_with_users(dir.path(), "example.test", &["bob"], &listeners, extra)?;
    let _server = common::serve(dir.path(), &config).await?;
    let open = |source: [u8; 4]| async move {
        let mut c = LineClient::new(sealmail_testkit::tcp_from(source, mx_addr).await?);
        c.smtp_reply().await?;
        c.dialog(&[
            ("EHLO s.test", "250"),
            ("MAIL FROM:<x@s.test>", "250"),
            ("RCPT TO:<bob@example.test>", "250"),
            ("DATA", "354"),
        ])
        .await?;
        Ok::<_, String>(c)
    };
    let line = format!("{}\r\n", "x".repeat(78));
    let body = format!("Subject: big\r\n\r\n{}", line.repeat(2300));
    assert!(body.len() > 170_000 && body.len() < 204_800);

    // 127.0.0.1 holds ~180 KiB in one session; its second session's 180 KiB would pass its
    // share (one largest message and its command: 328 KiB), though the budget (2 MiB) has room.
    let mut first = open([127, 0, 0, 1]).await?;
    first.send(&body).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut second = open([127, 0, 0, 1]).await?;
    second.send(&format!("{body}.\r\n")).await?;
    let refused = second.smtp_reply().await?;
    assert!(refused.starts_with("452 4.3.1"), "{refused}");
    // Another client is not affected.
    let mut other = open([127, 0, 0, 2]).await?;
    other.send(&format!("{body}.\r\n")).await?;
    let accepted = other.smtp_reply().await?;
    assert!(accepted.starts_with("250"), "{accepted}");
    first.send(".\r\n").await?;
    assert!(first.smtp_reply().await?.starts_with("250"));
    Ok(())
}

#[tokio::test]
async fn a_password_change_by_the_cli_closes_the_accounts_submission_sessions_with_421() -> TestResult {
    let instance = Instance::quickstart().await?;
    let mut alice = submission(&instance, "alice@example.test").await?;
    let mut bob = submission(&instance, "bob@example.test").await?;

    let config = instance
        .data_dir()
        .join("sealmail.toml")
        .to_string_lossy()
        .into_owned();
    let (code, _, err) = common::run(
        instance.root.path(),
        &["--config", &config, "user", "passwd", "alice@example.test"],
        None,
    )?;
    assert_eq!(code, 0, "{err}");

    // Unprompted, within the bounded wait of `smtp_reply` (10 s): alice sends nothing.
    let reply = alice.smtp_reply().await?;
    assert!(
        reply.starts_with("421 4.7.0 ") && reply.contains("no longer valid"),
        "{reply}"
    );
    assert!(alice.closed().await, "still open after 421");
    bob.command("NOOP", "250").await?;
    Ok(())
}

/// A BDAT chunk reserves memory as its bytes arrive: announcing a large chunk and sending
/// nothing holds nothing, so others' mail still fits in the budget.
#[tokio::test]
async fn an_announced_chunk_holds_no_memory_before_its_bytes_arrive() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let mx_addr = common::free_addr()?;
    let extra = "[smtp]\nmax_message_size = 65536\nmax_buffered_bytes = 65536\n";
    let listeners = [("mx", mx_addr, "starttls")];
    let config = common::config_with_users(dir.path(), "example.test", &["bob"], &listeners, extra)?;
    let _server = common::serve(dir.path(), &config).await?;
    let open = |source: [u8; 4]| async move {
        let mut c = LineClient::new(sealmail_testkit::tcp_from(source, mx_addr).await?);
        c.smtp_reply().await?;
        c.dialog(&[
            ("EHLO s.test", "250"),
            ("MAIL FROM:<x@s.test>", "250"),
            ("RCPT TO:<bob@example.test>", "250"),
        ])
        .await?;
        Ok::<_, String>(c)
    };
    let mut idle = open([127, 0, 0, 3]).await?;
    idle.send("BDAT 60000 LAST\r\n").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let line = format!("{}\r\n", "x".repeat(78));
    let body = format!("Subject: big\r\n\r\n{}", line.repeat(500));
    let mut sender = open([127, 0, 0, 4]).await?;
    sender.command("DATA", "354").await?;
    sender.send(&format!("{body}.\r\n")).await?;
    let reply = sender.smtp_reply().await?;
    assert!(
        reply.starts_with("250"),
        "the announced chunk held the budget: {reply}"
    );
    drop(idle);
    Ok(())
}
