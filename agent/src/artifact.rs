//! Fetching a release's artifact: download (file://, http(s)://), mandatory sha256 check, and a
//! safe unpack into `<state_dir>/artifacts/<sha256>/`. A verified unpack is reused, so redeploying
//! a version (or the same artifact on the other color) downloads nothing; nothing runs in it (see
//! `workdir`), and the cache keeps the [`CACHE_KEEP`] most recently used artifacts.
use crate::error::AgentError;
use proto::records::Artifact;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where a verified artifact ends up unpacked.
pub fn unpacked_dir(state_dir: &Path, sha256: &str) -> PathBuf {
    state_dir
        .join("artifacts")
        .join(sha256.to_ascii_lowercase())
}

/// Bounds on one artifact download: a stalled or endless transfer fails instead of blocking the
/// color's release loop, and nothing is ever held in memory (the body streams to a file).
#[derive(Debug, Clone, Copy)]
pub struct DownloadLimits {
    /// Longest wait for the next bytes (headers or body) before the attempt fails.
    pub idle_timeout: Duration,
    /// Larger artifacts are refused without retry.
    pub max_bytes: u64,
    /// Attempts in total, with doubling backoff (1 s, 2 s, ...) between them.
    pub attempts: u32,
}

impl Default for DownloadLimits {
    fn default() -> Self {
        DownloadLimits {
            idle_timeout: Duration::from_secs(30),
            max_bytes: 2 << 30,
            attempts: 3,
        }
    }
}

/// Downloads, verifies and unpacks `artifact`; returns the directory to run the command in.
/// Nothing is left behind on failure, and nothing that already runs is touched.
pub async fn fetch(
    http: &reqwest::Client,
    state_dir: &Path,
    artifact: &Artifact,
    limits: DownloadLimits,
) -> Result<PathBuf, AgentError> {
    // One fetch per artifact at a time: both colors often ask for the same artifact at once, and
    // the second then finds it unpacked. Different artifacts never wait for each other, so a
    // stalled download on one color does not hold the other.
    let lock = artifact_lock(&artifact.sha256);
    let _one_at_a_time = lock.lock().await;
    let dir = unpacked_dir(state_dir, &artifact.sha256);
    if dir.is_dir() {
        let (check, record) = (dir.clone(), tree_digest_path(&dir));
        let intact = tokio::task::spawn_blocking(move || {
            let recorded = std::fs::read_to_string(record).ok()?;
            Some(tree_digest(&check).ok()? == recorded.trim())
        })
        .await
        .ok()
        .flatten();
        if intact == Some(true) {
            touch(&dir);
            return Ok(dir);
        }
        // Changed since it was verified (or never recorded): fetched and checked again.
        tracing::warn!(dir = %dir.display(), "cached artifact differs from what was verified; fetching it again");
        let _ = std::fs::remove_dir_all(&dir);
    }
    let artifacts = state_dir.join("artifacts");
    std::fs::create_dir_all(&artifacts).map_err(|e| AgentError::io(&artifacts, e))?;
    let scratch = Scratch(scratch_path(state_dir, "download"));
    let actual = download_with_retries(http, &artifact.url, &scratch.0, limits).await?;
    check_sha256(&artifact.url, &artifact.sha256, actual)?;
    let url = artifact.url.clone();
    let state_dir = state_dir.to_path_buf();
    let target = dir.clone();
    let file = scratch.0.clone();
    tokio::task::spawn_blocking(move || unpack_atomically(&url, &file, &state_dir, &target))
        .await
        .map_err(|e| AgentError::Unpack {
            url: artifact.url.clone(),
            reason: e.to_string(),
        })??;
    Ok(dir)
}

/// Where the digest of a verified unpacked tree is kept (beside it, root-only).
fn tree_digest_path(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.with_file_name(format!(".{name}.tree"))
}

