//! Fetching a release's artifact: download (file://, http(s)://), mandatory sha256 check, and a
//! safe unpack into `<state_dir>/artifacts/<sha256>/`. A verified unpack is reused, so redeploying
//! a version (or the same artifact on the other color) costs nothing.
use crate::error::AgentError;
use proto::records::Artifact;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Where a verified artifact ends up unpacked.
pub fn unpacked_dir(state_dir: &Path, sha256: &str) -> PathBuf {
    state_dir
        .join("artifacts")
        .join(sha256.to_ascii_lowercase())
}

/// Downloads, verifies and unpacks `artifact`; returns the directory to run the command in.
/// Nothing is left behind on failure, and nothing that already runs is touched.
pub async fn fetch(
    http: &reqwest::Client,
    state_dir: &Path,
    artifact: &Artifact,
) -> Result<PathBuf, AgentError> {
    // One fetch at a time per agent: both colors often ask for the same artifact at once, and the
    // second then finds it unpacked instead of downloading it again.
    static FETCHING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one_at_a_time = FETCHING.lock().await;
    let dir = unpacked_dir(state_dir, &artifact.sha256);
    if dir.is_dir() {
        return Ok(dir);
    }
    let bytes = download(http, &artifact.url).await?;
    verify_sha256(&artifact.url, &artifact.sha256, &bytes)?;
    let url = artifact.url.clone();
    let state_dir = state_dir.to_path_buf();
    let target = dir.clone();
    tokio::task::spawn_blocking(move || unpack_atomically(&url, &bytes, &state_dir, &target))
        .await
        .map_err(|e| AgentError::Unpack {
            url: artifact.url.clone(),
            reason: e.to_string(),
        })??;
    Ok(dir)
}

async fn download(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, AgentError> {
    let fail = |reason: String| AgentError::Download {
        url: url.to_string(),
        reason,
    };
    if let Some(path) = url.strip_prefix("file://") {
        return tokio::fs::read(path).await.map_err(|e| fail(e.to_string()));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(fail(
            "only file://, http:// and https:// URLs are supported".into(),
        ));
    }
    let resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(fail(format!("HTTP {}", resp.status())));
    }
    resp.bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| fail(e.to_string()))
}

pub fn verify_sha256(url: &str, expected: &str, bytes: &[u8]) -> Result<(), AgentError> {
    let actual = hex::encode(Sha256::digest(bytes));
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
    bytes: &[u8],
    state_dir: &Path,
    target: &Path,
) -> Result<(), AgentError> {
    let parent = target.parent().expect("artifact dir has a parent");
    std::fs::create_dir_all(parent).map_err(|e| AgentError::io(parent, e))?;
    // Both colors may fetch the same artifact at once: each unpack gets its own scratch dir.
    static UNPACKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = UNPACKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = state_dir
        .join("artifacts")
        .join(format!(".unpack-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| AgentError::io(&tmp, e))?;
    let result = unpack(url, bytes, &tmp).and_then(|()| {
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

/// A gzip stream is a tar.gz; anything else is a single executable named after the URL's last segment.
pub fn unpack(url: &str, bytes: &[u8], dest: &Path) -> Result<(), AgentError> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        unpack_tar_gz(url, bytes, dest)
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
        std::fs::write(&path, bytes).map_err(|e| AgentError::io(&path, e))?;
        set_executable(&path)
    }
}

fn unpack_tar_gz(url: &str, bytes: &[u8], dest: &Path) -> Result<(), AgentError> {
    let fail = |reason: String| AgentError::Unpack {
        url: url.into(),
        reason,
    };
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
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
            let err = unpack("file:///x.tar.gz", &tar_gz_with(bad, b"x"), dir.path())
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
        unpack(
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
        unpack("http://h/dl/demo-app", b"\x7fELF...", dir.path()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("demo-app"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
    }

    #[test]
    fn checksum_mismatch_names_both_sums() {
        let err = verify_sha256("file:///a", &"0".repeat(64), b"abc")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&"0".repeat(64)) && err.contains("ba7816bf"),
            "{err}"
        );
        verify_sha256(
            "file:///a",
            "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
            b"abc",
        )
        .unwrap();
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
        super::unpack("file:///a.tgz", &bytes, dir.path()).unwrap();
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
        super::unpack("file:///a.tar.gz", &bytes, dir.path()).unwrap();
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
