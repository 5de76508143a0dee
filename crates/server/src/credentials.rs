//! Administration of credentials beyond the password: `user mfa`, `user app-password`,
//! `user cert` and `ca`. Secrets are printed once, and where a script needs them (an app
//! password, a .p12 password) alone on the last line of standard output.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::Context;

use sealmail_config::Config;
use sealmail_identity::sealing::SealingKey;
use sealmail_identity::{Identity, MfaStatus, Scopes};
use sealmail_tls::client_ca::{self, ClientCa};
use sealmail_types::EmailAddress;
use sealmail_types::clock::now_unix;

use crate::cli::{AppPasswordCommand, CaCommand, CertCommand, MfaCommand, usage};
use crate::serve::{load_config, open_store};

/// Where the internal client CA lives: `client-ca/` in the data folder.
pub const CLIENT_CA_DIR: &str = "client-ca";
/// The default key file TOTP secrets are sealed under, in the data folder.
pub const MFA_KEY_FILE: &str = "mfa.key";

/// The key file TOTP secrets are sealed under (`auth.mfa_key_file`, or `mfa.key` in the data
/// folder).
pub fn mfa_key_path(config: &Config) -> PathBuf {
    config
        .auth
        .mfa_key_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join(MFA_KEY_FILE))
}

/// The installation's login choices (`[auth]`), for the server and the admin commands alike.
pub fn auth_policy(config: &Config) -> sealmail_identity::AuthPolicy {
    sealmail_identity::AuthPolicy {
        password_with_code: config.auth.password_with_code,
        scram: config.auth.scram,
    }
}

fn parse_address(input: &str) -> anyhow::Result<EmailAddress> {
    EmailAddress::parse(input).map_err(|e| usage(format!("{input:?} is not a valid address: {e}")))
}

async fn identity_for(config: &Config, create_key: bool) -> anyhow::Result<Identity> {
    let store = open_store(config).await?;
    let path = mfa_key_path(config);
    let identity = Identity::new(store)?.with_policy(auth_policy(config));
    Ok(match SealingKey::load(&path, create_key) {
        Ok(key) => identity.with_sealing_key(key),
        Err(sealmail_identity::sealing::SealingError::Missing(_)) => identity,
        Err(e) => return Err(anyhow::anyhow!("the second-factor key {}: {e}", path.display())),
    })
}

/// "90d", "12h", "30m": seconds.
fn parse_duration(text: &str) -> anyhow::Result<i64> {
    let refuse = || usage(format!("{text:?} is not a duration; use e.g. 90d, 12h or 30m"));
    let mut chars = text.chars();
    let unit = match chars.next_back() {
        Some('d') => 86_400,
        Some('h') => 3600,
        Some('m') => 60,
        _ => return Err(refuse()),
    };
    match chars.as_str().parse::<i64>() {
        Ok(n) if n > 0 && n <= 100 * 365 => Ok(n * unit),
        _ => Err(refuse()),
    }
}

fn date(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

pub async fn mfa(config_path: &Path, command: MfaCommand) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    // Only a single node makes the key here; on PostgreSQL a key made on one host would not be
    // the other nodes' (docs/CLUSTER.md says how to make it once and copy it).
    let create_key = matches!(command, MfaCommand::Enable { .. })
        && matches!(config.store.backend, sealmail_config::StoreBackend::Sqlite);
    let identity = identity_for(&config, create_key).await?;
    match command {
        MfaCommand::Enable { address } => {
            let address = parse_address(&address)?;
            let enrolment = identity.enable_mfa(&address, config.hostname.as_str()).await?;
            println!("Scan this code with an authenticator app, or enter the URI below:");
            println!("{}", enrolment.qr);
            println!("{}", enrolment.uri.as_str());
            println!("Then activate it with: sealmail user mfa confirm {address} CODE");
        }
        MfaCommand::Confirm { address, code } => {
            let address = parse_address(&address)?;
            let code = match code {
                Some(code) => zeroize::Zeroizing::new(code),
                None => {
                    let mut line = zeroize::Zeroizing::new(String::new());
                    std::io::stdin()
                        .lock()
                        .read_line(&mut line)
                        .context("cannot read the code from standard input")?;
                    zeroize::Zeroizing::new(line.trim().to_string())
                }
            };
            let codes = identity.confirm_mfa(&address, &code).await?;
            println!("second factor active for {address}");
            println!("recovery codes (shown once; each works once):");
            for code in codes {
                println!("{}", code.as_str());
            }
        }
        MfaCommand::Disable { address } => {
            let address = parse_address(&address)?;
            match identity.disable_mfa(&address).await? {
                true => println!("second factor removed for {address}"),
                false => println!("{address} has no second factor"),
            }
        }
        MfaCommand::Status { address } => {
            let address = parse_address(&address)?;
            match identity.mfa_status(&address).await? {
                MfaStatus::Off => println!("{address}: off"),
                MfaStatus::Pending => println!("{address}: pending (not confirmed with a code yet)"),
                MfaStatus::Active {
                    since,
                    recovery_codes_left,
                } => println!(
                    "{address}: active since {}, {recovery_codes_left} recovery code(s) left",
                    date(since)
                ),
            }
        }
    }
    Ok(())
}

