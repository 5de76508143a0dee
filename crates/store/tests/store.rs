//! The store test suite. The conformance tests (what the `Store` trait promises) are written
//! once against `&dyn Store` and run on both backends: SQLite in a temporary directory and
//! PostgreSQL in a fresh schema of its own, dropped after the test. The rest is SQLite's own:
//! integrity of a file corrupted on disk, group commit, migrations from an empty store and
//! from a store made by schema version 1, snapshots under write load, and durability of
//! acknowledged writes across SIGKILL. PostgreSQL's own: integrity of a blob changed behind the
//! store's back, UIDs under concurrent writers on one and on two nodes, and LISTEN/NOTIFY.
//!
//! The PostgreSQL tests connect to `SEALMAIL_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/test`) and fail, never skip, when it is not reachable.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sealmail_store::{
    AccountStore, CopyMessages, DB_FILE, FlagChange, MailStore, NewMessage, PgOptions, PgStore, QueueLease,
    QueueStore, SetFlags, SqliteStore, Store, StoreError, StoredMessage, StoredStsPolicy,
};
use sealmail_types::{Domain, EmailAddress, MailboxId};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn domain(s: &str) -> TestResult<Domain> {
    Ok(Domain::parse(s)?)
}

fn address(s: &str) -> TestResult<EmailAddress> {
    Ok(EmailAddress::parse(s)?)
}

/// The backend a conformance test runs on.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// Where the PostgreSQL tests connect.
fn postgres_url() -> String {
    std::env::var("SEALMAIL_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A schema name no other test (or earlier run) uses: `t_` and 16 hex digits.
fn fresh_schema_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = format!(
        "{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    format!("t_{}", &sealmail_store::sha256_hex(seed.as_bytes())[..16])
}

/// A PostgreSQL schema that exists for one test: dropped with everything in it when the guard
/// goes, also when the test failed or panicked. Drop cannot await, and the test's runtime may
/// be unwinding, so the drop runs on a thread of its own with its own runtime.
struct SchemaGuard {
    url: String,
    schema: String,
}

impl SchemaGuard {
    fn options(&self, max_connections: u32) -> PgOptions {
        let mut options = PgOptions::new(&self.url);
        options.schema = Some(self.schema.clone());
        options.max_connections = max_connections;
        options
    }
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let url = self.url.clone();
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema);
        let dropped = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&url)
                    .await
                    .map_err(|e| e.to_string())?;
                // A connection of the dropped store may still end a transaction; wait for
                // it a while rather than forever.
                sqlx::query("SET lock_timeout = '20s'")
                    .execute(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop test schema {}: {e}", self.schema),
            Err(_) => eprintln!("dropping test schema {} panicked", self.schema),
        }
    }
}

/// What a conformance test needs beyond the store itself: how to reopen it and how to count
/// rows behind its back. Fields drop in order: the store before its directory or schema.
struct TestStore {
    store: Arc<dyn Store>,
    place: Place,
}

enum Place {
    Sqlite(tempfile::TempDir),
    Postgres(SchemaGuard),
}

/// Opens a PostgreSQL store, failing with a message that says what to do when the server
/// is not there.
async fn open_postgres(guard: &SchemaGuard, max_connections: u32) -> TestResult<PgStore> {
    PgStore::open(&guard.options(max_connections))
        .await
        .map_err(|e| {
            format!(
                "PostgreSQL at {} is not usable for the store tests ({e}); start it, or point SEALMAIL_TEST_POSTGRES at one",
                guard.url
            )
            .into()
        })
}

impl TestStore {
    async fn open(backend: Backend) -> TestResult<TestStore> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir()?;
                let store = SqliteStore::open(dir.path(), 256).await?;
                Ok(TestStore {
                    store: Arc::new(store),
                    place: Place::Sqlite(dir),
                })
            }
            Backend::Postgres => {
                let guard = SchemaGuard {
                    url: postgres_url(),
                    schema: fresh_schema_name(),
                };
                let store = open_postgres(&guard, 4).await?;
                Ok(TestStore {
                    store: Arc::new(store),
                    place: Place::Postgres(guard),
                })
            }
        }
    }

    /// Closes the store and opens it again on the same data, as a restart does.
    async fn reopen(self) -> TestResult<TestStore> {
        let TestStore { store, place } = self;
        // The old store must be gone (with SQLite's file lock) before the new one opens.
        drop(store);
        let store: Arc<dyn Store> = match &place {
            Place::Sqlite(dir) => Arc::new(SqliteStore::open(dir.path(), 256).await?),
            Place::Postgres(guard) => Arc::new(open_postgres(guard, 4).await?),
        };
        Ok(TestStore { store, place })
    }

    /// Rows in `table`, read with a connection of our own.
    async fn count_rows(&self, table: &str) -> TestResult<i64> {
        match &self.place {
            Place::Sqlite(dir) => count_sqlite_rows(dir.path(), table).await,
            Place::Postgres(guard) => {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&guard.url).await?;
                let sql = format!("SELECT COUNT(*) FROM {}.{table}", guard.schema);
                Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_one(&mut conn)
                    .await?)
            }
        }
    }
}

/// A store with one domain and the account alice@example.test; returns alice's INBOX.
async fn with_alice(backend: Backend) -> TestResult<(TestStore, MailboxId)> {
    let test = TestStore::open(backend).await?;
    let inbox = add_alice(&*test.store).await?;
    Ok((test, inbox))
}

/// Adds the domain example.test and the account alice@example.test; returns alice's INBOX.
async fn add_alice(store: &dyn Store) -> TestResult<MailboxId> {
    store.add_domain(&domain("example.test")?).await?;
    let alice = store
        .add_account(&address("alice@example.test")?, "$argon2id$fake")
        .await?;
    Ok(store.mailbox(alice, "INBOX").await?.ok_or("no INBOX")?.id)
}

/// A SQLite store with alice, for the tests of SQLite's own behaviour.
async fn store_with_alice(dir: &Path) -> TestResult<(SqliteStore, MailboxId)> {
    let store = SqliteStore::open(dir, 256).await?;
    let inbox = add_alice(&store).await?;
    Ok((store, inbox))
}

/// A lease for `holder` that outlasts any test.
fn lease(holder: &str) -> QueueLease {
    QueueLease {
        holder: holder.into(),
        until: i64::MAX,
    }
}

fn message(body: &str, mailbox: MailboxId) -> NewMessage {
    NewMessage {
        content: format!("From: a@b.test\r\nSubject: t\r\n\r\n{body}\r\n").into_bytes(),
        mailboxes: vec![mailbox],
        internal_date: 1_700_000_000,
        flags: vec![],
    }
}

/// Runs each conformance test (an `async fn(Backend) -> TestResult` of this file) once per
/// backend, as `sqlite::name` and `postgres::name`.
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() -> super::TestResult {
                    super::$test(super::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $test() -> super::TestResult {
                    super::$test(super::Backend::Postgres).await
                }
            )*
        }
    };
}

on_both_backends!(
    accounts_get_default_mailboxes_and_clear_errors,
    messages_round_trip_byte_for_byte_with_increasing_uids,
    recent_messages_are_claimed_once_and_only_by_a_read_write_claim,
    changes_since_reports_new_messages_flag_changes_and_expunges_once,
    a_rename_that_would_make_a_name_too_long_or_too_deep_is_refused,
    subscriptions_outlive_their_mailboxes_and_follow_renames,
    copy_move_and_mailbox_management_keep_uids_and_validity_right,
    a_tls_report_is_claimed_once_per_day_and_domain,
    a_daily_check_is_claimed_by_one_node_recorded_and_pruned,
    retention_prunes_what_outlived_its_use_and_blobs_go_with_their_last_user,
    the_credentials_generation_moves_on_password_changes_and_removals_only,
    what_is_written_reads_back_field_by_field,
    due_messages_are_leased_to_one_holder_until_the_lease_ends,
    renewed_leases_hold_past_their_first_end_and_only_for_their_holder,
    abuse_points_add_up_within_the_window_and_older_ones_are_forgotten,
    hourly_use_is_refused_past_the_allowance_until_an_hour_passed,
    security_events_keep_the_node_that_saw_them,
    the_queue_is_retried_deleted_and_emptied_by_final_outcomes,
    bans_are_lifted_escalated_and_pruned,
    scram_verifiers_follow_the_password_they_were_made_from,
    app_passwords_are_found_by_lookup_listed_used_and_revoked,
    a_totp_step_and_a_recovery_code_are_taken_once,
    client_certificates_are_registered_and_stay_revoked,
    web_sessions_are_found_until_they_expire_and_touched_only_while_live,
    web_sessions_end_one_by_one_or_all_but_the_one_kept,
    an_account_keeps_at_most_twenty_web_sessions_dropping_the_least_recently_seen,
    logins_waiting_for_a_second_factor_never_push_out_signed_in_sessions,
    web_sessions_go_with_their_account_and_expired_ones_are_pruned,
    the_admin_role_is_granted_taken_and_listed,
    security_keys_are_listed_oldest_first_and_a_credential_id_is_registered_once,
    security_keys_with_too_long_fields_are_refused,
    an_account_keeps_at_most_ten_security_keys,
    concurrent_adds_of_security_keys_never_pass_the_cap,
    a_security_key_use_is_taken_only_with_a_higher_counter,
    security_keys_are_removed_one_by_one_all_at_once_and_with_their_account,
);

// ---- Conformance tests: what every backend promises ----

async fn accounts_get_default_mailboxes_and_clear_errors(backend: Backend) -> TestResult {
    let (test, _) = with_alice(backend).await?;
    let store = &*test.store;
    let alice = store
        .account(&address("ALICE@Example.test")?)
        .await?
        .ok_or("alice missing")?;
    let names: Vec<String> = store
        .mailboxes(alice.id)
        .await?
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["INBOX", "Sent", "Drafts", "Trash", "Junk"]);
    let sent = store.mailbox(alice.id, "Sent").await?.ok_or("no Sent")?;
    assert_eq!(sent.special_use.as_deref(), Some("\\Sent"));

    let dup = store.add_account(&address("alice@example.test")?, "x").await;
    assert!(
        matches!(dup, Err(StoreError::Duplicate(ref what)) if what == "user alice@example.test"),
        "{dup:?}"
    );
    let unknown = store.add_account(&address("carol@other.test")?, "x").await;
    assert!(
        matches!(unknown, Err(StoreError::UnknownDomain(ref d)) if d.as_str() == "other.test"),
        "{unknown:?}"
    );
    let dup_domain = store.add_domain(&domain("EXAMPLE.test")?).await;
    assert!(
        matches!(dup_domain, Err(StoreError::Duplicate(_))),
        "{dup_domain:?}"
    );
    let in_use = store.remove_domain(&domain("example.test")?).await;
    assert!(
        matches!(in_use, Err(StoreError::DomainInUse { accounts: 1, .. })),
        "{in_use:?}"
    );

    // A failed write in a batch does not disturb the others: the store is still consistent.
    store.remove_account(&address("alice@example.test")?).await?;
    store.remove_domain(&domain("example.test")?).await?;
    assert!(store.list_domains().await?.is_empty());
    Ok(())
}

async fn messages_round_trip_byte_for_byte_with_increasing_uids(backend: Backend) -> TestResult {
    let (test, inbox) = with_alice(backend).await?;
    let store = &*test.store;
    let eight_bit = "Grüße, ünïcödé and a NUL-free 8-bit body".to_string();
    let first = store.store_message(message(&eight_bit, inbox)).await?;
    let second = store.store_message(message("second", inbox)).await?;
    assert_eq!((first[0].uid, second[0].uid), (1, 2));
    let bytes = store.read_message(first[0].id).await?;
    assert_eq!(bytes, message(&eight_bit, inbox).content);
    assert_eq!(first[0].sha256, sealmail_store::sha256_hex(&bytes));
    let listed = store.messages(inbox).await?;
    assert_eq!(listed, [first[0].clone(), second[0].clone()]);
    Ok(())
}

/// RFC 3501 2.3.2: a message is recent for exactly one session, the first to claim it.
async fn recent_messages_are_claimed_once_and_only_by_a_read_write_claim(backend: Backend) -> TestResult {
    let (test, inbox) = with_alice(backend).await?;
    let store = &*test.store;
    for body in ["one", "two"] {
        store.store_message(message(body, inbox)).await?;
    }
    assert_eq!(store.mailbox_status(inbox).await?.recent, 2);
    // EXAMINE reads the mark and claims nothing.
    assert_eq!(store.claim_recent(inbox, 2, false).await?, 0);
    assert_eq!(store.mailbox_status(inbox).await?.recent, 2);
    // The first read-write session gets UIDs 1 and 2; the next one gets none of them.
    assert_eq!(store.claim_recent(inbox, 2, true).await?, 0);
    assert_eq!(store.claim_recent(inbox, 2, true).await?, 2);
    assert_eq!(store.mailbox_status(inbox).await?.recent, 0);
    // A later message is recent for whoever claims it first; a claim never lowers the mark.
    store.store_message(message("three", inbox)).await?;
    assert_eq!(store.mailbox_status(inbox).await?.recent, 1);
    assert_eq!(store.claim_recent(inbox, 1, true).await?, 2);
    assert_eq!(store.claim_recent(inbox, 3, true).await?, 2);
    assert_eq!(store.claim_recent(inbox, 3, true).await?, 3);
    Ok(())
}

