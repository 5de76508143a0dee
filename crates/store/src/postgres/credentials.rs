//! PostgreSQL side of [`CredentialStore`]: the statements and methods of `crate::credentials`,
//! each write in the transaction `PgStore::write` opened.

use async_trait::async_trait;

use sealmail_types::AccountId;

use super::{PgStore, is_unique_violation};
use crate::credentials::credential_backend;
use crate::rows::{AppPasswordRow, ClientCertRow, MfaRow};
use crate::write::{CredentialWrite, WriteDone, WriteOp, done_as, unexpected};
use crate::{
    AppPassword, ClientCert, CredentialStore, KnownClientCerts, Mfa, NewAppPassword, StoreError, now_unix,
};

credential_backend!(PgStore, sqlx::postgres::PgConnection, pool);
