use super::*;

/// One archive entry: a path as written in the archive (raw, so paths the `tar` builder refuses
/// can be tested), its type, link target and mode.
struct Entry<'a> {
    path: &'a str,
    kind: tar::EntryType,
    link: Option<&'a str>,
    mode: u32,
    body: &'a [u8],
}

fn file<'a>(path: &'a str, body: &'a [u8]) -> Entry<'a> {
    Entry {
        path,
        kind: tar::EntryType::Regular,
        link: None,
        mode: 0o644,
        body,
    }
}

fn link<'a>(kind: tar::EntryType, path: &'a str, target: &'a str) -> Entry<'a> {
    Entry {
        path,
        kind,
        link: Some(target),
        mode: 0o777,
        body: b"",
    }
}

fn archive(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for e in entries {
        let mut header = tar::Header::new_gnu();
        let gnu = header.as_gnu_mut().unwrap();
        gnu.name[..e.path.len()].copy_from_slice(e.path.as_bytes());
        if let Some(target) = e.link {
            gnu.linkname[..target.len()].copy_from_slice(target.as_bytes());
        }
        header.set_size(e.body.len() as u64);
        header.set_mode(e.mode);
        header.set_entry_type(e.kind);
        header.set_cksum();
        builder.append(&header, e.body).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// Unpacks `entries` into a fresh directory inside a scratch root (so that what escapes the
/// destination lands where the test can see it).
fn unpack_entries(entries: &[Entry]) -> (tempfile::TempDir, PathBuf, Result<(), String>) {
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(root.path().join("outside"), b"untouched").unwrap();
    let file = root.path().join("a.tar.gz");
    std::fs::write(&file, archive(entries)).unwrap();
    let result = unpack("file:///a.tar.gz", &file, &dest);
    (root, dest, result)
}

#[test]
fn npm_and_venv_links_are_kept_as_links() {
    use tar::EntryType::Symlink;
    let (_root, dest, result) = unpack_entries(&[
        file(
            "node_modules/opener/bin/opener-bin.js",
            b"#!/usr/bin/env node\n",
        ),
        link(
            Symlink,
            "node_modules/.bin/opener",
            "../opener/bin/opener-bin.js",
        ),
        link(Symlink, "venv/bin/python3", "/usr/bin/python3"),
    ]);
    result.unwrap();
    let read = |p: &str| std::fs::read_link(dest.join(p)).unwrap();
    assert_eq!(
        read("node_modules/.bin/opener"),
        PathBuf::from("../opener/bin/opener-bin.js")
    );
    assert_eq!(read("venv/bin/python3"), PathBuf::from("/usr/bin/python3"));
    let through = std::fs::read(dest.join("node_modules/.bin/opener")).unwrap();
    assert_eq!(through, b"#!/usr/bin/env node\n");
}

#[test]
fn nothing_is_written_outside_the_tree() {
    use tar::EntryType::{Link, Symlink};
    let cases: Vec<(&str, Vec<Entry>, &str)> = vec![
        ("dot-dot", vec![file("a/../../evil", b"x")], "'..'"),
        ("absolute", vec![file("/tmp/evil", b"x")], "absolute"),
        (
            "through a link",
            vec![link(Symlink, "out", ".."), file("out/evil", b"x")],
            "through the link out",
        ),
        (
            "through a nested link",
            vec![link(Symlink, "a", "../"), file("a/evil", b"x")],
            "through the link a",
        ),
        (
            "replacing a link",
            vec![link(Symlink, "evil", "../evil"), file("evil", b"x")],
            "would replace the link evil",
        ),
        (
            "hard link outside",
            vec![link(Link, "h", "../outside")],
            "'..'",
        ),
        (
            "hard link through a link",
            vec![link(Symlink, "up", ".."), link(Link, "h", "up/outside")],
            "through the link up",
        ),
    ];
    for (name, entries, why) in cases {
        let (root, _dest, result) = unpack_entries(&entries);
        let err = result.expect_err(name);
        assert!(err.contains(why), "{name}: {err}");
        assert!(!root.path().join("evil").exists(), "{name}: wrote outside");
        assert_eq!(
            std::fs::read(root.path().join("outside")).unwrap(),
            b"untouched"
        );
    }
}

#[test]
fn a_hard_link_inside_the_tree_is_kept() {
    let (_root, dest, result) =
        unpack_entries(&[file("a", b"same"), link(tar::EntryType::Link, "b", "a")]);
    result.unwrap();
    assert_eq!(std::fs::read(dest.join("b")).unwrap(), b"same");
}

#[test]
fn devices_and_fifos_are_refused() {
    for (kind, name) in [
        (tar::EntryType::Char, "character device"),
        (tar::EntryType::Block, "block device"),
        (tar::EntryType::Fifo, "FIFO"),
    ] {
        let mut entry = file("dev", b"");
        entry.kind = kind;
        let (_root, dest, result) = unpack_entries(&[entry]);
        let err = result.expect_err(name);
        assert!(err.contains(name) && err.contains("entry dev"), "{err}");
        assert!(!dest.join("dev").exists());
    }
}

#[test]
fn special_bits_and_group_or_other_write_are_dropped() {
    use std::os::unix::fs::PermissionsExt;
    let entry = |path, mode| Entry {
        mode,
        ..file(path, b"hi")
    };
    let (_root, dest, result) = unpack_entries(&[
        entry("suid", 0o4755),
        entry("sgid", 0o2775),
        entry("shared", 0o666),
        entry("run", 0o755),
        entry("private", 0o600),
    ]);
    result.unwrap();
    let mode = |p: &str| {
        std::fs::metadata(dest.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("suid"), 0o755);
    assert_eq!(mode("sgid"), 0o755);
    assert_eq!(mode("shared"), 0o644);
    assert_eq!(mode("run"), 0o755);
    assert_eq!(mode("private"), 0o600);
}

#[test]
fn a_single_executable_is_named_after_its_url() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("download");
    std::fs::write(&file, b"\x7fELF...").unwrap();
    unpack("http://h/dl/demo-app", &file, root.path()).unwrap();
    let mode = std::fs::metadata(root.path().join("demo-app"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    let err = unpack("http://h/dl/", &file, root.path()).unwrap_err();
    assert!(err.contains("file name"), "{err}");
}