async fn changes_since_reports_new_messages_flag_changes_and_expunges_once(backend: Backend) -> TestResult {
    let (test, inbox) = with_alice(backend).await?;
    let store = &*test.store;
    let start = store.changes_since(inbox, 0).await?.highest_modseq;
    let mut watch = store.watch_mailbox(inbox);
    watch.mark_unchanged();
    for body in ["one", "two", "three"] {
        store.store_message(message(body, inbox)).await?;
    }
    assert!(watch.has_changed()?, "a commit to the mailbox wakes its watchers");

    let changes = store.changes_since(inbox, start).await?;
    assert_eq!(
        changes.changed.iter().map(|m| m.uid).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let after_new = changes.highest_modseq;
    assert!(after_new > start);

    // Flags: only real changes take a new mod-sequence; UNCHANGEDSINCE protects later changes.
    let seen = vec!["\\Seen".to_string()];
    let update = store
        .update_flags(SetFlags {
            mailbox: inbox,
            uids: vec![2, 3, 99],
            change: FlagChange::Add,
            flags: seen.clone(),
            unchanged_since: None,
        })
        .await?;
    assert_eq!(update.messages.len(), 2, "UID 99 does not exist and is skipped");
    let changes = store.changes_since(inbox, after_new).await?;
    assert_eq!(changes.changed.iter().map(|m| m.uid).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(changes.changed[0].flags, seen);
    let unchanged = store
        .update_flags(SetFlags {
            mailbox: inbox,
            uids: vec![2],
            change: FlagChange::Add,
            flags: seen.clone(),
            unchanged_since: None,
        })
        .await?;
    assert_eq!(unchanged.messages[0].modseq, changes.changed[0].modseq);
    let refused = store
        .update_flags(SetFlags {
            mailbox: inbox,
            uids: vec![1, 2],
            change: FlagChange::Replace,
            flags: vec!["\\Flagged".into()],
            unchanged_since: Some(after_new),
        })
        .await?;
    assert_eq!(refused.modified, [2]);
    assert_eq!(refused.messages.len(), 1);

    // Expunge removes only \Deleted messages (and only those asked for) and leaves tombstones.
    let before_expunge = store.changes_since(inbox, 0).await?.highest_modseq;
    let deleted = vec!["\\Deleted".to_string()];
    store
        .update_flags(SetFlags {
            mailbox: inbox,
            uids: vec![1, 3],
            change: FlagChange::Add,
            flags: deleted,
            unchanged_since: None,
        })
        .await?;
    assert_eq!(store.expunge(inbox, Some(vec![3])).await?, [3]);
    assert_eq!(store.expunge(inbox, None).await?, [1]);
    let changes = store.changes_since(inbox, before_expunge).await?;
    assert_eq!(changes.expunged, [1, 3]);
    let left: Vec<u32> = store.messages(inbox).await?.iter().map(|m| m.uid).collect();
    assert_eq!(left, [2]);
    assert!(
        store
            .changes_since(inbox, changes.highest_modseq)
            .await?
            .changed
            .is_empty()
    );
    Ok(())
}

/// RENAME keeps every name it makes within CREATE's limits (255 bytes, 16 levels): renaming a
/// parent below a long name, again and again, cannot grow names without end.
async fn a_rename_that_would_make_a_name_too_long_or_too_deep_is_refused(backend: Backend) -> TestResult {
    let (test, _) = with_alice(backend).await?;
    let store = &*test.store;
    let alice = store
        .account(&address("alice@example.test")?)
        .await?
        .ok_or("alice")?
        .id;
    let long = "x".repeat(200);
    store.create_mailbox(alice, "t").await?;
    store.create_mailbox(alice, &format!("t/{long}")).await?;
    let refused = store.rename_mailbox(alice, "t", &"y".repeat(100)).await;
    assert!(matches!(refused, Err(StoreError::LimitReached(_))), "{refused:?}");
    let deep = (0..16).map(|i| format!("d{i}")).collect::<Vec<_>>().join("/");
    let refused = store.rename_mailbox(alice, "t", &deep).await;
    assert!(
        matches!(refused, Err(StoreError::LimitReached(_))),
        "too deep: {refused:?}"
    );
    store.rename_mailbox(alice, "t", "u").await?;
    assert!(store.mailbox(alice, &format!("u/{long}")).await?.is_some());
    Ok(())
}

/// RFC 3501 6.3.6: a subscription belongs to the name. CREATE does not subscribe, DELETE does
/// not unsubscribe, RENAME takes the subscriptions along.
async fn subscriptions_outlive_their_mailboxes_and_follow_renames(backend: Backend) -> TestResult {
    let (test, _) = with_alice(backend).await?;
    let store = &*test.store;
    let alice = store
        .account(&address("alice@example.test")?)
        .await?
        .ok_or("alice")?
        .id;
    let subscribed = |list: Vec<String>, name: &str| list.iter().any(|n| n == name);
    let created = store.create_mailbox(alice, "Lists").await?;
    assert!(!created.subscribed && !subscribed(store.subscriptions(alice).await?, "Lists"));
    store.set_subscribed(alice, "Lists", true).await?;
    store.create_mailbox(alice, "Lists/rust").await?;
    store.set_subscribed(alice, "Lists/rust", true).await?;
    store.rename_mailbox(alice, "Lists", "Groups").await?;
    let now = store.subscriptions(alice).await?;
    assert!(
        subscribed(now.clone(), "Groups") && subscribed(now.clone(), "Groups/rust"),
        "{now:?}"
    );
    assert!(!subscribed(now, "Lists"));
    store.delete_mailbox(alice, "Groups/rust").await?;
    assert!(
        subscribed(store.subscriptions(alice).await?, "Groups/rust"),
        "DELETE keeps it"
    );
    // Re-created, it is subscribed again; unsubscribing a deleted name works.
    assert!(store.create_mailbox(alice, "Groups/rust").await?.subscribed);
    store.delete_mailbox(alice, "Groups/rust").await?;
    store.set_subscribed(alice, "Groups/rust", false).await?;
    assert!(!subscribed(store.subscriptions(alice).await?, "Groups/rust"));
    // A name neither existing nor subscribed cannot be subscribed or unsubscribed.
    assert!(store.set_subscribed(alice, "Nowhere", true).await.is_err());
    assert!(store.set_subscribed(alice, "Nowhere", false).await.is_err());
    Ok(())
}

async fn copy_move_and_mailbox_management_keep_uids_and_validity_right(backend: Backend) -> TestResult {
    let (test, inbox) = with_alice(backend).await?;
    let store = &*test.store;
    let alice = store
        .account(&address("alice@example.test")?)
        .await?
        .ok_or("alice")?
        .id;
    for body in ["a", "b", "c"] {
        store.store_message(message(body, inbox)).await?;
    }
    let archive = store.create_mailbox(alice, "Archive").await?;
    let copied = store
        .copy_messages(CopyMessages {
            from: inbox,
            uids: vec![1, 3],
            to: archive.id,
            remove_source: false,
        })
        .await?;
    assert_eq!(copied.uids, [(1, 1), (3, 2)]);
    assert_eq!(copied.uid_validity, archive.uid_validity);
    let moved = store
        .copy_messages(CopyMessages {
            from: inbox,
            uids: vec![2],
            to: archive.id,
            remove_source: true,
        })
        .await?;
    assert_eq!(moved.uids, [(2, 3)]);
    assert_eq!(store.messages(inbox).await?.len(), 2);
    let status = store.mailbox_status(archive.id).await?;
    assert_eq!((status.messages, status.unseen, status.uid_next), (3, 3, 4));
    // The copies are the same bytes (they share the blob), in copy order.
    let mut copies = Vec::new();
    for m in store.messages(archive.id).await? {
        copies.push(store.read_message(m.id).await?);
    }
    assert!(
        copies[0].ends_with(b"\r\na\r\n")
            && copies[1].ends_with(b"\r\nc\r\n")
            && copies[2].ends_with(b"\r\nb\r\n")
    );
    // Deleting the mailbox leaves the INBOX originals readable.
    store.delete_mailbox(alice, "Archive").await?;
    for m in store.messages(inbox).await? {
        store.read_message(m.id).await?;
    }
    assert!(matches!(
        store.delete_mailbox(alice, "INBOX").await,
        Err(StoreError::NotAllowed(_))
    ));

    // A re-created mailbox never reuses a UIDVALIDITY; renames carry children along.
    let again = store.create_mailbox(alice, "Archive").await?;
    assert_ne!(again.uid_validity, archive.uid_validity);
    store.create_mailbox(alice, "Archive/2025").await?;
    store.rename_mailbox(alice, "Archive", "Old").await?;
    let mut names: Vec<String> = store
        .mailboxes(alice)
        .await?
        .into_iter()
        .map(|m| m.name)
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["Drafts", "INBOX", "Junk", "Old", "Old/2025", "Sent", "Trash"]
    );
    // Children are found by characters, not bytes ("\u{c4}rger" is five characters, six bytes).
    store.create_mailbox(alice, "\u{c4}rger").await?;
    store.create_mailbox(alice, "\u{c4}rger/x").await?;
    store.rename_mailbox(alice, "\u{c4}rger", "B").await?;
    assert!(store.mailbox(alice, "B/x").await?.is_some());
    assert!(store.mailbox(alice, "\u{c4}rger/x").await?.is_none());
    assert!(matches!(
        store.create_mailbox(alice, "inbox").await,
        Err(StoreError::Duplicate(_))
    ));
    assert!(matches!(
        store.rename_mailbox(alice, "INBOX", "X").await,
        Err(StoreError::NotAllowed(_))
    ));
    Ok(())
}

async fn a_tls_report_is_claimed_once_per_day_and_domain(backend: Backend) -> TestResult {
    let test = TestStore::open(backend).await?;
    let store = test.store.clone();
    assert!(store.claim_tls_report("2026-11-28", "b.test").await?);
    assert!(!store.claim_tls_report("2026-11-28", "b.test").await?);
    assert!(store.claim_tls_report("2026-11-28", "c.test").await?);
    assert!(store.claim_tls_report("2026-11-29", "b.test").await?);
    // Kept across a restart.
    drop(store);
    let test = test.reopen().await?;
    assert!(!test.store.claim_tls_report("2026-11-29", "b.test").await?);
    Ok(())
}

async fn a_daily_check_is_claimed_by_one_node_recorded_and_pruned(backend: Backend) -> TestResult {
    use sealmail_store::DomainCheck;
    let test = TestStore::open(backend).await?;
    let store = test.store.clone();
    let now = 1_800_000_000;
    let day = 86_400;
    // Never checked: the first node to ask claims it; the other node does not while the
    // claim holds, the claimant may ask again.
    assert!(
        store
            .claim_domain_check("a.test", "n1", now - day, now, now + 600)
            .await?
    );
    assert!(
        !store
            .claim_domain_check("a.test", "n2", now - day, now, now + 600)
            .await?
    );
    assert!(
        store
            .claim_domain_check("a.test", "n1", now - day, now, now + 600)
            .await?
    );
    // Nodes asking at once: one wins.
    let racers: Vec<_> = (0..8)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .claim_domain_check("race.test", &format!("r{n}"), now - day, now, now + 600)
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for racer in racers {
        if racer.await?? {
            won += 1;
        }
    }
    assert_eq!(won, 1, "exactly one node claims a domain");
    // A claim that lapsed (its node died mid-check) is taken over.
    assert!(
        store
            .claim_domain_check("a.test", "n2", now - day, now + 601, now + 1200)
            .await?
    );
    assert!(store.domain_checks().await?.is_empty(), "nothing finished yet");
    let check = |domain: &str, at: i64, grade: &str, score: i64| DomainCheck {
        domain: domain.into(),
        checked_at: at,
        grade: grade.into(),
        score,
        report: format!("{{\"grade\":\"{grade}\"}}"),
        node: "n2".into(),
    };
    store
        .record_domain_check(check("a.test", now + 700, "A", 100))
        .await?;
    // Recorded, and the claim ended; not due again until a day after.
    assert!(
        !store
            .claim_domain_check("a.test", "n1", now + 700 - day - 1, now + 701, now + 1300)
            .await?
    );
    assert!(
        store
            .claim_domain_check("a.test", "n1", now + 700, now + 701, now + 1300)
            .await?
    );
    store
        .record_domain_check(check("a.test", now + 800, "C", 70))
        .await?;
    store
        .record_domain_check(check("b.test", now + 800, "B", 85))
        .await?;
    // Kept across a restart, one row per domain (the last), by domain.
    drop(store);
    let test = test.reopen().await?;
    let store = test.store.clone();
    assert_eq!(
        store.domain_checks().await?,
        vec![
            check("a.test", now + 800, "C", 70),
            check("b.test", now + 800, "B", 85)
        ]
    );
    // Pruned once not checked for 30 days; a live claim keeps its row.
    assert!(
        store
            .claim_domain_check("c.test", "n1", now, now, i64::MAX)
            .await?
    );
    let later = sealmail_store::Retention::at(now + 800 + 31 * day);
    // a.test, b.test, and race.test, whose winner never recorded and whose claim lapsed.
    assert_eq!(store.prune(later.clone()).await?.domain_checks, 3);
    assert!(store.domain_checks().await?.is_empty());
    assert_eq!(
        test.count_rows("domain_checks").await?,
        1,
        "the claimed one stays"
    );
    let fresh = sealmail_store::Retention::at(now + 800);
    store
        .record_domain_check(check("b.test", now + 800, "B", 85))
        .await?;
    assert_eq!(store.prune(fresh).await?.domain_checks, 0);
    Ok(())
}

async fn retention_prunes_what_outlived_its_use_and_blobs_go_with_their_last_user(
    backend: Backend,
) -> TestResult {
    let (test, inbox) = with_alice(backend).await?;
    let store = &*test.store;
    let alice = store
        .account(&address("alice@example.test")?)
        .await?
        .ok_or("no alice")?;
    let sent = store.mailbox(alice.id, "Sent").await?.ok_or("no Sent")?.id;
    // One message in two mailboxes shares one blob; another message has its own.
    let mut both = message("shared", inbox);
    both.mailboxes.push(sent);
    let stored = store.store_message(both).await?;
    store.store_message(message("own", inbox)).await?;
    assert_eq!(test.count_rows("blobs").await?, 2);
    let each = |body: &str| message(body, inbox).content.len() as u64;
    assert_eq!(
        store.account_usage(alice.id).await?,
        2 * each("shared") + each("own"),
        "a message in two mailboxes counts twice"
    );

    // Expunged from the INBOX: its blob stays while Sent still holds the message.
    let before = store.changes_since(inbox, 0).await?.highest_modseq;
    store
        .update_flags(SetFlags {
            mailbox: inbox,
            uids: vec![1, 2],
            change: FlagChange::Add,
            flags: vec!["\\Deleted".into()],
            unchanged_since: None,
        })
        .await?;
    assert_eq!(store.expunge(inbox, None).await?, vec![1, 2]);
    assert_eq!(test.count_rows("blobs").await?, 1, "only the unshared blob went");
    assert_eq!(
        store.account_usage(alice.id).await?,
        each("shared"),
        "the copy in Sent"
    );
    let in_sent = stored
        .iter()
        .find(|m| m.mailbox == sent)
        .ok_or("no copy in Sent")?;
    assert!(store.read_message(in_sent.id).await?.ends_with(b"shared\r\n"));
    store
        .update_flags(SetFlags {
            mailbox: sent,
            uids: vec![in_sent.uid],
            change: FlagChange::Add,
            flags: vec!["\\Deleted".into()],
            unchanged_since: None,
        })
        .await?;
    store.expunge(sent, None).await?;
    assert_eq!(test.count_rows("blobs").await?, 0, "the last user took it along");
    assert_eq!(store.account_usage(alice.id).await?, 0);

    // Tombstones stay while a session could ask, and go after the retention time.
    assert_eq!(store.changes_since(inbox, before).await?.expunged, vec![1, 2]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let pruned = store.prune(sealmail_store::Retention::at(now)).await?;
    assert_eq!(pruned.tombstones, 0, "fresh tombstones are kept");
    assert_eq!(test.count_rows("expunged").await?, 3);

    // TLS results and sent-report records older than the retention go, recent ones stay;
    // expired MTA-STS policies go.
    for day in ["2026-01-01", "2026-12-01"] {
        assert!(store.claim_tls_report(day, "b.test").await?);
    }
    store
        .save_mta_sts_policy(StoredStsPolicy {
            domain: "old.test".into(),
            policy_id: "1".into(),
            body: "version: STSv1".into(),
            expires_at: now - 10,
        })
        .await?;
    store
        .save_mta_sts_policy(StoredStsPolicy {
            domain: "live.test".into(),
            policy_id: "1".into(),
            body: "version: STSv1".into(),
            expires_at: now + 3600,
        })
        .await?;
    let later = sealmail_store::Retention::at(now + sealmail_store::Retention::TOMBSTONE_SECS + 1);
    let cutoff = later.tls_days_before.clone();
    assert!("2026-01-01" < cutoff.as_str(), "{cutoff}");
    let pruned = store
        .prune(sealmail_store::Retention {
            tls_days_before: "2026-06-01".into(),
            sts_policies_expired_before: now,
            ..later
        })
        .await?;
    assert_eq!(pruned.tombstones, 3);
    assert_eq!(pruned.tls_reports_sent, 1);
    assert_eq!(pruned.sts_policies, 1);
    assert_eq!(test.count_rows("expunged").await?, 0);
    assert!(store.mta_sts_policy("live.test").await?.is_some());
    assert!(store.mta_sts_policy("old.test").await?.is_none());
    assert!(!store.claim_tls_report("2026-12-01", "b.test").await?, "kept");
    assert!(store.claim_tls_report("2026-01-01", "b.test").await?, "pruned");
    Ok(())
}

async fn the_credentials_generation_moves_on_password_changes_and_removals_only(
    backend: Backend,
) -> TestResult {
    let (test, _inbox) = with_alice(backend).await?;
    let store = &*test.store;
    let alice = store
        .account(&address("alice@example.test")?)
        .await?
        .ok_or("alice missing")?;
    let start = store.credentials_generation().await?;

    store
        .add_account(&address("bob@example.test")?, "$argon2id$bob")
        .await?;
    assert_eq!(
        store.credentials_generation().await?,
        start,
        "a new account revokes nothing"
    );

    store.set_password_hash(&alice.address, "$argon2id$new").await?;
    let after_change = store.credentials_generation().await?;
    assert!(after_change > start);
    let reread = store
        .account_by_id(alice.id)
        .await?
        .ok_or("alice missing by id")?;
    assert_eq!(reread.password_hash, "$argon2id$new");

    store.remove_account(&alice.address).await?;
    assert!(store.credentials_generation().await? > after_change);
    assert_eq!(store.account_by_id(alice.id).await?, None);
    Ok(())
}

/// Every read the store maps from rows, checked field by field against what was written:
/// recipients, the outbound queue and its due recipients, bans, security events, TLS results
/// and message bytes.
async fn what_is_written_reads_back_field_by_field(backend: Backend) -> TestResult {
    use sealmail_store::{
        AcceptedMessage, DueMessage, DueRecipient, OutboundCopy, QueueEntry, QueueRecipient,
        QueueRecipientState, Recipient, RecipientOutcome, SecurityEvent, TlsResult, TlsResultCount,
    };
    let (test, inbox) = with_alice(backend).await?;
    let store = &*test.store;

    let alice = store
        .account(&address("alice@example.test")?)
        .await?
        .ok_or("no alice")?;
    assert_eq!(
        store.resolve_recipient(&address("alice@example.test")?).await?,
        Recipient::Local {
            account: alice.id,
            inbox
        }
    );
    assert_eq!(
        store.resolve_recipient(&address("bob@example.test")?).await?,
        Recipient::UnknownUser
    );
    assert_eq!(
        store.resolve_recipient(&address("bob@elsewhere.test")?).await?,
        Recipient::NotLocal
    );
    assert_eq!(store.list_accounts().await?, vec![alice.clone()]);
    assert_eq!(store.account_by_id(alice.id).await?, Some(alice));

    let stored = store.store_message(message("one", inbox)).await?;
    let ids: Vec<_> = stored.iter().map(|m| m.id).collect();
    let read = store
        .read_messages(&[ids[0], sealmail_types::MessageId(999_999)])
        .await?;
    assert_eq!(read[0].as_ref().ok(), Some(&message("one", inbox).content));
    assert!(matches!(read[1], Err(StoreError::NotFound(_))));
    assert_eq!(store.messages(inbox).await?, stored);

    let outbound = OutboundCopy {
        content: b"Subject: out\r\n\r\nbody\r\n".to_vec(),
        sender: "alice@example.test".into(),
        recipients: vec![
            QueueRecipient {
                address: address("carol@remote.test")?,
                dsn_notify: Some("SUCCESS,FAILURE".into()),
                dsn_orcpt: Some("rfc822;carol@remote.test".into()),
            },
            QueueRecipient {
                address: address("dave@other.test")?,
                dsn_notify: None,
                dsn_orcpt: None,
            },
        ],
        dsn_envid: Some("env-1".into()),
        dsn_ret: Some("HDRS".into()),
        require_tls: true,
    };
    let accepted = store
        .accept_message(AcceptedMessage {
            local: None,
            outbound: Some(outbound.clone()),
        })
        .await?;
    let id = accepted.queue_id.ok_or("not queued")?;
    assert_eq!(store.queued_content(id).await?, outbound.content);

    let due = store.due_messages(i64::MAX, 10, &lease("node-a")).await?;
    let [
        DueMessage {
            id: due_id,
            sender,
            created_at,
            require_tls: true,
            dsn_envid,
            dsn_ret,
            recipients,
        },
    ] = due.as_slice()
    else {
        return Err(format!("{due:?}").into());
    };
    assert_eq!((*due_id, sender.as_str()), (id, "alice@example.test"));
    assert_eq!(
        (dsn_envid.as_deref(), dsn_ret.as_deref()),
        (Some("env-1"), Some("HDRS"))
    );
    let [carol, dave] = recipients.as_slice() else {
        return Err(format!("{recipients:?}").into());
    };
    assert_eq!(
        carol,
        &DueRecipient {
            id: carol.id,
            address: "carol@remote.test".into(),
            domain: "remote.test".into(),
            attempts: 0,
            dsn_notify: Some("SUCCESS,FAILURE".into()),
            dsn_orcpt: Some("rfc822;carol@remote.test".into()),
            delay_warned: false,
        }
    );
    assert_eq!(
        (dave.domain.as_str(), dave.dsn_notify.as_deref()),
        ("other.test", None)
    );
    assert_eq!(
        store.due_messages(i64::MAX, 1, &lease("node-a")).await?[0]
            .recipients
            .len(),
        1
    );

    let outcome = RecipientOutcome::Deferred {
        error: "451 later".into(),
        next_attempt_at: created_at + 600,
        delay_warned: true,
    };
    store.record_outcomes(id, vec![(dave.id, outcome)]).await?;
    let entry = store.queue_entry(id).await?.ok_or("no entry")?;
    let expected = QueueEntry {
        id,
        sender: "alice@example.test".into(),
        size: outbound.content.len() as u64,
        created_at: *created_at,
        require_tls: true,
        recipients: vec![
            QueueRecipientState {
                address: "carol@remote.test".into(),
                status: "pending".into(),
                attempts: 0,
                next_attempt_at: *created_at,
                last_error: None,
                dsn_notify: Some("SUCCESS,FAILURE".into()),
                dsn_orcpt: Some("rfc822;carol@remote.test".into()),
            },
            QueueRecipientState {
                address: "dave@other.test".into(),
                status: "pending".into(),
                attempts: 1,
                next_attempt_at: created_at + 600,
                last_error: Some("451 later".into()),
                dsn_notify: None,
                dsn_orcpt: None,
            },
        ],
    };
    assert_eq!(entry, expected);
    assert_eq!(store.queue().await?, vec![expected]);
    assert_eq!(store.queue_entry(id + 1).await?, None);

    let ban = store.add_ban("192.0.2.7", 2_000, 2, "password guessing").await?;
    assert_eq!(
        (ban.address.as_str(), ban.until, ban.level, ban.reason.as_str()),
        ("192.0.2.7", 2_000, 2, "password guessing")
    );
    store.add_ban("192.0.2.8", 500, 1, "spent").await?;
    assert_eq!(store.active_bans(1_000).await?, vec![ban.clone()]);

    let event = SecurityEvent {
        at: 1_234,
        kind: "login-failed".into(),
        address: Some("192.0.2.7".into()),
        account: Some("alice@example.test".into()),
        listener: None,
        detail: Some("wrong password".into()),
        node: Some("node-a".into()),
    };
    store.record_event(event.clone()).await?;
    store
        .record_event(SecurityEvent {
            address: Some("192.0.2.9".into()),
            ..event.clone()
        })
        .await?;
    assert_eq!(store.events(0, Some("192.0.2.7")).await?, vec![event.clone()]);
    assert_eq!(store.events(0, None).await?.len(), 2);
    assert!(store.events(1_235, None).await?.is_empty());

    // The newest first, narrowed by kind, client address and account, and never more than asked.
    let later = SecurityEvent {
        at: 1_300,
        kind: "admin_action".into(),
        account: Some("admin@example.test".into()),
        ..event.clone()
    };
    store.record_event(later.clone()).await?;
    let everything = sealmail_store::EventFilter::default();
    let newest = store.recent_events(&everything, 10).await?;
    assert_eq!(newest.len(), 3);
    assert_eq!(newest[0], later);
    assert_eq!(store.recent_events(&everything, 1).await?, vec![later.clone()]);
    let by_kind = sealmail_store::EventFilter {
        kind: Some("login-failed".into()),
        ..Default::default()
    };
    assert_eq!(store.recent_events(&by_kind, 10).await?.len(), 2);
    let by_address_and_account = sealmail_store::EventFilter {
        address: Some("192.0.2.7".into()),
        account: Some("alice@example.test".into()),
        ..Default::default()
    };
    assert_eq!(
        store.recent_events(&by_address_and_account, 10).await?,
        vec![event.clone()]
    );
    let since = sealmail_store::EventFilter {
        since: 1_250,
        ..Default::default()
    };
    assert_eq!(store.recent_events(&since, 10).await?, vec![later.clone()]);

    let result = TlsResult {
        policy_domain: "remote.test".into(),
        policy_type: "sts".into(),
        mx_host: "mx.remote.test".into(),
        result_type: "success".into(),
        detail: "".into(),
    };
    store.record_tls_result(result.clone()).await?;
    store.record_tls_result(result.clone()).await?;
    let counts = store.tls_results().await?;
    let [
        TlsResultCount {
            day,
            result: got,
            count: 2,
        },
    ] = counts.as_slice()
    else {
        return Err(format!("{counts:?}").into());
    };
    assert_eq!((day.len(), got), (10, &result));
    Ok(())
}

/// A message queued for two remote recipients; its queue id.
async fn queue_for_two(store: &dyn Store) -> TestResult<i64> {
    use sealmail_store::{AcceptedMessage, OutboundCopy, QueueRecipient};
    let recipient = |a: &str| -> TestResult<QueueRecipient> {
        Ok(QueueRecipient {
            address: address(a)?,
            dsn_notify: None,
            dsn_orcpt: None,
        })
    };
    let accepted = store
        .accept_message(AcceptedMessage {
            local: None,
            outbound: Some(OutboundCopy {
                content: b"Subject: out\r\n\r\nbody\r\n".to_vec(),
                sender: "alice@example.test".into(),
                recipients: vec![recipient("carol@remote.test")?, recipient("dave@other.test")?],
                dsn_envid: None,
                dsn_ret: None,
                require_tls: false,
            }),
        })
        .await?;
    Ok(accepted.queue_id.ok_or("not queued")?)
}

/// The recipient row ids `due` holds, in order.
fn due_recipient_ids(due: &[sealmail_store::DueMessage]) -> Vec<i64> {
    due.iter()
        .flat_map(|m| m.recipients.iter().map(|r| r.id))
        .collect()
}

async fn due_messages_are_leased_to_one_holder_until_the_lease_ends(backend: Backend) -> TestResult {
    use sealmail_store::RecipientOutcome;
    let test = TestStore::open(backend).await?;
    let store = &*test.store;
    let id = queue_for_two(store).await?;
    // Queued "now"; every call below is at a later, explicit time.
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64
        + 10;
    let held = |holder: &str, until: i64| QueueLease {
        holder: holder.into(),
        until,
    };

    let first = store.due_messages(t0, 10, &held("node-a", t0 + 60)).await?;
    let both = due_recipient_ids(&first);
    assert_eq!((first.len(), both.len()), (1, 2), "{first:?}");
    assert_eq!(first[0].id, id);
    assert!(
        store
            .due_messages(t0 + 1, 10, &held("node-b", t0 + 100))
            .await?
            .is_empty(),
        "another holder gets nothing while the lease lasts"
    );
    assert!(
        store
            .due_messages(t0 + 1, 10, &held("node-a", t0 + 100))
            .await?
            .is_empty(),
        "nor does the holder itself: it already has them"
    );

    // Once the lease ended, they are due again (now leased to node-b).
    let again = store.due_messages(t0 + 61, 10, &held("node-b", t0 + 200)).await?;
    assert_eq!(due_recipient_ids(&again), both);

    // An outcome ends the lease of its recipient: deferred, it is due again when it says.
    let deferred = RecipientOutcome::Deferred {
        error: "451 later".into(),
        next_attempt_at: t0 + 62,
        delay_warned: false,
    };
    store.record_outcomes(id, vec![(both[0], deferred)]).await?;
    let retried = store.due_messages(t0 + 63, 10, &held("node-a", t0 + 300)).await?;
    assert_eq!(
        due_recipient_ids(&retried),
        [both[0]],
        "the other is still node-b's"
    );

    // Releasing frees only that holder's leases.
    assert_eq!(store.release_leases("node-b").await?, 1);
    assert_eq!(store.release_leases("node-b").await?, 0);
    let freed = store.due_messages(t0 + 64, 10, &held("node-c", t0 + 400)).await?;
    assert_eq!(due_recipient_ids(&freed), [both[1]], "node-a's lease stands");
    assert_eq!(store.release_leases("node-a").await?, 1);
    Ok(())
}

async fn renewed_leases_hold_past_their_first_end_and_only_for_their_holder(backend: Backend) -> TestResult {
    let test = TestStore::open(backend).await?;
    let store = &*test.store;
    queue_for_two(store).await?;
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64
        + 10;
    let held = |holder: &str, until: i64| QueueLease {
        holder: holder.into(),
        until,
    };
    let taken = due_recipient_ids(&store.due_messages(t0, 10, &held("node-a", t0 + 60)).await?);
    assert_eq!(taken.len(), 2);
    // Another holder cannot renew what it does not hold; the holder can.
    assert_eq!(store.renew_leases("node-b", &taken, t0 + 500).await?, 0);
    assert_eq!(store.renew_leases("node-a", &taken, t0 + 500).await?, 2);
    assert!(
        store
            .due_messages(t0 + 61, 10, &held("node-b", t0 + 600))
            .await?
            .is_empty(),
        "a renewed lease still holds past its first end"
    );
    assert_eq!(
        due_recipient_ids(
            &store
                .due_messages(t0 + 501, 10, &held("node-b", t0 + 600))
                .await?
        ),
        taken
    );
    Ok(())
}

async fn abuse_points_add_up_within_the_window_and_older_ones_are_forgotten(backend: Backend) -> TestResult {
    let test = TestStore::open(backend).await?;
    let store = &*test.store;
    assert_eq!(store.add_abuse_points("192.0.2.1", 100, 2, 0).await?, 2);
    assert_eq!(store.add_abuse_points("192.0.2.1", 110, 3, 0).await?, 5);
    assert_eq!(
        store.add_abuse_points("192.0.2.2", 110, 7, 0).await?,
        7,
        "each key counts alone"
    );
    // The window moved past the first points: they no longer count.
    assert_eq!(store.add_abuse_points("192.0.2.1", 200, 1, 105).await?, 4);
    // Forgotten points stay forgotten, even for a wider window later.
    assert_eq!(store.add_abuse_points("192.0.2.1", 201, 1, 0).await?, 5);
    assert_eq!(store.add_abuse_points("192.0.2.2", 300, 1, 0).await?, 8);
    Ok(())
}

async fn hourly_use_is_refused_past_the_allowance_until_an_hour_passed(backend: Backend) -> TestResult {
    let test = TestStore::open(backend).await?;
    let store = &*test.store;
    let start = 1_000_000;
    assert!(store.take_hourly_use("alice", start, 3, 5).await?);
    assert!(store.take_hourly_use("alice", start + 100, 2, 5).await?);
    assert!(
        !store.take_hourly_use("alice", start + 200, 1, 5).await?,
        "5 of 5 spent"
    );
    assert!(
        store.take_hourly_use("bob", start + 200, 5, 5).await?,
        "each key has its own allowance"
    );
    assert!(
        !store.take_hourly_use("alice", start + 3599, 1, 5).await?,
        "not yet an hour"
    );
    // An hour after the first use, its 3 are back; the 2 spent later are not.
    assert!(store.take_hourly_use("alice", start + 3601, 3, 5).await?);
    assert!(!store.take_hourly_use("alice", start + 3602, 1, 5).await?);
    // A refused request spends nothing.
    assert!(store.take_hourly_use("alice", start + 3701, 2, 5).await?);
    Ok(())
}

async fn security_events_keep_the_node_that_saw_them(backend: Backend) -> TestResult {
    use sealmail_store::SecurityEvent;
    let test = TestStore::open(backend).await?;
    let store = &*test.store;
    let seen_by = |node: Option<&str>, at: i64| SecurityEvent {
        at,
        kind: "ban".into(),
        address: Some("192.0.2.3".into()),
        node: node.map(str::to_string),
        ..SecurityEvent::default()
    };
    store.record_event(seen_by(Some("node-a"), 10)).await?;
    store.record_event(seen_by(Some("node-b"), 11)).await?;
    store.record_event(seen_by(None, 12)).await?;
    let nodes: Vec<Option<String>> = store
        .events(0, Some("192.0.2.3"))
        .await?
        .into_iter()
        .map(|e| e.node)
        .collect();
    assert_eq!(
        nodes,
        [Some("node-a".to_string()), Some("node-b".to_string()), None]
    );
    assert_eq!(
        store.events(11, None).await?,
        [seen_by(Some("node-b"), 11), seen_by(None, 12)]
    );
    Ok(())
}

async fn the_queue_is_retried_deleted_and_emptied_by_final_outcomes(backend: Backend) -> TestResult {
    use sealmail_store::RecipientOutcome;
    let test = TestStore::open(backend).await?;
    let store = &*test.store;
    assert_eq!(store.next_attempt_at().await?, None);
    let first = queue_for_two(store).await?;
    let second = queue_for_two(store).await?;
    let queued_at = store.next_attempt_at().await?.ok_or("nothing pending")?;

    // Deferred far ahead, then made due again by the admin.
    let due = store.due_messages(i64::MAX, 10, &lease("node-a")).await?;
    let later = RecipientOutcome::Deferred {
        error: "451 later".into(),
        next_attempt_at: queued_at + 86_400,
        delay_warned: false,
    };
    for message in &due {
        let outcomes = message.recipients.iter().map(|r| (r.id, later.clone())).collect();
        store.record_outcomes(message.id, outcomes).await?;
    }
    assert_eq!(store.next_attempt_at().await?, Some(queued_at + 86_400));
    assert_eq!(store.retry_queued(Some(first)).await?, 2);
    assert!(store.next_attempt_at().await? < Some(queued_at + 86_400));
    assert_eq!(store.retry_queued(None).await?, 4);

    // Final outcomes for every recipient take the message out of the queue, with its blob.
    let rows = store.due_messages(i64::MAX, 10, &lease("node-a")).await?;
    let recipients: Vec<i64> = rows
        .iter()
        .filter(|m| m.id == first)
        .flat_map(|m| m.recipients.iter().map(|r| r.id))
        .collect();
    assert_eq!(recipients.len(), 2);
    let blobs_before = test.count_rows("blobs").await?;
    store
        .record_outcomes(
            first,
            vec![
                (recipients[0], RecipientOutcome::Delivered("250 ok".into())),
                (recipients[1], RecipientOutcome::Failed("550 no".into())),
            ],
        )
        .await?;
    assert_eq!(store.queue_entry(first).await?, None);
    assert_eq!(test.count_rows("blobs").await?, blobs_before - 1);

    // The admin deletes the other one; a second delete finds nothing.
    assert!(store.delete_queued(second).await?);
    assert!(!store.delete_queued(second).await?);
    assert!(store.queue().await?.is_empty());
    assert_eq!(store.next_attempt_at().await?, None);
    assert_eq!(test.count_rows("blobs").await?, 0);
    assert!(matches!(
        store.queued_content(second).await,
        Err(StoreError::NotFound(_))
    ));
    Ok(())
}

async fn bans_are_lifted_escalated_and_pruned(backend: Backend) -> TestResult {
    use sealmail_store::SecurityEvent;
    let test = TestStore::open(backend).await?;
    let store = &*test.store;
    let now = 10_000;
    let first = store.add_ban("192.0.2.7", now + 100, 1, "guessing").await?;
    let second = store.add_ban("192.0.2.7", now + 200, 2, "guessing again").await?;
    store.add_ban("192.0.2.8", now + 100, 1, "other").await?;
    assert!(second.id > first.id);
    assert_eq!(store.last_ban_level("192.0.2.7", 0).await?, 2);
    assert_eq!(store.last_ban_level("192.0.2.9", 0).await?, 0);
    assert_eq!(store.active_bans(now).await?.len(), 3);

    assert_eq!(store.lift_bans("192.0.2.7", now).await?, 2);
    assert_eq!(store.lift_bans("192.0.2.7", now).await?, 0, "already lifted");
    let active: Vec<String> = store
        .active_bans(now)
        .await?
        .into_iter()
        .map(|b| b.address)
        .collect();
    assert_eq!(active, ["192.0.2.8"]);
    assert_eq!(
        store.last_ban_level("192.0.2.7", 0).await?,
        2,
        "lifted bans still count for escalation"
    );

    for at in [now - 10, now + 200] {
        store
            .record_event(SecurityEvent {
                at,
                kind: "ban".into(),
                ..SecurityEvent::default()
            })
            .await?;
    }
    // Before now + 150: the older event and the two bans that ended at now + 100.
    assert_eq!(store.prune_security(now + 150).await?, 3);
    assert_eq!(store.events(0, None).await?.len(), 1);
    assert_eq!(store.last_ban_level("192.0.2.7", 0).await?, 2);
    Ok(())
}

// ---- PostgreSQL's own: several writers and several nodes on one schema ----

/// A PostgreSQL test store with alice; the schema guard is reachable for direct SQL.
async fn postgres_with_alice() -> TestResult<(TestStore, MailboxId)> {
    with_alice(Backend::Postgres).await
}

impl TestStore {
    /// The PostgreSQL schema under this store (for SQL behind its back).
    fn schema(&self) -> TestResult<&SchemaGuard> {
        match &self.place {
            Place::Postgres(guard) => Ok(guard),
            Place::Sqlite(_) => Err("not a PostgreSQL store".into()),
        }
    }

    /// Another PostgreSQL store on the same schema: a second node.
    async fn second_node(&self) -> TestResult<PgStore> {
        open_postgres(self.schema()?, 8).await
    }
}

#[tokio::test]
async fn postgres_a_blob_changed_behind_the_store_is_detected_on_read() -> TestResult {
    use sqlx::Connection;
    let (test, inbox) = postgres_with_alice().await?;
    let store = &*test.store;
    let bad = store
        .store_message(message("changed behind our back", inbox))
        .await?;
    let good = store.store_message(message("untouched", inbox)).await?;
    let queued = queue_for_two(store).await?;

    // Flip one bit of one byte, as a broken disk or a careless admin would.
    let schema = &test.schema()?.schema;
    let mut conn = sqlx::PgConnection::connect(&test.schema()?.url).await?;
    for (table, id) in [("messages", bad[0].id.0), ("queue_messages", queued)] {
        let sql = format!(
            "UPDATE {schema}.blobs SET data = set_byte(data, 20, get_byte(data, 20) # 32) \
             WHERE id = (SELECT blob_id FROM {schema}.{table} WHERE id = $1)"
        );
        let changed = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .execute(&mut conn)
            .await?;
        assert_eq!(changed.rows_affected(), 1);
    }

    match store.read_message(bad[0].id).await {
        Err(StoreError::Integrity { expected, actual, .. }) => {
            assert_eq!(expected, bad[0].sha256);
            assert_ne!(actual, expected);
        }
        other => panic!("corruption not detected by read_message: {other:?}"),
    }
    let read = store.read_messages(&[bad[0].id, good[0].id]).await?;
    assert!(
        matches!(read[0], Err(StoreError::Integrity { .. })),
        "read_messages: {:?}",
        read[0]
    );
    assert_eq!(
        read[1].as_ref().ok(),
        Some(&message("untouched", inbox).content),
        "other messages are still served"
    );
    match store.queued_content(queued).await {
        Err(StoreError::QueueIntegrity { id, .. }) => assert_eq!(id, queued),
        other => panic!("corruption not detected by queued_content: {other:?}"),
    }
    Ok(())
}

/// Stores `per_task` messages from each store in `stores` (one task per entry), all at once,
/// into `inbox`; the UIDs they got.
async fn store_concurrently(
    stores: Vec<Arc<dyn Store>>,
    inbox: MailboxId,
    per_task: usize,
) -> TestResult<Vec<u32>> {
    let mut tasks = Vec::new();
    for (task, store) in stores.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut uids = Vec::new();
            for n in 0..per_task {
                let stored = store
                    .store_message(message(&format!("task {task} message {n}"), inbox))
                    .await?;
                uids.extend(stored.iter().map(|m| m.uid));
            }
            Ok::<_, StoreError>(uids)
        }));
    }
    let mut uids = Vec::new();
    for task in tasks {
        uids.extend(task.await??);
    }
    uids.sort_unstable();
    Ok(uids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_writers_get_distinct_uids_without_gaps() -> TestResult {
    let (test, inbox) = postgres_with_alice().await?;
    let stores = vec![test.store.clone(); 8];
    let uids = store_concurrently(stores, inbox, 25).await?;
    assert_eq!(uids, (1..=200).collect::<Vec<u32>>());
    let status = test.store.mailbox_status(inbox).await?;
    assert_eq!((status.messages, status.uid_next), (200, 201));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_nodes_writing_one_mailbox_get_distinct_uids_without_gaps() -> TestResult {
    let (test, inbox) = postgres_with_alice().await?;
    let other: Arc<dyn Store> = Arc::new(test.second_node().await?);
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(test.store.clone());
        stores.push(other.clone());
    }
    let uids = store_concurrently(stores, inbox, 25).await?;
    assert_eq!(uids, (1..=200).collect::<Vec<u32>>());
    // Both nodes see every message, in UID order.
    let seen: Vec<u32> = other.messages(inbox).await?.iter().map(|m| m.uid).collect();
    assert_eq!(seen, uids);
    Ok(())
}

#[tokio::test]
async fn postgres_a_watcher_on_one_node_wakes_when_another_node_stores() -> TestResult {
    let (test, inbox) = postgres_with_alice().await?;
    let node_b = test.second_node().await?;
    let mut watch = node_b.watch_mailbox(inbox);
    watch.mark_unchanged();
    test.store
        .store_message(message("hello from node a", inbox))
        .await?;
    tokio::time::timeout(std::time::Duration::from_secs(1), watch.changed())
        .await
        .map_err(|_| "node B's watcher did not wake within 1 s of node A's commit")??;
    assert_eq!(node_b.messages(inbox).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn postgres_a_node_name_is_held_by_one_running_node() -> TestResult {
    let (test, _) = postgres_with_alice().await?;
    let node_b = test.second_node().await?;
    test.store.register_node("mail1").await?;
    let again = node_b.register_node("mail1").await;
    assert!(
        matches!(&again, Err(StoreError::NotAllowed(why)) if why.contains("mail1")),
        "{again:?}"
    );
    node_b.register_node("mail2").await?;
    Ok(())
}

#[tokio::test]
async fn sqlite_registering_the_node_ends_every_lease_an_earlier_run_left() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (store, _) = store_with_alice(dir.path()).await?;
    queue_for_two(&store).await?;
    let taken = store
        .due_messages(i64::MAX - 1, 10, &lease("old-host-name"))
        .await?;
    assert_eq!(due_recipient_ids(&taken).len(), 2);
    assert!(
        store
            .due_messages(i64::MAX - 1, 10, &lease("new-name"))
            .await?
            .is_empty()
    );
    // A restart under another name: nothing stays held by the process that is gone.
    store.register_node("new-name").await?;
    let free = store.due_messages(i64::MAX - 1, 10, &lease("new-name")).await?;
    assert_eq!(due_recipient_ids(&free), due_recipient_ids(&taken));
    Ok(())
}

// ---- SQLite's own: its file, its commits, its migrations and snapshots ----

/// Finds `needle` in a file and flips one byte of it, as a failing disk would.
fn corrupt_on_disk(path: &Path, needle: &[u8]) -> TestResult {
    let mut bytes = std::fs::read(path)?;
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .ok_or("marker not found in the database file")?;
    bytes[at] ^= 0x20;
    std::fs::write(path, bytes)?;
    Ok(())
}

#[tokio::test]
async fn a_blob_corrupted_on_disk_is_detected_on_read() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (store, inbox) = store_with_alice(dir.path()).await?;
    let stored = store
        .store_message(message("MARKER-0123456789-integrity", inbox))
        .await?;
    let good = store.store_message(message("untouched", inbox)).await?;
    // Closing checkpoints the WAL into the database file; the marker is then on disk there.
    store.close().await;
    let db = dir.path().join(DB_FILE);
    corrupt_on_disk(&db, b"MARKER-0123456789")?;
    let wal = dir.path().join(format!("{DB_FILE}-wal"));
    if std::fs::read(&wal).is_ok_and(|w| w.windows(17).any(|x| x == b"MARKER-0123456789")) {
        corrupt_on_disk(&wal, b"MARKER-0123456789")?;
    }

    let store = SqliteStore::open(dir.path(), 256).await?;
    match store.read_message(stored[0].id).await {
        Err(StoreError::Integrity { expected, actual, .. }) => {
            assert_eq!(expected, stored[0].sha256);
            assert_ne!(actual, expected);
        }
        other => panic!("corruption not detected: {other:?}"),
    }
    // Other messages are still served.
    assert!(store.read_message(good[0].id).await.is_ok());
    Ok(())
}

#[tokio::test]
async fn concurrent_writers_share_commits() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (store, inbox) = store_with_alice(dir.path()).await?;
    let store = Arc::new(store);
    let before = store.commit_stats();
    let writers = 200;
    let mut tasks = Vec::new();
    for i in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.store_message(message(&format!("m{i}"), inbox)).await
        }));
    }
    let mut uids = Vec::new();
    for task in tasks {
        uids.push(task.await??[0].uid);
    }
    uids.sort_unstable();
    assert_eq!(
        uids,
        (1..=writers).collect::<Vec<u32>>(),
        "every write stored once with its own UID"
    );
    let after = store.commit_stats();
    let writes = after.writes - before.writes;
    let commits = after.commits - before.commits;
    assert_eq!(writes, writers as u64);
    assert!(
        commits * 4 <= writes,
        "{writes} writes took {commits} commits: writers were not grouped"
    );
    Ok(())
}

