//! [`WebStore`] once for both backends, as `crate::credentials` does for its trait: the
//! statements (the common SQL of SQLite and PostgreSQL, `$N` placeholders) and the methods,
//! expanded in `sqlite/web.rs` and `postgres/web.rs` over each backend's connection and read
//! pool. Writes go through the backend's `write` (SQLite's single writer, PostgreSQL's
//! transaction per write).
//!
//! Expanded where these names are in scope: `async_trait`, `AccountId`, `EmailAddress`,
//! `is_unique_violation`, `SecurityKeyRow`, `WebSessionRow`, `WebWrite`, `WriteDone`, `WriteOp`,
//! `done_as`, `unexpected`, `MAX_WEB_SESSIONS`, `MAX_PENDING_WEB_SESSIONS`, `WEB_SESSION_PENDING`,
//! `MAX_SECURITY_KEYS`, `SecurityKey`, `StoreError`, `WebSession`, `WebStore`.

/// `$store`: the backend's store type; `$conn`: its connection type; `$readers`: the field of
/// `$store` that reads go through; `$lock_account`: a statement that finds account `$1` and,
/// where writers run in parallel (PostgreSQL), locks its row to the end of the transaction (so
/// the adds of one account's security keys take turns, and its cap holds).
macro_rules! web_backend {
    ($store:ident, $conn:ty, $readers:ident, $lock_account:literal) => {
        pub(super) async fn apply(conn: &mut $conn, op: &WebWrite) -> Result<WriteDone, StoreError> {
            match op {
                WebWrite::AddSession(session) => {
                    let inserted = sqlx::query(
                        "INSERT INTO web_sessions (id_hash, account_id, credential, client_address, user_agent, created_at, last_seen_at, expires_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    )
                    .bind(&session.id_hash)
                    .bind(session.account.0)
                    .bind(&session.credential)
                    .bind(&session.client_address)
                    .bind(&session.user_agent)
                    .bind(session.created_at)
                    .bind(session.last_seen_at)
                    .bind(session.expires_at)
                    .execute(&mut *conn)
                    .await;
                    match inserted {
                        Err(e) if is_unique_violation(&e) => {
                            return Err(StoreError::Duplicate("web session".to_string()));
                        }
                        other => other?,
                    };
                    // In the same commit, so no moment sees more than the cap. The new session
                    // is kept whatever the clock says of the others. Logins still waiting for
                    // their second factor have a cap of their own, so that someone who knows
                    // only the password cannot push the owner's sessions out.
                    let pending = session.credential == WEB_SESSION_PENDING;
                    let cap = if pending { MAX_PENDING_WEB_SESSIONS } else { MAX_WEB_SESSIONS };
                    let others = cap.saturating_sub(1) as i64;
                    let ended = sqlx::query(
                        "DELETE FROM web_sessions WHERE account_id = $1 AND id_hash <> $2 AND (credential = $4) = $5 AND id_hash NOT IN (
                             SELECT id_hash FROM web_sessions WHERE account_id = $1 AND id_hash <> $2 AND (credential = $4) = $5
                             ORDER BY last_seen_at DESC, created_at DESC, id_hash LIMIT $3)",
                    )
                    .bind(session.account.0)
                    .bind(&session.id_hash)
                    .bind(others)
                    .bind(WEB_SESSION_PENDING)
                    .bind(pending)
                    .execute(&mut *conn)
                    .await?;
                    Ok(WriteDone::Count(ended.rows_affected()))
                }
                WebWrite::TouchSession {
                    id_hash,
                    now,
                    expires_at,
                } => {
                    sqlx::query(
                        "UPDATE web_sessions SET last_seen_at = $1, expires_at = $2 WHERE id_hash = $3 AND expires_at > $1",
                    )
                    .bind(now)
                    .bind(expires_at)
                    .bind(id_hash)
                    .execute(&mut *conn)
                    .await?;
                    Ok(WriteDone::Unit)
                }
                WebWrite::EndSession(id_hash) => {
                    let ended = sqlx::query("DELETE FROM web_sessions WHERE id_hash = $1")
                        .bind(id_hash)
                        .execute(&mut *conn)
                        .await?;
                    Ok(WriteDone::Taken(ended.rows_affected() > 0))
                }
                WebWrite::EndSessions { account, keep } => {
                    let ended = match keep {
                        Some(keep) => {
                            sqlx::query("DELETE FROM web_sessions WHERE account_id = $1 AND id_hash <> $2")
                                .bind(account.0)
                                .bind(keep)
                                .execute(&mut *conn)
                                .await?
                        }
                        None => {
                            sqlx::query("DELETE FROM web_sessions WHERE account_id = $1")
                                .bind(account.0)
                                .execute(&mut *conn)
                                .await?
                        }
                    };
                    Ok(WriteDone::Count(ended.rows_affected()))
                }
                WebWrite::SetAdmin { address, admin } => {
                    let updated = sqlx::query("UPDATE accounts SET admin = $1 WHERE address = $2")
                        .bind(*admin)
                        .bind(address.to_string())
                        .execute(&mut *conn)
                        .await?;
                    match updated.rows_affected() {
                        0 => Err(StoreError::NotFound(format!("user {address}"))),
                        _ => Ok(WriteDone::Unit),
                    }
                }
                WebWrite::AddSecurityKey(key) => {
                    let found: Option<i64> = sqlx::query_scalar($lock_account)
                        .bind(key.account.0)
                        .fetch_optional(&mut *conn)
                        .await?;
                    if found.is_none() {
                        return Err(StoreError::NotFound(format!("account {}", key.account.0)));
                    }
                    // Counted and inserted in one statement, under the account's lock: never
                    // more than the cap. A credential id registered already (to any account)
                    // inserts nothing, and is no error that would end the transaction.
                    let id: Option<i64> = sqlx::query_scalar(
                        "INSERT INTO security_keys (account_id, credential_id, public_key, name, sign_count, created_at, last_used_at)
                         SELECT $1, $2, $3, $4, $5, $6, $7
                         WHERE (SELECT COUNT(*) FROM security_keys WHERE account_id = $1) < $8
                         ON CONFLICT (credential_id) DO NOTHING
                         RETURNING id",
                    )
                    .bind(key.account.0)
                    .bind(&key.credential_id)
                    .bind(&key.public_key)
                    .bind(&key.name)
                    .bind(i64::from(key.sign_count))
                    .bind(key.created_at)
                    .bind(key.last_used_at)
                    .bind(MAX_SECURITY_KEYS as i64)
                    .fetch_optional(&mut *conn)
                    .await?;
                    Ok(WriteDone::Added(id))
                }
                WebWrite::SecurityKeyUsed {
                    account,
                    credential_id,
                    sign_count,
                    at,
                } => {
                    // One statement: of two uses with the same counter, the second finds the
                    // counter moved on (PostgreSQL re-checks the row it waited for).
                    let updated = sqlx::query(
                        "UPDATE security_keys SET sign_count = $1, last_used_at = $2
                         WHERE account_id = $3 AND credential_id = $4 AND (sign_count < $1 OR (sign_count = 0 AND $1 = 0))",
                    )
                    .bind(i64::from(*sign_count))
                    .bind(at)
                    .bind(account.0)
                    .bind(credential_id)
                    .execute(&mut *conn)
                    .await?;
                    Ok(WriteDone::Taken(updated.rows_affected() > 0))
                }
                WebWrite::RemoveSecurityKey { account, id } => {
                    let removed = sqlx::query("DELETE FROM security_keys WHERE id = $1 AND account_id = $2")
                        .bind(id)
                        .bind(account.0)
                        .execute(&mut *conn)
                        .await?;
                    Ok(WriteDone::Taken(removed.rows_affected() > 0))
                }
                WebWrite::RemoveSecurityKeys(account) => {
                    let removed = sqlx::query("DELETE FROM security_keys WHERE account_id = $1")
                        .bind(account.0)
                        .execute(&mut *conn)
                        .await?;
                    Ok(WriteDone::Count(removed.rows_affected()))
                }
            }
        }

        /// Sessions that expired before `before` (a lookup ignores them already).
        pub(super) async fn prune_expired(conn: &mut $conn, before: i64) -> Result<u64, StoreError> {
            Ok(sqlx::query("DELETE FROM web_sessions WHERE expires_at < $1")
                .bind(before)
                .execute(&mut *conn)
                .await?
                .rows_affected())
        }

        #[async_trait]
        impl WebStore for $store {
            async fn add_web_session(&self, session: WebSession) -> Result<(), StoreError> {
                let op = WriteOp::Web(WebWrite::AddSession(session));
                done_as!(self.write(op).await?, WriteDone::Count).map(|_| ())
            }

            async fn web_session(&self, id_hash: &str, now: i64) -> Result<Option<WebSession>, StoreError> {
                let row: Option<WebSessionRow> =
                    sqlx::query_as("SELECT * FROM web_sessions WHERE id_hash = $1 AND expires_at > $2")
                        .bind(id_hash)
                        .bind(now)
                        .fetch_optional(&self.$readers)
                        .await?;
                Ok(row.map(WebSession::from))
            }

            async fn touch_web_session(&self, id_hash: &str, now: i64, expires_at: i64) -> Result<(), StoreError> {
                let op = WebWrite::TouchSession {
                    id_hash: id_hash.to_string(),
                    now,
                    expires_at,
                };
                self.write(WriteOp::Web(op)).await.map(|_| ())
            }

            async fn end_web_session(&self, id_hash: &str) -> Result<bool, StoreError> {
                let op = WebWrite::EndSession(id_hash.to_string());
                done_as!(self.write(WriteOp::Web(op)).await?, WriteDone::Taken)
            }

            async fn end_web_sessions(&self, account: AccountId, keep: Option<&str>) -> Result<u64, StoreError> {
                let op = WebWrite::EndSessions {
                    account,
                    keep: keep.map(str::to_string),
                };
                done_as!(self.write(WriteOp::Web(op)).await?, WriteDone::Count)
            }

            async fn web_sessions(&self, account: AccountId, now: i64) -> Result<Vec<WebSession>, StoreError> {
                let rows: Vec<WebSessionRow> = sqlx::query_as(
                    "SELECT * FROM web_sessions WHERE account_id = $1 AND expires_at > $2
                     ORDER BY created_at DESC, last_seen_at DESC, id_hash",
                )
                .bind(account.0)
                .bind(now)
                .fetch_all(&self.$readers)
                .await?;
                Ok(rows.into_iter().map(WebSession::from).collect())
            }

            async fn set_admin(&self, address: &EmailAddress, admin: bool) -> Result<(), StoreError> {
                let op = WebWrite::SetAdmin {
                    address: address.clone(),
                    admin,
                };
                self.write(WriteOp::Web(op)).await.map(|_| ())
            }

            async fn is_admin(&self, account: AccountId) -> Result<bool, StoreError> {
                let admin: Option<bool> = sqlx::query_scalar("SELECT admin FROM accounts WHERE id = $1")
                    .bind(account.0)
                    .fetch_optional(&self.$readers)
                    .await?;
                Ok(admin.unwrap_or(false))
            }

            async fn admins(&self) -> Result<Vec<EmailAddress>, StoreError> {
                let addresses: Vec<String> =
                    sqlx::query_scalar("SELECT address FROM accounts WHERE admin = TRUE ORDER BY address")
                        .fetch_all(&self.$readers)
                        .await?;
                addresses
                    .iter()
                    .map(|a| {
                        EmailAddress::parse(a).map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))
                    })
                    .collect()
            }

            async fn add_security_key(&self, key: SecurityKey) -> Result<Option<i64>, StoreError> {
                check_security_key(&key)?;
                done_as!(self.write(WriteOp::Web(WebWrite::AddSecurityKey(key))).await?, WriteDone::Added)
            }

            async fn security_keys(&self, account: AccountId) -> Result<Vec<SecurityKey>, StoreError> {
                let rows: Vec<SecurityKeyRow> = sqlx::query_as(
                    "SELECT id, account_id, credential_id, public_key, name, sign_count, created_at, last_used_at
                     FROM security_keys WHERE account_id = $1 ORDER BY created_at, id",
                )
                .bind(account.0)
                .fetch_all(&self.$readers)
                .await?;
                Ok(rows.into_iter().map(SecurityKey::from).collect())
            }

            async fn security_key_used(
                &self,
                account: AccountId,
                credential_id: &[u8],
                sign_count: u32,
                at: i64,
            ) -> Result<bool, StoreError> {
                let op = WebWrite::SecurityKeyUsed {
                    account,
                    credential_id: credential_id.to_vec(),
                    sign_count,
                    at,
                };
                done_as!(self.write(WriteOp::Web(op)).await?, WriteDone::Taken)
            }

            async fn remove_security_key(&self, account: AccountId, id: i64) -> Result<bool, StoreError> {
                let op = WebWrite::RemoveSecurityKey { account, id };
                done_as!(self.write(WriteOp::Web(op)).await?, WriteDone::Taken)
            }

            async fn remove_security_keys(&self, account: AccountId) -> Result<u64, StoreError> {
                let op = WebWrite::RemoveSecurityKeys(account);
                done_as!(self.write(WriteOp::Web(op)).await?, WriteDone::Count)
            }
        }
    };
}
pub(crate) use web_backend;

