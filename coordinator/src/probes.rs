//! The fleet-probe seam: the HTTP and gRPC calls a command makes to hosts and LBs directly (smoke
//! checks on a host's idle port, verification through each LB, a host's log lines). [`HttpProbes`]
//! is the real thing; unit tests give the pipeline scripted answers instead.
use crate::spec::SmokeCheck;
use proto::records::{HostRecord, LbRecord};
use proto::Color;
use std::collections::BTreeMap;
use std::time::Duration;

/// The header nginx adds (from the sidecar's template) to every response of the live server.
pub const COLOR_HEADER: &str = "x-bluegreen-color";
/// The header carrying the etcd revision the LB's config was rendered for, when the template has it.
pub const REVISION_HEADER: &str = "x-bluegreen-revision";

/// One smoke check's result on one host.
#[derive(Debug, Clone, PartialEq)]
pub struct SmokeResult {
    pub host: String,
    pub path: String,
    pub outcome: Result<(), String>,
}

#[allow(async_fn_in_trait)]
pub trait Probes {
    /// Every check against `color` on every host (hosts in parallel).
    async fn smoke(
        &self,
        hosts: &[HostRecord],
        checks: &[SmokeCheck],
        color: Color,
        version: &str,
    ) -> Vec<SmokeResult>;
    /// Asks each LB which color it serves, through what the sidecar owns (never the app's body).
    /// Err names every LB that does not serve `color` at `revision` or later.
    async fn verify_lbs(
        &self,
        lbs: &BTreeMap<String, LbRecord>,
        color: Color,
        revision: i64,
    ) -> Result<(), String>;
    /// The last `tail` log lines of `color` on `host`, through the agent.
    async fn logs(&self, host: &HostRecord, color: Color, tail: u32)
        -> Result<Vec<String>, String>;
}

/// Client side of the agents' mutual TLS: the CA that signed their server certificates, and the
/// certificate this coordinator presents.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcClientTls {
    pub cacert: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl GrpcClientTls {
    /// All three or none; errors name the missing setting.
    pub fn from_parts(
        cacert: Option<std::path::PathBuf>,
        cert: Option<std::path::PathBuf>,
        key: Option<std::path::PathBuf>,
    ) -> Result<Option<GrpcClientTls>, String> {
        match (cacert, cert, key) {
            (None, None, None) => Ok(None),
            (Some(cacert), Some(cert), Some(key)) => Ok(Some(GrpcClientTls { cacert, cert, key })),
            _ => Err("--grpc-cacert, --grpc-cert and --grpc-key: give all three (the agents' mutual TLS) or none".into()),
        }
    }

    fn config(&self) -> Result<tonic::transport::ClientTlsConfig, String> {
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        Ok(tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(&self.cacert)?))
            .identity(tonic::transport::Identity::from_pem(
                read(&self.cert)?,
                read(&self.key)?,
            )))
    }
}

/// [`Probes`] over HTTP (apps, LBs) and the agents' gRPC API (logs).
#[derive(Default)]
pub struct HttpProbes {
    grpc_tls: Option<GrpcClientTls>,
    /// The app asked about: an agent running another one refuses instead of answering for it.
    app: String,
}

impl HttpProbes {
    pub fn new(grpc_tls: Option<GrpcClientTls>, app: &str) -> HttpProbes {
        HttpProbes {
            grpc_tls,
            app: app.to_string(),
        }
    }
}

impl Probes for HttpProbes {
    async fn smoke(
        &self,
        hosts: &[HostRecord],
        checks: &[SmokeCheck],
        color: Color,
        version: &str,
    ) -> Vec<SmokeResult> {
        let http = reqwest::Client::new();
        let per_host = hosts
            .iter()
            .map(|host| smoke_host(&http, host, checks, color, version));
        let mut results = Vec::new();
        for (host, checks) in hosts.iter().zip(futures::future::join_all(per_host).await) {
            for (path, outcome) in checks {
                results.push(SmokeResult {
                    host: host.host.clone(),
                    path,
                    outcome,
                });
            }
        }
        results
    }