fn fixture_v1() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1.db")
}

#[tokio::test]
async fn a_store_made_by_schema_v1_migrates_with_a_snapshot_and_keeps_its_data() -> TestResult {
    let dir = tempfile::tempdir()?;
    std::fs::copy(fixture_v1(), dir.path().join(DB_FILE))?;
    let pending = SqliteStore::pending_migrations(dir.path()).await?;
    assert_eq!(
        pending.iter().map(|m| m.version).collect::<Vec<_>>(),
        [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
    );
    assert_eq!(pending[0].description, "outbound queue");

    let store = SqliteStore::open(dir.path(), 16).await?;
    assert!(SqliteStore::pending_migrations(dir.path()).await?.is_empty());
    let snapshots: Vec<_> = std::fs::read_dir(dir.path().join("backups"))?.collect::<Result<_, _>>()?;
    assert_eq!(snapshots.len(), 1);
    let name = snapshots[0].file_name().to_string_lossy().into_owned();
    assert!(
        name.starts_with("pre-migration-v1-") && name.ends_with(".db"),
        "{name}"
    );
    // The snapshot is a store of version 1 with the same data.
    let snapshot_dir = tempfile::tempdir()?;
    std::fs::copy(snapshots[0].path(), snapshot_dir.path().join(DB_FILE))?;
    assert_eq!(
        SqliteStore::pending_migrations(snapshot_dir.path()).await?.len(),
        pending.len()
    );

    let alice = store
        .account(&address("alice@example.test")?)
        .await?
        .ok_or("alice lost in migration")?;
    let inbox = store.mailbox(alice.id, "INBOX").await?.ok_or("INBOX lost")?;
    let messages = store.messages(inbox.id).await?;
    assert_eq!(messages.len(), 1);
    let bytes = store.read_message(messages[0].id).await?;
    assert!(bytes.starts_with(b"From: fixture@example.test\r\n"));
    assert_eq!(
        store.account_usage(alice.id).await?,
        bytes.len() as u64,
        "schema 10 counts what was stored before it"
    );
    // Schema 11: what was stored before is not recent for anyone.
    assert_eq!(store.mailbox_status(inbox.id).await?.recent, 0);
    assert_eq!(
        store.claim_recent(inbox.id, messages[0].uid, true).await?,
        messages[0].uid
    );
    // Schema 12: the subscriptions of the default mailboxes are kept.
    assert!(
        store
            .subscriptions(alice.id)
            .await?
            .contains(&"INBOX".to_string())
    );
    // The migrated store takes new messages after the old ones.
    let added = store.store_message(message("after migration", inbox.id)).await?;
    assert_eq!(added[0].uid, messages[0].uid + 1);
    Ok(())
}

#[tokio::test]
async fn an_empty_store_gets_every_migration_without_a_snapshot() -> TestResult {
    let dir = tempfile::tempdir()?;
    assert_eq!(SqliteStore::pending_migrations(dir.path()).await?.len(), 17);
    SqliteStore::open(dir.path(), 16).await?;
    assert!(SqliteStore::pending_migrations(dir.path()).await?.is_empty());
    assert!(!dir.path().join("backups").exists());
    Ok(())
}

/// Every message in a store is readable and verified, and every mailbox's UIDNEXT is above its
/// messages: what a consistent copy must show.
async fn assert_consistent(store: &SqliteStore) -> TestResult<usize> {
    let mut total = 0;
    for account in store.list_accounts().await? {
        for mailbox in store.mailboxes(account.id).await? {
            let messages: Vec<StoredMessage> = store.messages(mailbox.id).await?;
            for m in &messages {
                let bytes = store.read_message(m.id).await?;
                assert_eq!(bytes.len() as u64, m.size);
                assert!(
                    m.uid < mailbox.uid_next,
                    "uid {} not below UIDNEXT {}",
                    m.uid,
                    mailbox.uid_next
                );
            }
            total += messages.len();
        }
    }
    Ok(total)
}

#[tokio::test]
async fn a_snapshot_taken_under_write_load_is_consistent() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (store, inbox) = store_with_alice(dir.path()).await?;
    let store = Arc::new(store);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (store, stop) = (store.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                store
                    .store_message(message(
                        &format!("writer {w} message {n} {}", "x".repeat(2000)),
                        inbox,
                    ))
                    .await?;
                n += 1;
            }
            Ok::<u32, StoreError>(n)
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let copy_dir = tempfile::tempdir()?;
    store.snapshot(&copy_dir.path().join(DB_FILE)).await?;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        written += w.await?? as usize;
    }
    let copy = SqliteStore::open(copy_dir.path(), 16).await?;
    let in_copy = assert_consistent(&copy).await?;
    assert!(
        in_copy > 0 && in_copy < written,
        "copy has {in_copy} of {written} messages"
    );
    assert_eq!(assert_consistent(&store).await?, written);
    Ok(())
}

