//! A keep-alive HTTP/1.1 client that never retries, as an API client sending a POST does: each
//! request goes once over the connection it has, and a connection closed before the response
//! (an nginx reload retiring its worker) is a failed request, not a reason to send it again.
//! It speaks just enough HTTP for the tests' responses (Content-Length or chunked bodies).
use crate::load::LoadReport;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long a loop waits after a refused connect before it tries again.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);

/// What one loop sends.
#[derive(Debug, Clone)]
pub enum Request {
    Get(String),
    /// A path and a JSON body.
    Post(String, String),
}

impl Request {
    fn text(&self) -> String {
        match self {
            Request::Get(path) => format!("GET {path} HTTP/1.1\r\nHost: lb\r\n\r\n"),
            Request::Post(path, body) => format!(
                "POST {path} HTTP/1.1\r\nHost: lb\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        }
    }
}

/// Sends `request` to `address` (host:port) over one kept-alive connection after another until
/// `stop`; each response's `X-Bluegreen-Color` is counted in `colors`. Any answer other than a
/// 2xx, and any connection that ends without one, is in `failed`.
pub fn spawn(
    address: String,
    request: Request,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<LoadReport> {
    tokio::spawn(async move {
        let mut report = LoadReport::default();
        let text = request.text();
        let mut connection: Option<BufReader<TcpStream>> = None;
        while !stop.load(Ordering::Relaxed) {
            let conn = match connection.as_mut() {
                Some(c) => c,
                None => match TcpStream::connect(&address).await {
                    Ok(stream) => connection.insert(BufReader::new(stream)),
                    Err(e) => {
                        report.failed.push(format!("connect {address}: {e}"));
                        // A refused connect is counted once per backoff, not once per spin.
                        tokio::time::sleep(CONNECT_BACKOFF).await;
                        continue;
                    }
                },
            };
            match tokio::time::timeout(Duration::from_secs(10), exchange(conn, &text)).await {
                Ok(Ok(response)) => {
                    if (200..300).contains(&response.status) {
                        report.ok += 1;
                        *report.colors.entry(response.color).or_default() += 1;
                    } else {
                        report.failed.push(format!("HTTP {}", response.status));
                    }
                    if response.close {
                        connection = None;
                    }
                }
                Ok(Err(e)) => {
                    report.failed.push(e);
                    connection = None;
                }
                Err(_) => {
                    report.failed.push("no response within 10 s".into());
                    connection = None;
                }
            }
        }
        report
    })
}

struct Response {
    status: u16,
    color: String,
    close: bool,
}

/// One request and its whole response on `conn`.
async fn exchange(conn: &mut BufReader<TcpStream>, request: &str) -> Result<Response, String> {
    conn.get_mut()
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut line = String::new();
    let read = conn
        .read_line(&mut line)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if read == 0 {
        return Err("connection closed without response".into());
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("status line {line:?}"))?;
    let (mut length, mut chunked, mut close, mut color) = (0usize, false, false, String::new());
    loop {
        let mut header = String::new();
        conn.read_line(&mut header)
            .await
            .map_err(|e| format!("read header: {e}"))?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            return Err(format!("header {header:?}"));
        };
        let (name, value) = (name.to_ascii_lowercase(), value.trim());
        match name.as_str() {
            "content-length" => length = value.parse().map_err(|_| "content-length")?,
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            "x-bluegreen-color" => color = value.to_string(),
            _ => {}
        }
    }
    if chunked {
        loop {
            let mut size = String::new();
            conn.read_line(&mut size)
                .await
                .map_err(|e| format!("read chunk: {e}"))?;
            let size = usize::from_str_radix(size.trim(), 16).map_err(|_| "chunk size")?;
            let mut chunk = vec![0; size + 2];
            conn.read_exact(&mut chunk)
                .await
                .map_err(|e| format!("read chunk: {e}"))?;
            if size == 0 {
                break;
            }
        }
    } else {
        let mut body = vec![0; length];
        conn.read_exact(&mut body)
            .await
            .map_err(|e| format!("read body: {e}"))?;
    }
    Ok(Response {
        status,
        color,
        close,
    })
}
