//! A byte-counting TCP proxy in front of etcd: what one client (the coordinator) receives and
//! sends, and how many gRPC calls it starts (HTTP/2 HEADERS frames from the client), without
//! touching the client's code.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes etcd sent to the client.
    pub received: AtomicU64,
    /// Bytes the client sent to etcd.
    pub sent: AtomicU64,
    /// gRPC calls the client started (unary requests and stream opens alike).
    pub calls: AtomicU64,
}

/// What the counters said at one moment; `since` gives the traffic between two moments.
#[derive(Debug, Clone, Copy, Default)]
pub struct Traffic {
    pub received: u64,
    pub sent: u64,
    pub calls: u64,
}

impl Traffic {
    pub fn since(self, before: Traffic) -> Traffic {
        Traffic {
            received: self.received - before.received,
            sent: self.sent - before.sent,
            calls: self.calls - before.calls,
        }
    }
}

impl Counters {
    pub fn now(&self) -> Traffic {
        Traffic {
            received: self.received.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            calls: self.calls.load(Ordering::Relaxed),
        }
    }
}

/// Listens on a free loopback port and forwards every connection to `upstream` (`host:port`).
/// Returns the address to give the client instead of etcd's.
pub async fn start(upstream: String) -> (String, Arc<Counters>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy port");
    let address = listener.local_addr().unwrap().to_string();
    let counters = Arc::new(Counters::default());
    let shared = counters.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(&upstream).await else {
                continue;
            };
            let counters = shared.clone();
            tokio::spawn(relay(client, server, counters));
        }
    });
    (address, counters)
}

async fn relay(client: TcpStream, server: TcpStream, counters: Arc<Counters>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let up_counters = counters.clone();
    let up = async move {
        let mut frames = FrameCounter::default();
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = client_rx.read(&mut buf).await {
            if n == 0 || server_tx.write_all(&buf[..n]).await.is_err() {
                break;
            }
            up_counters.sent.fetch_add(n as u64, Ordering::Relaxed);
            let calls = frames.feed(&buf[..n]);
            up_counters.calls.fetch_add(calls, Ordering::Relaxed);
        }
        let _ = server_tx.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = server_rx.read(&mut buf).await {
            if n == 0 || client_tx.write_all(&buf[..n]).await.is_err() {
                break;
            }
            counters.received.fetch_add(n as u64, Ordering::Relaxed);
        }
        let _ = client_tx.shutdown().await;
    };
    tokio::join!(up, down);
}

/// Counts HEADERS frames in a client's HTTP/2 byte stream (after the 24-byte preface). Each
/// gRPC call opens with exactly one.
#[derive(Debug, Default)]
pub struct FrameCounter {
    preface_left: Option<usize>,
    /// Bytes of the current frame still to skip (its payload).
    skip: usize,
    /// A frame header split across reads.
    header: Vec<u8>,
}

const PREFACE: usize = 24;
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;

impl FrameCounter {
    /// Feeds the next bytes; returns how many HEADERS frames started in them.
    pub fn feed(&mut self, mut bytes: &[u8]) -> u64 {
        let mut count = 0;
        let preface = self.preface_left.get_or_insert(PREFACE);
        let take = (*preface).min(bytes.len());
        *preface -= take;
        bytes = &bytes[take..];
        while !bytes.is_empty() {
            if self.skip > 0 {
                let take = self.skip.min(bytes.len());
                self.skip -= take;
                bytes = &bytes[take..];
                continue;
            }
            let take = (FRAME_HEADER - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.header.len() == FRAME_HEADER {
                let h = &self.header;
                self.skip = (h[0] as usize) << 16 | (h[1] as usize) << 8 | h[2] as usize;
                if h[3] == HEADERS {
                    count += 1;
                }
                self.header.clear();
            }
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: usize) -> Vec<u8> {
        let mut f = vec![
            (payload >> 16) as u8,
            (payload >> 8) as u8,
            payload as u8,
            kind,
            0,
            0,
            0,
            0,
            1,
        ];
        f.extend(std::iter::repeat_n(7u8, payload));
        f
    }

    #[test]
    fn headers_frames_are_counted_however_the_stream_is_cut() {
        let mut stream = vec![b'P'; PREFACE];
        for (kind, len) in [
            (0x4, 6),
            (HEADERS, 30),
            (0x0, 70_000),
            (HEADERS, 1),
            (0x8, 4),
        ] {
            stream.extend(frame(kind, len));
        }
        for cut in [1, 5, 9, 13, 4096, stream.len()] {
            let mut counter = FrameCounter::default();
            let total: u64 = stream.chunks(cut).map(|c| counter.feed(c)).sum();
            assert_eq!(total, 2, "cut every {cut} bytes");
        }
    }
}
