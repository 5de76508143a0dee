//! SQLite side of [`WebStore`]: the statements and methods of `crate::web`, over the single
//! writer's connection and the read pool.

use async_trait::async_trait;

use sealmail_types::{AccountId, EmailAddress};

use super::{SqliteStore, is_unique_violation};
use crate::rows::{SecurityKeyRow, WebSessionRow};
use crate::web::{check_security_key, web_backend};
use crate::write::{WebWrite, WriteDone, WriteOp, done_as, unexpected};
use crate::{
    MAX_PENDING_WEB_SESSIONS, MAX_SECURITY_KEYS, MAX_WEB_SESSIONS, SecurityKey, StoreError,
    WEB_SESSION_PENDING, WebSession, WebStore,
};

web_backend!(
    SqliteStore,
    sqlx::sqlite::SqliteConnection,
    readers,
    "SELECT id FROM accounts WHERE id = $1"
);
