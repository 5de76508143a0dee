//! `sealmail migrate-store`'s engine: a populated SQLite installation copied into a fresh
//! PostgreSQL schema reads back the same through the `Store` trait (accounts, mailboxes, UIDs,
//! flags, mod-sequences, bytes, the queue, bans, events, admins, web sessions, security keys), new rows
//! continue after the copied ids and UIDs, a schema with rows is refused, and a blob corrupt in
//! SQLite stops the copy.

use std::path::Path;

use sealmail_store::{
    AcceptedMessage, AccountStore, CopyMessages, FlagChange, MailStore, NewMessage, OutboundCopy, PgOptions,
    PgStore, QueueRecipient, ReportStore, SecurityEvent, SecurityKey, SecurityStore, SetFlags, SqliteStore,
    Store, StoreError, StoredStsPolicy, TlsResult, WebSession, WebStore, copy_sqlite_to_postgres,
};
use sealmail_testkit::postgres::TestSchema;
use sealmail_types::{Domain, EmailAddress, MailboxId};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn address(s: &str) -> TestResult<EmailAddress> {
    Ok(EmailAddress::parse(s)?)
}

fn message(n: usize) -> Vec<u8> {
    format!("From: a@b.test\r\nSubject: {n}\r\n\r\nbody {n} with 8-bit \u{e9}\r\n").into_bytes()
}

/// An installation with two users, mail in several mailboxes (flags, an expunge, a move), a
/// queued message, a ban, an event, a TLS result and an MTA-STS policy.
async fn populate(dir: &Path) -> TestResult<()> {
    let store = SqliteStore::open(dir, 16).await?;
    store.add_domain(&Domain::parse("example.test")?).await?;
    let alice = store
        .add_account(&address("alice@example.test")?, "$argon2id$a")
        .await?;
    let bob = store
        .add_account(&address("bob@example.test")?, "$argon2id$b")
        .await?;
    store
        .set_password_hash(&address("bob@example.test")?, "$argon2id$b2")
        .await?;
    let inbox = store.mailbox(alice, "INBOX").await?.ok_or("no INBOX")?.id;
    let archive = store.create_mailbox(alice, "Archive/2026").await?.id;
    for n in 0..12 {
        store
            .store_message(NewMessage {
                content: message(n),
                mailboxes: vec![inbox],
                internal_date: 1_700_000_000 + n as i64,
                flags: if n % 3 == 0 { vec!["\\Seen".into()] } else { vec![] },
            })
            .await?;
    }
    store
        .update_flags(SetFlags {
            mailbox: inbox,
            uids: vec![2, 3],
            change: FlagChange::Add,
            flags: vec!["\\Deleted".into(), "$Work".into()],
            unchanged_since: None,
        })
        .await?;
    store.expunge(inbox, None).await?;
    store
        .copy_messages(CopyMessages {
            from: inbox,
            uids: vec![4, 5],
            to: archive,
            remove_source: true,
        })
        .await?;
    let bob_inbox = store.mailbox(bob, "INBOX").await?.ok_or("no INBOX")?.id;
    store
        .accept_message(AcceptedMessage {
            local: None,
            outbound: Some(OutboundCopy {
                content: message(99),
                sender: "alice@example.test".into(),
                recipients: vec![QueueRecipient {
                    address: address("carol@remote.test")?,
                    dsn_notify: Some("FAILURE".into()),
                    dsn_orcpt: None,
                }],
                dsn_envid: Some("env".into()),
                dsn_ret: None,
                require_tls: true,
            }),
        })
        .await?;
    store
        .store_message(NewMessage {
            content: message(50),
            mailboxes: vec![bob_inbox],
            internal_date: 1_700_000_500,
            flags: vec![],
        })
        .await?;
    store.add_ban("192.0.2.7", i64::MAX / 2, 1, "guessing").await?;
    store
        .record_event(SecurityEvent {
            at: 1_700_000_000,
            kind: "auth_failure".into(),
            address: Some("192.0.2.7".into()),
            node: Some("mail1".into()),
            ..SecurityEvent::default()
        })
        .await?;
    store
        .record_tls_result(TlsResult {
            policy_domain: "remote.test".into(),
            policy_type: "sts".into(),
            mx_host: "mx.remote.test".into(),
            result_type: "success".into(),
            detail: String::new(),
        })
        .await?;
    store
        .save_mta_sts_policy(StoredStsPolicy {
            domain: "remote.test".into(),
            policy_id: "1".into(),
            body: "version: STSv1\r\nmode: enforce\r\n".into(),
            expires_at: i64::MAX / 2,
        })
        .await?;
    // Bob is an admin signed in to the web pages.
    store.set_admin(&address("bob@example.test")?, true).await?;
    store
        .add_web_session(WebSession {
            id_hash: sealmail_store::sha256_hex(b"cookie"),
            account: bob,
            credential: "password+totp".into(),
            client_address: "192.0.2.9".into(),
            user_agent: "Test/1.0".into(),
            created_at: 1_700_000_000,
            last_seen_at: 1_700_000_100,
            expires_at: i64::MAX / 2,
        })
        .await?;
    // Alice has two security keys, one used (its counter must come along), one not.
    store
        .add_security_key(SecurityKey {
            id: 0,
            account: alice,
            credential_id: vec![1; 64],
            public_key: vec![0x30, 0x59, 1],
            name: "desk key".into(),
            sign_count: 0,
            created_at: 1_700_000_000,
            last_used_at: None,
        })
        .await?
        .ok_or("key refused")?;
    store
        .add_security_key(SecurityKey {
            id: 0,
            account: alice,
            credential_id: vec![2; 16],
            public_key: vec![0x30, 0x59, 2],
            name: "phone passkey".into(),
            sign_count: 0,
            created_at: 1_700_000_001,
            last_used_at: None,
        })
        .await?
        .ok_or("key refused")?;
    if !store
        .security_key_used(alice, &[1; 64], 41, 1_700_000_200)
        .await?
    {
        return Err("the key's use was not taken".into());
    }
    store.close().await;
    Ok(())
}

