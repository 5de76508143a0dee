//! [`CredentialStore`] once for both backends: the statements (with `$N` placeholders, which
//! sqlx binds by number on SQLite as on PostgreSQL) and the trait's methods, expanded in
//! `sqlite/credentials.rs` and `postgres/credentials.rs` over each backend's connection and
//! read pool. The SQL is the common subset of both (`ON CONFLICT`, `RETURNING`, `TRUE`).
//!
//! Expanded where these names are in scope: `async_trait`, `AccountId`, `is_unique_violation`,
//! `AppPasswordRow`, `ClientCertRow`, `MfaRow`, `CredentialWrite`, `WriteDone`, `WriteOp`,
//! `done_as`, `unexpected`, `AppPassword`, `ClientCert`, `CredentialStore`, `KnownClientCerts`,
//! `Mfa`, `NewAppPassword`, `StoreError`, `now_unix`.

/// `$store`: the backend's store type; `$conn`: its connection type; `$readers`: the field of
/// `$store` that reads go through.
macro_rules! credential_backend {
    ($store:ident, $conn:ty, $readers:ident) => {
        pub(super) async fn apply(conn: &mut $conn, op: &CredentialWrite) -> Result<WriteDone, StoreError> {
            match op {
                CredentialWrite::SetScram {
                    account,
                    password_hash,
                    verifier,
                } => {
                    let updated =
                        sqlx::query("UPDATE accounts SET scram_sha256 = $1 WHERE id = $2 AND password_hash = $3")
                            .bind(verifier)
                            .bind(account.0)
                            .bind(password_hash)
                            .execute(&mut *conn)
                            .await?;
                    Ok(WriteDone::Taken(updated.rows_affected() == 1))
                }
                CredentialWrite::AddAppPassword(new) => {
                    let inserted: Result<i64, _> = sqlx::query_scalar(
                        "INSERT INTO app_passwords (account_id, name, lookup, password_hash, scopes, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                    )
                    .bind(new.account.0)
                    .bind(&new.name)
                    .bind(&new.lookup)
                    .bind(&new.password_hash)
                    .bind(&new.scopes)
                    .bind(now_unix())
                    .bind(new.expires_at)
                    .fetch_one(&mut *conn)
                    .await;
                    match inserted {
                        Err(e) if is_unique_violation(&e) => {
                            Err(StoreError::Duplicate(format!("app password {}", new.name)))
                        }
                        other => Ok(WriteDone::Count(other? as u64)),
                    }
                }
                CredentialWrite::RevokeAppPassword { account, name } => {
                    let removed = sqlx::query("DELETE FROM app_passwords WHERE account_id = $1 AND name = $2")
                        .bind(account.0)
                        .bind(name)
                        .execute(&mut *conn)
                        .await?;
                    match removed.rows_affected() {
                        0 => Err(StoreError::NotFound(format!("app password {name}"))),
                        _ => Ok(WriteDone::Unit),
                    }
                }
                CredentialWrite::AppPasswordUsed { id, at, from } => {
                    sqlx::query("UPDATE app_passwords SET last_used_at = $1, last_used_from = $2 WHERE id = $3")
                        .bind(at)
                        .bind(from)
                        .bind(id)
                        .execute(&mut *conn)
                        .await?;
                    Ok(WriteDone::Unit)
                }
                CredentialWrite::StartMfa {
                    account,
                    sealed_secret,
                } => {
                    // An active factor is never replaced by a new enrolment: disable it first.
                    let started = sqlx::query(
                        "INSERT INTO mfa (account_id, sealed_secret, active, last_step, created_at) VALUES ($1, $2, FALSE, 0, $3)
                         ON CONFLICT (account_id) DO UPDATE SET sealed_secret = excluded.sealed_secret, created_at = excluded.created_at, last_step = 0
                         WHERE mfa.active = FALSE",
                    )
                    .bind(account.0)
                    .bind(sealed_secret)
                    .bind(now_unix())
                    .execute(&mut *conn)
                    .await?;
                    match started.rows_affected() {
                        0 => Err(StoreError::NotAllowed(
                            "the second factor is already active; disable it first".to_string(),
                        )),
                        _ => Ok(WriteDone::Unit),
                    }
                }
                CredentialWrite::ActivateMfa {
                    account,
                    step,
                    recovery_code_hashes,
                } => {
                    let activated = sqlx::query(
                        "UPDATE mfa SET active = TRUE, last_step = $1, activated_at = $2 WHERE account_id = $3 AND active = FALSE",
                    )
                    .bind(step)
                    .bind(now_unix())
                    .bind(account.0)
                    .execute(&mut *conn)
                    .await?;
                    if activated.rows_affected() == 0 {
                        return Ok(WriteDone::Taken(false));
                    }
                    sqlx::query("DELETE FROM recovery_codes WHERE account_id = $1")
                        .bind(account.0)
                        .execute(&mut *conn)
                        .await?;
                    for hash in recovery_code_hashes {
                        sqlx::query("INSERT INTO recovery_codes (account_id, code_hash) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                            .bind(account.0)
                            .bind(hash)
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(WriteDone::Taken(true))
                }
                CredentialWrite::DisableMfa(account) => {
                    sqlx::query("DELETE FROM recovery_codes WHERE account_id = $1")
                        .bind(account.0)
                        .execute(&mut *conn)
                        .await?;
                    // Security keys stand in for the code: without a second factor, none.
                    sqlx::query("DELETE FROM security_keys WHERE account_id = $1")
                        .bind(account.0)
                        .execute(&mut *conn)
                        .await?;
                    let removed = sqlx::query("DELETE FROM mfa WHERE account_id = $1")
                        .bind(account.0)
                        .execute(&mut *conn)
                        .await?;
                    Ok(WriteDone::Taken(removed.rows_affected() > 0))
                }
                CredentialWrite::UseTotpStep { account, step } => {
                    let taken = sqlx::query(
                        "UPDATE mfa SET last_step = $1 WHERE account_id = $2 AND active = TRUE AND last_step < $1",
                    )
                    .bind(step)
                    .bind(account.0)
                    .execute(&mut *conn)
                    .await?;
                    Ok(WriteDone::Taken(taken.rows_affected() == 1))
                }
                CredentialWrite::UseRecoveryCode { account, code_hash } => {
                    let used = sqlx::query(
                        "UPDATE recovery_codes SET used_at = $1 WHERE account_id = $2 AND code_hash = $3 AND used_at IS NULL
                         AND EXISTS (SELECT 1 FROM mfa WHERE mfa.account_id = $2 AND mfa.active = TRUE)",
                    )
                    .bind(now_unix())
                    .bind(account.0)
                    .bind(code_hash)
                    .execute(&mut *conn)
                    .await?;
                    Ok(WriteDone::Taken(used.rows_affected() == 1))
                }
                CredentialWrite::AddClientCert(cert) => {
                    let revoked: Option<i64> =
                        sqlx::query_scalar("SELECT revoked_at FROM revoked_certs WHERE fingerprint = $1")
                            .bind(&cert.fingerprint)
                            .fetch_optional(&mut *conn)
                            .await?;
                    if revoked.is_some() {
                        return Err(StoreError::Duplicate(format!(
                            "certificate {} (it was revoked)",
                            cert.fingerprint
                        )));
                    }
                    let inserted = sqlx::query(
                        "INSERT INTO client_certs (fingerprint, account_id, subject, not_after, issued_here, added_at) VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(&cert.fingerprint)
                    .bind(cert.account.0)
                    .bind(&cert.subject)
                    .bind(cert.not_after)
                    .bind(cert.issued_here)
                    .bind(now_unix())
                    .execute(&mut *conn)
                    .await;
                    match inserted {
                        Err(e) if is_unique_violation(&e) => {
                            Err(StoreError::Duplicate(format!("certificate {}", cert.fingerprint)))
                        }
                        other => other.map(|_| WriteDone::Unit).map_err(Into::into),
                    }
                }
                CredentialWrite::RemoveClientCert { account, fingerprint } => {
                    let not_after: Option<i64> = sqlx::query_scalar(
                        "DELETE FROM client_certs WHERE account_id = $1 AND fingerprint = $2 RETURNING not_after",
                    )
                    .bind(account.0)
                    .bind(fingerprint)
                    .fetch_optional(&mut *conn)
                    .await?;
                    let Some(not_after) = not_after else {
                        return Err(StoreError::NotFound(format!("certificate {fingerprint}")));
                    };
                    revoke(conn, fingerprint, not_after).await?;
                    Ok(WriteDone::Unit)
                }
            }
        }

        async fn revoke(conn: &mut $conn, fingerprint: &str, not_after: i64) -> Result<(), StoreError> {
            sqlx::query(
                "INSERT INTO revoked_certs (fingerprint, not_after, revoked_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(fingerprint)
            .bind(not_after)
            .bind(now_unix())
            .execute(&mut *conn)
            .await?;
            Ok(())
        }

        /// Before an account is removed: its certificates stay refused, even if the address is given
        /// to a new account later (a trusted CA's certificate would map to it again).
        pub(super) async fn revoke_account_certs(conn: &mut $conn, address: &str) -> Result<(), StoreError> {
            sqlx::query(
                "INSERT INTO revoked_certs (fingerprint, not_after, revoked_at)
                 SELECT c.fingerprint, c.not_after, $2 FROM client_certs c JOIN accounts a ON a.id = c.account_id WHERE a.address = $1
                 ON CONFLICT DO NOTHING",
            )
            .bind(address)
            .bind(now_unix())
            .execute(&mut *conn)
            .await?;
            Ok(())
        }

        /// Revocations of certificates that have expired since (they are refused as expired).
        pub(super) async fn prune_revoked(conn: &mut $conn, now: i64) -> Result<u64, StoreError> {
            Ok(sqlx::query("DELETE FROM revoked_certs WHERE not_after < $1")
                .bind(now)
                .execute(&mut *conn)
                .await?
                .rows_affected())
        }

        #[async_trait]
        impl CredentialStore for $store {
            async fn scram_verifier(&self, account: AccountId) -> Result<Option<String>, StoreError> {
                let verifier: Option<Option<String>> =
                    sqlx::query_scalar("SELECT scram_sha256 FROM accounts WHERE id = $1")
                        .bind(account.0)
                        .fetch_optional(&self.$readers)
                        .await?;
                Ok(verifier.flatten())
            }

            async fn set_scram_verifier(
                &self,
                account: AccountId,
                password_hash: &str,
                verifier: &str,
            ) -> Result<bool, StoreError> {
                let op = CredentialWrite::SetScram {
                    account,
                    password_hash: password_hash.to_string(),
                    verifier: verifier.to_string(),
                };
                done_as!(self.write(WriteOp::Credentials(op)).await?, WriteDone::Taken)
            }

            async fn add_app_password(&self, new: NewAppPassword) -> Result<i64, StoreError> {
                let op = WriteOp::Credentials(CredentialWrite::AddAppPassword(new));
                done_as!(self.write(op).await?, WriteDone::Count).map(|id| id as i64)
            }

            async fn app_passwords(&self, account: AccountId) -> Result<Vec<AppPassword>, StoreError> {
                let rows: Vec<AppPasswordRow> =
                    sqlx::query_as("SELECT * FROM app_passwords WHERE account_id = $1 ORDER BY name")
                        .bind(account.0)
                        .fetch_all(&self.$readers)
                        .await?;
                Ok(rows.into_iter().map(AppPassword::from).collect())
            }

            async fn app_password_candidates(
                &self,
                account: AccountId,
                lookup: &str,
            ) -> Result<Vec<AppPassword>, StoreError> {
                let rows: Vec<AppPasswordRow> =
                    sqlx::query_as("SELECT * FROM app_passwords WHERE account_id = $1 AND lookup = $2 ORDER BY id")
                        .bind(account.0)
                        .bind(lookup)
                        .fetch_all(&self.$readers)
                        .await?;
                Ok(rows.into_iter().map(AppPassword::from).collect())
            }

            async fn app_password(&self, id: i64) -> Result<Option<AppPassword>, StoreError> {
                let row: Option<AppPasswordRow> = sqlx::query_as("SELECT * FROM app_passwords WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.$readers)
                    .await?;
                Ok(row.map(AppPassword::from))
            }

            async fn revoke_app_password(&self, account: AccountId, name: &str) -> Result<(), StoreError> {
                let op = CredentialWrite::RevokeAppPassword {
                    account,
                    name: name.to_string(),
                };
                self.write(WriteOp::Credentials(op)).await.map(|_| ())
            }

            async fn note_app_password_use(&self, id: i64, at: i64, from: &str) -> Result<(), StoreError> {
                let op = CredentialWrite::AppPasswordUsed {
                    id,
                    at,
                    from: from.to_string(),
                };
                self.write(WriteOp::Credentials(op)).await.map(|_| ())
            }

            async fn start_mfa(&self, account: AccountId, sealed_secret: Vec<u8>) -> Result<(), StoreError> {
                let op = CredentialWrite::StartMfa {
                    account,
                    sealed_secret,
                };
                self.write(WriteOp::Credentials(op)).await.map(|_| ())
            }

            async fn activate_mfa(
                &self,
                account: AccountId,
                step: i64,
                recovery_code_hashes: Vec<String>,
            ) -> Result<bool, StoreError> {
                let op = CredentialWrite::ActivateMfa {
                    account,
                    step,
                    recovery_code_hashes,
                };
                done_as!(self.write(WriteOp::Credentials(op)).await?, WriteDone::Taken)
            }

            async fn disable_mfa(&self, account: AccountId) -> Result<bool, StoreError> {
                let op = CredentialWrite::DisableMfa(account);
                done_as!(self.write(WriteOp::Credentials(op)).await?, WriteDone::Taken)
            }

            async fn mfa(&self, account: AccountId) -> Result<Option<Mfa>, StoreError> {
                let row: Option<MfaRow> = sqlx::query_as(
                    "SELECT sealed_secret, active, last_step, created_at, activated_at,
                     (SELECT COUNT(*) FROM recovery_codes r WHERE r.account_id = mfa.account_id AND r.used_at IS NULL) AS recovery_codes_left
                     FROM mfa WHERE account_id = $1",
                )
                .bind(account.0)
                .fetch_optional(&self.$readers)
                .await?;
                Ok(row.map(Mfa::from))
            }

            async fn use_totp_step(&self, account: AccountId, step: i64) -> Result<bool, StoreError> {
                let op = CredentialWrite::UseTotpStep { account, step };
                done_as!(self.write(WriteOp::Credentials(op)).await?, WriteDone::Taken)
            }

            async fn use_recovery_code(&self, account: AccountId, code_hash: &str) -> Result<bool, StoreError> {
                let op = CredentialWrite::UseRecoveryCode {
                    account,
                    code_hash: code_hash.to_string(),
                };
                done_as!(self.write(WriteOp::Credentials(op)).await?, WriteDone::Taken)
            }

            async fn add_client_cert(&self, cert: ClientCert) -> Result<(), StoreError> {
                let op = WriteOp::Credentials(CredentialWrite::AddClientCert(cert));
                self.write(op).await.map(|_| ())
            }

            async fn client_certs(&self, account: AccountId) -> Result<Vec<ClientCert>, StoreError> {
                let rows: Vec<ClientCertRow> =
                    sqlx::query_as("SELECT * FROM client_certs WHERE account_id = $1 ORDER BY added_at, fingerprint")
                        .bind(account.0)
                        .fetch_all(&self.$readers)
                        .await?;
                Ok(rows.into_iter().map(ClientCert::from).collect())
            }

            async fn client_cert(&self, fingerprint: &str) -> Result<Option<ClientCert>, StoreError> {
                let row: Option<ClientCertRow> = sqlx::query_as("SELECT * FROM client_certs WHERE fingerprint = $1")
                    .bind(fingerprint)
                    .fetch_optional(&self.$readers)
                    .await?;
                Ok(row.map(ClientCert::from))
            }

            async fn remove_client_cert(&self, account: AccountId, fingerprint: &str) -> Result<(), StoreError> {
                let op = CredentialWrite::RemoveClientCert {
                    account,
                    fingerprint: fingerprint.to_string(),
                };
                self.write(WriteOp::Credentials(op)).await.map(|_| ())
            }

            async fn is_cert_revoked(&self, fingerprint: &str) -> Result<bool, StoreError> {
                let found: Option<i64> =
                    sqlx::query_scalar("SELECT revoked_at FROM revoked_certs WHERE fingerprint = $1")
                        .bind(fingerprint)
                        .fetch_optional(&self.$readers)
                        .await?;
                Ok(found.is_some())
            }

            async fn known_client_certs(&self) -> Result<KnownClientCerts, StoreError> {
                let registered = sqlx::query_scalar("SELECT fingerprint FROM client_certs")
                    .fetch_all(&self.$readers)
                    .await?;
                let revoked = sqlx::query_scalar("SELECT fingerprint FROM revoked_certs")
                    .fetch_all(&self.$readers)
                    .await?;
                Ok(KnownClientCerts { registered, revoked })
            }
        }
    };
}
pub(crate) use credential_backend;
