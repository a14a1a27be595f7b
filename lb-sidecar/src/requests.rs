//! Per-color request counts from nginx's own access log. nginx sends one syslog line per request
//! to a unix datagram socket the sidecar binds (no file, no tailing, no rotation); the line names
//! every upstream tried, with its status and response time, and each attempt is counted for the
//! color whose upstream answered it. A canary's analysis reads these counts from etcd, so the LBs
//! that already see every request are the only metrics source a canary needs.
use crate::metrics::Metrics;
use proto::records::LbStatsRecord;
use proto::requests::ColorCounts;
use proto::Color;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
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

/// The attempts in one syslog datagram, or `None` for a line that is not ours or not in nginx's
/// format exactly (an address that is no `host:port`, a status or time that is no number, a
/// field too many or too few): such a line is dropped, never counted.
pub fn parse(datagram: &str) -> Option<Vec<Attempt>> {
    let marker = format!("{TAG}: ");
    let line = &datagram[datagram.find(&marker)? + marker.len()..];
    let mut fields = line.trim_end().split('|');
    let (addrs, statuses, times) = (fields.next()?, fields.next()?, fields.next()?);
    if fields.next().is_some() || !well_formed(addrs, statuses, times) {
        return None;
    }
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

/// What nginx writes in the three fields: addresses `ip:port` (or `-`, or a unix socket path),
/// statuses of three digits (or `-`), times like `0.004` (or `-`), separated by `, ` and ` : `.
fn well_formed(addrs: &str, statuses: &str, times: &str) -> bool {
    let parts = |f: &str| -> Vec<String> {
        f.split(", ")
            .flat_map(|a| a.split(" : "))
            .map(|a| a.trim().to_string())
            .collect()
    };
    let (a, s, t) = (parts(addrs), parts(statuses), parts(times));
    let address = |x: &str| {
        x == "-"
            || x.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty()
                    && port.parse::<u16>().is_ok()
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".-[]:".contains(c))
            })
    };
    let status = |x: &str| x == "-" || (x.len() == 3 && x.parse::<u16>().is_ok());
    let time = |x: &str| x == "-" || x.parse::<f64>().is_ok_and(|v| v.is_finite() && v >= 0.0);
    a.len() == s.len()
        && a.len() == t.len()
        && a.iter().all(|x| address(x))
        && s.iter().all(|x| status(x))
        && t.iter().all(|x| time(x))
}

/// Who may write to the request log: the workers of the nginx this sidecar drives (processes
/// whose parent is the master named in its pid file). Anyone else's datagram, a local user's
/// forged "errors" or "successes", is dropped and counted as such.
pub struct Senders {
    pid_file: PathBuf,
    /// Pids known to be workers of the master last read: datagrams come at request rate.
    workers: HashSet<i32>,
    master: Option<i32>,
}

impl Senders {
    pub fn new(pid_file: PathBuf) -> Senders {
        Senders {
            pid_file,
            workers: HashSet::new(),
            master: None,
        }
    }

    /// Whether `pid` is a worker of our nginx now. An unknown pid re-reads the master (nginx may
    /// have restarted) and the pid's parent.
    pub fn allowed(&mut self, pid: i32) -> bool {
        use crate::nginx::parent_of;
        if self.workers.contains(&pid) && parent_of(pid) == self.master {
            return true;
        }
        self.master = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|t| t.trim().parse().ok());
        let ok = self.master.is_some() && parent_of(pid) == self.master;
        if ok {
            if self.workers.len() > 4096 {
                self.workers.clear();
            }
            self.workers.insert(pid);
        }
        ok
    }
}

/// The effective group of the workers of the nginx master in `pid_file`: the only group the
/// request log's directory and socket are shared with. `None` while no nginx runs.
fn workers_group(pid_file: &Path) -> Option<u32> {
    let master: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let ids = crate::nginx::workers_of(master)
        .into_iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            Some((
                effective_id(&status, "Uid:")?,
                effective_id(&status, "Gid:")?,
            ))
        })
        .collect::<Vec<_>>();
    workers_gid(&ids)
}

