//! SQLite side of the daily check's rows: the functions of `crate::checks` over the single
//! writer's connection and the read pool.

use crate::checks::checks_backend;
use crate::{DomainCheck, StoreError};

checks_backend!(sqlx::sqlite::SqliteConnection, sqlx::sqlite::SqlitePool);