/// Refuses a key whose fields are longer than WebAuthn allows or the store keeps.
pub(crate) fn check_security_key(key: &crate::SecurityKey) -> Result<(), crate::StoreError> {
    use crate::{
        MAX_CREDENTIAL_ID_LEN, MAX_SECURITY_KEY_NAME_CHARS, MAX_SECURITY_KEY_PUBLIC_KEY_LEN, StoreError,
    };
    if key.credential_id.len() > MAX_CREDENTIAL_ID_LEN {
        return Err(StoreError::NotAllowed(format!(
            "a security key's credential id may be at most {MAX_CREDENTIAL_ID_LEN} bytes, not {}",
            key.credential_id.len()
        )));
    }
    if key.public_key.len() > MAX_SECURITY_KEY_PUBLIC_KEY_LEN {
        return Err(StoreError::NotAllowed(format!(
            "a security key's public key may be at most {MAX_SECURITY_KEY_PUBLIC_KEY_LEN} bytes, not {}",
            key.public_key.len()
        )));
    }
    let name_chars = key.name.chars().count();
    if name_chars > MAX_SECURITY_KEY_NAME_CHARS {
        return Err(StoreError::NotAllowed(format!(
            "a security key's name may be at most {MAX_SECURITY_KEY_NAME_CHARS} characters, not {name_chars}"
        )));
    }
    Ok(())
}
