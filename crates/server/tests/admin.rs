//! The administration commands end to end: config check, domain and user management,
//! migrate --dry-run, and backup/restore under write load, all against real SQLite files.

mod common;

use sealmail_store::{AccountStore, MailStore};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use common::{free_addr, run, write_config};
use sealmail_store::{DB_FILE, NewMessage, SqliteStore};
use sealmail_testkit::{TestResult, ctx};
use sealmail_types::EmailAddress;

fn config_dir() -> TestResult<(tempfile::TempDir, String)> {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let config = write_config(
        dir.path(),
        &["mail.example.test"],
        &[("mx", free_addr()?, "starttls")],
        "",
    )?;
    Ok((dir, config.to_string_lossy().into_owned()))
}

/// `config_dir` with the certificate and key inside the data folder, the only place restore
/// writes to.
fn config_dir_with_certs_in_data() -> TestResult<(tempfile::TempDir, String)> {
    let (dir, config) = config_dir()?;
    for folder in ["data", "data/tls"] {
        ctx(
            sealmail_safeio::create_private_dir(&dir.path().join(folder)),
            "create data/tls",
        )?;
    }
    for name in ["0.pem", "0.key"] {
        ctx(
            std::fs::rename(
                dir.path().join("tls").join(name),
                dir.path().join("data/tls").join(name),
            ),
            "move into data",
        )?;
    }
    let text = ctx(std::fs::read_to_string(&config), "read")?.replace("\"tls/0.", "\"data/tls/0.");
    ctx(std::fs::write(&config, text), "write")?;
    Ok((dir, config))
}

