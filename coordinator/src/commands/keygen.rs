//! `coordinator keygen`: an ed25519 key pair for signing releases.
use crate::error::{CoordinatorError, Subject};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Where to write the two files (never overwritten).
    #[arg(long, default_value = ".")]
    out_dir: PathBuf,
    /// The files' base name.
    #[arg(long, default_value = "bluegreen-release")]
    name: String,
}

impl Args {
    pub fn run(self) -> Result<String, CoordinatorError> {
        keygen(&self.out_dir, &self.name)
    }
}

/// `coordinator keygen`: writes `<name>.key` (mode 0600) and `<name>.pub` into `dir`, refusing to
/// overwrite either.
fn keygen(dir: &std::path::Path, name: &str) -> Result<String, CoordinatorError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    proto::check_name("--name", name).map_err(CoordinatorError::usage)?;
    let (private, public) = proto::signing::generate().map_err(CoordinatorError::failed)?;
    let (key_path, pub_path) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    );
    for (path, text, mode) in [(&key_path, &private, 0o600), (&pub_path, &public, 0o644)] {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(|e| Subject::File(path.clone()).usage("").because(e))?;
        file.write_all(text.as_bytes())
            .map_err(|e| Subject::File(path.clone()).failed("").because(e))?;
    }
    Ok(format!(
        "private key {} (give it to CI: --signing-key or BLUEGREEN_SIGNING_KEY_FILE)
public key  {} (list it in every agent's trusted_keys)
",
        key_path.display(),
        pub_path.display()
    ))
}
