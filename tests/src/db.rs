//! Test databases: a SQLite file in a temp dir, or a fresh database in the throwaway PostgreSQL
//! cluster `deploy/test.sh` starts (its URL in BLUEGREEN_TEST_POSTGRES_URL). Every migration test
//! runs against both.
use sqlx::{AnyConnection, Connection, Row};
use std::sync::atomic::{AtomicU32, Ordering};

pub const POSTGRES_URL_ENV: &str = "BLUEGREEN_TEST_POSTGRES_URL";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl TestDb {
    pub async fn create(backend: Backend) -> TestDb {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().unwrap();
        let url = match backend {
            Backend::Sqlite => format!("sqlite://{}?mode=rwc", dir.path().join("app.db").display()),
            Backend::Postgres => {
                let admin = std::env::var(POSTGRES_URL_ENV).unwrap_or_else(|_| {
                    panic!(
                        "{POSTGRES_URL_ENV} is not set: run the tests with deploy/test.sh, which starts \
                         a throwaway PostgreSQL (deploy/test-postgres.sh start DIR prints the URL)"
                    )
                });
                static NEXT: AtomicU32 = AtomicU32::new(0);
                let name = format!(
                    "bg_{}_{}",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                );
                let mut conn = AnyConnection::connect(&admin)
                    .await
                    .expect("connect to the test PostgreSQL");
                sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let base = admin.rsplit_once('/').expect("URL has a database").0;
                format!("{base}/{name}")
            }
        };
        TestDb {
            backend,
            url,
            _dir: dir,
        }
    }

    pub async fn connect(&self) -> AnyConnection {
        AnyConnection::connect(&self.url)
            .await
            .expect("connect to the test database")
    }

    pub async fn execute(&self, sql: &str) {
        let mut conn = self.connect().await;
        sqlx::raw_sql(sql)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub async fn count(&self, sql: &str) -> i64 {
        let mut conn = self.connect().await;
        sqlx::query(sql)
            .fetch_one(&mut conn)
            .await
            .and_then(|r| r.try_get::<i64, _>(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Column names of `table`, in order (empty when the table does not exist).
    pub async fn columns(&self, table: &str) -> Vec<String> {
        let mut conn = self.connect().await;
        let sql = match self.backend {
            Backend::Sqlite => format!("SELECT name FROM pragma_table_info('{table}') ORDER BY cid"),
            Backend::Postgres => format!(
                "SELECT column_name::TEXT FROM information_schema.columns WHERE table_name = '{table}' ORDER BY ordinal_position"
            ),
        };
        sqlx::query(&sql)
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect()
    }

    /// Whether `table.column` rejects NULL.
    pub async fn not_null(&self, table: &str, column: &str) -> bool {
        let sql = match self.backend {
            Backend::Sqlite => format!(
                "SELECT \"notnull\" FROM pragma_table_info('{table}') WHERE name = '{column}'"
            ),
            Backend::Postgres => format!(
                "SELECT CASE WHEN is_nullable = 'NO' THEN 1 ELSE 0 END::BIGINT FROM information_schema.columns \
                 WHERE table_name = '{table}' AND column_name = '{column}'"
            ),
        };
        self.count(&sql).await == 1
    }

    /// `schema_migrations` as (version, success, reverted), oldest row first.
    pub async fn migration_rows(&self) -> Vec<(i64, bool, bool)> {
        let mut conn = self.connect().await;
        let rows = sqlx::query(
            "SELECT version, success, CASE WHEN reverted_at IS NULL THEN 0 ELSE 1 END FROM schema_migrations ORDER BY id",
        )
        .fetch_all(&mut conn)
        .await;
        match rows {
            Ok(rows) => rows
                .iter()
                .map(|r| {
                    (
                        r.get::<i64, _>(0),
                        r.get::<i64, _>(1) == 1,
                        r.get::<i64, _>(2) == 1,
                    )
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}