#[test]
fn config_check_accepts_a_good_file_and_lists_every_problem_of_a_bad_one() -> TestResult {
    let (dir, config) = config_dir()?;
    let (code, out, err) = run(dir.path(), &["--config", &config, "config", "check"], None)?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": OK (1 listener(s), 1 certificate(s)"), "{out}");

    let bad = dir.path().join("bad.toml");
    let text = ctx(std::fs::read_to_string(&config), "read")?
        .replace("tls = \"starttls\"", "tls = \"none\"")
        .replace(
            "data_dir = \"data\"",
            "data_dir = \"data\"\n[limits]\nmax_connections = 0",
        );
    ctx(std::fs::write(&bad, text), "write")?;
    let bad_arg = bad.to_string_lossy().into_owned();
    let (code, _, err) = run(dir.path(), &["--config", &bad_arg, "config", "check"], None)?;
    assert_eq!(code, 2);
    assert!(
        err.contains("listener[0].tls = \"none\" is not allowed for role \"mx\"; use \"starttls\""),
        "{err}"
    );
    assert!(
        err.contains("limits.max_connections = 0 is out of range"),
        "{err}"
    );

    // $SEALMAIL_CONFIG is the default when --config is absent; a missing file is explained.
    let out = ctx(
        std::process::Command::new(common::BIN)
            .args(["config", "check"])
            .env("SEALMAIL_CONFIG", &bad_arg)
            .output(),
        "run",
    )?;
    assert_eq!(out.status.code(), Some(2));
    let (code, _, err) = run(dir.path(), &["--config", "missing.toml", "config", "check"], None)?;
    assert_ne!(code, 0);
    assert!(
        err.contains("cannot read config file missing.toml") && err.contains("sealmail init"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn domains_and_users_are_managed_from_the_command_line() -> TestResult {
    let (dir, config) = config_dir()?;
    let sealmail = |args: &[&str], stdin: Option<&str>| {
        let mut all = vec!["--config", config.as_str()];
        all.extend_from_slice(args);
        run(dir.path(), &all, stdin)
    };

    assert_eq!(sealmail(&["domain", "add", "Example.TEST"], None)?.0, 0);
    assert_eq!(sealmail(&["domain", "add", "bücher.example"], None)?.0, 0);
    let (_, out, _) = sealmail(&["domain", "list"], None)?;
    assert_eq!(out, "example.test\nxn--bcher-kva.example\n");
    let (code, _, err) = sealmail(&["domain", "add", "example.test"], None)?;
    assert_ne!(code, 0);
    assert!(err.contains("domain example.test already exists"), "{err}");
    let (code, _, err) = sealmail(&["domain", "add", "not a domain"], None)?;
    assert_eq!(code, 2, "{err}");

    let (code, out, err) = sealmail(
        &["user", "add", "Alice@example.test", "--password-stdin"],
        Some("correct horse battery\n"),
    )?;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("added user alice@example.test") && !out.contains("password"),
        "{out}"
    );
    let (code, out, _) = sealmail(&["user", "add", "bob@example.test"], None)?;
    assert_eq!(code, 0);
    let generated = out
        .lines()
        .find_map(|l| l.strip_prefix("password (shown once): "))
        .ok_or("no generated password printed")?
        .to_string();
    let (code, _, err) = sealmail(
        &["user", "add", "alice@EXAMPLE.test", "--password-stdin"],
        Some("another long password\n"),
    )?;
    assert_ne!(code, 0);
    assert!(err.contains("user alice@example.test already exists"), "{err}");
    let (code, _, err) = sealmail(
        &["user", "add", "carol@unknown.test", "--password-stdin"],
        Some("another long password\n"),
    )?;
    assert_ne!(code, 0);
    assert!(err.contains("domain unknown.test is not served here"), "{err}");
    let (code, _, err) = sealmail(
        &["user", "add", "no-at-sign", "--password-stdin"],
        Some("another long password\n"),
    )?;
    assert_eq!(code, 2);
    assert!(err.contains("has no @"), "{err}");
    let (code, _, err) = sealmail(
        &["user", "add", "dave@example.test", "--password-stdin"],
        Some("short\n"),
    )?;
    assert_ne!(code, 0);
    assert!(err.contains("at least 12 characters"), "{err}");
    let (code, _, err) = sealmail(&["domain", "remove", "example.test"], None)?;
    assert_ne!(code, 0);
    assert!(err.contains("still has 2 account(s)"), "{err}");

    let (_, out, _) = sealmail(&["user", "list"], None)?;
    assert_eq!(out, "alice@example.test\nbob@example.test\n");

    // The stored credentials verify (and the old ones stop working after passwd).
    let config_parsed = ctx(sealmail_config::Config::load(Path::new(&config)), "config")?;
    let check = |address: &str, password: &str| {
        let data_dir = config_parsed.data_dir.clone();
        let (address, password) = (address.to_string(), password.to_string());
        async move {
            let store = Arc::new(ctx(SqliteStore::open(&data_dir, 16).await, "open")?);
            let identity = ctx(sealmail_identity::Identity::new(store), "identity")?;
            let address = ctx(EmailAddress::parse(&address), "address")?;
            let ok = ctx(
                identity
                    .verify_password(&address, &sealmail_identity::Password::new(password))
                    .await,
                "verify",
            )?;
            Ok::<bool, String>(ok.is_some())
        }
    };
    assert!(check("alice@example.test", "correct horse battery").await?);
    assert!(check("bob@example.test", &generated).await?);
    assert!(!check("bob@example.test", "correct horse battery").await?);
    assert_eq!(
        sealmail(
            &["user", "passwd", "bob@example.test", "--password-stdin"],
            Some("bob's new long password\n")
        )?
        .0,
        0
    );
    assert!(check("bob@example.test", "bob's new long password").await?);
    assert!(!check("bob@example.test", &generated).await?);

    assert_eq!(sealmail(&["user", "remove", "bob@example.test"], None)?.0, 0);
    let (code, _, err) = sealmail(&["user", "remove", "bob@example.test"], None)?;
    assert_ne!(code, 0);
    assert!(err.contains("user bob@example.test does not exist"), "{err}");
    let (_, out, _) = sealmail(&["user", "list"], None)?;
    assert_eq!(out, "alice@example.test\n");
    Ok(())
}

/// `user add --admin`, `user admin ADDRESS on|off` and how `user list` shows admins; a
/// password change from the command line signs the user's browsers out.
#[tokio::test]
async fn the_admin_role_is_granted_and_taken_from_the_command_line() -> TestResult {
    use sealmail_store::{WebSession, WebStore};
    let (dir, config) = config_dir()?;
    let sealmail = |args: &[&str], stdin: Option<&str>| {
        let mut all = vec!["--config", config.as_str()];
        all.extend_from_slice(args);
        run(dir.path(), &all, stdin)
    };
    assert_eq!(sealmail(&["domain", "add", "example.test"], None)?.0, 0);
    let (code, out, err) = sealmail(
        &["user", "add", "alice@example.test", "--password-stdin", "--admin"],
        Some("correct horse battery\n"),
    )?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("added user alice@example.test"), "{out}");
    let (code, _, err) = sealmail(
        &["user", "add", "bob@example.test", "--password-stdin"],
        Some("another long password\n"),
    )?;
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = sealmail(&["user", "list"], None)?;
    assert_eq!(out, "alice@example.test admin\nbob@example.test\n");

    let (code, out, err) = sealmail(&["user", "admin", "Bob@example.test", "on"], None)?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "bob@example.test is now an admin\n");
    let (code, out, err) = sealmail(&["user", "admin", "alice@example.test", "off"], None)?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "alice@example.test is no longer an admin\n");
    let (_, out, _) = sealmail(&["user", "list"], None)?;
    assert_eq!(out, "alice@example.test\nbob@example.test admin\n");

    let (code, out, err) = sealmail(&["user", "admin", "carol@example.test", "on"], None)?;
    assert_ne!(code, 0);
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("user carol@example.test does not exist"), "{err}");
    let (code, _, err) = sealmail(&["user", "admin", "bob@example.test", "maybe"], None)?;
    assert_eq!(code, 2, "{err}");
    let (_, out, _) = sealmail(&["user", "list"], None)?;
    assert_eq!(
        out, "alice@example.test\nbob@example.test admin\n",
        "nothing changed"
    );

    // Bob is signed in to the web pages in two browsers; `user passwd` ends both.
    let data_dir = ctx(sealmail_config::Config::load(Path::new(&config)), "config")?.data_dir;
    let store = ctx(SqliteStore::open(&data_dir, 16).await, "open")?;
    let bob = ctx(
        store
            .account(&ctx(EmailAddress::parse("bob@example.test"), "address")?)
            .await,
        "account",
    )?
    .ok_or("no bob")?;
    let now = sealmail_types::clock::now_unix();
    for id in ["0a", "0b"] {
        let session = WebSession {
            id_hash: id.to_string(),
            account: bob.id,
            credential: "password".to_string(),
            client_address: "192.0.2.1".to_string(),
            user_agent: "Test/1.0".to_string(),
            created_at: now,
            last_seen_at: now,
            expires_at: now + 3600,
        };
        ctx(store.add_web_session(session).await, "add session")?;
    }
    store.close().await;
    let (code, out, err) = sealmail(
        &["user", "passwd", "bob@example.test", "--password-stdin"],
        Some("bob's new long password\n"),
    )?;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("ended 2 web session(s) of bob@example.test"),
        "{out}"
    );
    let store = ctx(SqliteStore::open(&data_dir, 16).await, "open")?;
    assert!(ctx(store.web_sessions(bob.id, now).await, "sessions")?.is_empty());
    store.close().await;
    Ok(())
}