const CHILD_ENV: &str = "SEALMAIL_STORE_CHILD_DIR";

/// Run as a child process by `acknowledged_writes_survive_sigkill`: writes messages forever,
/// printing "ACK uid" after each write returns.
#[tokio::test]
async fn child_writer_for_sigkill_test() -> TestResult {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return Ok(()); // Only meaningful as the child process.
    };
    let store = SqliteStore::open(Path::new(&dir), 64).await?;
    let alice = store
        .account(&address("alice@example.test")?)
        .await?
        .ok_or("no alice")?;
    let inbox = store.mailbox(alice.id, "INBOX").await?.ok_or("no inbox")?;
    let store = Arc::new(store);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for w in 0..8 {
        let (store, tx) = (store.clone(), tx.clone());
        tokio::spawn(async move {
            for n in 0.. {
                match store
                    .store_message(message(&format!("w{w} n{n}"), inbox.id))
                    .await
                {
                    Ok(stored) => {
                        let _ = tx.send(stored[0].uid);
                    }
                    Err(e) => panic!("write failed: {e}"),
                }
            }
        });
    }
    use std::io::Write;
    while let Some(uid) = rx.recv().await {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ACK {uid}")?;
        out.flush()?;
    }
    Ok(())
}

#[tokio::test]
async fn acknowledged_writes_survive_sigkill() -> TestResult {
    use std::io::BufRead;
    let dir = tempfile::tempdir()?;
    drop(store_with_alice(dir.path()).await?);
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "child_writer_for_sigkill_test",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut acked = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        if let Some(uid) = line?.strip_prefix("ACK ") {
            acked.push(uid.parse::<u32>()?);
            if acked.len() == 300 {
                child.kill()?; // SIGKILL, in the middle of further writes
                break;
            }
        }
    }
    child.wait()?;
    assert_eq!(acked.len(), 300, "the child stopped early");

    let store = SqliteStore::open(dir.path(), 16).await?;
    let alice = store
        .account(&address("alice@example.test")?)
        .await?
        .ok_or("no alice")?;
    let inbox = store.mailbox(alice.id, "INBOX").await?.ok_or("no inbox")?;
    let stored: std::collections::BTreeSet<u32> =
        store.messages(inbox.id).await?.iter().map(|m| m.uid).collect();
    for uid in &acked {
        assert!(stored.contains(uid), "acknowledged message {uid} was lost");
    }
    assert_eq!(assert_consistent(&store).await?, stored.len());
    // UIDs are dense: nothing half-written left a gap or a duplicate.
    assert_eq!(stored.len() as u32, stored.iter().max().copied().unwrap_or(0));
    Ok(())
}

