//! The database side of migrations: one connection (sqlx Any: SQLite or PostgreSQL), the
//! `schema_migrations` table, the PostgreSQL advisory lock, and applying or reverting one
//! migration together with its row.
use super::files::{redact, Db, Migration, Script};
use super::plan::AppliedRow;
use super::sql::split_statements;
use sqlx::{AnyConnection, Connection, Row};
use std::time::Duration;
use tokio::time::Instant;

/// Who applies a migration: recorded in its row.
pub struct Applier<'a> {
    pub app_version: &'a str,
    pub deploy_id: &'a str,
}

/// A failed apply or revert. `partial` is true when statements may have committed (a
/// non-transactional migration): the schema is then not what it was before.
#[derive(Debug)]
pub struct ApplyError {
    pub message: String,
    pub partial: bool,
}

pub struct Store {
    conn: AnyConnection,
    pub db: Db,
    /// The URL with any password masked, for messages.
    pub shown_url: String,
    lock_timeout: Duration,
    advisory_key: Option<i64>,
}

const COLUMNS: &str = "id, version, name, phase, checksum, app_version, deploy_id, applied_at, \
                       execution_ms, success, reverted_at, error";

impl Store {
    pub async fn connect(url: &str, lock_timeout: Duration) -> Result<Store, String> {
        let db = Db::of_url(url)?;
        let shown_url = redact(url);
        sqlx::any::install_default_drivers();
        let conn = tokio::time::timeout(Duration::from_secs(10), AnyConnection::connect(url))
            .await
            .map_err(|_| format!("database {shown_url}: connect timed out"))?
            .map_err(|e| format!("database {shown_url}: {e}"))?;
        Ok(Store {
            conn,
            db,
            shown_url,
            lock_timeout,
            advisory_key: None,
        })
    }

    fn err(&self, e: sqlx::Error) -> String {
        format!("database {}: {e}", self.shown_url)
    }