/// One sha256 over an unpacked tree: every entry's path, type, mode, and content or link target,
/// in a fixed order. A cached artifact is reused only while it still has the digest it had when
/// its download was verified.
pub fn tree_digest(root: &Path) -> std::io::Result<String> {
    fn walk(root: &Path, at: &Path, hasher: &mut Sha256) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let mut entries: Vec<_> = std::fs::read_dir(at)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)?;
            let relative = path.strip_prefix(root).unwrap_or(&path);
            hasher.update(relative.as_os_str().as_encoded_bytes());
            hasher.update(format!("\0{:o}\0", meta.permissions().mode()).as_bytes());
            if meta.file_type().is_symlink() {
                hasher.update(std::fs::read_link(&path)?.as_os_str().as_encoded_bytes());
            } else if meta.is_dir() {
                walk(root, &path, hasher)?;
            } else {
                hasher.update(sha256_file(&path)?.as_bytes());
            }
            hasher.update(b"\n");
        }
        Ok(())
    }
    let mut hasher = Sha256::new();
    walk(root, root, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// How many unpacked artifacts the cache keeps besides those the colors run: enough to roll back
/// or redeploy the last few versions without a download.
pub const CACHE_KEEP: usize = 3;

/// Removes cached artifacts beyond the `keep` most recently used, never one named in `in_use`
/// (sha256s). Failures are left for the next collection.
pub fn collect(state_dir: &Path, in_use: &[String], keep: usize) {
    let Ok(entries) = std::fs::read_dir(state_dir.join("artifacts")) else {
        return;
    };
    let mut cached: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| {
            let name = e.file_name().to_string_lossy().to_ascii_lowercase();
            !in_use.iter().any(|sha| sha.eq_ignore_ascii_case(&name))
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    cached.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    for (_, old) in cached.into_iter().skip(keep) {
        let _ = std::fs::remove_file(tree_digest_path(&old));
        let _ = std::fs::remove_dir_all(old);
    }
}

/// Marks a cached artifact as just used, for [`collect`].
fn touch(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

fn artifact_lock(sha256: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: LazyLock<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> =
        LazyLock::new(Default::default);
    let mut locks = LOCKS.lock().unwrap_or_else(|p| p.into_inner());
    locks.retain(|_, lock| Arc::strong_count(lock) > 1);
    locks
        .entry(sha256.to_ascii_lowercase())
        .or_default()
        .clone()
}

/// A file under `artifacts/` removed when dropped (also when the fetch is cancelled).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn scratch_path(state_dir: &Path, what: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    state_dir
        .join("artifacts")
        .join(format!(".{what}-{}-{n}", std::process::id()))
}

/// Why one download attempt failed, and whether another attempt could do better.
struct Failed {
    reason: String,
    retry: bool,
}

impl Failed {
    fn retry(reason: impl Into<String>) -> Failed {
        Failed {
            reason: reason.into(),
            retry: true,
        }
    }
    fn fatal(reason: impl Into<String>) -> Failed {
        Failed {
            reason: reason.into(),
            retry: false,
        }
    }
}

/// Downloads `url` into `path`, retrying transient failures; returns the body's sha256.
async fn download_with_retries(
    http: &reqwest::Client,
    url: &str,
    path: &Path,
    limits: DownloadLimits,
) -> Result<String, AgentError> {
    let mut delay = Duration::from_secs(1);
    let attempts = limits.attempts.max(1);
    for attempt in 1..=attempts {
        match download(http, url, path, limits).await {
            Ok(sha) => return Ok(sha),
            Err(failed) if failed.retry && attempt < attempts => {
                tracing::warn!(url = %proto::secrets::mask_text(url), attempt, error = %failed.reason, ?delay, "artifact download failed, retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(failed) => {
                let reason = if failed.retry {
                    format!("{} (after {attempt} attempts)", failed.reason)
                } else {
                    failed.reason
                };
                return Err(AgentError::Download {
                    url: url.to_string(),
                    reason,
                });
            }
        }
    }
    unreachable!("the last attempt returns")
}

/// One attempt: streams the body to `path` (0600) while hashing it.
async fn download(
    http: &reqwest::Client,
    url: &str,
    path: &Path,
    limits: DownloadLimits,
) -> Result<String, Failed> {
    let mut out =
        open_scratch(path).map_err(|e| Failed::fatal(format!("{}: {e}", path.display())))?;
    let mut sink = Sink {
        hasher: Sha256::new(),
        written: 0,
        limits,
    };
    if let Some(source) = url.strip_prefix("file://") {
        let mut file = tokio::fs::File::open(source)
            .await
            .map_err(|e| Failed::fatal(format!("{source}: {e}")))?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = file
                .read(&mut buf)
                .await
                .map_err(|e| Failed::retry(format!("{source}: {e}")))?;
            if n == 0 {
                break;
            }
            sink.write(&mut out, &buf[..n]).await?;
        }
        return sink.finish(&mut out).await;
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(Failed::fatal(
            "only file://, http:// and https:// URLs are supported",
        ));
    }
    let idle = limits.idle_timeout;
    let stalled = || Failed::retry(format!("no data for {}", humantime::format_duration(idle)));
    let mut resp = tokio::time::timeout(idle, http.get(url).send())
        .await
        .map_err(|_| stalled())?
        .map_err(|e| Failed::retry(proto::error::root_cause(&e)))?;
    let status = resp.status();
    if !status.is_success() {
        let reason = format!("HTTP {status}");
        return Err(if status.is_server_error() {
            Failed::retry(reason)
        } else {
            Failed::fatal(reason)
        });
    }
    if let Some(length) = resp.content_length().filter(|l| *l > limits.max_bytes) {
        return Err(Failed::fatal(format!(
            "{length} bytes is over the {} byte limit (download_max_bytes)",
            limits.max_bytes
        )));
    }
    while let Some(chunk) = tokio::time::timeout(idle, resp.chunk())
        .await
        .map_err(|_| stalled())?
        .map_err(|e| Failed::retry(proto::error::root_cause(&e)))?
    {
        sink.write(&mut out, &chunk).await?;
    }
    sink.finish(&mut out).await
}

fn open_scratch(path: &Path) -> std::io::Result<tokio::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    Ok(tokio::fs::File::from_std(file))
}

/// Where downloaded bytes go: counted against the limit, hashed, written.
struct Sink {
    hasher: Sha256,
    written: u64,
    limits: DownloadLimits,
}

impl Sink {
    async fn write(&mut self, out: &mut tokio::fs::File, bytes: &[u8]) -> Result<(), Failed> {
        self.written += bytes.len() as u64;
        if self.written > self.limits.max_bytes {
            return Err(Failed::fatal(format!(
                "more than {} bytes (download_max_bytes)",
                self.limits.max_bytes
            )));
        }
        self.hasher.update(bytes);
        out.write_all(bytes)
            .await
            .map_err(|e| Failed::fatal(format!("writing the download: {e}")))
    }

    async fn finish(self, out: &mut tokio::fs::File) -> Result<String, Failed> {
        out.flush()
            .await
            .map_err(|e| Failed::fatal(format!("writing the download: {e}")))?;
        Ok(hex::encode(self.hasher.finalize()))
    }
}

/// The downloaded body's sha256 must be the release's: anything else is never unpacked.
fn check_sha256(url: &str, expected: &str, actual: String) -> Result<(), AgentError> {
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(AgentError::ChecksumMismatch {
            url: url.into(),
            expected: expected.into(),
            actual,
        });
    }
    Ok(())
}

