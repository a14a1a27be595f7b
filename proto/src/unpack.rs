//! The artifact format, read the same way by the agent (to run it) and by `coordinator validate
//! --artifact` (to say before a deploy whether the agents will accept it): a gzipped tar, or a
//! single executable.
//!
//! Artifacts come from build tools, so links of any target are kept as links: `npm install` makes
//! `node_modules/.bin/x -> ../x/bin/x.js`, a Python venv `bin/python3 -> /usr/bin/python3`. What
//! a link points at is only followed by the app at run time, as the app's user. What is refused
//! is anything that would make the unpack itself write outside the tree: an absolute entry path,
//! a `..` component, an entry written through a link (`lib -> /etc`, then `lib/passwd`), an
//! entry that replaces a link, a hard link whose target is outside the tree or reached through a
//! link, and device files or FIFOs. Modes keep their owner bits and read/execute for group and
//! other; setuid, setgid, sticky and group/other write are dropped. Ownership and extended
//! attributes in the archive are never applied.
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Unpacks the artifact in `file` (downloaded from `url`, whose last segment names a single
/// executable) into the existing directory `dest`. The error is the reason, naming the entry.
pub fn unpack(url: &str, file: &Path, dest: &Path) -> Result<(), String> {
    let mut magic = [0u8; 2];
    let is_gzip = std::fs::File::open(file)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == [0x1f, 0x8b];
    if is_gzip {
        let reader = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
        unpack_tar_gz(reader, dest)
    } else {
        let name = url
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty() && *n != "." && *n != "..")
            .ok_or("a single-executable artifact needs a file name in its URL")?;
        let path = dest.join(name);
        std::fs::copy(file, &path).map_err(|e| format!("{}: {e}", path.display()))?;
        set_mode(&path, 0o755)
    }
}

fn unpack_tar_gz(reader: impl Read, dest: &Path) -> Result<(), String> {
    use tar::EntryType as T;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(reader));
    archive.set_preserve_permissions(false);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let path = entry.path().map_err(|e| e.to_string())?.into_owned();
        let shown = path.display().to_string();
        let kind = entry.header().entry_type();
        if matches!(kind, T::XGlobalHeader) {
            continue;
        }
        if !matches!(
            kind,
            T::Regular | T::Continuous | T::Directory | T::Symlink | T::Link
        ) {
            return Err(format!(
                "entry {shown}: a {} is not allowed in an artifact (only files, directories and links)",
                kind_name(kind)
            ));
        }
        check_inside(dest, &path).map_err(|why| {
            let why = why.replace("is the link", "would replace the link");
            format!("entry {shown}: {why}")
        })?;
        if kind == T::Link {
            let target = entry
                .link_name()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("hard link {shown}: no target"))?;
            check_inside(dest, &target).map_err(|why| {
                format!(
                    "hard link {shown} -> {}: the target {why}",
                    target.display()
                )
            })?;
        }
        let mode = entry.header().mode().unwrap_or(0o644);
        entry
            .unpack_in(dest)
            .map_err(|e| format!("entry {shown}: {e}"))?;
        match kind {
            T::Regular | T::Continuous => set_mode(&dest.join(&path), safe_mode(mode))?,
            T::Directory => set_mode(&dest.join(&path), safe_mode(mode) | 0o700)?,
            _ => {}
        }
    }
    Ok(())
}

/// Owner bits as given; group and other may read and execute, never write; no setuid, setgid or
/// sticky bit.
fn safe_mode(mode: u32) -> u32 {
    mode & 0o755
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// `path` (as written in the archive) names a place inside `dest` reached without following a
/// link: relative, no `..`, no link among its parents already unpacked, and not itself a link.
fn check_inside(dest: &Path, path: &Path) -> Result<(), String> {
    let mut at = PathBuf::from(dest);
    let parts: Vec<Component> = path.components().collect();
    for (i, component) in parts.iter().enumerate() {
        match component {
            Component::Normal(part) => at.push(part),
            Component::CurDir => continue,
            Component::ParentDir => return Err("contains '..'".into()),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path".into()),
        }
        let is_link = std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink());
        if is_link {
            let link: PathBuf = parts[..=i].iter().collect();
            return Err(if i + 1 == parts.len() {
                format!("is the link {}", link.display())
            } else {
                format!("is reached through the link {}", link.display())
            });
        }
    }
    Ok(())
}

fn kind_name(kind: tar::EntryType) -> &'static str {
    use tar::EntryType as T;
    match kind {
        T::Char => "character device",
        T::Block => "block device",
        T::Fifo => "FIFO",
        _ => "special entry",
    }
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;
