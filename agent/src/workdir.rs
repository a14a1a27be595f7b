//! Each color's own working tree. The verified artifact in the cache (`artifacts/<sha256>/`) is
//! never run in: every install of a release copies it to a fresh
//! `colors/<color>/<tree>/app/`, with the color's own `home/` and `tmp/` beside it, all owned by
//! the user the app runs as. So what one color writes next to itself (a pid file, a cache, a
//! rendered page) is never seen by the other color, a redeploy starts from a clean tree, and an
//! unprivileged app can write its working directory.
//!
//! Copies, not hard links: changing the owner of a hard link changes the cached file too.
use proto::Color;
use std::path::{Path, PathBuf};

/// Where the trees of `color` live.
pub fn color_dir(state_dir: &Path, color: Color) -> PathBuf {
    state_dir.join("colors").join(color.to_string())
}

/// The color's `HOME` and `TMPDIR` for an app running in `app_dir` (`None` for a directory that
/// is not a color tree, such as one a previous agent version ran in).
pub fn home_and_tmp(app_dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let tree = app_dir.parent()?;
    let is_tree =
        app_dir.file_name()? == "app" && tree.parent()?.parent()?.file_name()? == "colors";
    is_tree.then(|| (tree.join("home"), tree.join("tmp")))
}

/// Makes a fresh tree for `color` from the unpacked artifact `cached`: `app/` (a copy), `home/`
/// and `tmp/`, owned by `owner` (uid, gid) when given. Every other tree of the color is removed
/// first, except the one `running_dir` is in (the process still running, which stays until the
/// new release has started). Returns the new `app/` directory.
pub fn prepare(
    state_dir: &Path,
    color: Color,
    cached: &Path,
    owner: Option<(u32, u32)>,
    running_dir: Option<&Path>,
) -> Result<PathBuf, String> {
    let colors = state_dir.join("colors");
    let dir = color_dir(state_dir, color);
    for parent in [&colors, &dir] {
        make_dir(parent, 0o711)?;
    }
    collect(&dir, running_dir);
    let name = cached
        .file_name()
        .map(|n| n.to_string_lossy().chars().take(12).collect::<String>())
        .unwrap_or_default();
    let tree = unique_child(&dir, &name);
    // Built under a dot name and renamed: a tree that is not whole is never run.
    let building = dir.join(format!(".{}", file_name(&tree)));
    let _ = std::fs::remove_dir_all(&building);
    let result = build(&building, cached, owner).and_then(|()| {
        std::fs::rename(&building, &tree).map_err(|e| format!("{}: {e}", tree.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&building);
    }
    result.map(|()| tree.join("app"))
}

fn build(tree: &Path, cached: &Path, owner: Option<(u32, u32)>) -> Result<(), String> {
    make_dir(tree, 0o700)?;
    copy_tree(cached, &tree.join("app"))?;
    for own in ["home", "tmp"] {
        make_dir(&tree.join(own), 0o700)?;
    }
    if let Some((uid, gid)) = owner {
        chown_tree(tree, uid, gid)?;
    }
    Ok(())
}

/// Removes every tree of a color but the one `running_dir` is in. Failures are left for the
/// next install: a tree that cannot be removed takes space, it breaks nothing.
fn collect(dir: &Path, running_dir: Option<&Path>) {
    let keep = running_dir.and_then(Path::parent);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if Some(path.as_path()) != keep {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn unique_child(dir: &Path, name: &str) -> PathBuf {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    (0u32..)
        .map(|n| dir.join(format!("{name}-{millis}-{n}")))
        .find(|p| !p.exists() && !dir.join(format!(".{}", file_name(p))).exists())
        .expect("some name is free")
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn make_dir(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("{}: {e}", path.display()))
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Copies `src` to `dst` (which must not exist): directories, regular files with their mode, and
/// symbolic links as links, whatever they point at. The cache holds nothing else.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let meta = std::fs::symlink_metadata(src).map_err(|e| fail(src, e))?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        let target = std::fs::read_link(src).map_err(|e| fail(src, e))?;
        std::os::unix::fs::symlink(&target, dst).map_err(|e| fail(dst, e))
    } else if kind.is_dir() {
        make_dir(dst, meta.permissions().mode() & 0o777)?;
        for entry in std::fs::read_dir(src).map_err(|e| fail(src, e))? {
            let entry = entry.map_err(|e| fail(src, e))?;
            copy_tree(&entry.path(), &dst.join(entry.file_name()))?;
        }
        Ok(())
    } else if kind.is_file() {
        std::fs::copy(src, dst)
            .map(|_| ())
            .map_err(|e| fail(dst, e))
    } else {
        Err(format!(
            "{}: neither a file, a directory nor a link",
            src.display()
        ))
    }
}

/// Gives everything under `root` to `uid`:`gid`, links themselves included (never their targets).
fn chown_tree(root: &Path, uid: u32, gid: u32) -> Result<(), String> {
    std::os::unix::fs::lchown(root, Some(uid), Some(gid))
        .map_err(|e| format!("{}: {e}", root.display()))?;
    let meta = std::fs::symlink_metadata(root).map_err(|e| format!("{}: {e}", root.display()))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(root).map_err(|e| format!("{}: {e}", root.display()))? {
            let entry = entry.map_err(|e| format!("{}: {e}", root.display()))?;
            chown_tree(&entry.path(), uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "workdir_tests.rs"]
mod tests;
