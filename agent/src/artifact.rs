//! Fetching a release's artifact: download (file://, http(s)://), mandatory sha256 check, and a
//! safe unpack into `<state_dir>/artifacts/<sha256>/`. A verified unpack is reused, so redeploying
//! a version (or the same artifact on the other color) costs nothing.
use crate::error::AgentError;
use proto::records::Artifact;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
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
        return Ok(dir);
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
    let result = unpack(url, file, &tmp).and_then(|()| {
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

/// A gzip stream is a tar.gz; anything else is a single executable named after the URL's last
/// segment. `file` is the downloaded artifact; it is read as a stream, never loaded whole.
pub fn unpack(url: &str, file: &Path, dest: &Path) -> Result<(), AgentError> {
    let mut magic = [0u8; 2];
    let is_gzip = std::fs::File::open(file)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == [0x1f, 0x8b];
    if is_gzip {
        let reader = std::fs::File::open(file).map_err(|e| AgentError::io(file, e))?;
        unpack_tar_gz(url, reader, dest)
    } else {
        let name = url
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty() && *n != "." && *n != "..")
            .ok_or_else(|| AgentError::Unpack {
                url: url.into(),
                reason: "a single-executable artifact needs a file name in its URL".into(),
            })?;
        let path = dest.join(name);
        std::fs::copy(file, &path).map_err(|e| AgentError::io(&path, e))?;
        set_executable(&path)
    }
}

fn unpack_tar_gz(url: &str, reader: impl Read, dest: &Path) -> Result<(), AgentError> {
    let fail = |reason: String| AgentError::Unpack {
        url: url.into(),
        reason,
    };
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(reader));
    // Modes are kept to rwx bits: a setuid-root file in an artifact must not stay setuid-root on
    // the host. Ownership and extended attributes from the archive are never applied.
    archive.set_preserve_permissions(false);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    for entry in archive.entries().map_err(|e| fail(e.to_string()))? {
        let mut entry = entry.map_err(|e| fail(e.to_string()))?;
        let path = entry.path().map_err(|e| fail(e.to_string()))?.into_owned();
        check_relative(&path).map_err(|why| fail(format!("entry {}: {why}", path.display())))?;
        if let Some(link) = entry.link_name().map_err(|e| fail(e.to_string()))? {
            check_relative(&link).map_err(|why| {
                fail(format!(
                    "link {} -> {}: {why}",
                    path.display(),
                    link.display()
                ))
            })?;
        }
        entry
            .unpack_in(dest)
            .map_err(|e| fail(format!("entry {}: {e}", path.display())))?;
    }
    Ok(())
}

/// Refuses absolute paths and any `..`: an artifact must not write outside its own directory.
fn check_relative(path: &Path) -> Result<(), &'static str> {
    for component in path.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err("contains '..'"),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
        }
    }
    Ok(())
}

fn set_executable(path: &Path) -> Result<(), AgentError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| AgentError::io(path, e))
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

/// [`unpack`] of bytes, through a file like a real download.
#[cfg(test)]
fn unpack_bytes(url: &str, bytes: &[u8], dest: &Path) -> Result<(), AgentError> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), bytes).unwrap();
    unpack(url, file.path(), dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes raw tar headers so that paths the `tar` builder itself refuses can be tested.
    fn tar_gz_with(path: &str, body: &[u8]) -> Vec<u8> {
        let mut header = tar::Header::new_gnu();
        header.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        builder.append(&header, body).unwrap();
        builder.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn rejects_parent_and_absolute_paths() {
        for bad in ["../evil", "a/../../evil", "/etc/evil"] {
            let dir = tempfile::tempdir().unwrap();
            let err = unpack_bytes("file:///x.tar.gz", &tar_gz_with(bad, b"x"), dir.path())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("file:///x.tar.gz")
                    && (err.contains("'..'") || err.contains("absolute")),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn unpacks_a_normal_tarball() {
        let dir = tempfile::tempdir().unwrap();
        unpack_bytes(
            "file:///x.tar.gz",
            &tar_gz_with("bin/app", b"hello"),
            dir.path(),
        )
        .unwrap();
        assert_eq!(std::fs::read(dir.path().join("bin/app")).unwrap(), b"hello");
    }

    #[test]
    fn single_executable_is_named_after_url() {
        let dir = tempfile::tempdir().unwrap();
        unpack_bytes("http://h/dl/demo-app", b"\x7fELF...", dir.path()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("demo-app"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
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
#[cfg(test)]
mod mode_tests {
    #[test]
    fn keeps_exec_mode() {
        let mut header = tar::Header::new_gnu();
        header.as_gnu_mut().unwrap().name[..3].copy_from_slice(b"app");
        header.set_size(2);
        header.set_mode(0o755);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        builder.append(&header, &b"hi"[..]).unwrap();
        let bytes = builder.into_inner().unwrap().finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        super::unpack_bytes("file:///a.tgz", &bytes, dir.path()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("app"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn setuid_setgid_and_sticky_bits_are_dropped() {
        use std::os::unix::fs::PermissionsExt;
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (name, mode) in [
            ("suid", 0o4755),
            ("sgid", 0o2755),
            ("sticky", 0o1777),
            ("plain", 0o640),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(2);
            header.set_mode(mode);
            header.set_uid(0);
            header.set_gid(0);
            header.set_cksum();
            builder.append_data(&mut header, name, &b"hi"[..]).unwrap();
        }
        let bytes = builder.into_inner().unwrap().finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        super::unpack_bytes("file:///a.tar.gz", &bytes, dir.path()).unwrap();
        let mode = |n: &str| {
            std::fs::metadata(dir.path().join(n))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("suid") & 0o7000, 0);
        assert_eq!(mode("sgid") & 0o7000, 0);
        assert_eq!(mode("sticky") & 0o7000, 0);
        assert_eq!(mode("suid") & 0o777, 0o755 & mode("suid"));
        assert_eq!(mode("plain") & 0o700, 0o600);
    }
}
