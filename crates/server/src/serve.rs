//! `sealmail serve`: start-up in a fixed order (config, lock, certificates, store, sockets),
//! then serve until SIGTERM/SIGINT; SIGHUP reloads the certificates.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use sealmail_config::{Config, LogFormat, Role, StoreBackend, StoreTls};
use sealmail_net::{BoundListener, Handler, Server};
use sealmail_store::{PgOptions, PgStore, PgTls, SqliteStore, Store};
use sealmail_tls::CertResolver;
use sealmail_tls::client_auth::ClientCertTrust;

use crate::cli::{LogFormatArg, init_logging, usage};

/// The security event log in the data folder: one JSON object per line.
pub const SECURITY_LOG: &str = "security-events.jsonl";

/// The lock file that keeps two servers (or a restore) off one data folder.
pub const LOCK_FILE: &str = "sealmail.lock";

pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| usage(e.to_string()))
}

/// Holds an exclusive lock on the data folder while it lives.
pub struct DataDirLock {
    _file: File,
}

/// Locks the data folder, or says who holds it.
pub fn lock_data_dir(data_dir: &Path) -> anyhow::Result<DataDirLock> {
    let path: PathBuf = data_dir.join(LOCK_FILE);
    // Never through a link the service user put there (this runs as root before the switch).
    let file = sealmail_safeio::open_private_append(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(DataDirLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(anyhow::anyhow!(
            "another sealmail is already running on {} (lock {} is held); stop it first",
            data_dir.display(),
            path.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(anyhow::Error::new(e).context(format!("cannot lock {}", path.display())))
        }
    }
}

/// The data folder holds the store, keys and backups: only sealmail's user may enter it.
fn check_private_dir(dir: &Path) -> anyhow::Result<()> {
    match sealmail_safeio::check_private(dir) {
        Ok(()) => Ok(()),
        Err(sealmail_safeio::UnsafeFile::TooOpen { mode }) => anyhow::bail!(
            "the data folder {} is accessible by other users (mode {mode:04o}); run `chmod 700 {}`",
            dir.display(),
            dir.display()
        ),
        Err(sealmail_safeio::UnsafeFile::Io(e)) => {
            Err(anyhow::Error::new(e).context(format!("cannot inspect the data folder {}", dir.display())))
        }
    }
}

/// The store the configuration names, with what connecting needs read beforehand: the
/// PostgreSQL password file may be readable by root only, so `serve` reads it before dropping
/// privileges and connects after.
pub enum StoreLocation {
    Sqlite {
        data_dir: PathBuf,
        group_commit_max_batch: usize,
    },
    Postgres(PgOptions),
}

impl StoreLocation {
    pub fn of(config: &Config) -> anyhow::Result<StoreLocation> {
        Ok(match &config.store.backend {
            StoreBackend::Sqlite => StoreLocation::Sqlite {
                data_dir: config.data_dir.clone(),
                group_commit_max_batch: config.store.group_commit_max_batch,
            },
            StoreBackend::Postgres(settings) => StoreLocation::Postgres(PgOptions {
                url: settings.url.clone(),
                schema: settings.schema.clone(),
                password: settings.read_password().map_err(usage)?,
                tls: pg_tls(settings.tls),
                tls_ca: settings.tls_ca.clone(),
                max_connections: settings.max_connections,
            }),
        })
    }

    pub async fn open(&self) -> anyhow::Result<Arc<dyn Store>> {
        Ok(match self {
            StoreLocation::Sqlite {
                data_dir,
                group_commit_max_batch,
            } => Arc::new(
                SqliteStore::open(data_dir, *group_commit_max_batch)
                    .await
                    .with_context(|| format!("cannot open the store in {}", data_dir.display()))?,
            ),
            // The URL holds no password (the configuration refuses one), so it may be shown.
            StoreLocation::Postgres(options) => Arc::new(
                PgStore::open(options)
                    .await
                    .with_context(|| format!("cannot open the PostgreSQL store {}", options.url))?,
            ),
        })
    }
}

fn pg_tls(tls: StoreTls) -> PgTls {
    match tls {
        StoreTls::Disable => PgTls::Disable,
        StoreTls::Prefer => PgTls::Prefer,
        StoreTls::Require => PgTls::Require,
        StoreTls::VerifyCa => PgTls::VerifyCa,
        StoreTls::VerifyFull => PgTls::VerifyFull,
    }
}

/// Opens whichever store the configuration selects. The data folder is made too: on
/// PostgreSQL the store does not make it, yet DKIM keys and logs still live there.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    if !config.data_dir.exists() {
        sealmail_safeio::create_private_dir(&config.data_dir)
            .with_context(|| format!("cannot create the data folder {}", config.data_dir.display()))?;
    }
    StoreLocation::of(config)?.open().await
}

