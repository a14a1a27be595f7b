//! The health rule of DESIGN.md §4: a color is healthy when its /health answers HTTP 200 with JSON
//! `status == "healthy"`, `environment == color`, `version == release version` and
//! `database_connected` not false. Checking color and version catches the classic blue-green
//! mistake of a process answering on the wrong port or an old binary still running.
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

/// Applies the rule to an HTTP answer.
pub fn evaluate(status: u16, body: &[u8], color: Color, version: &str) -> Probe {
    let parsed: Option<Value> = serde_json::from_slice(body).ok().filter(Value::is_object);
    let reason = match &parsed {
        _ if status != 200 => Some(format!("/health answered HTTP {status}")),
        None => Some("/health did not answer a JSON object".to_string()),
        Some(json) => check_fields(json, color, version),
    };
    Probe {
        healthy: reason.is_none(),
        reason,
        body: parsed.unwrap_or(Value::Null),
    }
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

/// Probes `url` once with `timeout`.
pub async fn probe(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
    color: Color,
    version: &str,
) -> Probe {
    let answer = async {
        let resp = http.get(url).timeout(timeout).send().await?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await?;
        Ok::<_, reqwest::Error>((status, body))
    };
    match answer.await {
        Ok((status, body)) => evaluate(status, &body, color, version),
        Err(e) => Probe {
            healthy: false,
            reason: Some(format!(
                "GET {url}: {}",
                if e.is_timeout() {
                    "timed out".to_string()
                } else {
                    root_cause(&e)
                }
            )),
            body: Value::Null,
        },
    }
}

/// reqwest's top-level message is "error sending request"; the useful part is the innermost cause.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Vec<u8> {
        v.to_string().into_bytes()
    }

    fn good() -> Value {
        json!({"status": "healthy", "environment": "green", "version": "v2", "database_connected": true})
    }

    #[test]
    fn healthy_when_every_field_matches() {
        let p = evaluate(200, &body(good()), Color::Green, "v2");
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
            let p = evaluate(status, &body(v), Color::Green, "v2");
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
        assert!(evaluate(200, &body(v), Color::Green, "v2").healthy);
        assert!(!evaluate(200, b"OK", Color::Green, "v2").healthy);
        assert!(!evaluate(200, b"[1]", Color::Green, "v2").healthy);
    }
}
