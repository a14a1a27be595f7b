//! The demo app's HTTP surface: /health, /, /api/v1/status, /api/v1/items and /api/v1/events.
use crate::config::Config;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::{AnyPool, Row};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

struct AppState {
    config: Config,
    pool: AnyPool,
    started: Instant,
    hostname: String,
}

type Shared = State<Arc<AppState>>;

pub fn router(config: Config, pool: AnyPool) -> Router {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string();
    let health_path = config.health_path.clone();
    let faults = config.faults;
    let state = Arc::new(AppState {
        config,
        pool,
        started: Instant::now(),
        hostname,
    });
    let mut router = Router::new()
        .route("/", get(index))
        .route("/api/v1/status", get(status))
        .route("/api/v1/items", get(list_items).post(create_item))
        .route("/api/v1/events", get(events));
    if !faults.is_none() {
        // Layered before the health routes are added: health is never slowed or failed.
        router = router.layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                crate::faults::inject(faults, request, next)
            },
        ));
    }
    router = router.route(&health_path, get(health));
    if health_path != "/health" {
        router = router.route("/health", get(health));
    }
    router.with_state(state)
}

pub async fn ensure_schema(pool: &AnyPool) -> Result<(), sqlx::Error> {
    sqlx::query("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        .execute(pool)
        .await
        .map(|_| ())
}

async fn database_connected(pool: &AnyPool) -> bool {
    let probe = sqlx::query("SELECT 1").fetch_one(pool);
    matches!(
        tokio::time::timeout(Duration::from_secs(1), probe).await,
        Ok(Ok(_))
    )
}

async fn health(State(s): Shared) -> Response {
    let db = database_connected(&s.pool).await;
    let healthy = !s.config.fail_health && db;
    let mut body = json!({
        "status": if healthy { "healthy" } else { "unhealthy" },
        "environment": s.config.color,
        "version": s.config.version,
        "uptime_seconds": s.started.elapsed().as_secs_f64(),
        "timestamp": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        "hostname": s.hostname,
        "database_connected": db,
    });
    if s.config.health_padding > 0 {
        body["padding"] = Value::String("x".repeat(s.config.health_padding));
    }
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

fn identity(s: &AppState) -> Value {
    json!({
        "environment": s.config.color,
        "version": s.config.version,
        "hostname": s.hostname,
        "new_api": s.config.feature_new_api,
    })
}

/// Server-sent events: the app's identity at once, then every second for as long as the client
/// stays. A long-lived connection, as a websocket or a stream is: it shows which color keeps it
/// across a switch, and what a deploy waits for before it replaces that color.
async fn events(State(s): Shared) -> Response {
    let line = format!("data: {}\n\n", identity(&s));
    let stream = futures::stream::unfold(true, move |first| {
        let line = line.clone();
        async move {
            if !first {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Some((Ok::<_, std::convert::Infallible>(line), false))
        }
    });
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/event-stream"),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

async fn index(State(s): Shared) -> Json<Value> {
    let mut body = identity(&s);
    body["message"] = json!(format!(
        "hello from {} {}",
        s.config.color, s.config.version
    ));
    Json(body)
}

fn smoke_failure(s: &AppState) -> Option<Response> {
    s.config.fail_smoke.then(|| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "failing on purpose (DEMO_FAIL_SMOKE)"})),
        )
            .into_response()
    })
}

async fn status(State(s): Shared) -> Response {
    if let Some(fail) = smoke_failure(&s) {
        return fail;
    }
    let mut body = identity(&s);
    body["database_connected"] = json!(database_connected(&s.pool).await);
    Json(body).into_response()
}

fn db_error(e: sqlx::Error) -> Response {
    tracing::warn!("database error: {e}");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": format!("database: {e}")})),
    )
        .into_response()
}

/// The newest 100 items: a list endpoint stays cheap however large the table grows.
async fn list_items(State(s): Shared) -> Response {
    if let Some(fail) = smoke_failure(&s) {
        return fail;
    }
    let sql = if s.config.feature_new_api {
        "SELECT id, name, description FROM items ORDER BY id DESC LIMIT 100"
    } else {
        "SELECT id, name FROM items ORDER BY id DESC LIMIT 100"
    };
    match sqlx::query(sql).fetch_all(&s.pool).await {
        Ok(rows) => {
            let items: Vec<Value> = rows
                .iter()
                .map(|r| {
                    let mut item = json!({"id": r.try_get::<i64, _>(0).unwrap_or_default(), "name": r.try_get::<String, _>(1).unwrap_or_default()});
                    if s.config.feature_new_api {
                        item["description"] = json!(r.try_get::<Option<String>, _>(2).ok().flatten());
                    }
                    item
                })
                .collect();
            Json(
                json!({"items": items, "environment": s.config.color, "version": s.config.version}),
            )
            .into_response()
        }
        Err(e) => db_error(e),
    }
}

#[derive(Deserialize)]
struct NewItem {
    name: String,
    #[serde(default)]
    description: Option<String>,
}

async fn create_item(State(s): Shared, Json(item): Json<NewItem>) -> Response {
    if let Some(fail) = smoke_failure(&s) {
        return fail;
    }
    if item.name.trim().is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "name: must not be empty"})),
        )
            .into_response();
    }
    let result = if s.config.feature_new_api {
        // v2 always writes a description (empty when none is given), so that once every color
        // runs v2 a contract migration can make the column NOT NULL.
        sqlx::query("INSERT INTO items (name, description) VALUES ($1, $2)")
            .bind(item.name.clone())
            .bind(item.description.clone().unwrap_or_default())
            .execute(&s.pool)
            .await
    } else {
        sqlx::query("INSERT INTO items (name) VALUES ($1)")
            .bind(item.name.clone())
            .execute(&s.pool)
            .await
    };
    match result {
        Ok(_) => (
            StatusCode::CREATED,
            Json(json!({"name": item.name, "environment": s.config.color})),
        )
            .into_response(),
        Err(e) => db_error(e),
    }
}
