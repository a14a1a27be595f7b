//! Release artifacts for tests: the demo app packed as a tar.gz (the real thing the agent unpacks),
//! plus deliberately broken ones.
use crate::binary;
use proto::records::{Artifact, Desired, HealthSpec, ReleaseRecord, RunSpec};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub struct Artifacts {
    dir: tempfile::TempDir,
}

impl Default for Artifacts {
    fn default() -> Self {
        Artifacts {
            dir: tempfile::tempdir().expect("artifact dir"),
        }
    }
}

impl Artifacts {
    /// Packs `(path, body, mode)` entries into `<name>` and returns its file:// artifact. Paths are
    /// written raw into the header, so hostile names (`../x`, `/x`) can be produced too.
    pub fn tarball(&self, name: &str, entries: &[(&str, &[u8], u32)]) -> Artifact {
        // Stored, not compressed: still a real gzip stream, and packing a large debug binary stays fast.
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::none(),
        ));
        for (path, body, mode) in entries {
            let mut header = tar::Header::new_gnu();
            header.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_size(body.len() as u64);
            header.set_mode(*mode);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            builder.append(&header, *body).unwrap();
        }
        let bytes = builder.into_inner().unwrap().finish().unwrap();
        self.write(name, &bytes)
    }

    /// Packs the directory `dir` as `<name>`, links kept as links (as `tar -czf` does).
    pub fn tarball_of_dir(&self, name: &str, dir: &std::path::Path) -> Artifact {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        builder.follow_symlinks(false);
        builder
            .append_dir_all(".", dir)
            .expect("pack the directory");
        let bytes = builder.into_inner().unwrap().finish().unwrap();
        self.write(name, &bytes)
    }

    /// The demo app binary packed as `demo-app.tar.gz`.
    pub fn demo_app(&self) -> Artifact {
        let body = std::fs::read(binary("demo-app")).expect("read demo-app binary");
        self.tarball("demo-app.tar.gz", &[("demo-app", &body, 0o755)])
    }

    /// The demo app with `padding_mib` MiB of zeros packed beside it (stored, so the artifact is
    /// that large): for tests that need a large artifact whatever the build's debug info.
    pub fn large_demo_app(&self, padding_mib: usize) -> Artifact {
        let body = std::fs::read(binary("demo-app")).expect("read demo-app binary");
        let padding = vec![0u8; padding_mib << 20];
        self.tarball(
            "demo-app-large.tar.gz",
            &[("demo-app", &body, 0o755), ("padding", &padding, 0o644)],
        )
    }

    /// The non-bluegreen test app (`plain-app`) as a single-executable artifact.
    pub fn plain_app(&self) -> Artifact {
        let body = std::fs::read(binary("plain-app")).expect("read plain-app binary");
        self.write("plain-app", &body)
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> Artifact {
        let path = self.path(name);
        std::fs::write(&path, bytes).expect("write artifact");
        Artifact {
            url: format!("file://{}", path.display()),
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A running release of the demo app at `version` with extra env (the DEMO_* knobs).
pub fn release(version: &str, artifact: &Artifact, env: &[(&str, &str)]) -> ReleaseRecord {
    ReleaseRecord {
        version: version.to_string(),
        artifact: artifact.clone(),
        run: RunSpec {
            command: vec!["./demo-app".into()],
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            stop_timeout: Duration::from_secs(5),
        },
        health: HealthSpec {
            path: "/health".into(),
            interval: Duration::from_millis(500),
            timeout: Duration::from_secs(2),
            startup_timeout: Duration::from_secs(30),
            ..HealthSpec::default()
        },
        desired: Desired::Running,
        deploy_id: format!("test-{version}"),
        token: 0,
        signature: None,
    }
}