/// Writes tests/fixtures/store-v1.db the way sealmail's first schema version made stores.
/// Run once when the fixture must be rebuilt: `cargo test -p sealmail-store -- --ignored make_v1_fixture`.
#[tokio::test]
#[ignore]
async fn make_v1_fixture() -> TestResult {
    use sqlx::ConnectOptions;
    let migrations = tempfile::tempdir()?;
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/0001_initial.sql");
    std::fs::copy(&source, migrations.path().join("0001_initial.sql"))?;
    let target = fixture_v1();
    let _ = std::fs::remove_file(&target);
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&target)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Delete)
        .connect()
        .await?;
    sqlx::migrate::Migrator::new(migrations.path())
        .await?
        .run(&mut conn)
        .await?;
    for sql in [
        "INSERT INTO domains (id, name, created_at) VALUES (1, 'example.test', 1700000000)",
        "INSERT INTO accounts (id, domain_id, address, password_hash, created_at) VALUES (1, 1, 'alice@example.test', '$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$8vJH5cV0xUo3y0mQ1hY5q1m5Zl0eZC3gKp3n6cZrXbM', 1700000000)",
        "INSERT INTO mailboxes (id, account_id, name, special_use, uid_validity, uid_next) VALUES (1, 1, 'INBOX', NULL, 1700000000, 2), (2, 1, 'Sent', '\\Sent', 1700000000, 1), (3, 1, 'Drafts', '\\Drafts', 1700000000, 1), (4, 1, 'Trash', '\\Trash', 1700000000, 1), (5, 1, 'Junk', '\\Junk', 1700000000, 1)",
    ] {
        sqlx::query(sql).execute(&mut conn).await?;
    }
    let content = b"From: fixture@example.test\r\nTo: alice@example.test\r\nSubject: made by schema v1\r\n\r\nHello.\r\n".to_vec();
    let sha = sealmail_store::sha256_hex(&content);
    sqlx::query("INSERT INTO blobs (id, sha256, size, data) VALUES (1, ?1, ?2, ?3)")
        .bind(sha.as_bytes())
        .bind(content.len() as i64)
        .bind(content)
        .execute(&mut conn)
        .await?;
    sqlx::query("INSERT INTO messages (id, mailbox_id, uid, blob_id, flags, internal_date) VALUES (1, 1, 1, 1, '\\Seen', 1700000000)")
        .execute(&mut conn)
        .await?;
    sqlx::query("VACUUM").execute(&mut conn).await?;
    Ok(())
}

