//! The server on a PostgreSQL store: configured by `[store] url`, administered and served as on
//! SQLite. Needs a PostgreSQL server (`SEALMAIL_TEST_POSTGRES`; scripts/test.sh makes sure one
//! answers); each run works in a schema of its own, dropped at the end.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use sealmail_store::{AccountStore, MailStore, PgOptions, PgStore, PgTls};
use sealmail_testkit::{TestResult, ctx};

/// One plain SMTP transaction; every reply must be positive.
fn send_over_smtp(address: std::net::SocketAddr, from: &str, to: &str, body: &str) -> TestResult {
    let stream = ctx(TcpStream::connect(address), "connect")?;
    let mut reader = BufReader::new(ctx(stream.try_clone(), "clone")?);
    let mut writer = stream;
    let mut reply = || -> TestResult<String> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            ctx(reader.read_line(&mut line), "read")?;
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return Ok(all);
            }
        }
    };
    let greeting = reply()?;
    assert!(greeting.starts_with("220"), "{greeting}");
    for (command, expected) in [
        ("EHLO client.test\r\n".to_string(), "250"),
        (format!("MAIL FROM:<{from}>\r\n"), "250"),
        (format!("RCPT TO:<{to}>\r\n"), "250"),
        ("DATA\r\n".to_string(), "354"),
        (
            format!("From: <{from}>\r\nTo: <{to}>\r\nSubject: pg\r\n\r\n{body}\r\n.\r\n"),
            "250",
        ),
        ("QUIT\r\n".to_string(), "221"),
    ] {
        ctx(writer.write_all(command.as_bytes()), "write")?;
        let answer = reply()?;
        assert!(answer.starts_with(expected), "{command:?}: {answer}");
    }
    Ok(())
}

#[tokio::test]
async fn a_message_received_over_smtp_lands_in_the_postgres_store() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let fixture = sealmail_testkit::postgres::TestSchema::new().await?;
    let schema = fixture.name.clone();
    let mx = common::free_addr()?;
    let store_section = format!(
        "\n[store]\nurl = {:?}\nschema = {schema:?}\ntls = \"disable\"\n",
        fixture.url
    );
    let config = common::config_with_users(
        dir.path(),
        "example.test",
        &["alice"],
        &[("mx", mx, "starttls")],
        &store_section,
    )?;
    // Everything lives in PostgreSQL: no SQLite file appears in the data folder.
    assert!(!dir.path().join("data").join(sealmail_store::DB_FILE).exists());

    let (code, out, err) = common::admin(dir.path(), &config, &["migrate", "--dry-run"])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("up to date"), "{out}");
    let (code, _, err) = common::admin(
        dir.path(),
        &config,
        &["backup", &dir.path().join("b").display().to_string()],
    )?;
    assert_ne!(code, 0);
    assert!(err.contains("pg_dump"), "{err}");

    let server = common::serve(dir.path(), &config).await?;
    let body = format!("hello from {schema}");
    let sent = {
        let body = body.clone();
        tokio::task::spawn_blocking(move || {
            send_over_smtp(mx, "bob@sender.test", "alice@example.test", &body)
        })
        .await
        .map_err(|e| e.to_string())?
    };
    sent?;
    drop(server);

    let mut options = PgOptions::new(&fixture.url);
    options.schema = Some(schema.clone());
    options.tls = PgTls::Disable;
    let store = ctx(PgStore::open(&options).await, "open the PostgreSQL store")?;
    let alice = ctx(
        sealmail_types::EmailAddress::parse("alice@example.test"),
        "address",
    )?;
    let account = ctx(store.account(&alice).await, "account")?.ok_or("alice is not in the store")?;
    let inbox = ctx(store.mailbox(account.id, "INBOX").await, "mailbox")?.ok_or("no INBOX")?;
    let messages = ctx(store.messages(inbox.id).await, "messages")?;
    assert_eq!(messages.len(), 1);
    let content = ctx(store.read_message(messages[0].id).await, "read")?;
    let text = String::from_utf8_lossy(&content);
    assert!(text.contains(&body), "{text}");
    store.close().await;
    Ok(())
}
