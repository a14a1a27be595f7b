//! A web app that knows nothing of bluegreen beyond the environment the agent gives every app:
//! its `/` is an HTML page (or, with `PLAIN_ROOT=404` / `redirect`, a 404 or a redirect), it
//! answers `/ping` with plain text, and its health document is a static file it writes at start
//! (`/status.json`, the health contract's fields). Tests deploy it to prove nothing in the
//! pipeline depends on the demo app's JSON.
#![forbid(unsafe_code)]
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::path::PathBuf;

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--help") {
        println!("plain-app: a non-bluegreen web app for tests (env APPLICATION_HOST, APPLICATION_PORT, PLAIN_ROOT=html|404|redirect)");
        return;
    }
    let host = var("APPLICATION_HOST", "127.0.0.1");
    let port = var("APPLICATION_PORT", "8080");
    let root = var("PLAIN_ROOT", "html");
    // The health document is a plain file, as a static site would ship it.
    // In the temp dir, not the artifact's directory: an app running unprivileged cannot write there.
    let status_file: PathBuf = std::env::temp_dir().join(format!(
        "plain-app-status-{port}-{}.json",
        std::process::id()
    ));
    let document = serde_json::json!({
        "status": "healthy",
        "environment": var("ENVIRONMENT_COLOR", "unknown"),
        "version": var("APP_VERSION", "unknown"),
    });
    std::fs::write(&status_file, document.to_string()).expect("write status file");
    let app = Router::new()
        .route("/", get(move || index(root.clone())))
        .route("/ping", get(|| async { "pong\n" }))
        .route(
            "/status.json",
            get(move || {
                let file = status_file.clone();
                async move {
                    match tokio::fs::read(&file).await {
                        Ok(body) => {
                            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
                        }
                        Err(_) => StatusCode::NOT_FOUND.into_response(),
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(format!("{host}:{port}"))
        .await
        .expect("bind APPLICATION_HOST:APPLICATION_PORT");
    println!("plain-app listening on {host}:{port}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            term.recv().await;
        })
        .await
        .expect("serve");
}

async fn index(root: String) -> Response {
    match root.as_str() {
        "404" => (StatusCode::NOT_FOUND, "no page here\n").into_response(),
        "redirect" => (StatusCode::FOUND, [(header::LOCATION, "/login")], "").into_response(),
        _ => (
            [(header::CONTENT_TYPE, "text/html")],
            "<!doctype html><html><head><title>Shop</title></head><body><h1>Shop</h1></body></html>\n",
        )
            .into_response(),
    }
}
