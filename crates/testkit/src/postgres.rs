//! A fresh PostgreSQL schema per test on the machine's server (`SEALMAIL_TEST_POSTGRES`,
//! default `postgres://postgres@127.0.0.1:5432/test`), dropped with everything in it when the
//! test ends, passed or failed. A server that does not answer fails the test: scripts/test.sh
//! starts one when the machine has none, so a missing server is never a silent skip.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::{ConnectOptions, Connection};

use crate::TestResult;

/// The server the tests use.
pub fn url() -> String {
    std::env::var("SEALMAIL_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema of its own for one test; dropped (CASCADE) on drop.
pub struct TestSchema {
    pub url: String,
    pub name: String,
}

impl TestSchema {
    /// Checks that the server answers and picks an unused schema name (the store creates it).
    pub async fn new() -> TestResult<TestSchema> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let url = url();
        let mut conn = connect(&url).await?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "t_{}_{}_{nanos:x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {name} CASCADE"
        )))
        .execute(&mut conn)
        .await
        .map_err(|e| format!("PostgreSQL at {url}: {e}"))?;
        let _ = conn.close().await;
        Ok(TestSchema { url, name })
    }
}

async fn connect(url: &str) -> TestResult<sqlx::PgConnection> {
    let options: sqlx::postgres::PgConnectOptions = url
        .parse()
        .map_err(|e| format!("SEALMAIL_TEST_POSTGRES={url} is not a PostgreSQL URL: {e}"))?;
    tokio::time::timeout(Duration::from_secs(10), options.connect())
        .await
        .map_err(|_| format!("PostgreSQL at {url} did not answer within 10 s (scripts/test.sh starts one)"))?
        .map_err(|e| format!("PostgreSQL at {url} refused the connection ({e}); scripts/test.sh starts one"))
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread of its own
        // with a runtime of its own drops the schema, and the test waits for it.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async {
                    if let Ok(mut conn) = connect(&url).await {
                        let sql = format!("DROP SCHEMA IF EXISTS {name} CASCADE");
                        let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await;
                        let _ = conn.close().await;
                    }
                });
            }
        });
        let _ = dropped.join();
    }
}