/// The served domains and the DKIM signer with their keys.
pub async fn load_signer(
    config: &sealmail_config::Config,
    store: &dyn sealmail_store::Store,
) -> anyhow::Result<(Vec<String>, Arc<sealmail_mailauth::signing::Signer>)> {
    let domains: Vec<String> = store
        .list_domains()
        .await?
        .iter()
        .map(|d| d.to_string())
        .collect();
    let signer = sealmail_mailauth::signing::Signer::load(
        &config.data_dir.join(sealmail_mailauth::signing::DKIM_DIR),
        &domains,
    )?;
    Ok((domains, Arc::new(signer)))
}

/// Who sends our TLS reports (RFC 8460), and how they are signed: `tls-reports@` the first
/// served domain with DKIM keys (so the report passes DMARC), else of the first served domain,
/// else of our host name.
pub fn tls_report_sender(
    domains: &[String],
    signer: &Arc<sealmail_mailauth::signing::Signer>,
    hostname: &str,
) -> anyhow::Result<(
    sealmail_types::EmailAddress,
    Arc<sealmail_delivery::tls_rpt::SignReport>,
)> {
    let mut sorted = domains.to_vec();
    sorted.sort();
    let domain = sorted
        .iter()
        .find(|d| signer.signs_for(d))
        .or(sorted.first())
        .cloned()
        .unwrap_or_else(|| hostname.to_string());
    let from = sealmail_types::EmailAddress::parse(&format!("tls-reports@{domain}"))
        .map_err(|e| anyhow::anyhow!("no TLS report address for {domain}: {e}"))?;
    let signer = signer.clone();
    let sign = move |message: &[u8]| match signer.sign(&domain, message) {
        Ok(headers) => headers,
        Err(e) => {
            tracing::error!(domain = %domain, error = %e, "TLS report not signed");
            Vec::new()
        }
    };
    Ok((from, Arc::new(sign)))
}

pub async fn serve(config_path: &Path, log_format: Option<LogFormatArg>) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let format = log_format.unwrap_or(match config.log_format {
        LogFormat::Human => LogFormatArg::Human,
        LogFormat::Json => LogFormatArg::Json,
    });
    init_logging(format);
    run(config).await
}