/// From the (uid, gid) of each child of the master: the workers' gid. A child running as root
/// is not a worker of an nginx that drops privileges (it is a new master during a binary
/// upgrade, say), unless every child is root (nginx configured to keep root).
fn workers_gid(children: &[(u32, u32)]) -> Option<u32> {
    children
        .iter()
        .find(|(uid, _)| *uid != 0)
        .or(children.first())
        .map(|(_, gid)| *gid)
}

/// The effective id on a `/proc/<pid>/status` line (`Uid:` or `Gid:`: real, effective, saved,
/// filesystem).
fn effective_id(status: &str, line: &str) -> Option<u32> {
    let ids = status.lines().find_map(|l| l.strip_prefix(line))?;
    ids.split_whitespace().nth(1)?.parse().ok()
}

/// The request log's directory (0750) and socket (0660) belong to root and the nginx workers'
/// group, so no other local user can even send to it. Re-applied when nginx's workers change
/// group (a restarted nginx with another `user`); false while no nginx runs to say its group.
/// A failure is logged once per [`SHARE_WARN_EVERY`] while it repeats.
fn share_with_workers(
    dir: &Path,
    socket: &Path,
    pid_file: &Path,
    repeats: &mut proto::repeats::Repeats,
) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(gid) = workers_group(pid_file) else {
        return false;
    };
    if std::fs::metadata(dir).is_ok_and(|m| m.gid() == gid)
        && std::fs::metadata(socket).is_ok_and(|m| m.gid() == gid)
    {
        return true;
    }
    for path in [dir, socket] {
        if let Err(e) = std::os::unix::fs::chown(path, None, Some(gid)) {
            let line = format!("{}: {e}", path.display());
            if let Some(held_back) = repeats.admit(&line, tokio::time::Instant::now()) {
                tracing::warn!(path = %path.display(), gid, error = %e, held_back,
                    "request log: cannot give nginx's workers' group access; canary numbers stop");
            }
            return false;
        }
    }
    tracing::info!(gid, dir = %dir.display(), "request log shared with nginx's workers' group");
    true
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
    /// Requests open per color, as nginx last said (Lua mode).
    open: Option<BTreeMap<Color, u64>>,
}

impl Tally {
    /// Records the open requests per color; true when `color`'s count changed (a draining
    /// color's count is published as it falls, whoever reads it).
    pub fn set_open(&mut self, open: BTreeMap<Color, u64>, color: Color) -> bool {
        let before = self.open.as_ref().and_then(|o| o.get(&color).copied());
        let moved = before != open.get(&color).copied();
        if self.open.as_ref() != Some(&open) {
            self.open = Some(open);
            self.changed = true;
        }
        moved
    }

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
            open: self.open.clone(),
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

/// The socket's path inside the sidecar's state directory: in a directory of its own, whose
/// group is nginx's workers'.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("requests").join("requests.sock")
}

/// How often the socket's group is checked against nginx's workers'.
const SHARE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// How often a failure to share the socket is logged again while it lasts.
const SHARE_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// Binds the socket (replacing a stale one from an earlier run) and counts every line nginx's
/// workers send into `tally` until the task is dropped. nginx's workers run as another user: the
/// socket's directory and the socket are shared with their group only. Who sent each datagram is
/// still read from the kernel (`SCM_CREDENTIALS`), and only [`Senders`] count. A line not in
/// nginx's format is dropped too.
pub fn listen(
    path: &Path,
    tally: Arc<Mutex<Tally>>,
    metrics: Arc<Metrics>,
    mut senders: Senders,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use nix::sys::socket::{setsockopt, sockopt::PassCred};
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750))?;
    let _ = std::fs::remove_file(path);
    let socket = tokio::net::UnixDatagram::bind(path)?;
    setsockopt(&socket, PassCred, &true).map_err(std::io::Error::from)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    let path = path.to_path_buf();
    let pid_file = senders.pid_file.clone();
    let mut repeats = proto::repeats::Repeats::new(SHARE_WARN_EVERY);
    share_with_workers(&dir, &path, &pid_file, &mut repeats);
    Ok(tokio::spawn(async move {
        let mut buf = vec![0u8; 8192];
        let mut share = tokio::time::interval(SHARE_EVERY);
        loop {
            let readable = tokio::select! {
                r = socket.readable() => r,
                _ = share.tick() => {
                    share_with_workers(&dir, &path, &pid_file, &mut repeats);
                    continue;
                }
            };
            if readable.is_err() {
                continue;
            }
            let received =
                socket.try_io(tokio::io::Interest::READABLE, || receive(&socket, &mut buf));
            let Ok((n, sender)) = received else {
                continue;
            };
            if !sender.is_some_and(|pid| senders.allowed(pid)) {
                metrics.dropped("sender");
                continue;
            }
            let text = String::from_utf8_lossy(&buf[..n]);
            match parse(&text) {
                Some(attempts) => {
                    let placed = tally.lock().unwrap().count(&attempts);
                    for (color, ms, error) in placed {
                        metrics.observe_upstream(color, ms, error);
                    }
                }
                None => metrics.dropped("format"),
            }
        }
    }))
}

