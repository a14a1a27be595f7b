use super::*;
use std::os::unix::fs::MetadataExt;

/// A cached artifact as an npm or venv build leaves it: a file, a relative link with `..` and an
/// absolute link.
fn cached_artifact(root: &Path) -> PathBuf {
    let cached = root.join("artifacts").join("ab".repeat(32));
    std::fs::create_dir_all(cached.join("node_modules/.bin")).unwrap();
    std::fs::create_dir_all(cached.join("node_modules/opener")).unwrap();
    std::fs::write(cached.join("node_modules/opener/cli.js"), b"cli").unwrap();
    std::os::unix::fs::symlink("../opener/cli.js", cached.join("node_modules/.bin/opener"))
        .unwrap();
    std::os::unix::fs::symlink("/usr/bin/python3", cached.join("python3")).unwrap();
    cached
}

#[test]
fn each_install_is_a_fresh_copy_with_its_own_home_and_tmp() {
    let state = tempfile::tempdir().unwrap();
    let cached = cached_artifact(state.path());
    let first = prepare(state.path(), Color::Blue, &cached, None, None).unwrap();
    assert_eq!(
        std::fs::read(first.join("node_modules/.bin/opener")).unwrap(),
        b"cli"
    );
    assert_eq!(
        std::fs::read_link(first.join("python3")).unwrap(),
        PathBuf::from("/usr/bin/python3")
    );
    std::fs::write(first.join("server.pid"), b"1").unwrap();
    let (home, tmp) = home_and_tmp(&first).expect("a color tree");
    assert!(home.is_dir() && tmp.is_dir());
    // The other color and the next install of this color see none of it; the cache neither.
    let green = prepare(state.path(), Color::Green, &cached, None, None).unwrap();
    let second = prepare(state.path(), Color::Blue, &cached, None, Some(&first)).unwrap();
    for fresh in [&green, &second] {
        assert!(!fresh.join("server.pid").exists(), "{}", fresh.display());
    }
    assert!(!cached.join("server.pid").exists());
    assert_ne!(first, second);
    // The running tree stays until the next install after it; then it is collected.
    assert!(first.is_dir());
    let third = prepare(state.path(), Color::Blue, &cached, None, Some(&second)).unwrap();
    assert!(!first.exists() && second.is_dir() && third.is_dir());
    assert!(green.is_dir(), "another color's tree is never collected");
}

#[test]
fn the_tree_belongs_to_the_apps_user_and_the_cache_does_not() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: chown needs root");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let cached = cached_artifact(state.path());
    let (uid, gid) = (65534, 65534);
    let app = prepare(state.path(), Color::Green, &cached, Some((uid, gid)), None).unwrap();
    let (home, tmp) = home_and_tmp(&app).unwrap();
    for path in [
        app.clone(),
        app.join("node_modules/opener/cli.js"),
        app.join("python3"),
        home,
        tmp,
    ] {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{}", path.display());
    }
    let target = std::fs::metadata("/usr/bin/python3").unwrap();
    assert_eq!(target.uid(), 0, "a link's target is never chowned");
    let cached_file = std::fs::metadata(cached.join("node_modules/opener/cli.js")).unwrap();
    assert_eq!(cached_file.uid(), 0, "the cache keeps its owner");
}

#[test]
fn a_directory_that_is_not_a_color_tree_gets_no_home() {
    assert_eq!(
        home_and_tmp(Path::new("/var/lib/bluegreen/agent/artifacts/ab")),
        None
    );
}