/// Unpacks into a temporary sibling and renames it into place, so a half-unpacked artifact is
/// never mistaken for a verified one.
fn unpack_atomically(
    url: &str,
    file: &Path,
    state_dir: &Path,
    target: &Path,
) -> Result<(), AgentError> {
    let parent = target.parent().expect("artifact dir has a parent");
    std::fs::create_dir_all(parent).map_err(|e| AgentError::io(parent, e))?;
    // Both colors may fetch the same artifact at once: each unpack gets its own scratch dir.
    let tmp = scratch_path(state_dir, "unpack");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| AgentError::io(&tmp, e))?;
    let digest = |tmp: &Path| tree_digest(tmp).map_err(|e| AgentError::io(tmp, e));
    let result = unpack(url, file, &tmp).and_then(|()| {
        let recorded = digest(&tmp)?;
        let record = tree_digest_path(target);
        std::fs::write(&record, recorded).map_err(|e| AgentError::io(&record, e))?;
        std::fs::rename(&tmp, target).or_else(|e| {
            if target.is_dir() {
                Ok(())
            } else {
                Err(AgentError::io(target, e))
            }
        })
    });
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// Unpacks the artifact by the rules in [`proto::unpack`] (shared with `coordinator validate`).
pub fn unpack(url: &str, file: &Path, dest: &Path) -> Result<(), AgentError> {
    proto::unpack::unpack(url, file, dest).map_err(|reason| AgentError::Unpack {
        url: url.into(),
        reason,
    })
}