    async fn verify_lbs(
        &self,
        lbs: &BTreeMap<String, LbRecord>,
        color: Color,
        revision: i64,
    ) -> Result<(), String> {
        // A fresh connection per LB: a kept-alive one could still be served by an old worker. No
        // redirects: a 3xx from the app is an answer like any other, the header is what counts.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("http client");
        let mut wrong = Vec::new();
        for (name, ack) in lbs {
            let Some(url) = &ack.url else {
                wrong.push(format!("{name}: its ack carries no URL to verify through"));
                continue;
            };
            // A listener shared by several apps routes by host name: ask as this app's.
            let mut request = http.get(format!("{url}/")).timeout(Duration::from_secs(3));
            if let Some(host) = &ack.host {
                request = request.header(reqwest::header::HOST, host);
            }
            let answer = request.send().await;
            let problem = match answer {
                Err(e) => Some(format!("{name} ({url}): {}", proto::error::root_cause(&e))),
                Ok(resp) => served_problem(resp.headers(), color, revision).map(|p| {
                    format!(
                        "{name} ({url}) answered HTTP {}: {p}",
                        resp.status().as_u16()
                    )
                }),
            };
            wrong.extend(problem);
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("; "))
        }
    }

    async fn logs(
        &self,
        host: &HostRecord,
        color: Color,
        tail: u32,
    ) -> Result<Vec<String>, String> {
        // A frozen agent accepts the connection (the kernel does) and then never answers: the
        // whole exchange has a deadline, or a failed deploy's report would wait for it forever.
        let exchange = async {
            let (endpoint, mut stream) = self.log_stream(host, color, tail, false).await?;
            let mut lines = Vec::new();
            loop {
                match stream.message().await {
                    Ok(Some(line)) => lines.push(line.line),
                    Ok(None) => return Ok(lines),
                    Err(e) => return Err(format!("{endpoint}: {}", e.message())),
                }
            }
        };
        tokio::time::timeout(LOGS_DEADLINE, exchange)
            .await
            .map_err(|_| format!("{}: no answer in {LOGS_DEADLINE:?}", host.grpc))?
    }
}

/// What went wrong talking to an agent's gRPC API, as its status or its innermost cause.
fn grpc_failure(status: &tonic::Status) -> String {
    use std::error::Error;
    let mut cause: &dyn Error = status;
    while let Some(next) = cause.source() {
        cause = next;
    }
    if std::ptr::addr_eq(cause, status as &dyn Error) {
        status.message().to_string()
    } else {
        format!("{}: {cause}", status.message())
    }
}

/// A failure to reach an agent's gRPC API, said so that an operator knows what to give: an agent
/// with mutual TLS drops a plaintext client once it has connected (hyper reports that as "h2
/// protocol error", "broken pipe", "connection closed", … depending on timing), and refuses a TLS
/// client without a certificate it trusts in the handshake.
pub fn explain_grpc(endpoint: &str, failure: &str, tls: bool) -> String {
    let lower = failure.to_ascii_lowercase();
    // Failures before any conversation: nothing to say about TLS.
    let never_connected = [
        "connection refused",
        "timed out",
        "no route",
        "unreachable",
        "dns",
        "failed to lookup",
    ]
    .iter()
    .any(|s| lower.contains(s));
    let plaintext_to_tls = !never_connected;
    let refused_cert = ["certificate", "handshake", "unknown ca", "tls"]
        .iter()
        .any(|s| lower.contains(s));
    let hint = if !tls && plaintext_to_tls {
        "; the agent's gRPC API likely requires mutual TLS: give the coordinator --grpc-cacert, \
         --grpc-cert and --grpc-key (BLUEGREEN_GRPC_CACERT, _CERT, _KEY)"
    } else if tls && refused_cert {
        "; the TLS handshake failed: the agent must trust the CA of --grpc-cert (its \
         tls_client_ca), and --grpc-cacert must be the CA of the agent's tls_cert"
    } else {
        ""
    };
    format!("{endpoint}: {failure}{hint}")
}

/// What to do when a host's agent serves its API on a unix socket this coordinator cannot use.
fn socket_remedy(host: &str) -> String {
    format!(
        "{host}'s agent has no mutual TLS, so its API is a root-only unix socket on {host}: run \
         this as root on {host}, or give its agent tls_cert, tls_key and tls_client_ca and this \
         coordinator --grpc-cacert, --grpc-cert and --grpc-key"
    )
}

/// A failure to use a host's agent socket, with what it most likely means: not ours to open
/// (the remedy), absent here (another machine's path, or the agent is not running), or a fault.
fn explain_socket(host: &str, endpoint: &str, failure: &str) -> String {
    let lower = failure.to_ascii_lowercase();
    if ["permission denied", "only root"]
        .iter()
        .any(|s| lower.contains(s))
    {
        format!("{endpoint}: {failure}: {}", socket_remedy(host))
    } else if lower.contains("no such file") || lower.contains("connection refused") {
        format!(
            "{endpoint}: {failure}: no agent listens there on this machine; if this is not \
             {host}, {}",
            socket_remedy(host)
        )
    } else {
        format!("{endpoint}: {failure}")
    }
}