/// Rows in `table` of the store file in `dir`, read with a connection of our own.
async fn count_sqlite_rows(dir: &Path, table: &str) -> TestResult<i64> {
    use sqlx::ConnectOptions;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join(DB_FILE))
        .read_only(true)
        .connect()
        .await?;
    let sql = format!("SELECT COUNT(*) FROM {table}");
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(&mut conn)
        .await?)
}

// ---- Credentials beyond the password (schema 14) ----

async fn scram_verifiers_follow_the_password_they_were_made_from(backend: Backend) -> TestResult {
    let (test, _) = with_alice(backend).await?;
    let store = &*test.store;
    let alice = store
        .account(&address("alice@example.test")?)
        .await?
        .ok_or("no alice")?;
    assert_eq!(store.scram_verifier(alice.id).await?, None);
    assert!(
        !store
            .set_scram_verifier(alice.id, "$argon2id$other", "SCRAM-SHA-256$x")
            .await?,
        "a verifier of another password is not stored"
    );
    assert!(
        store
            .set_scram_verifier(alice.id, &alice.password_hash, "SCRAM-SHA-256$a")
            .await?
    );
    assert_eq!(
        store.scram_verifier(alice.id).await?.as_deref(),
        Some("SCRAM-SHA-256$a")
    );
    let before = store.credentials_generation().await?;
    store.set_password_hash(&alice.address, "$argon2id$new").await?;
    assert_eq!(
        store.scram_verifier(alice.id).await?,
        None,
        "a password change clears it"
    );
    assert!(store.credentials_generation().await? > before);
    Ok(())
}

async fn app_passwords_are_found_by_lookup_listed_used_and_revoked(backend: Backend) -> TestResult {
    use sealmail_store::NewAppPassword;
    let (test, _) = with_alice(backend).await?;
    let store = &*test.store;
    let alice = store
        .account(&address("alice@example.test")?)
        .await?
        .ok_or("no alice")?;
    let new = |name: &str, lookup: &str| NewAppPassword {
        account: alice.id,
        name: name.to_string(),
        lookup: lookup.to_string(),
        password_hash: format!("$argon2id${name}"),
        scopes: "imap".to_string(),
        expires_at: Some(2_000_000_000),
    };
    let phone = store.add_app_password(new("phone", "abcde")).await?;
    store.add_app_password(new("laptop", "fghij")).await?;
    let dup = store.add_app_password(new("phone", "zzzzz")).await;
    assert!(matches!(dup, Err(StoreError::Duplicate(_))), "{dup:?}");

    let listed = store.app_passwords(alice.id).await?;
    assert_eq!(
        listed.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["laptop", "phone"]
    );
    let candidates = store.app_password_candidates(alice.id, "abcde").await?;
    assert_eq!(candidates.len(), 1);
    let found = &candidates[0];
    assert_eq!(
        (
            found.id,
            found.name.as_str(),
            found.password_hash.as_str(),
            found.scopes.as_str()
        ),
        (phone, "phone", "$argon2id$phone", "imap")
    );
    assert_eq!(
        (found.expires_at, found.last_used_at),
        (Some(2_000_000_000), None)
    );

    let before = store.credentials_generation().await?;
    store
        .note_app_password_use(phone, 1_700_000_000, "127.0.0.2")
        .await?;
    let used = store.app_password(phone).await?.ok_or("phone gone")?;
    assert_eq!(
        (used.last_used_at, used.last_used_from.as_deref()),
        (Some(1_700_000_000), Some("127.0.0.2"))
    );
    assert_eq!(
        store.credentials_generation().await?,
        before,
        "a use revokes nothing"
    );

    store.revoke_app_password(alice.id, "phone").await?;
    assert!(
        store.credentials_generation().await? > before,
        "revocation ends its sessions"
    );
    assert_eq!(store.app_password(phone).await?, None);
    let again = store.revoke_app_password(alice.id, "phone").await;
    assert!(matches!(again, Err(StoreError::NotFound(_))), "{again:?}");
    Ok(())
}

async fn a_totp_step_and_a_recovery_code_are_taken_once(backend: Backend) -> TestResult {
    let (test, _) = with_alice(backend).await?;
    let store = &*test.store;
    let alice = store
        .account(&address("alice@example.test")?)
        .await?
        .ok_or("no alice")?;
    assert!(store.mfa(alice.id).await?.is_none());
    store.start_mfa(alice.id, vec![1, 2, 3]).await?;
    let pending = store.mfa(alice.id).await?.ok_or("no enrolment")?;
    assert!(!pending.active);
    assert_eq!(pending.sealed_secret, vec![1, 2, 3]);
    assert!(
        !store.use_totp_step(alice.id, 100).await?,
        "a pending factor takes no step"
    );
    assert!(!store.use_recovery_code(alice.id, "h1").await?);

    let before = store.credentials_generation().await?;
    let codes = vec!["h1".to_string(), "h2".to_string()];
    assert!(store.activate_mfa(alice.id, 100, codes.clone()).await?);
    assert!(!store.activate_mfa(alice.id, 101, codes).await?, "already active");
    assert!(
        store.credentials_generation().await? > before,
        "activation re-checks sessions"
    );
    let active = store.mfa(alice.id).await?.ok_or("gone")?;
    assert!(active.active);
    assert_eq!((active.last_step, active.recovery_codes_left), (100, 2));
    let restart = store.start_mfa(alice.id, vec![9]).await;
    assert!(matches!(restart, Err(StoreError::NotAllowed(_))), "{restart:?}");

    assert!(
        !store.use_totp_step(alice.id, 100).await?,
        "the confirming step is used"
    );
    assert!(store.use_totp_step(alice.id, 101).await?);
    assert!(!store.use_totp_step(alice.id, 101).await?, "a replayed step");
    assert!(!store.use_totp_step(alice.id, 99).await?, "an earlier step");
    assert!(store.use_recovery_code(alice.id, "h2").await?);
    assert!(
        !store.use_recovery_code(alice.id, "h2").await?,
        "a recovery code works once"
    );
    assert!(!store.use_recovery_code(alice.id, "nope").await?);
    assert_eq!(store.mfa(alice.id).await?.ok_or("gone")?.recovery_codes_left, 1);

    assert!(store.disable_mfa(alice.id).await?);
    assert!(!store.disable_mfa(alice.id).await?);
    assert!(store.mfa(alice.id).await?.is_none());
    assert_eq!(test.count_rows("recovery_codes").await?, 0);
    Ok(())
}

async fn client_certificates_are_registered_and_stay_revoked(backend: Backend) -> TestResult {
    use sealmail_store::{ClientCert, KnownClientCerts, Retention};
    let (test, _) = with_alice(backend).await?;
    let store = &*test.store;
    let alice = store
        .account(&address("alice@example.test")?)
        .await?
        .ok_or("no alice")?;
    let now = sealmail_types::clock::now_unix();
    let cert = |fingerprint: &str, not_after: i64| ClientCert {
        fingerprint: fingerprint.to_string(),
        account: alice.id,
        subject: "CN=alice@example.test".to_string(),
        not_after,
        issued_here: true,
        added_at: 0,
    };
    let unregistered = store.credentials_generation().await?;
    store.add_client_cert(cert("aa", now + 86_400)).await?;
    assert!(
        store.credentials_generation().await? > unregistered,
        "running servers must learn of a new registration"
    );
    store.add_client_cert(cert("bb", now + 86_400)).await?;
    store.add_client_cert(cert("cc", now + 86_400)).await?;
    let dup = store.add_client_cert(cert("aa", now)).await;
    assert!(matches!(dup, Err(StoreError::Duplicate(_))), "{dup:?}");
    let found = store.client_cert("aa").await?.ok_or("aa missing")?;
    assert_eq!(
        (
            found.account,
            found.subject.as_str(),
            found.not_after,
            found.issued_here
        ),
        (alice.id, "CN=alice@example.test", now + 86_400, true)
    );
    assert!(found.added_at >= now);
    assert_eq!(store.client_certs(alice.id).await?.len(), 3);

    let before = store.credentials_generation().await?;
    store.remove_client_cert(alice.id, "aa").await?;
    assert!(store.credentials_generation().await? > before);
    assert!(store.is_cert_revoked("aa").await?);
    assert!(!store.is_cert_revoked("bb").await?);
    let readd = store.add_client_cert(cert("aa", now + 86_400)).await;
    assert!(
        matches!(readd, Err(StoreError::Duplicate(_))),
        "a revoked one comes back: {readd:?}"
    );
    let missing = store.remove_client_cert(alice.id, "zz").await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))), "{missing:?}");

    // An account's removal revokes its certificates, so a new account of the same address
    // does not inherit them.
    store.remove_account(&alice.address).await?;
    let known = store.known_client_certs().await?;
    let mut revoked = known.revoked.clone();
    revoked.sort();
    assert_eq!(
        (known.registered.clone(), revoked),
        (
            Vec::<String>::new(),
            vec!["aa".to_string(), "bb".to_string(), "cc".to_string()]
        )
    );
    assert_ne!(known, KnownClientCerts::default());

    // Revocations are kept while the certificate could still be presented.
    let pruned = store.prune(Retention::at(now)).await?;
    assert_eq!(pruned.revoked_certs, 0);
    let pruned = store.prune(Retention::at(now + 2 * 86_400)).await?;
    assert_eq!(pruned.revoked_certs, 3);
    Ok(())
}