/// Runs a validated configuration until a shutdown signal.
pub async fn run(config: Config) -> anyhow::Result<()> {
    crate::cli::set_log_node(&config.server.node_name);
    sealmail_metrics::set_node_name(&config.server.node_name);
    if !config.data_dir.exists() {
        sealmail_safeio::create_private_dir(&config.data_dir)
            .with_context(|| format!("cannot create the data folder {}", config.data_dir.display()))?;
    }
    check_private_dir(&config.data_dir)?;
    let _lock = lock_data_dir(&config.data_dir)?;
    let certs = crate::certs::load_served(&config)?;
    let resolver = CertResolver::new(certs);
    let tls = sealmail_tls::server_config(resolver.clone())?;
    let client_auth = client_auth(&config, &resolver)?;
    let mfa_key = load_mfa_key(&config)?;

    let bound = sealmail_net::bind(&config.listeners)
        .await
        .map_err(anyhow::Error::msg)?;
    let metrics = match config.metrics_bind {
        Some(address) => {
            let socket = sealmail_metrics::bind(address)
                .await
                .map_err(anyhow::Error::msg)?;
            Some((address, socket))
        }
        None => None,
    };
    let delivery_files = sealmail_delivery::DeliveryFiles::load(&config.delivery)?;
    let store_location = StoreLocation::of(&config)?;
    // Every socket is bound: nothing below needs root. The store (its database, WAL and
    // snapshots) is opened only now, as the service user, so root never creates or follows a
    // file where that user could have put a link.
    crate::privileges::drop_privileges(&config)?;
    let store: Arc<dyn Store> = store_location.open().await?;
    // This process is the node `server.node_name` until it ends (PostgreSQL refuses a name a
    // running node holds; SQLite ends the queue leases an earlier run left).
    store
        .register_node(&config.server.node_name)
        .await
        .with_context(|| format!("cannot run as node {:?}", config.server.node_name))?;
    let mut identity =
        sealmail_identity::Identity::with_login_cache(store.clone(), config.auth.login_cache_ttl)?
            .with_policy(crate::credentials::auth_policy(&config));
    if let Some(key) = mfa_key {
        identity = identity.with_sealing_key(key);
    }
    // Sessions end soon after their password changes or their account goes, even when the
    // change comes from the admin CLI (another process): the store is polled for it.
    identity
        .watch_credentials(sealmail_identity::CREDENTIALS_POLL)
        .await?;
    let guard = sealmail_guard::Guard::load_for_node(
        config.security.clone(),
        store.clone(),
        Some(config.server.node_name.clone()),
    )
    .await?;
    guard.spawn_refresh();

    let hostname = config.hostname.to_string();
    let dns = sealmail_dns::Dns::new(&config.dns)?;
    let authenticator = sealmail_mailauth::Authenticator::new(&dns, &hostname);
    let inbound = sealmail_mailauth::inbound::InboundPolicy {
        dmarc_reject: config.inbound.dmarc_reject,
        dmarc_quarantine: config.inbound.dmarc_quarantine,
        tempfail_on_dns_error: config.inbound.tempfail_on_dns_error,
        phishing_warnings: config.inbound.phishing_warnings,
        phishing_notice_in_body: config.inbound.phishing_notice_in_body,
    };
    let (domains, signer) = load_signer(&config, &*store).await?;
    let delivery = sealmail_delivery::Delivery::new(
        store.clone(),
        dns.clone(),
        &config.delivery,
        &hostname,
        &config.server.node_name,
        delivery_files,
    )?;
    let (report_from, sign_report) = tls_report_sender(&domains, &signer, &hostname)?;
    let waker = delivery.clone();
    // One budget for message data in memory, whichever protocol brings it.
    let message_budget = sealmail_net::budget::BodyBudget::with_client_share(
        config.smtp.max_buffered_bytes,
        sealmail_net::budget::client_share(config.smtp.max_buffered_bytes, config.smtp.max_message_size),
    );
    let logins: Arc<dyn sealmail_guard::access::Logins> = Arc::new(
        sealmail_guard::access::GuardedLogins::new(guard.clone(), identity.clone()),
    );
    let smtp: Arc<dyn Handler> = Arc::new(sealmail_smtp::SmtpHandler::new(sealmail_smtp::SmtpContext {
        hostname: hostname.clone(),
        config: config.smtp.clone(),
        store: store.clone(),
        logins: logins.clone(),
        abuse: guard.clone(),
        body_budget: message_budget.clone(),
        verdicts: Arc::new(authenticator),
        signer: signer.clone(),
        inbound,
        on_queued: Some(Arc::new(move || waker.wake())),
        mailbox_quota: config.limits.mailbox_quota,
        node_name: config.server.node_name.clone(),
    }));
    let imap: Arc<dyn Handler> = Arc::new(sealmail_imap::ImapHandler::new(sealmail_imap::ImapContext {
        hostname: hostname.clone(),
        store: store.clone(),
        logins,
        abuse: guard.clone(),
        limits: sealmail_imap::Limits {
            max_line: sealmail_imap::MAX_COMMAND_LINE,
            // APPEND takes what SMTP would accept.
            max_append: config.smtp.max_message_size as u64,
            max_literal: sealmail_imap::MAX_SMALL_LITERAL,
            max_literals: sealmail_imap::MAX_LITERALS_PER_COMMAND,
            max_command: sealmail_imap::MAX_COMMAND,
            max_unauthenticated_literal: sealmail_imap::MAX_UNAUTHENTICATED_LITERAL,
            max_unauthenticated_command: sealmail_imap::MAX_UNAUTHENTICATED_COMMAND,
            idle: config.limits.imap_idle_timeout,
            // Never longer than a logged-in client's.
            unauthenticated_idle: config
                .limits
                .imap_unauthenticated_timeout
                .min(config.limits.imap_idle_timeout),
        },
        budget: message_budget,
        max_errors: sealmail_imap::MAX_ERRORS,
        mailbox_quota: config.limits.mailbox_quota,
    }));
    let acme_challenges = config
        .acme
        .as_ref()
        .map(|_| sealmail_acme::Challenges::new(Some(resolver.clone())));
    let daily_check =
        crate::daily_check::DailyCheck::from_config(&config, store.clone(), guard.clone(), dns.clone())?
            .map(Arc::new);
    let web: Arc<dyn Handler> = Arc::new(sealmail_web::WebHandler::new(sealmail_web::WebContext {
        hostname: config.hostname.clone(),
        store: store.clone(),
        mta_sts: config.mta_sts.clone(),
        endpoints: sealmail_web::autoconfig::Endpoints::from_listeners(&config.hostname, &config.listeners),
        certificates: resolver.clone(),
        http01: acme_challenges
            .clone()
            .map(|c| Arc::new(AcmeAnswers(c)) as Arc<dyn sealmail_web::Http01Answers>),
        https_port: config
            .listeners
            .iter()
            .find(|l| l.role == Role::Https)
            .map(|l| l.bind.port()),
        pages: Some(sealmail_web::pages::Pages {
            identity: Arc::new(identity.clone()),
            guard: guard.clone(),
            console: Arc::new(
                crate::console::ServerConsole::new(Arc::new(config.clone()), store.clone(), identity.clone())
                    .with_daily_check(daily_check.clone()),
            ),
            admin_listener: config.web.admin_listener,
        }),
    }));
    let listeners = bound
        .into_iter()
        .map(|(spec, socket)| BoundListener {
            handler: match spec.role {
                Role::Mx | Role::Submission => smtp.clone(),
                Role::Imap => imap.clone(),
                Role::Https | Role::Http => web.clone(),
            },
            spec,
            socket,
        })
        .collect();

    let shutdown = CancellationToken::new();
    // Opened as the service user: root never writes where that user could have put a link.
    let event_log = config.data_dir.join(SECURITY_LOG);
    guard.open_event_log(&event_log).await.with_context(|| {
        format!(
            "cannot open the security event log {}; if it is a symbolic link, remove it (sealmail never follows one there)",
            event_log.display()
        )
    })?;
    if let Some((address, socket)) = metrics {
        tracing::info!(%address, "metrics endpoint listening");
        tokio::spawn(sealmail_metrics::serve(socket, shutdown.clone()));
    }
    // The console's charts read this history whether or not /metrics is served.
    sealmail_metrics::spawn_sampler(shutdown.clone());
    tokio::spawn(
        delivery
            .clone()
            .send_tls_reports(report_from, sign_report, shutdown.clone()),
    );
    tokio::spawn(delivery.run(shutdown.clone()));
    tokio::spawn(crate::retention::run(store.clone(), shutdown.clone()));
    if let Some(daily) = &daily_check {
        tokio::spawn(daily.clone().run(shutdown.clone()));
    }
    let served = {
        let config = config.clone();
        move || crate::certs::served_files(&config)
    };
    tokio::spawn(crate::certs::watch_expiry(
        served.clone(),
        guard.clone(),
        shutdown.clone(),
    ));
    if let Some(challenges) = acme_challenges {
        crate::certs::spawn_acme(&config, &domains, challenges, resolver.clone(), shutdown.clone());
    }
    spawn_signal_handlers(shutdown.clone(), resolver, served)?;
    tracing::info!(hostname = %hostname, data_dir = %config.data_dir.display(), "sealmail ready");
    let https_tls = sealmail_web::https_tls(&tls);
    let mut server =
        Server::new(config.limits.clone(), tls, shutdown.clone()).with_role_tls(Role::Https, https_tls);
    if let Some((configs, trust)) = client_auth {
        refresh_client_certs(&trust, store.as_ref()).await?;
        tokio::spawn(keep_client_certs_fresh(
            trust,
            store.clone(),
            identity.credential_changes(),
            shutdown,
        ));
        server = server.with_client_auth(configs);
    }
    server
        .with_filter(guard.clone())
        .with_proxies(config.security.proxies.clone())
        .run(listeners)
        .await;
    // The events of the last moments are not lost with the process.
    guard.flush().await;
    tracing::info!("sealmail stopped");
    Ok(())
}