#[test]
fn migrate_dry_run_reports_pending_migrations_and_changes_nothing() -> TestResult {
    let (dir, config) = config_dir()?;
    let data = dir.path().join("data");
    ctx(std::fs::create_dir_all(&data), "mkdir")?;
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../store/tests/fixtures/store-v1.db");
    ctx(std::fs::copy(fixture, data.join(DB_FILE)), "copy fixture")?;
    let before = ctx(std::fs::read(data.join(DB_FILE)), "read")?;

    let (code, out, err) = run(dir.path(), &["--config", &config, "migrate", "--dry-run"], None)?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("would apply migration 2 outbound queue"), "{out}");
    assert_eq!(
        ctx(std::fs::read(data.join(DB_FILE)), "read")?,
        before,
        "dry run changed the store"
    );
    assert!(!data.join("backups").exists());

    let (code, out, err) = run(dir.path(), &["--config", &config, "migrate"], None)?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("applying migration 2 outbound queue"), "{out}");
    assert_eq!(
        ctx(std::fs::read_dir(data.join("backups")), "backups")?.count(),
        1
    );
    let (_, out, _) = run(dir.path(), &["--config", &config, "migrate", "--dry-run"], None)?;
    assert!(out.contains("up to date"), "{out}");
    let (_, out, _) = run(dir.path(), &["--config", &config, "user", "list"], None)?;
    assert_eq!(out, "alice@example.test\n", "data lost in migration");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_under_write_load_restores_to_a_consistent_store() -> TestResult {
    let (dir, config) = config_dir_with_certs_in_data()?;
    let sealmail = |args: &[&str], stdin: Option<&str>| {
        let mut all = vec!["--config", config.as_str()];
        all.extend_from_slice(args);
        run(dir.path(), &all, stdin)
    };
    assert_eq!(sealmail(&["domain", "add", "example.test"], None)?.0, 0);
    assert_eq!(
        sealmail(
            &["user", "add", "alice@example.test", "--password-stdin"],
            Some("a long enough password\n")
        )?
        .0,
        0
    );

    // Writers keep storing messages (as a running server would) while the backup is taken.
    let data = dir.path().join("data");
    let store = Arc::new(ctx(SqliteStore::open(&data, 64).await, "open")?);
    let alice = ctx(
        store
            .account(&ctx(EmailAddress::parse("alice@example.test"), "addr")?)
            .await,
        "account",
    )?
    .ok_or("no alice")?;
    let inbox = ctx(store.mailbox(alice.id, "INBOX").await, "mailbox")?.ok_or("no inbox")?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (store, stop) = (store.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let content = format!("Subject: {w}/{n}\r\n\r\n{}\r\n", "y".repeat(4000)).into_bytes();
                let message = NewMessage {
                    content,
                    mailboxes: vec![inbox.id],
                    internal_date: 1_700_000_000,
                    flags: vec![],
                };
                store.store_message(message).await.map_err(|e| e.to_string())?;
                n += 1;
            }
            Ok::<usize, String>(n)
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let backup = dir.path().join("backup");
    let backup_arg = backup.to_string_lossy().into_owned();
    // The CLI runs on a blocking thread so that the writers keep writing meanwhile.
    let (cwd, config_arg) = (dir.path().to_path_buf(), config.clone());
    let backup_args = backup_arg.clone();
    let (code, out, err) = ctx(
        tokio::task::spawn_blocking(move || {
            run(&cwd, &["--config", &config_arg, "backup", &backup_args], None)
        })
        .await,
        "join",
    )??;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("backup written"), "{out}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        written += ctx(w.await, "join")??;
    }
    let manifest = ctx(std::fs::read_to_string(backup.join("MANIFEST")), "manifest")?;
    for name in ["sealmail.db", "sealmail.toml", "tls/0/cert.pem", "tls/0/key.pem"] {
        assert!(
            manifest.lines().any(|l| l.ends_with(&format!("  {name}"))),
            "{name} missing from:\n{manifest}"
        );
    }
    let key_mode = ctx(std::fs::metadata(backup.join("tls/0/key.pem")), "stat")?
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o077, 0, "backup key readable by others");

    // Restore into a fresh installation elsewhere.
    let elsewhere = ctx(tempfile::tempdir(), "tempdir")?;
    let new_config = elsewhere.path().join("sealmail.toml");
    let new_config_arg = new_config.to_string_lossy().into_owned();
    let (code, out, err) = run(
        elsewhere.path(),
        &["--config", &new_config_arg, "restore", &backup_arg],
        None,
    )?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("restored"), "{out}");
    let restored = ctx(
        SqliteStore::open(&elsewhere.path().join("data"), 16).await,
        "open restored",
    )?;
    let alice = ctx(restored.account(&alice.address).await, "account")?.ok_or("alice not restored")?;
    let inbox = ctx(restored.mailbox(alice.id, "INBOX").await, "mailbox")?.ok_or("no inbox")?;
    let messages = ctx(restored.messages(inbox.id).await, "messages")?;
    assert!(
        !messages.is_empty() && messages.len() < written,
        "restored {} of {written}",
        messages.len()
    );
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(m.uid as usize, i + 1, "UIDs not dense");
        ctx(
            restored.read_message(m.id).await,
            "restored message fails its integrity check",
        )?;
    }
    assert!(m_uid_next_ok(inbox.uid_next, messages.len()));
    let (code, _, err) = run(
        elsewhere.path(),
        &["--config", &new_config_arg, "config", "check"],
        None,
    )?;
    assert_eq!(code, 0, "restored configuration does not check: {err}");

    // A damaged backup is refused before anything is touched.
    let db = backup.join(DB_FILE);
    let mut bytes = ctx(std::fs::read(&db), "read")?;
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    ctx(std::fs::write(&db, bytes), "write")?;
    let (code, _, err) = run(
        elsewhere.path(),
        &["--config", &new_config_arg, "restore", &backup_arg],
        None,
    )?;
    assert_ne!(code, 0);
    assert!(err.contains("sealmail.db in the backup is damaged"), "{err}");
    Ok(())
}