// ---- Web sessions and the admin role (schema 15) ----

/// A session of `account` made at `at`, for an hour.
fn web_session(id: &str, account: sealmail_types::AccountId, at: i64) -> sealmail_store::WebSession {
    sealmail_store::WebSession {
        id_hash: sealmail_store::sha256_hex(id.as_bytes()),
        account,
        credential: "password+totp".to_string(),
        client_address: "192.0.2.1".to_string(),
        user_agent: "Test/1.0".to_string(),
        created_at: at,
        last_seen_at: at,
        expires_at: at + 3600,
    }
}

async fn web_sessions_are_found_until_they_expire_and_touched_only_while_live(
    backend: Backend,
) -> TestResult {
    let (test, _) = with_alice(backend).await?;
    let store = &*test.store;
    let alice = store
        .account(&address("alice@example.test")?)
        .await?
        .ok_or("no alice")?;
    let t = 1_700_000_000;
    let session = web_session("cookie-1", alice.id, t);
    store.add_web_session(session.clone()).await?;
    let again = store.add_web_session(session.clone()).await;
    assert!(matches!(again, Err(StoreError::Duplicate(_))), "{again:?}");

    assert_eq!(
        store.web_session(&session.id_hash, t + 10).await?,
        Some(session.clone()),
        "every field reads back"
    );
    assert_eq!(
        store.web_session(&session.id_hash, t + 3600).await?,
        None,
        "expired at expires_at"
    );
    assert_eq!(store.web_session("no such hash", t).await?, None);

    // A touch moves last_seen_at and expires_at, so the session outlives its first hour.
    store
        .touch_web_session(&session.id_hash, t + 1800, t + 5400)
        .await?;
    let touched = store
        .web_session(&session.id_hash, t + 3600)
        .await?
        .ok_or("the touched session expired")?;
    assert_eq!(
        (touched.created_at, touched.last_seen_at, touched.expires_at),
        (t, t + 1800, t + 5400)
    );
    // An expired session is not brought back by a touch.
    store
        .touch_web_session(&session.id_hash, t + 5400, t + 9000)
        .await?;
    assert_eq!(store.web_session(&session.id_hash, t + 5400).await?, None);
    assert_eq!(
        store
            .web_session(&session.id_hash, t + 5399)
            .await?
            .map(|s| s.expires_at),
        Some(t + 5400),
        "the late touch changed nothing"
    );
    // A touch of a session that does not exist is no error and makes none.
    store.touch_web_session("gone", t, t + 3600).await?;
    assert_eq!(store.web_session("gone", t).await?, None);
    Ok(())
}

async fn web_sessions_end_one_by_one_or_all_but_the_one_kept(backend: Backend) -> TestResult {
    let (test, _) = with_alice(backend).await?;
    let store = &*test.store;
    let alice = store
        .account(&address("alice@example.test")?)
        .await?
        .ok_or("no alice")?;
    let bob = store
        .add_account(&address("bob@example.test")?, "$argon2id$bob")
        .await?;
    let t = 1_700_000_000;
    for (n, id) in ["a", "b", "c", "d"].iter().enumerate() {
        store
            .add_web_session(web_session(id, alice.id, t + n as i64))
            .await?;
    }
    store.add_web_session(web_session("bob's", bob, t)).await?;
    let hash = |id: &str| sealmail_store::sha256_hex(id.as_bytes());

    let listed = store.web_sessions(alice.id, t).await?;
    assert_eq!(
        listed.iter().map(|s| s.id_hash.clone()).collect::<Vec<_>>(),
        [hash("d"), hash("c"), hash("b"), hash("a")],
        "newest first, only alice's"
    );
    assert_eq!(
        store.web_sessions(alice.id, t + 3601).await?.len(),
        2,
        "a and b expired"
    );
    assert!(
        store.web_sessions(alice.id, t + 3603).await?.is_empty(),
        "all expired"
    );

    assert!(store.end_web_session(&hash("a")).await?);
    assert!(!store.end_web_session(&hash("a")).await?, "ended already");
    assert_eq!(store.web_session(&hash("a"), t).await?, None);

    // Log out everywhere else: b and d end, c (this browser) stays, bob's is not alice's.
    assert_eq!(store.end_web_sessions(alice.id, Some(&hash("c"))).await?, 2);
    assert_eq!(
        store
            .web_sessions(alice.id, t)
            .await?
            .iter()
            .map(|s| s.id_hash.clone())
            .collect::<Vec<_>>(),
        [hash("c")]
    );
    assert_eq!(store.end_web_sessions(alice.id, None).await?, 1);
    assert!(store.web_sessions(alice.id, t).await?.is_empty());
    assert_eq!(store.end_web_sessions(alice.id, None).await?, 0);
    assert!(store.web_session(&hash("bob's"), t).await?.is_some());
    Ok(())
}

async fn logins_waiting_for_a_second_factor_never_push_out_signed_in_sessions(
    backend: Backend,
) -> TestResult {
    use sealmail_store::{MAX_PENDING_WEB_SESSIONS, MAX_WEB_SESSIONS, WEB_SESSION_PENDING};
    let (test, _) = with_alice(backend).await?;
    let store = &*test.store;
    let alice = store
        .account(&address("alice@example.test")?)
        .await?
        .ok_or("no alice")?;
    let t = 1_700_000_000;
    for n in 0..MAX_WEB_SESSIONS {
        store
            .add_web_session(web_session(&format!("full{n}"), alice.id, t + n as i64))
            .await?;
    }
    // Someone who knows only the password starts many logins, each newer than every session.
    for n in 0..MAX_PENDING_WEB_SESSIONS + 3 {
        let mut pending = web_session(&format!("pending{n}"), alice.id, t + 1_000 + n as i64);
        pending.credential = WEB_SESSION_PENDING.to_string();
        store.add_web_session(pending).await?;
    }
    let live = store.web_sessions(alice.id, t).await?;
    let full = live
        .iter()
        .filter(|s| s.credential != WEB_SESSION_PENDING)
        .count();
    let pending = live.len() - full;
    assert_eq!(full, MAX_WEB_SESSIONS, "every signed-in session is kept");
    assert_eq!(
        pending, MAX_PENDING_WEB_SESSIONS,
        "waiting logins have their own cap"
    );
    let newest_pending =
        sealmail_store::sha256_hex(format!("pending{}", MAX_PENDING_WEB_SESSIONS + 2).as_bytes());
    assert!(live.iter().any(|s| s.id_hash == newest_pending));
    let oldest_pending = sealmail_store::sha256_hex(b"pending0");
    assert!(!live.iter().any(|s| s.id_hash == oldest_pending));
    Ok(())
}

async fn an_account_keeps_at_most_twenty_web_sessions_dropping_the_least_recently_seen(
    backend: Backend,
) -> TestResult {
    use sealmail_store::MAX_WEB_SESSIONS;
    let (test, _) = with_alice(backend).await?;
    let store = &*test.store;
    let alice = store
        .account(&address("alice@example.test")?)
        .await?
        .ok_or("no alice")?;
    let bob = store
        .add_account(&address("bob@example.test")?, "$argon2id$bob")
        .await?;
    store.add_web_session(web_session("bob's", bob, 1_000)).await?;
    let t = 1_700_000_000;
    let id = |n: usize| format!("s{n}");
    let hash = |n: usize| sealmail_store::sha256_hex(id(n).as_bytes());
    for n in 0..MAX_WEB_SESSIONS {
        store
            .add_web_session(web_session(&id(n), alice.id, t + n as i64))
            .await?;
    }
    // s0 is the oldest but was used last; s1 is now the one seen longest ago.
    store.touch_web_session(&hash(0), t + 100, t + 3700).await?;
    assert_eq!(store.web_sessions(alice.id, t).await?.len(), MAX_WEB_SESSIONS);

    store
        .add_web_session(web_session(&id(MAX_WEB_SESSIONS), alice.id, t + 200))
        .await?;
    let kept = store.web_sessions(alice.id, t).await?;
    assert_eq!(kept.len(), MAX_WEB_SESSIONS);
    assert!(!kept.iter().any(|s| s.id_hash == hash(1)), "s1 was ended");
    for n in [0, 2, MAX_WEB_SESSIONS] {
        assert!(kept.iter().any(|s| s.id_hash == hash(n)), "s{n} was kept");
    }

    // The new session is kept even when the clock makes it look the least recent.
    store
        .add_web_session(web_session(&id(MAX_WEB_SESSIONS + 1), alice.id, t - 500))
        .await?;
    let kept = store.web_sessions(alice.id, 0).await?;
    assert_eq!(kept.len(), MAX_WEB_SESSIONS);
    assert!(kept.iter().any(|s| s.id_hash == hash(MAX_WEB_SESSIONS + 1)));
    assert!(!kept.iter().any(|s| s.id_hash == hash(2)), "s2 was ended");
    assert_eq!(
        test.count_rows("web_sessions").await?,
        MAX_WEB_SESSIONS as i64 + 1
    );
    assert!(
        store
            .web_session(&sealmail_store::sha256_hex(b"bob's"), 1_000)
            .await?
            .is_some(),
        "another account's sessions do not count"
    );
    Ok(())
}

async fn web_sessions_go_with_their_account_and_expired_ones_are_pruned(backend: Backend) -> TestResult {
    use sealmail_store::Retention;
    let (test, _) = with_alice(backend).await?;
    let store = &*test.store;
    let alice = store
        .account(&address("alice@example.test")?)
        .await?
        .ok_or("no alice")?;
    let bob_address = address("bob@example.test")?;
    let bob = store.add_account(&bob_address, "$argon2id$bob").await?;
    let now = sealmail_types::clock::now_unix();
    // Two of alice's expired an hour ago and a minute ago; one is live.
    store
        .add_web_session(web_session("old", alice.id, now - 2 * 3600))
        .await?;
    store
        .add_web_session(web_session("recent", alice.id, now - 3660))
        .await?;
    store.add_web_session(web_session("live", alice.id, now)).await?;
    store.add_web_session(web_session("bob 1", bob, now)).await?;
    store.add_web_session(web_session("bob 2", bob, now)).await?;

    store.remove_account(&bob_address).await?;
    assert_eq!(
        test.count_rows("web_sessions").await?,
        3,
        "bob's sessions went with him"
    );
    assert!(store.web_sessions(bob, 0).await?.is_empty());

    let pruned = store.prune(Retention::at(now)).await?;
    assert_eq!(pruned.web_sessions, 2);
    assert_eq!(test.count_rows("web_sessions").await?, 1);
    let left = store.web_sessions(alice.id, now).await?;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id_hash, sealmail_store::sha256_hex(b"live"));
    assert_eq!(store.prune(Retention::at(now)).await?.web_sessions, 0);
    assert_eq!(store.prune(Retention::at(now + 3601)).await?.web_sessions, 1);
    Ok(())
}

async fn the_admin_role_is_granted_taken_and_listed(backend: Backend) -> TestResult {
    let (test, _) = with_alice(backend).await?;
    let store = &*test.store;
    let alice = store
        .account(&address("alice@example.test")?)
        .await?
        .ok_or("no alice")?;
    let bob_address = address("bob@example.test")?;
    let bob = store.add_account(&bob_address, "$argon2id$bob").await?;
    assert!(!store.is_admin(alice.id).await?, "no one is an admin at first");
    assert!(store.admins().await?.is_empty());

    store.set_admin(&bob_address, true).await?;
    store.set_admin(&alice.address, true).await?;
    store.set_admin(&alice.address, true).await?;
    assert!(store.is_admin(alice.id).await?);
    assert!(store.is_admin(bob).await?);
    assert_eq!(
        store.admins().await?,
        vec![alice.address.clone(), bob_address.clone()]
    );

    let before = store.credentials_generation().await?;
    store.set_admin(&bob_address, false).await?;
    assert!(!store.is_admin(bob).await?);
    assert!(store.is_admin(alice.id).await?, "alice keeps hers");
    assert_eq!(store.admins().await?, vec![alice.address.clone()]);
    assert_eq!(store.credentials_generation().await?, before, "not a credential");

    let unknown = store.set_admin(&address("carol@example.test")?, true).await;
    assert!(matches!(unknown, Err(StoreError::NotFound(_))), "{unknown:?}");
    assert!(!store.is_admin(sealmail_types::AccountId(i64::MAX)).await?);

    // A removed admin is no admin, and a new account of the same address does not inherit it.
    store.remove_account(&alice.address).await?;
    assert!(store.admins().await?.is_empty());
    let new_alice = store.add_account(&alice.address, "$argon2id$new").await?;
    assert!(!store.is_admin(new_alice).await?);
    Ok(())
}

// ---- Security keys (WebAuthn second factor, schema 16) ----

/// Key `n` of `account`, registered at `at`: credential id 32 bytes of `n`.
fn security_key(account: sealmail_types::AccountId, n: u8, at: i64) -> sealmail_store::SecurityKey {
    sealmail_store::SecurityKey {
        id: 0,
        account,
        credential_id: vec![n; 32],
        public_key: vec![0x30, 0x59, n],
        name: format!("key {n}"),
        sign_count: 0,
        created_at: at,
        last_used_at: None,
    }
}

