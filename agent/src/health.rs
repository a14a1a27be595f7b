//! The health rules of one color. In the default `contract` mode a color is
//! healthy when its health path answers HTTP 200 with JSON `status == "healthy"`, `environment ==`
//! the color, `version ==` the release version and `database_connected` not false: checking
//! color and version catches the classic blue-green mistake of a process answering on the wrong
//! port or an old binary still running. Apps not written for bluegreen use `http` (an expected
//! status, optionally a body substring) or `tcp` (the port accepts connections); neither can
//! prove the version, which `status` and the README say.
use proto::records::{HealthMode, HealthSpec};
use proto::Color;
use serde_json::Value;
use std::time::Duration;

/// What one probe found: the verdict, and the app's own body to publish in etcd.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub healthy: bool,
    /// Why it is not healthy, phrased for an operator.
    pub reason: Option<String>,
    pub body: Value,
}

impl Probe {
    fn verdict(reason: Option<String>, body: Value) -> Probe {
        Probe {
            healthy: reason.is_none(),
            reason,
            body,
        }
    }
}

/// Applies the spec's HTTP rule (contract or http mode) to an answer.
pub fn evaluate(spec: &HealthSpec, status: u16, body: &[u8], color: Color, version: &str) -> Probe {
    match spec.mode {
        HealthMode::Http => evaluate_http(spec, status, body),
        // TCP probes never get here; treat a stray answer by the contract.
        HealthMode::Contract | HealthMode::Tcp => {
            evaluate_contract(spec, status, body, color, version)
        }
    }
}

fn evaluate_contract(
    spec: &HealthSpec,
    status: u16,
    body: &[u8],
    color: Color,
    version: &str,
) -> Probe {
    let path = &spec.path;
    let parsed: Option<Value> = serde_json::from_slice(body).ok().filter(Value::is_object);
    let reason = match &parsed {
        _ if status != 200 => Some(format!("{path} answered HTTP {status}")),
        None => Some(format!("{path} did not answer a JSON object")),
        Some(json) => check_fields(json, color, version),
    };
    Probe::verdict(reason, parsed.map_or(Value::Null, published))
}

/// Largest health document published into etcd as it is. etcd refuses values over its request
/// limit (1.5 MiB by default) and every watcher receives each one, so a bigger document keeps
/// only the contract's fields and a note.
pub const MAX_PUBLISHED_HEALTH: usize = 8 * 1024;

/// Most of a health answer read at all; the rest is not read (and a JSON cut there fails).
const MAX_HEALTH_READ: usize = 1 << 20;

fn published(body: Value) -> Value {
    let size = body.to_string().len();
    if size <= MAX_PUBLISHED_HEALTH {
        return body;
    }
    let mut kept = serde_json::Map::new();
    for field in ["status", "environment", "version", "database_connected"] {
        if let Some(v) = body.get(field).filter(|v| v.to_string().len() <= 256) {
            kept.insert(field.into(), v.clone());
        }
    }
    kept.insert(
        "bluegreen_truncated".into(),
        Value::String(format!(
            "the app's health document was {size} bytes; only the contract's fields are kept (limit {MAX_PUBLISHED_HEALTH})"
        )),
    );
    Value::Object(kept)
}

/// Plain HTTP: the expected status (any 2xx when unset) and, optionally, a body substring. The
/// body is not published: it is the app's, of any size and format.
fn evaluate_http(spec: &HealthSpec, status: u16, body: &[u8]) -> Probe {
    let path = &spec.path;
    let status_ok = match spec.expect_status {
        Some(expected) => status == expected,
        None => (200..300).contains(&status),
    };
    let reason = if !status_ok {
        let expected = spec
            .expect_status
            .map_or("2xx".to_string(), |s| s.to_string());
        Some(format!(
            "{path} answered HTTP {status}, expected {expected}"
        ))
    } else {
        match &spec.body_contains {
            Some(needle) if !String::from_utf8_lossy(body).contains(needle.as_str()) => {
                Some(format!("{path} body does not contain {needle:?}"))
            }
            _ => None,
        }
    };
    Probe::verdict(reason, Value::Null)
}

fn check_fields(json: &Value, color: Color, version: &str) -> Option<String> {
    let field = |name: &str| json.get(name).and_then(Value::as_str);
    if field("status") != Some("healthy") {
        return Some(format!("status is {}", show(json.get("status"))));
    }
    if field("environment") != Some(color.as_str()) {
        return Some(format!(
            "environment is {}, expected {color:?}",
            show(json.get("environment"))
        ));
    }
    if field("version") != Some(version) {
        return Some(format!(
            "version is {}, expected {version:?}",
            show(json.get("version"))
        ));
    }
    if json.get("database_connected") == Some(&Value::Bool(false)) {
        return Some("database_connected is false".to_string());
    }
    None
}

fn show(v: Option<&Value>) -> String {
    v.map_or_else(|| "missing".to_string(), Value::to_string)
}

/// Probes one color once, by the spec's mode, at `address:port`.
pub async fn probe(
    http: &reqwest::Client,
    spec: &HealthSpec,
    address: &str,
    port: u16,
    color: Color,
    version: &str,
) -> Probe {
    if spec.mode == HealthMode::Tcp {
        return probe_tcp(address, port, spec.timeout).await;
    }
    let url = format!("http://{address}:{port}{}", spec.path);
    let answer = async {
        let mut resp = http.get(&url).timeout(spec.timeout).send().await?;
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            let room = MAX_HEALTH_READ - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= MAX_HEALTH_READ {
                break;
            }
        }
        Ok::<_, reqwest::Error>((status, body))
    };
    match answer.await {
        Ok((status, body)) => evaluate(spec, status, &body, color, version),
        Err(e) => Probe::verdict(
            Some(format!(
                "GET {url}: {}",
                if e.is_timeout() {
                    "timed out".to_string()
                } else {
                    proto::error::root_cause(&e)
                }
            )),
            Value::Null,
        ),
    }
}