fn m_uid_next_ok(uid_next: u32, count: usize) -> bool {
    uid_next as usize == count + 1
}

#[test]
fn init_writes_a_checked_configuration_and_never_overwrites_one() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let (code, out, err) = run(
        dir.path(),
        &["init", "--hostname", "Mail.Example.ORG", "--bind", "127.0.0.1"],
        None,
    )?;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("self-signed certificate for mail.example.org"),
        "{out}"
    );
    let text = ctx(
        std::fs::read_to_string(dir.path().join("sealmail.toml")),
        "config",
    )?;
    for port in [
        "127.0.0.1:25",
        "127.0.0.1:465",
        "127.0.0.1:587",
        "127.0.0.1:143",
        "127.0.0.1:993",
        "role = \"https\"\nbind = \"127.0.0.1:443\"",
    ] {
        assert!(text.contains(port), "{port} missing:\n{text}");
    }
    assert!(!text.contains("[acme]") && !text.contains(":80\""), "{text}");
    let key = dir.path().join("sealmail-data/tls/key.pem");
    assert_eq!(
        ctx(std::fs::metadata(&key), "key")?.permissions().mode() & 0o777,
        0o600
    );
    assert!(dir.path().join("sealmail-data").join(DB_FILE).exists());
    assert_eq!(run(dir.path(), &["config", "check"], None)?.0, 0);

    let (code, _, err) = run(dir.path(), &["init", "--hostname", "other.example.org"], None)?;
    assert_eq!(code, 2);
    assert!(
        err.contains("already exists; sealmail never overwrites a configuration"),
        "{err}"
    );
    assert_eq!(
        ctx(
            std::fs::read_to_string(dir.path().join("sealmail.toml")),
            "config"
        )?,
        text
    );

    // An existing certificate and key are used as they are.
    let other = ctx(tempfile::tempdir(), "tempdir")?;
    let cert = dir
        .path()
        .join("sealmail-data/tls/cert.pem")
        .to_string_lossy()
        .into_owned();
    let key = key.to_string_lossy().into_owned();
    let (code, out, err) = run(
        other.path(),
        &[
            "init",
            "--hostname",
            "mail.example.org",
            "--cert",
            &cert,
            "--key",
            &key,
        ],
        None,
    )?;
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("self-signed"), "{out}");
    assert!(!other.path().join("sealmail-data/tls").exists());

    // ACME by HTTP-01: the [acme] section and the http listener on port 80.
    let acme = ctx(tempfile::tempdir(), "tempdir")?;
    let (code, _, err) = run(
        acme.path(),
        &[
            "init",
            "--hostname",
            "mail.example.org",
            "--acme-directory",
            "https://acme-v02.api.letsencrypt.org/directory",
            "--acme-contact",
            "mailto:admin@example.org",
            "--acme-challenge",
            "http-01",
        ],
        None,
    )?;
    assert_eq!(code, 0, "{err}");
    let text = ctx(
        std::fs::read_to_string(acme.path().join("sealmail.toml")),
        "config",
    )?;
    for expected in [
        "role = \"http\"\nbind = \"0.0.0.0:80\"\ntls = \"none\"",
        "[acme]\ndirectory = \"https://acme-v02.api.letsencrypt.org/directory\"\ncontact = [\"mailto:admin@example.org\"]\nchallenge = \"http-01\"",
    ] {
        assert!(text.contains(expected), "{expected:?} missing:\n{text}");
    }
    assert_eq!(run(acme.path(), &["config", "check"], None)?.0, 0);
    let wrong = ctx(tempfile::tempdir(), "tempdir")?;
    let (code, _, err) = run(
        wrong.path(),
        &[
            "init",
            "--hostname",
            "h.example.org",
            "--acme-directory",
            "https://a/d",
            "--acme-challenge",
            "dns-01",
        ],
        None,
    )?;
    assert!(
        code == 2 && err.contains("--acme-challenge \"dns-01\""),
        "{code} {err}"
    );
    assert!(!wrong.path().join("sealmail.toml").exists());
    Ok(())
}

