//! Spec `[[notify]]`: webhooks that receive each operation's `result` event (docs/json.md) as a
//! JSON POST, like Argo's notifications but without a controller. They are sent after the outcome
//! is decided, all at once, each with its own timeout and retries; a receiver that is down or
//! slow costs at most its own budget and never changes the exit code.
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyTarget {
    /// http:// or https:// URL; `env:NAME` reads it from the environment (a URL with a token).
    pub url: String,
    /// Each attempt's limit.
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
    /// Attempts after the first, 1 s apart (a 4xx answer is not retried).
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_retries() -> u32 {
    2
}

impl NotifyTarget {
    pub fn validate(&self, index: usize) -> Result<(), String> {
        if self.url.starts_with("env:") {
            return Ok(());
        }
        if self.url.starts_with("http://") || self.url.starts_with("https://") {
            Ok(())
        } else {
            Err(format!(
                "notify[{index}].url: {:?} must be http://, https:// or env:NAME",
                proto::secrets::mask_text(&self.url)
            ))
        }
    }

    fn resolved_url(&self) -> Result<String, String> {
        match self.url.strip_prefix("env:") {
            Some(name) => {
                std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))
            }
            None => Ok(self.url.clone()),
        }
    }
}

/// One target's fate, for the operator (stderr) and the tests.
#[derive(Debug)]
pub struct Delivery {
    pub url: String,
    pub result: Result<u16, String>,
}

/// POSTs `event` to every target concurrently; returns each one's outcome.
pub async fn send(targets: &[NotifyTarget], event: &serde_json::Value) -> Vec<Delivery> {
    let client = reqwest::Client::new();
    let sends = targets.iter().map(|target| {
        let client = client.clone();
        async move {
            let mut shown = proto::secrets::mask_text(&target.url);
            let result = match target.resolved_url() {
                Ok(url) => {
                    // A URL kept in the environment is a secret (a Slack webhook is its own
                    // credential): only its scheme and host are ever shown.
                    if target.url.starts_with("env:") {
                        shown = format!("{shown} ({})", scheme_and_host(&url));
                    }
                    post(&client, &url, target, event).await
                }
                Err(e) => Err(e),
            };
            Delivery { url: shown, result }
        }
    });
    futures::future::join_all(sends).await
}

/// `https://hooks.slack.com` of `https://hooks.slack.com/services/T0/B0/secret`.
fn scheme_and_host(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
            let host = host.rsplit('@').next().unwrap_or_default();
            format!("{scheme}://{host}")
        }
        None => "(not a URL)".into(),
    }
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    target: &NotifyTarget,
    event: &serde_json::Value,
) -> Result<u16, String> {
    let mut last = String::new();
    for attempt in 0..=target.retries {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let answer = client
            .post(url)
            .timeout(target.timeout)
            .json(event)
            .send()
            .await;
        match answer {
            Ok(resp) if resp.status().is_success() => return Ok(resp.status().as_u16()),
            // The receiver refused this event: sending it again will not change its mind.
            Ok(resp) if resp.status().is_client_error() => {
                return Err(format!("HTTP {}", resp.status()))
            }
            Ok(resp) => last = format!("HTTP {}", resp.status()),
            Err(e) => last = proto::secrets::mask_text(&e.without_url().to_string()),
        }
    }
    Err(format!("{last} (after {} attempts)", target.retries + 1))
}