/// Everything the trait shows of an installation, for comparing two.
async fn contents(store: &dyn Store) -> TestResult<Vec<String>> {
    let mut out = Vec::new();
    for account in store.list_accounts().await? {
        out.push(format!("{:?}", account));
        out.push(format!("usage {}", store.account_usage(account.id).await?));
        for mailbox in store.mailboxes(account.id).await? {
            out.push(format!(
                "{mailbox:?} {:?}",
                store.mailbox_status(mailbox.id).await?
            ));
            for message in store.messages(mailbox.id).await? {
                let bytes = store.read_message(message.id).await?;
                out.push(format!("{message:?} {}", String::from_utf8_lossy(&bytes)));
            }
        }
        out.push(format!("{:?}", store.subscriptions(account.id).await?));
        out.push(format!("admin {}", store.is_admin(account.id).await?));
        out.push(format!("{:?}", store.web_sessions(account.id, 0).await?));
        out.push(format!("{:?}", store.security_keys(account.id).await?));
    }
    out.push(format!("{:?}", store.queue().await?));
    for entry in store.queue().await? {
        out.push(format!("{:?}", store.queued_content(entry.id).await?));
    }
    out.push(format!("{:?}", store.active_bans(0).await?));
    out.push(format!("{:?}", store.events(0, None).await?));
    out.push(format!("{:?}", store.tls_results().await?));
    out.push(format!("{:?}", store.mta_sts_policy("remote.test").await?));
    out.push(format!("generation {}", store.credentials_generation().await?));
    out.push(format!("admins {:?}", store.admins().await?));
    Ok(out)
}

fn options(schema: &TestSchema) -> PgOptions {
    let mut options = PgOptions::new(&schema.url);
    options.schema = Some(schema.name.clone());
    options
}