async fn probe_tcp(address: &str, port: u16, timeout: Duration) -> Probe {
    let connect = tokio::net::TcpStream::connect((address, port));
    let reason = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(format!("TCP connect {address}:{port}: {e}")),
        Err(_) => Some(format!("TCP connect {address}:{port}: timed out")),
    };
    Probe::verdict(reason, Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn contract() -> HealthSpec {
        HealthSpec::default()
    }

    fn http(expect_status: Option<u16>, body_contains: Option<&str>) -> HealthSpec {
        HealthSpec {
            mode: HealthMode::Http,
            expect_status,
            body_contains: body_contains.map(str::to_string),
            path: "/".into(),
            ..HealthSpec::default()
        }
    }

    fn body(v: Value) -> Vec<u8> {
        v.to_string().into_bytes()
    }

    fn good() -> Value {
        json!({"status": "healthy", "environment": "green", "version": "v2", "database_connected": true})
    }

    #[test]
    fn healthy_when_every_field_matches() {
        let p = evaluate(&contract(), 200, &body(good()), Color::Green, "v2");
        assert!(p.healthy, "{:?}", p.reason);
        assert_eq!(p.body["version"], "v2");
    }

    #[test]
    fn each_violation_is_named() {
        let cases = [
            (503, good(), "HTTP 503"),
            (
                200,
                json!({"status": "unhealthy", "environment": "green", "version": "v2"}),
                "status",
            ),
            (
                200,
                json!({"status": "healthy", "environment": "blue", "version": "v2"}),
                "environment",
            ),
            (
                200,
                json!({"status": "healthy", "environment": "green", "version": "v1"}),
                "version",
            ),
            (
                200,
                json!({"status": "healthy", "environment": "green", "version": "v2", "database_connected": false}),
                "database_connected",
            ),
            (
                200,
                json!({"environment": "green", "version": "v2"}),
                "status is missing",
            ),
        ];
        for (status, v, expect) in cases {
            let p = evaluate(&contract(), status, &body(v), Color::Green, "v2");
            assert!(!p.healthy);
            assert!(
                p.reason.as_deref().unwrap().contains(expect),
                "{:?} vs {expect}",
                p.reason
            );
        }
    }

    #[test]
    fn missing_database_field_is_fine_but_garbage_is_not() {
        let v = json!({"status": "healthy", "environment": "green", "version": "v2"});
        assert!(evaluate(&contract(), 200, &body(v), Color::Green, "v2").healthy);
        assert!(!evaluate(&contract(), 200, b"OK", Color::Green, "v2").healthy);
        assert!(!evaluate(&contract(), 200, b"[1]", Color::Green, "v2").healthy);
    }

    #[test]
    fn http_mode_checks_status_and_substring_only() {
        let html = b"<html><title>Shop</title></html>";
        assert!(evaluate(&http(None, None), 204, html, Color::Blue, "v9").healthy);
        let p = evaluate(&http(None, None), 301, html, Color::Blue, "v9");
        assert!(p.reason.unwrap().contains("HTTP 301, expected 2xx"));
        assert!(evaluate(&http(Some(301), None), 301, b"", Color::Blue, "v9").healthy);
        let p = evaluate(&http(Some(200), None), 404, b"", Color::Blue, "v9");
        assert!(p.reason.unwrap().contains("expected 200"));
        assert!(evaluate(&http(None, Some("Shop")), 200, html, Color::Blue, "v9").healthy);
        let p = evaluate(&http(None, Some("Cart")), 200, html, Color::Blue, "v9");
        assert!(p.reason.unwrap().contains("does not contain \"Cart\""));
        assert_eq!(p.body, Value::Null, "an app's own page is never published");
    }

    #[test]
    fn a_large_health_document_is_summarized_before_it_reaches_etcd() {
        let mut v = good();
        v["dump"] = Value::String("x".repeat(5 << 20));
        let p = evaluate(&contract(), 200, &body(v), Color::Green, "v2");
        assert!(p.healthy, "{:?}", p.reason);
        let published = p.body.to_string();
        assert!(
            published.len() <= MAX_PUBLISHED_HEALTH,
            "{} bytes",
            published.len()
        );
        assert_eq!(p.body["version"], "v2");
        assert!(p.body["bluegreen_truncated"]
            .as_str()
            .unwrap()
            .contains("bytes"));
    }

    #[tokio::test]
    async fn tcp_mode_connects_and_names_the_refusal() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let spec = HealthSpec {
            mode: HealthMode::Tcp,
            ..HealthSpec::default()
        };
        let http = reqwest::Client::new();
        assert!(
            probe(&http, &spec, "127.0.0.1", port, Color::Blue, "v1")
                .await
                .healthy
        );
        drop(listener);
        let p = probe(&http, &spec, "127.0.0.1", port, Color::Blue, "v1").await;
        assert!(p
            .reason
            .unwrap()
            .contains(&format!("TCP connect 127.0.0.1:{port}")));
    }
}
