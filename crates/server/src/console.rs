//! The admin console's view of what only the server binary knows (`sealmail_web::pages::Console`):
//! the DNS records of `domain dns`, their live check, the certificates of `cert status`,
//! adding a domain with its DKIM keys, each the same code as the CLI command, and a check of a
//! domain now by the daily check's own code.

use std::sync::Arc;

use sealmail_config::Config;
use sealmail_identity::Identity;
use sealmail_store::Store;
use sealmail_types::{Domain, EmailAddress};
use sealmail_web::pages::IssuedClientCertificate;

/// Client certificates issued from the account page are valid this long (`ca issue`'s default).
const CLIENT_CERT_DAYS: u32 = 365;

pub struct ServerConsole {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub identity: Identity,
    /// One key generation at a time (RSA keys take a while): many requests at once queue here
    /// instead of taking every core.
    pub keygen: tokio::sync::Semaphore,
    /// The daily check of the served domains, for "Check now"; `None` when `[check] daily`
    /// is off.
    pub daily_check: Option<Arc<crate::daily_check::DailyCheck>>,
}

impl ServerConsole {
    pub fn new(config: Arc<Config>, store: Arc<dyn Store>, identity: Identity) -> ServerConsole {
        ServerConsole {
            config,
            store,
            identity,
            keygen: tokio::sync::Semaphore::new(1),
            daily_check: None,
        }
    }

    pub fn with_daily_check(
        mut self,
        daily_check: Option<Arc<crate::daily_check::DailyCheck>>,
    ) -> ServerConsole {
        self.daily_check = daily_check;
        self
    }
}

#[async_trait::async_trait]
impl sealmail_web::pages::Console for ServerConsole {
    async fn dns_records(&self, domain: &Domain) -> Result<String, String> {
        let helo_spf = crate::admin::helo_spf(&self.config, &*self.store)
            .await
            .map_err(|e| e.to_string())?;
        crate::admin::dns_records(&self.config, domain, helo_spf).map_err(|e| e.to_string())
    }

    async fn check_dns(&self, domain: &Domain) -> Result<Vec<(String, String, String)>, String> {
        let helo_spf = crate::admin::helo_spf(&self.config, &*self.store)
            .await
            .map_err(|e| e.to_string())?;
        crate::admin::found_records(&self.config, domain, helo_spf)
            .await
            .map_err(|e| e.to_string())
    }

    fn check_now(&self, domain: &Domain) -> Result<(), String> {
        match &self.daily_check {
            Some(daily) => daily.check_now(domain.to_string()),
            None => Err("The daily check is off ([check] daily = false in the configuration).".to_string()),
        }
    }

    fn certificate_status(&self) -> Result<String, String> {
        crate::certs::status_text(&self.config).map_err(|e| e.to_string())
    }

    async fn add_domain(&self, domain: &Domain) -> Result<(), String> {
        self.store.add_domain(domain).await.map_err(|e| e.to_string())?;
        let dkim_dir = self.config.data_dir.join(sealmail_mailauth::signing::DKIM_DIR);
        if !sealmail_mailauth::signing::active_selectors(&dkim_dir, domain.as_str()).is_empty() {
            return Ok(());
        }
        self.rotate_dkim(domain).await.map(|_| ())
    }

    async fn rotate_dkim(&self, domain: &Domain) -> Result<Vec<String>, String> {
        let dkim_dir = self.config.data_dir.join(sealmail_mailauth::signing::DKIM_DIR);
        let domain = domain.clone();
        let _turn = self.keygen.acquire().await.map_err(|e| e.to_string())?;
        // An RSA key takes a while: off the runtime, which serves every connection.
        tokio::task::spawn_blocking(move || crate::admin::new_dkim_keys(&dkim_dir, &domain))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    async fn issue_client_certificate(
        &self,
        address: &EmailAddress,
    ) -> Result<IssuedClientCertificate, String> {
        let _turn = self.keygen.acquire().await.map_err(|e| e.to_string())?;
        // Counted again in turn, so requests at once cannot pass the cap together.
        let registered = self
            .identity
            .client_certs(address)
            .await
            .map_err(|e| e.to_string())?;
        if registered.len() >= sealmail_web::pages::account::MAX_CLIENT_CERTS {
            return Err(format!(
                "{address} has {} client certificates already",
                registered.len()
            ));
        }
        let dir = self.config.data_dir.join(crate::credentials::CLIENT_CA_DIR);
        let name = address.to_string();
        // Key generation takes a while: off the runtime, which serves every connection.
        let issued = tokio::task::spawn_blocking(move || {
            let ca = sealmail_tls::client_ca::ClientCa::load(&dir).map_err(|e| {
                format!("the client certificate authority is not usable ({e}); see `sealmail ca init`")
            })?;
            ca.issue(&name, CLIENT_CERT_DAYS).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        // Registered before it is handed out: no certificate of ours is unknown to the store.
        self.identity
            .add_client_cert(
                address,
                &issued.fingerprint,
                &format!("CN={address}"),
                issued.not_after,
                true,
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(IssuedClientCertificate {
            p12: issued.p12,
            password: issued.p12_password.to_string(),
            fingerprint: issued.fingerprint,
            not_after: issued.not_after,
        })
    }
}