impl HttpProbes {
    /// The agent's log stream of `color`: the last `tail` lines, then (with `follow`) each line
    /// appended, for as long as the stream is read.
    async fn log_stream(
        &self,
        host: &HostRecord,
        color: Color,
        tail: u32,
        follow: bool,
    ) -> Result<(String, tonic::Streaming<proto::agent_api::LogLine>), String> {
        use proto::agent_api::{agent_client::AgentClient, LogsRequest};
        let (endpoint, channel) = self.agent_channel(host).await?;
        let tls = self.grpc_tls.is_some();
        let request = LogsRequest {
            color: color.to_string(),
            tail,
            follow,
            app: self.app.clone(),
        };
        let answer = tokio::time::timeout(LOGS_DEADLINE, AgentClient::new(channel).logs(request))
            .await
            .map_err(|_| format!("{endpoint}: no answer in {LOGS_DEADLINE:?}"))?
            .map_err(|e| {
                use tonic::Code;
                // The agent's own answers (no such color, ...) are said as they are.
                match e.code() {
                    _ if endpoint.starts_with("unix:") => {
                        explain_socket(&host.host, &endpoint, &grpc_failure(&e))
                    }
                    Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal => {
                        explain_grpc(&endpoint, &grpc_failure(&e), tls)
                    }
                    _ => format!("{endpoint}: {}", e.message()),
                }
            })?;
        Ok((endpoint, answer.into_inner()))
    }

    /// A connection to `host`'s agent, and how to name it in errors. Over TCP it is mutual TLS
    /// (if this coordinator has a certificate); a unix socket is on that host, so the agent that
    /// answers must say it is `host` (on another machine, the same path is another agent's).
    async fn agent_channel(
        &self,
        host: &HostRecord,
    ) -> Result<(String, tonic::transport::Channel), String> {
        use proto::records::GrpcEndpoint;
        let tls = self.grpc_tls.is_some();
        let path = match GrpcEndpoint::parse(&host.grpc) {
            GrpcEndpoint::Tcp(address) => {
                let scheme = if tls { "https" } else { "http" };
                let endpoint = format!("{scheme}://{address}");
                let mut channel = tonic::transport::Channel::from_shared(endpoint.clone())
                    .map_err(|e| format!("{endpoint}: {e}"))?;
                if let Some(tls) = &self.grpc_tls {
                    channel = channel
                        .tls_config(tls.config()?)
                        .map_err(|e| format!("{endpoint}: {e}"))?;
                }
                let channel = tokio::time::timeout(LOGS_DEADLINE, channel.connect())
                    .await
                    .map_err(|_| format!("{endpoint}: timed out"))?
                    .map_err(|e| explain_grpc(&endpoint, &proto::error::root_cause(&e), tls))?;
                return Ok((endpoint, channel));
            }
            GrpcEndpoint::Socket(path) => path,
        };
        let endpoint = format!("unix:{}", path.display());
        let channel = proto::agent_api::socket_channel(&path);
        let channel = tokio::time::timeout(LOGS_DEADLINE, channel)
            .await
            .map_err(|_| format!("{endpoint}: timed out"))?
            .map_err(|e| explain_socket(&host.host, &endpoint, &proto::error::root_cause(&e)))?;
        let reply = tokio::time::timeout(
            LOGS_DEADLINE,
            proto::agent_api::agent_client::AgentClient::new(channel.clone()).status(
                proto::agent_api::StatusRequest {
                    app: self.app.clone(),
                },
            ),
        )
        .await
        .map_err(|_| format!("{endpoint}: no answer in {LOGS_DEADLINE:?}"))?
        .map_err(|e| explain_socket(&host.host, &endpoint, e.message()))?;
        let answered = reply.into_inner().host;
        if answered != host.host {
            return Err(format!(
                "{endpoint}: the agent here is {}, not {}: {}",
                proto::text::escaped(&answered),
                host.host,
                socket_remedy(&host.host)
            ));
        }
        Ok((endpoint, channel))
    }

    /// `logs --follow`: hands each line to `line` until the agent ends the stream (it stopped or
    /// went away), which is an error naming the agent.
    pub async fn follow_logs(
        &self,
        host: &HostRecord,
        color: Color,
        tail: u32,
        mut line: impl FnMut(String),
    ) -> Result<(), String> {
        let (endpoint, mut stream) = self.log_stream(host, color, tail, true).await?;
        loop {
            match stream.message().await {
                Ok(Some(l)) => line(l.line),
                Ok(None) => return Err(format!("{endpoint}: the agent ended the log stream")),
                Err(e) => return Err(format!("{endpoint}: {}", e.message())),
            }
        }
    }
}

/// The longest a host's log lines are waited for (connect, then the whole answer).
const LOGS_DEADLINE: Duration = Duration::from_secs(3);