#[tokio::test]
async fn a_copied_installation_reads_back_the_same_and_goes_on() -> TestResult {
    let dir = tempfile::tempdir()?;
    populate(dir.path()).await?;
    let schema = TestSchema::new().await?;
    let mut seen = Vec::new();
    let report = copy_sqlite_to_postgres(dir.path(), &options(&schema), &mut |p| {
        seen.push((p.table.to_string(), p.done, p.total))
    })
    .await?;
    assert!(report.blobs_verified >= 12, "{report:?}");
    assert!(seen.contains(&("messages".to_string(), 11, 11)), "{seen:?}");

    let sqlite = SqliteStore::open(dir.path(), 16).await?;
    let postgres = PgStore::open(&options(&schema)).await?;
    let before = contents(&sqlite).await?;
    assert_eq!(contents(&postgres).await?, before);
    assert_eq!(postgres.admins().await?, vec![address("bob@example.test")?]);
    let session = postgres
        .web_session(&sealmail_store::sha256_hex(b"cookie"), 1_700_000_000)
        .await?
        .ok_or("the web session was not copied")?;
    assert_eq!(session.last_seen_at, 1_700_000_100);

    // New rows continue after the copied ones: the next UID, a fresh account id.
    let alice = postgres
        .account(&address("alice@example.test")?)
        .await?
        .ok_or("no alice")?;
    let inbox: MailboxId = postgres.mailbox(alice.id, "INBOX").await?.ok_or("no INBOX")?.id;
    let uid_next = postgres.mailbox_status(inbox).await?.uid_next;
    let stored = postgres
        .store_message(NewMessage {
            content: message(100),
            mailboxes: vec![inbox],
            internal_date: 1_700_001_000,
            flags: vec![],
        })
        .await?;
    assert_eq!(stored[0].uid, uid_next);
    let carol = postgres
        .add_account(&address("carol@example.test")?, "$argon2id$c")
        .await?;
    let highest = sqlite
        .list_accounts()
        .await?
        .iter()
        .map(|a| a.id.0)
        .max()
        .unwrap_or(0);
    assert!(carol.0 > highest, "{carol:?} reuses a copied id");

    // The copied keys are alice's, with their counters: a replayed use is still refused, and a
    // new key continues after the copied ids.
    let keys = postgres.security_keys(alice.id).await?;
    assert_eq!(keys.len(), 2);
    assert_eq!(
        (keys[0].sign_count, keys[0].last_used_at),
        (41, Some(1_700_000_200))
    );
    assert!(
        !postgres
            .security_key_used(alice.id, &[1; 64], 41, 1_700_001_000)
            .await?
    );
    assert!(
        postgres
            .security_key_used(alice.id, &[1; 64], 42, 1_700_001_000)
            .await?
    );
    let highest_key = keys.iter().map(|k| k.id).max().unwrap_or(0);
    let new_key = postgres
        .add_security_key(SecurityKey {
            id: 0,
            account: carol,
            credential_id: vec![3; 16],
            public_key: vec![0x30],
            name: "new".into(),
            sign_count: 0,
            created_at: 1_700_001_000,
            last_used_at: None,
        })
        .await?
        .ok_or("key refused")?;
    assert!(new_key > highest_key, "{new_key} reuses a copied key id");

    // A second copy into the same schema is refused, and changes nothing.
    let again = copy_sqlite_to_postgres(dir.path(), &options(&schema), &mut |_| {}).await;
    assert!(
        matches!(&again, Err(StoreError::NotAllowed(why)) if why.contains("not empty")),
        "{again:?}"
    );
    assert_eq!(postgres.list_accounts().await?.len(), 3);
    Ok(())
}

#[tokio::test]
async fn a_blob_corrupt_in_sqlite_stops_the_copy() -> TestResult {
    let dir = tempfile::tempdir()?;
    populate(dir.path()).await?;
    // One byte of one message, as a failing disk would flip it.
    let path = dir.path().join(sealmail_store::DB_FILE);
    let mut bytes = std::fs::read(&path)?;
    let needle = b"body 7 with";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .ok_or("message not found in the file")?;
    bytes[at] ^= 0x01;
    std::fs::write(&path, bytes)?;

    let schema = TestSchema::new().await?;
    let copied = copy_sqlite_to_postgres(dir.path(), &options(&schema), &mut |_| {}).await;
    assert!(
        matches!(&copied, Err(StoreError::NotAllowed(why)) if why.contains("corrupt")),
        "{copied:?}"
    );
    // Nothing was left behind: the schema is still empty.
    let postgres = PgStore::open(&options(&schema)).await?;
    assert!(postgres.list_accounts().await?.is_empty());
    Ok(())
}