#[tokio::test]
async fn restore_refuses_to_write_outside_the_data_folder() -> TestResult {
    // A backup whose configuration keeps its certificate beside the configuration file, outside
    // the data folder (a crafted backup could name /etc/cron.d/x the same way).
    let (dir, config) = config_dir()?;
    assert_eq!(
        run(
            dir.path(),
            &["--config", &config, "domain", "add", "example.test"],
            None
        )?
        .0,
        0
    );
    let backup = dir.path().join("backup").to_string_lossy().into_owned();
    assert_eq!(
        run(dir.path(), &["--config", &config, "backup", &backup], None)?.0,
        0
    );
    let elsewhere = ctx(tempfile::tempdir(), "tempdir")?;
    let new_config = elsewhere
        .path()
        .join("sealmail.toml")
        .to_string_lossy()
        .into_owned();
    let (code, _, err) = run(
        elsewhere.path(),
        &["--config", &new_config, "restore", &backup],
        None,
    )?;
    assert_ne!(code, 0, "restore wrote a certificate outside the data folder");
    assert!(
        err.contains("tls.certificate[0].cert") && err.contains("outside the data folder"),
        "{err}"
    );
    assert!(
        !elsewhere.path().join("tls").exists(),
        "something was written outside"
    );
    assert!(
        !Path::new(&new_config).exists(),
        "the configuration was replaced before the check"
    );

    // A link planted in the data folder (by its user, say) leading out of it is not followed.
    let (dir, config) = config_dir_with_certs_in_data()?;
    assert_eq!(
        run(
            dir.path(),
            &["--config", &config, "domain", "add", "example.test"],
            None
        )?
        .0,
        0
    );
    let backup = dir.path().join("backup").to_string_lossy().into_owned();
    assert_eq!(
        run(dir.path(), &["--config", &config, "backup", &backup], None)?.0,
        0
    );
    let outside = dir.path().join("outside");
    ctx(std::fs::create_dir(&outside), "mkdir")?;
    ctx(
        std::fs::write(outside.join("0.pem"), "not a certificate"),
        "write",
    )?;
    ctx(std::fs::remove_dir_all(dir.path().join("data/tls")), "rm")?;
    ctx(
        std::os::unix::fs::symlink(&outside, dir.path().join("data/tls")),
        "symlink",
    )?;
    let (code, _, err) = run(dir.path(), &["--config", &config, "restore", &backup], None)?;
    assert_ne!(code, 0, "restore followed a link out of the data folder");
    assert!(err.contains("outside the data folder"), "{err}");
    let left: Vec<_> = ctx(std::fs::read_dir(&outside), "read_dir")?.collect();
    assert_eq!(left.len(), 1, "restore wrote through the link");
    assert_eq!(
        ctx(std::fs::read_to_string(outside.join("0.pem")), "read")?,
        "not a certificate"
    );
    Ok(())
}

