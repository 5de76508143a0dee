//! SQLite side of [`CredentialStore`]: the statements and methods of `crate::credentials`, over
//! the single writer's connection and the read pool.

use async_trait::async_trait;

use sealmail_types::AccountId;

use super::{SqliteStore, is_unique_violation};
use crate::credentials::credential_backend;
use crate::rows::{AppPasswordRow, ClientCertRow, MfaRow};
use crate::write::{CredentialWrite, WriteDone, WriteOp, done_as, unexpected};
use crate::{
    AppPassword, ClientCert, CredentialStore, KnownClientCerts, Mfa, NewAppPassword, StoreError, now_unix,
};

credential_backend!(SqliteStore, sqlx::sqlite::SqliteConnection, readers);