    /// Creates `schema_migrations` if missing (idempotent, safe to race).
    pub async fn ensure_table(&mut self) -> Result<(), String> {
        let id = match self.db {
            Db::Sqlite => "id INTEGER PRIMARY KEY AUTOINCREMENT",
            Db::Postgres => "id BIGSERIAL PRIMARY KEY",
        };
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS schema_migrations ({id}, version BIGINT NOT NULL, \
             name TEXT NOT NULL, phase TEXT NOT NULL, checksum TEXT NOT NULL, \
             app_version TEXT NOT NULL, deploy_id TEXT NOT NULL, applied_at TEXT NOT NULL, \
             execution_ms BIGINT NOT NULL, success BIGINT NOT NULL, reverted_at TEXT, error TEXT)"
        );
        sqlx::raw_sql(&ddl)
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Every row, oldest first; none when the table does not exist yet (nothing applied).
    pub async fn rows(&mut self) -> Result<Vec<AppliedRow>, String> {
        let exists = match self.db {
            Db::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'",
            Db::Postgres => "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'schema_migrations'",
        };
        let count: i64 = sqlx::query(exists)
            .fetch_one(&mut self.conn)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| self.err(e))?;
        if count == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM schema_migrations ORDER BY id"
        ))
        .fetch_all(&mut self.conn)
        .await
        .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                Ok(AppliedRow {
                    id: r.try_get("id")?,
                    version: r.try_get("version")?,
                    name: r.try_get("name")?,
                    phase: r.try_get("phase")?,
                    checksum: r.try_get("checksum")?,
                    app_version: r.try_get("app_version")?,
                    deploy_id: r.try_get("deploy_id")?,
                    applied_at: r.try_get("applied_at")?,
                    execution_ms: r.try_get("execution_ms")?,
                    success: r.try_get::<i64, _>("success")? != 0,
                    reverted_at: r.try_get("reverted_at")?,
                    error: r.try_get("error")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| format!("schema_migrations in {}: {e}", self.shown_url))
    }

    /// PostgreSQL: the session-level advisory lock for `app`, so two migrators never interleave
    /// even when they do not share an etcd (it is freed if this process dies). SQLite serializes
    /// writers itself, and the etcd deploy lock covers the rest.
    pub async fn lock(&mut self, app: &str, wait: Duration) -> Result<(), LockError> {
        if self.db != Db::Postgres {
            return Ok(());
        }
        let key = advisory_key(app);
        let deadline = Instant::now() + wait;
        loop {
            let got: bool = sqlx::query("SELECT pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut self.conn)
                .await
                .and_then(|r| r.try_get(0))
                .map_err(|e| LockError::Database(self.err(e)))?;
            if got {
                self.advisory_key = Some(key);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let holder: Option<i64> = sqlx::query(
                    "SELECT pid::BIGINT FROM pg_locks WHERE locktype = 'advisory' AND granted \
                     AND ((classid::BIGINT << 32) | objid::BIGINT) = $1 LIMIT 1",
                )
                .bind(key)
                .fetch_optional(&mut self.conn)
                .await
                .ok()
                .flatten()
                .and_then(|r| r.try_get(0).ok());
                return Err(LockError::Timeout(format!(
                    "PostgreSQL advisory lock {key} (migrations of {app}) in {} is held by \
                     backend pid {} and was not free within {}",
                    self.shown_url,
                    holder.map_or("?".into(), |p| p.to_string()),
                    humantime::format_duration(wait)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Releases the advisory lock and closes the connection.
    pub async fn close(mut self) {
        if let Some(key) = self.advisory_key.take() {
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(key)
                .execute(&mut self.conn)
                .await;
        }
        let _ = self.conn.close().await;
    }

    /// Applies `m`'s up script and records its row: both in one transaction, or statement by
    /// statement with a failure row when the migration opted out of the transaction.
    pub async fn apply(&mut self, m: &Migration, by: &Applier<'_>) -> Result<i64, ApplyError> {
        let row = NewRow {
            m,
            by,
            applied_at: proto::time::now_rfc3339(),
        };
        let started = Instant::now();
        let outcome = self
            .run_script_then(m, &m.up, started, Finish::Insert(&row))
            .await;
        if let Err(e) = &outcome {
            if e.partial {
                // Best effort: the refusal this row causes is what protects the next run.
                let ms = started.elapsed().as_millis() as i64;
                let failed = row.insert(&mut self.conn, ms, Some(&e.message)).await;
                if let Err(why) = failed {
                    tracing::error!(
                        "could not record the failure of {}: {why}",
                        m.file.display()
                    );
                }
            }
        }
        outcome
    }

    /// Runs `m`'s down script and marks row `row_id` reverted, in one transaction (unless opted
    /// out). The row stays: history is kept.
    pub async fn revert(&mut self, m: &Migration, row_id: i64) -> Result<i64, ApplyError> {
        let started = Instant::now();
        self.run_script_then(m, &m.down, started, Finish::Revert(row_id))
            .await
    }

    async fn run_script_then(
        &mut self,
        m: &Migration,
        script: &Script,
        started: Instant,
        finish: Finish<'_, '_>,
    ) -> Result<i64, ApplyError> {
        let sql = script.for_db(self.db).to_string();
        let file = m.file.display().to_string();
        let lock_timeout = format!("{}ms", self.lock_timeout.as_millis());
        let shown = self.shown_url.clone();
        let fail = |what: String, partial: bool| ApplyError {
            message: format!("{file}: {what} (database {shown})"),
            partial,
        };
        if m.transactional {
            let mut tx = self
                .conn
                .begin()
                .await
                .map_err(|e| fail(format!("begin: {e}"), false))?;
            if self.db == Db::Postgres {
                sqlx::raw_sql(&format!("SET LOCAL lock_timeout = '{lock_timeout}'"))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| fail(format!("set lock_timeout: {e}"), false))?;
            }
            if let Err(e) = sqlx::raw_sql(&sql).execute(&mut *tx).await {
                let _ = tx.rollback().await;
                return Err(fail(
                    format!("{e}; rolled back, nothing of it was applied"),
                    false,
                ));
            }
            let ms = started.elapsed().as_millis() as i64;
            finish
                .record(&mut tx, ms)
                .await
                .map_err(|e| fail(format!("recording in schema_migrations: {e}"), false))?;
            tx.commit()
                .await
                .map_err(|e| fail(format!("commit: {e}"), false))?;
            return Ok(ms);
        }
        let statements = split_statements(&sql, self.db).map_err(|e| fail(e, false))?;
        if self.db == Db::Postgres {
            sqlx::raw_sql(&format!("SET lock_timeout = '{lock_timeout}'"))
                .execute(&mut self.conn)
                .await
                .map_err(|e| fail(format!("set lock_timeout: {e}"), false))?;
        }
        for (i, statement) in statements.iter().enumerate() {
            if let Err(e) = sqlx::raw_sql(statement).execute(&mut self.conn).await {
                return Err(fail(
                    format!(
                        "statement {} of {} failed without a transaction: {e}",
                        i + 1,
                        statements.len()
                    ),
                    true,
                ));
            }
        }
        let ms = started.elapsed().as_millis() as i64;
        finish
            .record(&mut self.conn, ms)
            .await
            .map_err(|e| fail(format!("recording in schema_migrations: {e}"), true))?;
        Ok(ms)
    }
}

struct NewRow<'a> {
    m: &'a Migration,
    by: &'a Applier<'a>,
    applied_at: String,
}

impl NewRow<'_> {
    async fn insert(
        &self,
        conn: &mut AnyConnection,
        ms: i64,
        error: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO schema_migrations (version, name, phase, checksum, app_version, \
             deploy_id, applied_at, execution_ms, success, error) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(self.m.version)
        .bind(self.m.name.clone())
        .bind(self.m.phase.as_str())
        .bind(self.m.checksum.clone())
        .bind(self.by.app_version.to_string())
        .bind(self.by.deploy_id.to_string())
        .bind(self.applied_at.clone())
        .bind(ms)
        .bind(i64::from(error.is_none()))
        .bind(error.map(str::to_string))
        .execute(conn)
        .await
        .map(|_| ())
    }
}

/// What is written with a script's success: a new row (apply) or `reverted_at` (revert).
enum Finish<'r, 'a> {
    Insert(&'r NewRow<'a>),
    Revert(i64),
}

impl Finish<'_, '_> {
    async fn record(&self, conn: &mut AnyConnection, ms: i64) -> Result<(), sqlx::Error> {
        match self {
            Finish::Insert(row) => row.insert(conn, ms, None).await,
            Finish::Revert(id) => {
                sqlx::query("UPDATE schema_migrations SET reverted_at = $1 WHERE id = $2")
                    .bind(proto::time::now_rfc3339())
                    .bind(*id)
                    .execute(conn)
                    .await
                    .map(|_| ())
            }
        }
    }
}

#[derive(Debug)]
pub enum LockError {
    Timeout(String),
    Database(String),
}

/// A stable 64-bit key per app, so different apps sharing one PostgreSQL do not block each other.
pub fn advisory_key(app: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("bluegreen-migrations:{app}").as_bytes());
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://shop:hunter2@db:5432/shop"),
            "postgres://shop:***@db:5432/shop"
        );
        assert_eq!(redact("postgres://shop@db/shop"), "postgres://shop@db/shop");
        assert_eq!(
            redact("sqlite:///var/lib/shop.db"),
            "sqlite:///var/lib/shop.db"
        );
    }
}