/// A store with alice and bob; returns it with their account ids.
async fn with_alice_and_bob(
    backend: Backend,
) -> TestResult<(TestStore, sealmail_types::AccountId, sealmail_types::AccountId)> {
    let (test, _) = with_alice(backend).await?;
    let alice = test
        .store
        .account(&address("alice@example.test")?)
        .await?
        .ok_or("no alice")?
        .id;
    let bob = test
        .store
        .add_account(&address("bob@example.test")?, "$argon2id$bob")
        .await?;
    Ok((test, alice, bob))
}

async fn security_keys_are_listed_oldest_first_and_a_credential_id_is_registered_once(
    backend: Backend,
) -> TestResult {
    let (test, alice, bob) = with_alice_and_bob(backend).await?;
    let store = &*test.store;
    let t = 1_700_000_000;
    assert!(store.security_keys(alice).await?.is_empty());

    let before = store.credentials_generation().await?;
    let mut newer = security_key(alice, 1, t + 10);
    newer.sign_count = 7;
    newer.last_used_at = Some(t + 20);
    newer.id = 12_345; // ignored
    let newer_id = store
        .add_security_key(newer.clone())
        .await?
        .ok_or("key 1 refused")?;
    let older = security_key(alice, 2, t);
    let older_id = store
        .add_security_key(older.clone())
        .await?
        .ok_or("key 2 refused")?;
    assert_ne!(newer_id, older_id);
    assert!(
        store.credentials_generation().await? > before,
        "a new second factor can end logins"
    );

    let listed = store.security_keys(alice).await?;
    assert_eq!(
        listed,
        vec![
            sealmail_store::SecurityKey {
                id: older_id,
                ..older.clone()
            },
            sealmail_store::SecurityKey {
                id: newer_id,
                ..newer.clone()
            },
        ],
        "every field reads back, oldest first"
    );
    assert!(store.security_keys(bob).await?.is_empty());

    // A credential id registered already is refused, for the same account or another.
    let mut again = security_key(alice, 1, t + 30);
    again.name = "another name".into();
    assert_eq!(store.add_security_key(again).await?, None);
    assert_eq!(store.add_security_key(security_key(bob, 2, t + 30)).await?, None);
    assert!(store.security_keys(bob).await?.is_empty());
    assert_eq!(test.count_rows("security_keys").await?, 2);
    // Bob's own key is his.
    let bobs = store
        .add_security_key(security_key(bob, 3, t))
        .await?
        .ok_or("bob's key refused")?;
    assert_eq!(
        store
            .security_keys(bob)
            .await?
            .iter()
            .map(|k| k.id)
            .collect::<Vec<_>>(),
        [bobs]
    );

    // No account, no key.
    let nobody = store
        .add_security_key(security_key(sealmail_types::AccountId(i64::MAX), 9, t))
        .await;
    assert!(matches!(nobody, Err(StoreError::NotFound(_))), "{nobody:?}");

    // Kept across a restart.
    let test = test.reopen().await?;
    assert_eq!(test.store.security_keys(alice).await?.len(), 2);
    Ok(())
}

async fn security_keys_with_too_long_fields_are_refused(backend: Backend) -> TestResult {
    let (test, alice, _) = with_alice_and_bob(backend).await?;
    let store = &*test.store;
    let t = 1_700_000_000;

    let mut key = security_key(alice, 1, t);
    key.credential_id = vec![1; 1024];
    let refused = store.add_security_key(key).await;
    assert!(matches!(refused, Err(StoreError::NotAllowed(_))), "{refused:?}");
    let mut key = security_key(alice, 1, t);
    key.public_key = vec![1; 2049];
    let refused = store.add_security_key(key).await;
    assert!(matches!(refused, Err(StoreError::NotAllowed(_))), "{refused:?}");
    let mut key = security_key(alice, 1, t);
    key.name = "é".repeat(65);
    let refused = store.add_security_key(key).await;
    assert!(matches!(refused, Err(StoreError::NotAllowed(_))), "{refused:?}");
    assert_eq!(test.count_rows("security_keys").await?, 0);

    // The longest of each is kept whole (64 characters of two bytes each).
    let mut key = security_key(alice, 1, t);
    key.credential_id = vec![1; 1023];
    key.public_key = vec![2; 2048];
    key.name = "é".repeat(64);
    let id = store.add_security_key(key.clone()).await?.ok_or("refused")?;
    assert_eq!(
        store.security_keys(alice).await?,
        vec![sealmail_store::SecurityKey { id, ..key }]
    );
    Ok(())
}

async fn an_account_keeps_at_most_ten_security_keys(backend: Backend) -> TestResult {
    use sealmail_store::MAX_SECURITY_KEYS;
    let (test, alice, bob) = with_alice_and_bob(backend).await?;
    let store = &*test.store;
    let t = 1_700_000_000;
    assert_eq!(MAX_SECURITY_KEYS, 10);
    let mut ids = Vec::new();
    for n in 0..MAX_SECURITY_KEYS as u8 {
        ids.push(
            store
                .add_security_key(security_key(alice, n, t + i64::from(n)))
                .await?
                .ok_or("refused under the cap")?,
        );
    }
    assert_eq!(
        store.add_security_key(security_key(alice, 100, t + 100)).await?,
        None,
        "the eleventh is refused"
    );
    assert_eq!(store.security_keys(alice).await?.len(), MAX_SECURITY_KEYS);
    assert!(
        store.add_security_key(security_key(bob, 100, t)).await?.is_some(),
        "another account's cap is its own"
    );
    // One removed makes room for one.
    assert!(store.remove_security_key(alice, ids[0]).await?);
    assert!(
        store
            .add_security_key(security_key(alice, 101, t + 101))
            .await?
            .is_some()
    );
    assert_eq!(
        store.add_security_key(security_key(alice, 102, t + 102)).await?,
        None
    );
    assert_eq!(
        test.count_rows("security_keys").await?,
        MAX_SECURITY_KEYS as i64 + 1
    );
    Ok(())
}

async fn concurrent_adds_of_security_keys_never_pass_the_cap(backend: Backend) -> TestResult {
    use sealmail_store::MAX_SECURITY_KEYS;
    let (test, alice, _) = with_alice_and_bob(backend).await?;
    let t = 1_700_000_000;
    let adds: Vec<_> = (0..12u8)
        .map(|n| {
            let store = test.store.clone();
            tokio::spawn(async move { store.add_security_key(security_key(alice, n, t)).await })
        })
        .collect();
    let mut stored = 0;
    for add in adds {
        if add.await??.is_some() {
            stored += 1;
        }
    }
    assert_eq!(stored, MAX_SECURITY_KEYS);
    assert_eq!(test.store.security_keys(alice).await?.len(), MAX_SECURITY_KEYS);
    assert_eq!(test.count_rows("security_keys").await?, MAX_SECURITY_KEYS as i64);

    // The same credential id added in parallel by two accounts is stored once.
    let (test, alice, bob) = with_alice_and_bob(backend).await?;
    let adds: Vec<_> = [alice, bob, alice, bob]
        .into_iter()
        .map(|account| {
            let store = test.store.clone();
            tokio::spawn(async move { store.add_security_key(security_key(account, 7, t)).await })
        })
        .collect();
    let mut stored = 0;
    for add in adds {
        if add.await??.is_some() {
            stored += 1;
        }
    }
    assert_eq!(stored, 1);
    assert_eq!(test.count_rows("security_keys").await?, 1);
    Ok(())
}

async fn a_security_key_use_is_taken_only_with_a_higher_counter(backend: Backend) -> TestResult {
    let (test, alice, bob) = with_alice_and_bob(backend).await?;
    let store = &*test.store;
    let t = 1_700_000_000;
    let mut counting = security_key(alice, 1, t);
    counting.sign_count = 5;
    store.add_security_key(counting.clone()).await?.ok_or("refused")?;
    let counterless = security_key(alice, 2, t + 1);
    store
        .add_security_key(counterless.clone())
        .await?
        .ok_or("refused")?;
    let find = |keys: Vec<sealmail_store::SecurityKey>, n: u8| {
        keys.into_iter()
            .find(|k| k.credential_id == vec![n; 32])
            .ok_or("key missing")
    };

    let generation = store.credentials_generation().await?;
    assert!(
        store
            .security_key_used(alice, &counting.credential_id, 6, t + 100)
            .await?
    );
    let key = find(store.security_keys(alice).await?, 1)?;
    assert_eq!((key.sign_count, key.last_used_at), (6, Some(t + 100)));
    assert_eq!(
        store.credentials_generation().await?,
        generation,
        "a use ends no login"
    );

    // The same counter again, or a lower one: a replay or a clone, refused and nothing changes.
    for count in [6, 5, 0] {
        assert!(
            !store
                .security_key_used(alice, &counting.credential_id, count, t + 200)
                .await?,
            "counter {count} taken after 6"
        );
    }
    let key = find(store.security_keys(alice).await?, 1)?;
    assert_eq!((key.sign_count, key.last_used_at), (6, Some(t + 100)));

    // The largest counter is kept as it is.
    assert!(
        store
            .security_key_used(alice, &counting.credential_id, u32::MAX, t + 300)
            .await?
    );
    assert_eq!(find(store.security_keys(alice).await?, 1)?.sign_count, u32::MAX);
    assert!(
        !store
            .security_key_used(alice, &counting.credential_id, u32::MAX, t + 301)
            .await?
    );

    // An authenticator without a counter: 0 after 0 is taken, each time.
    assert!(
        store
            .security_key_used(alice, &counterless.credential_id, 0, t + 400)
            .await?
    );
    assert!(
        store
            .security_key_used(alice, &counterless.credential_id, 0, t + 401)
            .await?
    );
    let key = find(store.security_keys(alice).await?, 2)?;
    assert_eq!((key.sign_count, key.last_used_at), (0, Some(t + 401)));
    // Once it counts, it must go on counting.
    assert!(
        store
            .security_key_used(alice, &counterless.credential_id, 1, t + 500)
            .await?
    );
    assert!(
        !store
            .security_key_used(alice, &counterless.credential_id, 0, t + 501)
            .await?
    );

    // Another account, or a credential id not registered, is no use.
    assert!(
        !store
            .security_key_used(bob, &counting.credential_id, 1_000, t + 600)
            .await?
    );
    assert!(!store.security_key_used(alice, &[9; 32], 1_000, t + 600).await?);
    assert_eq!(
        find(store.security_keys(alice).await?, 2)?.last_used_at,
        Some(t + 500)
    );

    // Two uses with the same counter at once: one is taken.
    let uses: Vec<_> = (0..2)
        .map(|_| {
            let store = test.store.clone();
            let credential_id = counterless.credential_id.clone();
            tokio::spawn(async move { store.security_key_used(alice, &credential_id, 2, t + 700).await })
        })
        .collect();
    let mut taken = 0;
    for used in uses {
        if used.await?? {
            taken += 1;
        }
    }
    assert_eq!(taken, 1);
    Ok(())
}

async fn security_keys_are_removed_one_by_one_all_at_once_and_with_their_account(
    backend: Backend,
) -> TestResult {
    let (test, alice, bob) = with_alice_and_bob(backend).await?;
    let store = &*test.store;
    let t = 1_700_000_000;
    let mut alices = Vec::new();
    for n in 0..3u8 {
        alices.push(
            store
                .add_security_key(security_key(alice, n, t + i64::from(n)))
                .await?
                .ok_or("refused")?,
        );
    }
    let bobs = store
        .add_security_key(security_key(bob, 10, t))
        .await?
        .ok_or("refused")?;
    store
        .add_security_key(security_key(bob, 11, t))
        .await?
        .ok_or("refused")?;

    // Alice cannot remove bob's key.
    assert!(!store.remove_security_key(alice, bobs).await?);
    assert_eq!(store.security_keys(bob).await?.len(), 2);

    let generation = store.credentials_generation().await?;
    assert!(store.remove_security_key(alice, alices[1]).await?);
    assert!(
        !store.remove_security_key(alice, alices[1]).await?,
        "removed already"
    );
    assert!(store.credentials_generation().await? > generation);
    assert_eq!(
        store
            .security_keys(alice)
            .await?
            .iter()
            .map(|k| k.id)
            .collect::<Vec<_>>(),
        [alices[0], alices[2]]
    );
    // A removed key's credential id may be registered again (to anyone).
    let again = store
        .add_security_key(security_key(bob, 1, t + 10))
        .await?
        .ok_or("refused")?;
    assert!(!alices.contains(&again), "a removed key's id is not given again");

    assert_eq!(store.remove_security_keys(alice).await?, 2);
    assert_eq!(store.remove_security_keys(alice).await?, 0);
    assert!(store.security_keys(alice).await?.is_empty());
    assert_eq!(store.security_keys(bob).await?.len(), 3);

    // Keys stand in for a second factor's code: turning it off (from any page or the CLI)
    // removes them in the same write.
    store.disable_mfa(bob).await?;
    assert!(store.security_keys(bob).await?.is_empty());
    store
        .add_security_key(security_key(bob, 12, t + 20))
        .await?
        .ok_or("refused")?;

    // Bob's keys go with his account.
    store.remove_account(&address("bob@example.test")?).await?;
    assert!(store.security_keys(bob).await?.is_empty());
    assert_eq!(test.count_rows("security_keys").await?, 0);
    Ok(())
}