/// The `http` listener's answers to ACME HTTP-01 challenges.
struct AcmeAnswers(Arc<sealmail_acme::Challenges>);

impl sealmail_web::Http01Answers for AcmeAnswers {
    fn answer(&self, token: &str) -> Option<String> {
        self.0.http_answer(token)
    }
}

fn spawn_signal_handlers(
    shutdown: CancellationToken,
    resolver: Arc<CertResolver>,
    certificates: impl Fn() -> Vec<sealmail_config::CertificateFiles> + Send + 'static,
) -> anyhow::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match resolver.reload(&certificates()) {
                Ok(()) => tracing::info!("certificates reloaded; new connections use them"),
                Err(e) => {
                    tracing::error!(error = %e, "certificate reload failed; still serving the previous certificates")
                }
            }
        }
    });
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        shutdown.cancel();
    });
    Ok(())
}

/// The TLS configurations of listeners that ask for client certificates, and the trust they
/// share: the internal client CA (`sealmail ca init`) and `auth.client_ca`; `None` when no
/// listener asks.
fn client_auth(
    config: &Config,
    resolver: &Arc<CertResolver>,
) -> anyhow::Result<Option<(sealmail_net::ClientAuthConfigs, Arc<ClientCertTrust>)>> {
    if config
        .listeners
        .iter()
        .all(|l| l.client_cert == sealmail_config::ClientCertMode::Off)
    {
        return Ok(None);
    }
    let mut files = Vec::new();
    let internal = config
        .data_dir
        .join(crate::credentials::CLIENT_CA_DIR)
        .join(sealmail_tls::client_ca::CA_CERT_FILE);
    if internal.exists() {
        files.push(internal);
    }
    files.extend(config.auth.client_ca.clone());
    let trust = ClientCertTrust::new(ClientCertTrust::load_anchors(&files)?)?;
    let config_for = |mode| {
        sealmail_tls::client_auth::server_config_with_clients(
            resolver.clone(),
            sealmail_tls::client_auth::client_verifier(trust.clone(), mode),
        )
    };
    let configs = sealmail_net::ClientAuthConfigs {
        optional: config_for(sealmail_config::ClientCertMode::Optional)?,
        required: config_for(sealmail_config::ClientCertMode::Required)?,
    };
    Ok(Some((configs, trust)))
}