/// What is wrong with an LB's answer, judged only by the headers the sidecar's template adds:
/// the color must be `color`, and the revision (when the template sends it) at least `revision`.
pub fn served_problem(
    headers: &reqwest::header::HeaderMap,
    color: Color,
    revision: i64,
) -> Option<String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match header(COLOR_HEADER) {
        None => {
            return Some(format!(
                "no {COLOR_HEADER} header (a custom template must keep `add_header X-Bluegreen-Color {{{{color}}}} always;`)"
            ))
        }
        Some(c) if c != color.as_str() => return Some(format!("serves {c}, expected {color}")),
        Some(_) => {}
    }
    match header(REVISION_HEADER).map(str::parse::<i64>) {
        Some(Ok(r)) if r < revision => Some(format!(
            "config of revision {r}, expected {revision} or later"
        )),
        Some(Err(_)) => Some(format!("unreadable {REVISION_HEADER} header")),
        _ => None,
    }
}

/// Every check on one host, each with its retries: (path, outcome) per check.
async fn smoke_host(
    http: &reqwest::Client,
    host: &HostRecord,
    checks: &[SmokeCheck],
    color: Color,
    version: &str,
) -> Vec<(String, Result<(), String>)> {
    let mut results = Vec::new();
    for check in checks {
        let url = format!(
            "http://{}:{}{}",
            host.address,
            host.ports.of(color),
            check.path
        );
        let mut outcome = Err(String::new());
        for attempt in 0..=check.retries {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            outcome = smoke_once(http, &url, check, color, version)
                .await
                .map_err(|e| format!("smoke {url}: {e}"));
            if outcome.is_ok() {
                break;
            }
        }
        results.push((check.path.clone(), outcome));
    }
    results
}

async fn smoke_once(
    http: &reqwest::Client,
    url: &str,
    check: &SmokeCheck,
    color: Color,
    version: &str,
) -> Result<(), String> {
    let resp = http
        .get(url)
        .timeout(check.timeout)
        .send()
        .await
        .map_err(|e| {
            // "error sending request" alone does not tell a dead port from a silent host.
            if e.is_timeout() {
                format!("no answer within {:?}", check.timeout)
            } else {
                proto::error::root_cause(&e)
            }
        })?;
    let status = resp.status().as_u16();
    if status != check.status {
        return Err(format!("HTTP {status}, expected {}", check.status));
    }
    if check.json.is_empty() {
        return Ok(());
    }
    let body: serde_json::Value = resp.json().await.map_err(|e| format!("not JSON: {e}"))?;
    for (field, expected) in &check.json {
        let expected = expected
            .replace("{color}", color.as_str())
            .replace("{version}", version);
        let actual = body.get(field).map(|v| {
            v.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string())
        });
        if actual.as_deref() != Some(expected.as_str()) {
            return Err(format!("{field} is {actual:?}, expected {expected:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn verification_reads_only_the_sidecars_headers() {
        let ok = headers(&[(COLOR_HEADER, "green"), (REVISION_HEADER, "42")]);
        assert_eq!(served_problem(&ok, Color::Green, 42), None);
        assert_eq!(served_problem(&ok, Color::Green, 40), None);
        assert!(served_problem(&ok, Color::Blue, 42)
            .unwrap()
            .contains("serves green"));
        assert!(served_problem(&ok, Color::Green, 43)
            .unwrap()
            .contains("revision 42"));
        let no_revision = headers(&[(COLOR_HEADER, "green")]);
        assert_eq!(served_problem(&no_revision, Color::Green, 42), None);
        assert!(served_problem(&HeaderMap::new(), Color::Green, 1)
            .unwrap()
            .contains("no x-bluegreen-color"));
    }
}

#[cfg(test)]
mod grpc_tests {
    use super::explain_grpc;

    #[test]
    fn a_plaintext_client_of_a_tls_agent_is_told_which_flags_to_give() {
        let e = explain_grpc(
            "http://10.0.0.1:7070",
            "h2 protocol error: http2 error",
            false,
        );
        assert!(
            e.contains("--grpc-cacert, --grpc-cert and --grpc-key"),
            "{e}"
        );
        let e = explain_grpc(
            "https://10.0.0.1:7070",
            "received fatal alert: CertificateRequired",
            true,
        );
        assert!(e.contains("tls_client_ca"), "{e}");
        for dropped in [
            "transport error: stream closed because of a broken pipe",
            "operation was canceled: connection closed",
        ] {
            let e = explain_grpc("http://10.0.0.1:7070", dropped, false);
            assert!(e.contains("requires mutual TLS"), "{e}");
        }
        let e = explain_grpc("http://10.0.0.1:7070", "Connection refused", false);
        assert_eq!(e, "http://10.0.0.1:7070: Connection refused");
    }
}