#[tokio::test]
async fn one_data_folder_serves_one_server_and_restore_waits_for_it_to_stop() -> TestResult {
    let (dir, config) = config_dir_with_certs_in_data()?;
    let mut server = common::serve(dir.path(), Path::new(&config)).await?;
    let (code, _, err) = run(dir.path(), &["--config", &config, "serve"], None)?;
    assert_ne!(code, 0);
    assert!(err.contains("another sealmail is already running"), "{err}");

    let backup = dir.path().join("backup").to_string_lossy().into_owned();
    assert_eq!(
        run(dir.path(), &["--config", &config, "backup", &backup], None)?.0,
        0,
        "backup while serving"
    );
    let (code, _, err) = run(dir.path(), &["--config", &config, "restore", &backup], None)?;
    assert_ne!(code, 0);
    assert!(err.contains("restore needs the server stopped"), "{err}");

    server.signal(nix::sys::signal::Signal::SIGTERM)?;
    assert_eq!(
        server.wait_exit(std::time::Duration::from_secs(30)).await?,
        Some(0)
    );
    let (code, _, err) = run(dir.path(), &["--config", &config, "restore", &backup], None)?;
    assert_eq!(code, 0, "{err}");
    // What restore replaced is kept.
    let kept: Vec<String> = ctx(std::fs::read_dir(dir.path().join("data/backups")), "backups")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(kept.iter().any(|n| n.starts_with("pre-restore-")), "{kept:?}");
    Ok(())
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() -> TestResult {
    let (dir, config) = config_dir()?;
    let process = sealmail_testkit::Sealmail::spawn(
        common::bin(),
        &["--config", &config, "--log-format", "json", "serve"],
        dir.path(),
        dir.path(),
    )?;
    process
        .wait_for_log("sealmail ready", std::time::Duration::from_secs(60))
        .await?;
    let logs = process.errors();
    let mut lines = 0;
    for line in logs.lines() {
        assert!(line.starts_with('{') && line.ends_with('}'), "not JSON: {line}");
        assert!(
            line.contains("\"level\":") && line.contains("\"timestamp\":"),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines >= 2, "{logs}");
    Ok(())
}

/// Restore keeps the configuration in place: a backup rewritten by whoever could write where
/// it was kept (manifest recomputed) cannot change what root runs with. The backup's
/// configuration is put beside it.
#[tokio::test]
async fn restore_keeps_the_configuration_in_place() -> TestResult {
    use sha2::Digest as _;
    let (dir, config) = config_dir_with_certs_in_data()?;
    assert_eq!(
        run(
            dir.path(),
            &["--config", &config, "domain", "add", "example.test"],
            None
        )?
        .0,
        0
    );
    let backup = dir.path().join("backup");
    let backup_arg = backup.to_string_lossy().into_owned();
    assert_eq!(
        run(dir.path(), &["--config", &config, "backup", &backup_arg], None)?.0,
        0
    );
    // Tamper with the backup's configuration and make the manifest agree.
    let tampered = format!(
        "{}\n# rewritten by the service user\n",
        ctx(std::fs::read_to_string(backup.join("sealmail.toml")), "read")?
    );
    ctx(std::fs::write(backup.join("sealmail.toml"), &tampered), "write")?;
    let manifest = ctx(std::fs::read_to_string(backup.join("MANIFEST")), "manifest")?;
    let sum = hex::encode(sha2::Sha256::digest(tampered.as_bytes()));
    let manifest: String = manifest
        .lines()
        .map(|line| match line.split_once("  ") {
            Some((_, "sealmail.toml")) => format!("{sum}  sealmail.toml\n"),
            _ => format!("{line}\n"),
        })
        .collect();
    ctx(std::fs::write(backup.join("MANIFEST"), manifest), "manifest")?;

    let before = ctx(std::fs::read(&config), "config")?;
    let (code, out, err) = run(dir.path(), &["--config", &config, "restore", &backup_arg], None)?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("the configuration in place was kept"), "{out}");
    assert_eq!(
        ctx(std::fs::read(&config), "config")?,
        before,
        "the configuration was replaced"
    );
    let beside: Vec<_> = ctx(std::fs::read_dir(dir.path()), "dir")?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".from-backup-"))
        .collect();
    assert_eq!(beside.len(), 1);
    let kept = ctx(std::fs::read_to_string(beside[0].path()), "read")?;
    assert!(kept.contains("rewritten by the service user"));
    Ok(())
}