/// Gives the handshakes the fingerprints registered and revoked in the store.
async fn refresh_client_certs(trust: &ClientCertTrust, store: &dyn Store) -> anyhow::Result<()> {
    let known = store.known_client_certs().await?;
    trust.set_known(
        known.registered.into_iter().collect(),
        known.revoked.into_iter().collect(),
    );
    Ok(())
}

/// Rereads the registered and revoked fingerprints whenever credentials change (a revocation
/// refuses the next handshake; sessions it opened end through their login checks). It follows
/// the identity's poll of the credentials generation rather than polling again.
async fn keep_client_certs_fresh(
    trust: Arc<ClientCertTrust>,
    store: Arc<dyn Store>,
    mut changes: tokio::sync::watch::Receiver<i64>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        if let Err(e) = refresh_client_certs(&trust, store.as_ref()).await {
            tracing::warn!(error = %e, "could not reread the client certificates");
            // Tried again after a pause, change or not.
            tokio::time::sleep(sealmail_identity::CREDENTIALS_POLL).await;
            changes.mark_changed();
        }
    }
}

/// The key TOTP secrets are sealed under, read before privileges drop like every other secret
/// file. A single node (SQLite) makes it at its first start; nodes sharing PostgreSQL never do,
/// since a node with a key of its own could open none of the secrets the others sealed: the
/// key is copied to every node (docs/CLUSTER.md), and a node without it logs in no account that
/// has a second factor until it has the file.
fn load_mfa_key(config: &Config) -> anyhow::Result<Option<sealmail_identity::sealing::SealingKey>> {
    use sealmail_identity::sealing::{SealingError, SealingKey};
    let path = crate::credentials::mfa_key_path(config);
    let create = matches!(config.store.backend, StoreBackend::Sqlite);
    match SealingKey::load(&path, create) {
        Ok(key) => Ok(Some(key)),
        Err(SealingError::Missing(_)) => {
            tracing::warn!(
                path = %path.display(),
                "no second-factor key: accounts with a second factor cannot log in on this node; copy auth.mfa_key_file from the node that made it"
            );
            Ok(None)
        }
        Err(e) => Err(anyhow::anyhow!("the second-factor key {}: {e}", path.display())),
    }
}