/// sha256 of a file, hex (used by tools and tests that build artifacts).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unpack_error_names_the_artifact() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), b"x").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let err = unpack("http://h/dl/", file.path(), dir.path()).unwrap_err();
        assert!(err.to_string().contains("http://h/dl/"), "{err}");
    }

    fn artifact(url: String, body: &[u8]) -> Artifact {
        Artifact {
            url,
            sha256: hex::encode(Sha256::digest(body)),
        }
    }

    /// An HTTP server on loopback that answers every connection with `respond`.
    async fn serve(respond: fn(tokio::net::TcpStream)) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                respond(stream);
            }
        });
        format!("http://{addr}/app")
    }

    fn limits() -> DownloadLimits {
        DownloadLimits {
            idle_timeout: Duration::from_millis(300),
            max_bytes: 1024,
            attempts: 2,
        }
    }

    #[tokio::test]
    async fn checksum_mismatch_names_both_sums_and_leaves_nothing() {
        let state = tempfile::tempdir().unwrap();
        let source = state.path().join("abc");
        std::fs::write(&source, b"abc").unwrap();
        let url = format!("file://{}", source.display());
        let mut wrong = artifact(url.clone(), b"abc");
        wrong.sha256 = "0".repeat(64);
        let err = fetch(&reqwest::Client::new(), state.path(), &wrong, limits())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&"0".repeat(64)) && err.contains("ba7816bf"),
            "{err}"
        );
        let left: Vec<_> = std::fs::read_dir(state.path().join("artifacts"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "scratch files left behind: {left:?}");
        let dir = fetch(
            &reqwest::Client::new(),
            state.path(),
            &artifact(url, b"abc"),
            limits(),
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(dir.join("abc")).unwrap(), b"abc");
    }

    /// The cache is reused only as it was verified: a file changed in it since is fetched again.
    #[tokio::test]
    async fn a_cached_artifact_changed_since_it_was_verified_is_fetched_again() {
        let state = tempfile::tempdir().unwrap();
        let source = state.path().join("app");
        std::fs::write(&source, b"v1 binary").unwrap();
        let good = artifact(format!("file://{}", source.display()), b"v1 binary");
        let http = reqwest::Client::new();
        let dir = fetch(&http, state.path(), &good, limits()).await.unwrap();
        std::fs::write(dir.join("app"), b"tampered").unwrap();
        let again = fetch(&http, state.path(), &good, limits()).await.unwrap();
        assert_eq!(std::fs::read(again.join("app")).unwrap(), b"v1 binary");
        // Unchanged, it is reused as it is (the source is gone, so a download would fail).
        std::fs::remove_file(&source).unwrap();
        fetch(&http, state.path(), &good, limits()).await.unwrap();
    }

    #[tokio::test]
    async fn a_server_that_never_sends_a_byte_fails_within_the_idle_timeout() {
        let url = serve(|stream| {
            tokio::spawn(async move {
                let _held = stream;
                std::future::pending::<()>().await
            });
        })
        .await;
        let state = tempfile::tempdir().unwrap();
        let (http, stalled) = (reqwest::Client::new(), artifact(url, b"x"));
        let fetching = fetch(&http, state.path(), &stalled, limits());
        let err = tokio::time::timeout(Duration::from_secs(20), fetching)
            .await
            .expect("the download must give up by itself")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no data for") && err.contains("after 2 attempts"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_without_retry() {
        let url = serve(|mut stream| {
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).await;
                // No Content-Length: the limit must hold while streaming, not only up front.
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                    .await;
                let _ = stream.write_all(&[b'x'; 4096]).await;
            });
        })
        .await;
        let state = tempfile::tempdir().unwrap();
        let err = fetch(
            &reqwest::Client::new(),
            state.path(),
            &artifact(url, b"x"),
            limits(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("more than 1024 bytes") && !err.contains("attempts"),
            "{err}"
        );
    }
}