/// `sealmail migrate-store`: a populated SQLite installation moves into a fresh PostgreSQL
/// schema with its users, mailboxes and messages byte for byte; a second run is refused and
/// changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_store_copies_an_installation_into_postgres_and_refuses_twice() -> TestResult {
    use sealmail_store::{PgOptions, PgStore};
    let (dir, config) = config_dir()?;
    for (args, what) in [
        (&["domain", "add", "example.test"][..], "domain add"),
        (
            &["user", "add", "alice@example.test", "--password-stdin"][..],
            "user add",
        ),
    ] {
        let mut full = vec!["--config", config.as_str()];
        full.extend_from_slice(args);
        let (code, _, err) = run(dir.path(), &full, Some("a long enough password\n"))?;
        assert_eq!(code, 0, "{what}: {err}");
    }
    let data = dir.path().join("data");
    let bodies: Vec<Vec<u8>> = (0..5)
        .map(|n| format!("Subject: {n}\r\n\r\nGr\u{fc}\u{df}e {n}\r\n").into_bytes())
        .collect();
    {
        let store = ctx(SqliteStore::open(&data, 16).await, "open")?;
        let alice = ctx(
            store
                .account(&ctx(EmailAddress::parse("alice@example.test"), "address")?)
                .await,
            "account",
        )?
        .ok_or("no alice")?;
        let inbox = ctx(store.mailbox(alice.id, "INBOX").await, "mailbox")?.ok_or("no INBOX")?;
        for body in &bodies {
            let message = NewMessage {
                content: body.clone(),
                mailboxes: vec![inbox.id],
                internal_date: 1_700_000_000,
                flags: vec!["\\Seen".into()],
            };
            ctx(store.store_message(message).await, "store")?;
        }
        store.close().await;
    }

    let schema = ctx(sealmail_testkit::postgres::TestSchema::new().await, "schema")?;
    let args = [
        "--config",
        config.as_str(),
        "migrate-store",
        "--to",
        schema.url.as_str(),
        "--schema",
        schema.name.as_str(),
    ];
    let (code, out, err) = run(dir.path(), &args, None)?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("every row count matches and 5 blobs' SHA-256 were checked"),
        "{out}"
    );
    assert!(err.contains("messages: 5 rows"), "{err}");

    let mut options = PgOptions::new(&schema.url);
    options.schema = Some(schema.name.clone());
    let postgres = ctx(PgStore::open(&options).await, "open postgres")?;
    let alice = ctx(
        postgres
            .account(&ctx(EmailAddress::parse("alice@example.test"), "address")?)
            .await,
        "account",
    )?
    .ok_or("alice was not copied")?;
    assert!(alice.password_hash.starts_with("$argon2id$"));
    let inbox = ctx(postgres.mailbox(alice.id, "INBOX").await, "mailbox")?.ok_or("no INBOX")?;
    let mut read = Vec::new();
    for message in ctx(postgres.messages(inbox.id).await, "messages")? {
        assert_eq!(message.flags, ["\\Seen"]);
        read.push(ctx(postgres.read_message(message.id).await, "read")?);
    }
    assert_eq!(read, bodies);

    let (code, _, err) = run(dir.path(), &args, None)?;
    assert_ne!(code, 0);
    assert!(err.contains("is not empty"), "{err}");
    assert_eq!(ctx(postgres.messages(inbox.id).await, "messages")?.len(), 5);
    Ok(())
}

