//! Per-color request counts from nginx's own access log. nginx sends one syslog line per request
//! to a unix datagram socket the sidecar binds (no file, no tailing, no rotation); the line names
//! every upstream tried, with its status and response time, and each attempt is counted for the
//! color whose upstream answered it. A canary's analysis reads these counts from etcd, so the LBs
//! that already see every request are the only metrics source a canary needs.
use crate::metrics::Metrics;
use proto::records::LbStatsRecord;
use proto::requests::ColorCounts;
use proto::Color;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The syslog tag nginx puts on each line (letters, digits and `_` only).
pub const TAG: &str = "bluegreen";

/// The `log_format` the template's `{{request_log_format}}` declares; fields separated by `|`
/// (nginx separates several upstreams inside a field with `, ` and ` : `).
pub const FORMAT: &str = "$upstream_addr|$upstream_status|$upstream_response_time";

/// One upstream attempt of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub upstream: String,
    /// `None`: no status (the connection failed, or nginx gave up).
    pub status: Option<u16>,
    pub ms: f64,
}

/// The attempts in one syslog datagram, or `None` for a line that is not ours.
pub fn parse(datagram: &str) -> Option<Vec<Attempt>> {
    let marker = format!("{TAG}: ");
    let line = &datagram[datagram.find(&marker)? + marker.len()..];
    let mut fields = line.trim_end().split('|');
    let (addrs, statuses, times) = (fields.next()?, fields.next()?, fields.next()?);
    // nginx separates attempts with ", " and internal redirects with " : "; both are attempts.
    let split = |f: &str| -> Vec<String> {
        f.split([',', ':'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    // Addresses hold a ':' themselves: rejoin host and port.
    let addrs: Vec<String> = addrs
        .split(", ")
        .flat_map(|a| a.split(" : "))
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty() && a != "-")
        .collect();
    let statuses = split(statuses);
    let times = split(times);
    Some(
        addrs
            .into_iter()
            .enumerate()
            .map(|(i, upstream)| Attempt {
                upstream,
                status: statuses.get(i).and_then(|s| s.parse().ok()),
                ms: times
                    .get(i)
                    .and_then(|t| t.parse::<f64>().ok())
                    .map_or(0.0, |s| s * 1000.0),
            })
            .collect(),
    )
}

/// How far back the recent window reaches: the baseline a deploy's verification compares with.
pub const RECENT_SECONDS: u64 = 60;

/// The running totals, the last minute second by second, and which color each upstream address
/// serves (kept current by the follower from the hosts it renders). Bounded whatever the traffic:
/// two colors, [`proto::requests::BUCKETS`] latency buckets, [`RECENT_SECONDS`] slots.
#[derive(Debug, Default)]
pub struct Tally {
    colors: BTreeMap<Color, ColorCounts>,
    /// (unix second, counts in that second), oldest first.
    recent: VecDeque<(u64, BTreeMap<Color, ColorCounts>)>,
    unattributed: u64,
    addresses: HashMap<String, Color>,
    /// Counts changed since the last [`Tally::take_changed`].
    changed: bool,
}

impl Tally {
    pub fn set_addresses(&mut self, addresses: HashMap<String, Color>) {
        self.addresses = addresses;
    }

    /// Counts each attempt for its upstream's color; returns the attempts it could place, as
    /// (color, milliseconds, error).
    pub fn count(&mut self, attempts: &[Attempt]) -> Vec<(Color, f64, bool)> {
        self.count_at(attempts, unix_seconds())
    }

    fn count_at(&mut self, attempts: &[Attempt], second: u64) -> Vec<(Color, f64, bool)> {
        if self.recent.back().is_none_or(|(s, _)| *s != second) {
            self.recent.push_back((second, BTreeMap::new()));
        }
        self.prune(second);
        let mut placed = Vec::with_capacity(attempts.len());
        for attempt in attempts {
            match self.addresses.get(&attempt.upstream) {
                Some(color) => {
                    let error = attempt.status.is_none_or(|s| s >= 500);
                    self.colors
                        .entry(*color)
                        .or_default()
                        .add(attempt.ms, error);
                    if let Some((_, slot)) = self.recent.back_mut() {
                        slot.entry(*color).or_default().add(attempt.ms, error);
                    }
                    placed.push((*color, attempt.ms, error));
                }
                None => self.unattributed += 1,
            }
            self.changed = true;
        }
        placed
    }

    /// Drops the seconds that fell out of the recent window.
    fn prune(&mut self, now: u64) {
        while self
            .recent
            .front()
            .is_some_and(|(s, _)| s + RECENT_SECONDS <= now)
        {
            self.recent.pop_front();
        }
    }

    /// The last [`RECENT_SECONDS`] summed.
    fn recent_sum(&self) -> BTreeMap<Color, ColorCounts> {
        let mut sum: BTreeMap<Color, ColorCounts> = BTreeMap::new();
        for (_, slot) in &self.recent {
            for (color, counts) in slot {
                sum.entry(*color).or_default().merge(counts);
            }
        }
        sum
    }

    /// The totals as a record, if they changed since the last call.
    pub fn take_changed(&mut self, instance: &str, started_at: &str) -> Option<LbStatsRecord> {
        if !std::mem::take(&mut self.changed) {
            return None;
        }
        self.prune(unix_seconds());
        Some(LbStatsRecord {
            instance: instance.to_string(),
            started_at: started_at.to_string(),
            at: proto::time::now_rfc3339(),
            colors: self.colors.clone(),
            recent: self.recent_sum(),
            recent_seconds: RECENT_SECONDS as u32,
            unattributed: self.unattributed,
        })
    }

    pub fn totals(&self) -> &BTreeMap<Color, ColorCounts> {
        &self.colors
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The socket's path inside the sidecar's state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("requests.sock")
}

/// Binds the socket (replacing a stale one from an earlier run) and counts every line into
/// `tally` until the task is dropped. nginx's workers run as another user, so the socket is
/// writable by all; the state directory's permissions decide who reaches it.
pub fn listen(
    path: &Path,
    tally: Arc<Mutex<Tally>>,
    metrics: Arc<Metrics>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let _ = std::fs::remove_file(path);
    let socket = tokio::net::UnixDatagram::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(tokio::spawn(async move {
        let mut buf = vec![0u8; 8192];
        loop {
            let Ok(n) = socket.recv(&mut buf).await else {
                continue;
            };
            let text = String::from_utf8_lossy(&buf[..n]);
            if let Some(attempts) = parse(&text) {
                let placed = tally.lock().unwrap().count(&attempts);
                for (color, ms, error) in placed {
                    metrics.observe_upstream(color, ms, error);
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_attempt_is_read_with_its_status_and_time() {
        let line = "<190>Dec  5 01:02:03 bluegreen: 127.0.0.11:8081, 127.0.0.12:8081|502, 200|0.001, 0.004";
        let attempts = parse(line).unwrap();
        assert_eq!(
            attempts,
            vec![
                Attempt {
                    upstream: "127.0.0.11:8081".into(),
                    status: Some(502),
                    ms: 1.0
                },
                Attempt {
                    upstream: "127.0.0.12:8081".into(),
                    status: Some(200),
                    ms: 4.0
                },
            ]
        );
        let redirect =
            parse("<190>x bluegreen: 10.0.0.1:80 : 10.0.0.2:80|504 : 200|5.000 : 0.010").unwrap();
        assert_eq!(redirect.len(), 2);
        assert_eq!(redirect[0].status, Some(504));
        assert_eq!(parse("<190>x bluegreen: -|-|-").unwrap(), vec![]);
        assert_eq!(parse("<190>x other: a|b|c"), None);
        let failed = parse("<190>x bluegreen: 10.0.0.1:80|-|-").unwrap();
        assert_eq!(failed[0].status, None);
    }

    #[test]
    fn attempts_are_counted_for_their_color_and_errors_are_5xx_or_none() {
        let mut tally = Tally::default();
        tally.set_addresses(HashMap::from([
            ("127.0.0.11:8080".to_string(), Color::Blue),
            ("127.0.0.11:8081".to_string(), Color::Green),
        ]));
        tally.count(
            &parse("<1>x bluegreen: 127.0.0.11:8081, 127.0.0.11:8080|500, 200|0.002, 0.003")
                .unwrap(),
        );
        tally.count(&parse("<1>x bluegreen: 127.0.0.11:8081|-|-").unwrap());
        tally.count(&parse("<1>x bluegreen: 127.0.0.99:8081|200|0.002").unwrap());
        let green = &tally.totals()[&Color::Green];
        assert_eq!((green.requests, green.errors), (2, 2));
        let blue = &tally.totals()[&Color::Blue];
        assert_eq!((blue.requests, blue.errors), (1, 0));
        let record = tally.take_changed("i", "t").unwrap();
        assert_eq!(record.unattributed, 1);
        assert_eq!(
            record.recent, record.colors,
            "all of it within the last minute"
        );
        assert!(
            tally.take_changed("i", "t").is_none(),
            "unchanged: nothing new"
        );
    }

    #[test]
    fn the_recent_window_keeps_only_the_last_minute() {
        let mut tally = Tally::default();
        tally.set_addresses(HashMap::from([("10.0.0.1:80".to_string(), Color::Blue)]));
        let one = parse("<1>x bluegreen: 10.0.0.1:80|200|0.002").unwrap();
        tally.count_at(&one, 1000);
        tally.count_at(&one, 1030);
        tally.count_at(&one, 1059);
        assert_eq!(tally.recent_sum()[&Color::Blue].requests, 3);
        tally.count_at(&one, 1061);
        assert_eq!(
            tally.recent_sum()[&Color::Blue].requests,
            3,
            "the first fell out"
        );
        assert_eq!(
            tally.totals()[&Color::Blue].requests,
            4,
            "totals keep everything"
        );
        assert!(tally.recent.len() <= RECENT_SECONDS as usize);
    }
}