/// One datagram into `buf`: its length and the sender's pid as the kernel vouches for it.
fn receive(
    socket: &tokio::net::UnixDatagram,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<i32>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    use std::os::fd::AsRawFd;
    let mut space = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<UnixAddr>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(std::io::Error::from)?;
    let pid = msg.cmsgs().ok().and_then(|mut cmsgs| {
        cmsgs.find_map(|c| match c {
            ControlMessageOwned::ScmCredentials(creds) => Some(creds.pid()),
            _ => None,
        })
    });
    Ok((msg.bytes, pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workers_group_is_the_effective_gid_of_a_non_root_child() {
        let status =
            "Name:\tnginx\nUid:\t65534\t65534\t65534\t65534\nGid:\t0\t65534\t65534\t65534\n";
        assert_eq!(effective_id(status, "Gid:"), Some(65534));
        assert_eq!(effective_id(status, "Uid:"), Some(65534));
        assert_eq!(effective_id("Name:\tnginx\n", "Gid:"), None);
        assert_eq!(effective_id("Gid:\tx\ty\n", "Gid:"), None);
        // A new master (root) beside the workers during a binary upgrade is not asked.
        assert_eq!(workers_gid(&[(0, 0), (33, 33), (33, 33)]), Some(33));
        assert_eq!(workers_gid(&[(0, 0)]), Some(0));
        assert_eq!(workers_gid(&[]), None);
    }

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

    /// A line shaped like ours but not in nginx's format is never counted.
    #[test]
    fn lines_not_in_nginxs_format_are_dropped() {
        for bad in [
            "<1>x bluegreen: evil|500|0.1",
            "<1>x bluegreen: 10.0.0.1:80|5000|0.1",
            "<1>x bluegreen: 10.0.0.1:80|500|fast",
            "<1>x bluegreen: 10.0.0.1:80, 10.0.0.2:80|500|0.1",
            "<1>x bluegreen: 10.0.0.1:80|500|0.1|extra",
            "<1>x bluegreen: 10.0.0.1:80|500|-1",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    /// Arbitrary datagrams, bytes and all: parsing and counting never panic, and whatever is
    /// counted came from a well-formed line.
    #[test]
    fn arbitrary_datagrams_never_panic_and_only_well_formed_ones_count() {
        let mut rng = proto::rng::Rng::new(0x9e37_79b9_7f4a_7c15);
        let pieces = [
            "bluegreen: ",
            "10.0.0.1:80",
            "|",
            ", ",
            " : ",
            "200",
            "500",
            "-",
            "0.004",
            "x",
            "\n",
            "\u{1b}",
            "\0",
            "é",
            ":",
            "99999",
            "NaN",
            "inf",
        ];
        let mut tally = Tally::default();
        tally.set_addresses(HashMap::from([("10.0.0.1:80".to_string(), Color::Blue)]));
        for _ in 0..5000 {
            let line = format!("<1>x {}", rng.text(&pieces, 11));
            if let Some(attempts) = parse(&line) {
                assert!(
                    attempts.iter().all(|a| a.ms.is_finite() && a.ms >= 0.0),
                    "{line:?}"
                );
                tally.count(&attempts);
            }
        }
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