#[test]
fn init_with_a_store_url_writes_it_into_the_store_section() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let url = "sqlite://sealmail-data/sealmail.db";
    let (code, _, err) = run(
        dir.path(),
        &[
            "init",
            "--hostname",
            "mail.example.org",
            "--bind",
            "127.0.0.1",
            "--store-url",
            url,
        ],
        None,
    )?;
    assert_eq!(code, 0, "{err}");
    let text = ctx(
        std::fs::read_to_string(dir.path().join("sealmail.toml")),
        "config",
    )?;
    assert!(text.contains(&format!("[store]\nurl = {url:?}\n")), "{text}");
    assert_eq!(run(dir.path(), &["config", "check"], None)?.0, 0);
    Ok(())
}

#[test]
fn app_password_expiry_is_listed_and_bad_durations_are_usage_errors() -> TestResult {
    let dir = ctx(tempfile::tempdir(), "tempdir")?;
    let config = common::config_with_users(
        dir.path(),
        "example.test",
        &["alice"],
        &[("mx", free_addr()?, "starttls")],
        "",
    )?;
    let sealmail = |args: &[&str]| common::admin(dir.path(), &config, args);
    let add = |name: &str, option: &str, value: &str| {
        sealmail(&[
            "user",
            "app-password",
            "add",
            "alice@example.test",
            name,
            option,
            value,
        ])
    };
    let list = || -> TestResult<Vec<Vec<String>>> {
        let (code, out, err) = sealmail(&["user", "app-password", "list", "alice@example.test"])?;
        assert_eq!(code, 0, "{err}");
        Ok(out
            .lines()
            .skip(1)
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect())
    };

    let before = time::OffsetDateTime::now_utc();
    let (code, out, err) = add("quarterly", "--expires", "90d")?;
    let after = time::OffsetDateTime::now_utc();
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().last().is_some_and(|l| l.len() >= 16), "{out}");
    let rows = list()?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let expires = rows[0].get(3).ok_or(format!("no EXPIRES column: {rows:?}"))?;
    let expires = ctx(
        time::OffsetDateTime::parse(expires, &time::format_description::well_known::Rfc3339),
        expires,
    )?;
    let ninety = time::Duration::days(90);
    // Whole seconds are stored, so the listed time may be up to a second before `before`.
    assert!(
        expires >= before + ninety - time::Duration::seconds(1) && expires <= after + ninety,
        "expires {expires}, made between {before} and {after}"
    );

    // A zero, a unit that is not one of d/h/m (also past a multi-byte character, where slicing
    // by bytes would panic) and a protocol without app passwords are the user's mistakes.
    for (option, value) in [
        ("--expires", "0d"),
        ("--expires", "9é"),
        ("--expires", "12x"),
        ("--scope", "pop3"),
    ] {
        let (code, out, err) = add("refused", option, value)?;
        assert_eq!(code, 2, "{option} {value}: {out}{err}");
        assert!(!err.is_empty(), "{option} {value}: no explanation");
    }
    let rows = list()?;
    assert_eq!(rows.len(), 1, "a refused add left an app password: {rows:?}");
    assert_eq!(rows[0].first().map(String::as_str), Some("quarterly"));
    Ok(())
}