pub async fn app_password(config_path: &Path, command: AppPasswordCommand) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let identity = identity_for(&config, false).await?;
    match command {
        AppPasswordCommand::Add {
            address,
            name,
            scope,
            expires,
        } => {
            let address = parse_address(&address)?;
            let scopes = Scopes::parse(&scope)
                .ok_or_else(|| usage(format!("--scope {scope:?}: use imap, smtp or imap,smtp")))?;
            let expires_at = match expires.as_deref() {
                Some(text) => Some(now_unix() + parse_duration(text)?),
                None => None,
            };
            let password = identity
                .add_app_password(&address, &name, scopes, expires_at)
                .await?;
            let until = expires_at.map(date).unwrap_or_else(|| "never".to_string());
            println!("app password {name:?} for {address} (scope {scopes}, expires {until}); shown once:");
            println!("{}", password.expose());
        }
        AppPasswordCommand::List { address } => {
            let address = parse_address(&address)?;
            println!("NAME\tSCOPE\tCREATED\tEXPIRES\tLAST USED\tFROM");
            for app in identity.app_passwords(&address).await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    app.name,
                    app.scopes,
                    date(app.created_at),
                    app.expires_at.map(date).unwrap_or_else(|| "never".into()),
                    app.last_used_at.map(date).unwrap_or_else(|| "never".into()),
                    app.last_used_from.as_deref().unwrap_or("-"),
                );
            }
        }
        AppPasswordCommand::Revoke { address, name } => {
            let address = parse_address(&address)?;
            identity.revoke_app_password(&address, &name).await?;
            println!("revoked app password {name:?} of {address}");
        }
    }
    Ok(())
}

pub async fn cert(config_path: &Path, command: CertCommand) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let identity = identity_for(&config, false).await?;
    match command {
        CertCommand::Add { address, file } => {
            let address = parse_address(&address)?;
            let bytes = read_certificate_file(&file)?;
            let facts = client_ca::certificate_facts(&bytes).map_err(|e| usage(e.to_string()))?;
            if facts.not_after <= now_unix() {
                return Err(usage(format!(
                    "the certificate in {} has expired",
                    file.display()
                )));
            }
            identity
                .add_client_cert(
                    &address,
                    &facts.fingerprint,
                    &facts.subject,
                    facts.not_after,
                    false,
                )
                .await?;
            println!(
                "registered certificate {} ({}) to {address}",
                facts.fingerprint, facts.subject
            );
        }
        CertCommand::List { address } => {
            let address = parse_address(&address)?;
            println!("FINGERPRINT\tSUBJECT\tEXPIRES\tISSUED HERE");
            for cert in identity.client_certs(&address).await? {
                println!(
                    "{}\t{}\t{}\t{}",
                    cert.fingerprint,
                    cert.subject,
                    date(cert.not_after),
                    if cert.issued_here { "yes" } else { "no" }
                );
            }
        }
        CertCommand::Remove { address, fingerprint } => {
            let address = parse_address(&address)?;
            identity.remove_client_cert(&address, &fingerprint).await?;
            println!("removed and revoked certificate {fingerprint} of {address}");
        }
    }
    Ok(())
}

/// A certificate file a user registers, at most `client_ca::MAX_CERTIFICATE_FILE` octets.
fn read_certificate_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(client_ca::MAX_CERTIFICATE_FILE as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() > client_ca::MAX_CERTIFICATE_FILE {
        return Err(usage(format!(
            "{} is too large for a certificate",
            path.display()
        )));
    }
    Ok(bytes)
}

pub async fn ca(config_path: &Path, command: CaCommand) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let dir = config.data_dir.join(CLIENT_CA_DIR);
    match command {
        CaCommand::Init => {
            ClientCa::init(&dir, config.hostname.as_str())?;
            println!(
                "client CA created in {} (ca.pem; its key ca.key is 0600); listeners with client_cert = \"optional\" or \"required\" trust it from the next start",
                dir.display()
            );
        }
        CaCommand::Issue { address, out, days } => {
            let address = parse_address(&address)?;
            let ca = ClientCa::load(&dir).map_err(|e| usage(format!("{e}; run `sealmail ca init` first")))?;
            let identity = identity_for(&config, false).await?;
            // No certificate for an address without an account: it would log in as whoever
            // gets the address later, unregistered and so unrevocable.
            identity.client_certs(&address).await?;
            let out = out.unwrap_or_else(|| PathBuf::from(address.to_string()));
            let issued = ca.issue(&address.to_string(), days)?;
            // Registered before any file exists: no certificate of ours is ever left unknown
            // to the store (it could not be revoked).
            identity
                .add_client_cert(
                    &address,
                    &issued.fingerprint,
                    &format!("CN={address}"),
                    issued.not_after,
                    true,
                )
                .await?;
            client_ca::write_issued(&out, &issued)?;
            println!(
                "issued a certificate for {address} (SHA-256 {}, expires {}) in {}: cert.pem, key.pem, cert.p12",
                issued.fingerprint,
                date(issued.not_after),
                out.display()
            );
            println!("import cert.p12 into the mail client; its password (shown once):");
            println!("{}", issued.p12_password.as_str());
        }
    }
    Ok(())
}
