//! PostgreSQL side of the daily check's rows: the functions of `crate::checks`, each write in
//! the transaction `PgStore::write` opened.

use crate::checks::checks_backend;
use crate::{DomainCheck, StoreError};

checks_backend!(sqlx::postgres::PgConnection, sqlx::postgres::PgPool);
