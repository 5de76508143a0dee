//! The daily check's rows (`domain_checks`, schema 17) once for both backends, as
//! `crate::web` does for its trait: the statements (the common SQL of SQLite and PostgreSQL,
//! `$N` placeholders) and the functions, expanded in `sqlite/checks.rs` and
//! `postgres/checks.rs` over each backend's connection and read pool.
//!
//! A claim is one upsert whose `WHERE` decides: a domain is claimed when it has no row, or
//! its last check is old enough and no other node's claim is still running. PostgreSQL takes
//! the row's lock for the upsert and rereads the condition under it, SQLite has one writer:
//! two nodes never both win.
//!
//! Expanded where these names are in scope: `DomainCheck`, `StoreError`.

macro_rules! checks_backend {
    ($conn:ty, $pool:ty) => {
        /// Claims `domain` for `node` until `until`: `1` when claimed, `0` when its last check
        /// is after `due_before` or another node's claim holds past `now`.
        pub(super) async fn claim(
            conn: &mut $conn,
            domain: &str,
            node: &str,
            due_before: i64,
            now: i64,
            until: i64,
        ) -> Result<u64, StoreError> {
            Ok(sqlx::query(
                "INSERT INTO domain_checks (domain, claimed_by, claimed_until) VALUES ($1, $2, $3)
                 ON CONFLICT (domain) DO UPDATE SET claimed_by = excluded.claimed_by, claimed_until = excluded.claimed_until
                 WHERE domain_checks.checked_at <= $4 AND (domain_checks.claimed_until <= $5 OR domain_checks.claimed_by = $2)",
            )
            .bind(domain)
            .bind(node)
            .bind(until)
            .bind(due_before)
            .bind(now)
            .execute(&mut *conn)
            .await?
            .rows_affected())
        }

        /// Keeps `check` as its domain's last, ending the claim.
        pub(super) async fn record(conn: &mut $conn, check: &DomainCheck) -> Result<(), StoreError> {
            sqlx::query(
                "INSERT INTO domain_checks (domain, checked_at, grade, score, report, node, claimed_by, claimed_until)
                 VALUES ($1, $2, $3, $4, $5, $6, NULL, 0)
                 ON CONFLICT (domain) DO UPDATE SET checked_at = excluded.checked_at, grade = excluded.grade,
                     score = excluded.score, report = excluded.report, node = excluded.node,
                     claimed_by = NULL, claimed_until = 0",
            )
            .bind(&check.domain)
            .bind(check.checked_at)
            .bind(&check.grade)
            .bind(check.score)
            .bind(&check.report)
            .bind(&check.node)
            .execute(&mut *conn)
            .await?;
            Ok(())
        }

        /// Every finished check, by domain.
        pub(super) async fn list(pool: &$pool) -> Result<Vec<DomainCheck>, StoreError> {
            Ok(sqlx::query_as(
                "SELECT domain, checked_at, grade, score, report, node FROM domain_checks
                 WHERE grade IS NOT NULL AND score IS NOT NULL AND report IS NOT NULL AND node IS NOT NULL
                 ORDER BY domain",
            )
            .fetch_all(pool)
            .await?)
        }

        /// Removes the rows not checked since `before` whose claim (if any) lapsed then too.
        pub(super) async fn prune(conn: &mut $conn, before: i64) -> Result<u64, StoreError> {
            Ok(
                sqlx::query("DELETE FROM domain_checks WHERE checked_at < $1 AND claimed_until < $1")
                    .bind(before)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected(),
            )
        }
    };
}

pub(crate) use checks_backend;
