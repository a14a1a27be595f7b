//! Signed releases: with trusted keys configured, an agent runs only what a key CI holds signed,
//! so write access to etcd alone no longer runs code on hosts. The signature (ed25519) covers
//! everything the agent acts on (version, artifact URL and sha256, the run spec, the health spec)
//! and where and when it was meant to run: the app, the color, the operation id and its fencing
//! token. So a signed record copied from an old revision, to the other color or to another app is
//! refused, and an agent refuses a token lower than the newest it accepted for that color (tokens
//! only grow; CI runners' clocks drift, so no signing time). `desired` is not covered: `stop` and
//! a failed deploy stop a color without the key, and running a release needs a fresh signature.
//!
//! Each record carries two signatures during an upgrade: `ed25519` over the first format (what
//! runs only), which agents of the previous release check, and `ed25519_v2` over this one, which
//! this release's agents require. Keys are PEM files openssl can read: PKCS#8 for the private
//! key, SubjectPublicKeyInfo for the public one.
use crate::records::{HealthSpec, ReleaseRecord, RunSpec};
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

/// The DER prefix of an ed25519 SubjectPublicKeyInfo; the 32 key bytes follow.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A release's signature, stored in the release record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseSignature {
    /// Which key signed (first 16 hex digits of the sha256 of its public key), for errors.
    pub key_id: String,
    /// The ed25519 signature of the first format (what runs only), base64: for agents of the
    /// previous release during an upgrade.
    pub ed25519: String,
    /// The ed25519 signature of this format (what runs, where, which operation), base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ed25519_v2: Option<String>,
}

/// Where a release is meant to run: signed with it, checked by the agent that runs it.
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    pub app: &'a str,
    pub color: crate::Color,
}

/// Exactly what is signed: a fixed-order JSON document of the acted-on fields.
#[derive(Serialize)]
struct Signed<'a> {
    purpose: &'static str,
    version: &'a str,
    artifact_url: &'a str,
    artifact_sha256: String,
    run: &'a RunSpec,
    health: &'a HealthSpec,
}

/// The second format: what runs, and where and in which operation it was meant to.
#[derive(Serialize)]
struct SignedV2<'a> {
    purpose: &'static str,
    app: &'a str,
    color: crate::Color,
    version: &'a str,
    artifact_url: &'a str,
    artifact_sha256: String,
    run: &'a RunSpec,
    health: &'a HealthSpec,
    deploy_id: &'a str,
    token: i64,
}

fn payload_v2(release: &ReleaseRecord, at: Placement) -> Vec<u8> {
    serde_json::to_vec(&SignedV2 {
        purpose: "bluegreen release v2",
        app: at.app,
        color: at.color,
        version: &release.version,
        artifact_url: &release.artifact.url,
        artifact_sha256: release.artifact.sha256.to_ascii_lowercase(),
        run: &release.run,
        health: &release.health,
        deploy_id: &release.deploy_id,
        token: release.token,
    })
    .expect("the signed document serializes")
}

fn payload(release: &ReleaseRecord) -> Vec<u8> {
    serde_json::to_vec(&Signed {
        purpose: "bluegreen release v1",
        version: &release.version,
        artifact_url: &release.artifact.url,
        artifact_sha256: release.artifact.sha256.to_ascii_lowercase(),
        run: &release.run,
        health: &release.health,
    })
    .expect("the signed document serializes")
}

fn key_id(public: &[u8]) -> String {
    hex_prefix(&Sha256::digest(public))
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

fn unpem(label: &str, text: &str) -> Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text
        .find(&begin)
        .ok_or_else(|| format!("no {begin} block"))?
        + begin.len();
    let stop = text[start..]
        .find(&end)
        .ok_or_else(|| format!("no {end} line"))?
        + start;
    let body: String = text[start..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| format!("bad base64 in the {label} block: {e}"))
}

/// A new key pair: (private key PEM, public key PEM).
pub fn generate() -> Result<(String, String), String> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 =
        Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| "no randomness for a key".to_string())?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| e.to_string())?;
    let mut spki = SPKI_PREFIX.to_vec();
    spki.extend_from_slice(pair.public_key().as_ref());
    Ok((pem("PRIVATE KEY", pkcs8.as_ref()), pem("PUBLIC KEY", &spki)))
}

/// The key CI signs releases with.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    id: String,
}

impl SigningKey {
    pub fn load(path: &Path) -> Result<SigningKey, String> {
        crate::access::check_private_file("signing key", path)?;
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        SigningKey::from_pem(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_pem(text: &str) -> Result<SigningKey, String> {
        let der = unpem("PRIVATE KEY", text)?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|e| format!("not an ed25519 private key: {e}"))?;
        let id = key_id(pair.public_key().as_ref());
        Ok(SigningKey { pair, id })
    }

    /// Signs `release` for `at`, in both formats (see the module's header).
    pub fn sign(&self, release: &ReleaseRecord, at: Placement) -> ReleaseSignature {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        ReleaseSignature {
            key_id: self.id.clone(),
            ed25519: b64(self.pair.sign(&payload(release)).as_ref()),
            ed25519_v2: Some(b64(self.pair.sign(&payload_v2(release, at)).as_ref())),
        }
    }
}

/// How an agent's health error starts when it refused to start a release for its signature, so
/// that a deploy can say so instead of "health failed".
pub const REFUSED: &str = "refused for its signature";

/// The public keys an agent accepts release signatures from.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    /// (key id, raw 32-byte public key)
    keys: Vec<(String, Vec<u8>)>,
}

impl TrustedKeys {
    pub fn load(paths: &[std::path::PathBuf]) -> Result<TrustedKeys, String> {
        let mut keys = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("trusted_keys: {}: {e}", path.display()))?;
            let spki = unpem("PUBLIC KEY", &text)
                .map_err(|e| format!("trusted_keys: {}: {e}", path.display()))?;
            let raw = spki
                .strip_prefix(&SPKI_PREFIX[..])
                .filter(|k| k.len() == 32)
                .ok_or_else(|| {
                    format!(
                        "trusted_keys: {}: not an ed25519 public key",
                        path.display()
                    )
                })?;
            keys.push((key_id(raw), raw.to_vec()));
        }
        Ok(TrustedKeys { keys })
    }

    /// True when releases must be signed (at least one key is trusted).
    pub fn required(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Ok when `release` carries a valid signature by a trusted key, made for `at` (this app,
    /// this color); Err says why not. An agent reports such a release failed with [`REFUSED`]
    /// before the reason (and keeps it only if it already runs it).
    pub fn verify(&self, release: &ReleaseRecord, at: Placement) -> Result<(), String> {
        let Some(sig) = &release.signature else {
            return Err("unsigned release refused: this agent trusts only signed releases".into());
        };
        let decode = |text: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| "release signature is not base64".to_string())
        };
        let valid = |message: &[u8], bytes: &[u8]| {
            self.keys.iter().any(|(_, key)| {
                UnparsedPublicKey::new(&ED25519, key)
                    .verify(message, bytes)
                    .is_ok()
            })
        };
        if !self.keys.iter().any(|(id, _)| *id == sig.key_id) {
            return Err(format!(
                "release signed by key {}, which this agent does not trust",
                sig.key_id
            ));
        }
        let content = valid(&payload(release), &decode(&sig.ed25519)?);
        match &sig.ed25519_v2 {
            Some(v2) if valid(&payload_v2(release, at), &decode(v2)?) => Ok(()),
            Some(_) if content => Err(format!(
                "release signature by key {} was made for another app, color or operation (a \
                 copied record?): not for {} {}",
                sig.key_id, at.app, at.color
            )),
            None if content => Err(format!(
                "release signed by key {} in the previous format, which does not say which app, \
                 color and operation it is for: accepted only while it already runs",
                sig.key_id
            )),
            _ => Err(format!(
                "release signature by key {} does not match its content (altered after signing?)",
                sig.key_id
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{Artifact, Desired};

    fn release() -> ReleaseRecord {
        ReleaseRecord {
            version: "v1".into(),
            artifact: Artifact {
                url: "https://ci/app.tar.gz".into(),
                sha256: "A".repeat(64),
            },
            run: RunSpec {
                command: vec!["./app".into()],
                env: Default::default(),
                stop_timeout: std::time::Duration::from_secs(5),
            },
            health: HealthSpec::default(),
            desired: Desired::Running,
            deploy_id: "d".into(),
            token: 1,
            signature: None,
        }
    }

    fn trusted(public_pem: &str) -> TrustedKeys {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pub");
        std::fs::write(&path, public_pem).unwrap();
        TrustedKeys::load(&[path]).unwrap()
    }

    /// The signing key is refused while others on the machine can read it.
    #[test]
    fn a_signing_key_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let (private, _) = generate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("release.key");
        std::fs::write(&path, private).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = SigningKey::load(&path).err().expect("refused");
        assert!(err.contains("readable by group or others"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(SigningKey::load(&path).is_ok());
    }

    #[test]
    fn a_signed_release_verifies_and_any_change_to_what_runs_breaks_it() {
        let (private, public) = generate().unwrap();
        let key = SigningKey::from_pem(&private).unwrap();
        let keys = trusted(&public);
        let mut r = release();
        assert!(keys
            .verify(&r, SHOP_GREEN)
            .unwrap_err()
            .contains("unsigned"));
        r.signature = Some(key.sign(&r, SHOP_GREEN));
        keys.verify(&r, SHOP_GREEN).unwrap();
        type Tamper = Box<dyn Fn(&mut ReleaseRecord)>;
        let tamper: Vec<Tamper> = vec![
            Box::new(|r| r.version = "v2".into()),
            Box::new(|r| r.artifact.url = "https://evil/app.tar.gz".into()),
            Box::new(|r| r.artifact.sha256 = "b".repeat(64)),
            Box::new(|r| r.run.command = vec!["/bin/sh".into(), "-c".into(), "id".into()]),
            Box::new(|r| {
                r.run.env.insert("LD_PRELOAD".into(), "/tmp/x.so".into());
            }),
            Box::new(|r| r.health.path = "/other".into()),
        ];
        for t in tamper {
            let mut altered = r.clone();
            t(&mut altered);
            assert!(keys
                .verify(&altered, SHOP_GREEN)
                .unwrap_err()
                .contains("does not match"));
        }
    }

    const SHOP_GREEN: Placement = Placement {
        app: "shop",
        color: crate::Color::Green,
    };

    /// A signed record copied from an old revision, to the other color or to another app's
    /// releases is refused: the signature says where and in which operation it was meant to run.
    #[test]
    fn a_signed_release_replayed_elsewhere_or_later_is_refused() {
        let (private, public) = generate().unwrap();
        let key = SigningKey::from_pem(&private).unwrap();
        let keys = trusted(&public);
        let mut r = release();
        r.signature = Some(key.sign(&r, SHOP_GREEN));
        let blue = Placement {
            color: crate::Color::Blue,
            ..SHOP_GREEN
        };
        let other_app = Placement {
            app: "billing",
            ..SHOP_GREEN
        };
        for at in [blue, other_app] {
            let err = keys.verify(&r, at).unwrap_err();
            assert!(
                err.contains("made for another app, color or operation"),
                "{err}"
            );
        }
        // The record of an older operation, written back with a new token or operation id.
        for replay in [
            ReleaseRecord {
                token: 99,
                ..r.clone()
            },
            ReleaseRecord {
                deploy_id: "later".into(),
                ..r.clone()
            },
        ] {
            let err = keys.verify(&replay, SHOP_GREEN).unwrap_err();
            assert!(err.contains("another app, color or operation"), "{err}");
        }
        // The previous format alone (an old record): never enough to start a release.
        let mut old = r.clone();
        old.signature.as_mut().unwrap().ed25519_v2 = None;
        let err = keys.verify(&old, SHOP_GREEN).unwrap_err();
        assert!(err.contains("previous format"), "{err}");
    }

    #[test]
    fn a_key_not_trusted_is_named() {
        let (private, _) = generate().unwrap();
        let (_, other_public) = generate().unwrap();
        let mut r = release();
        r.signature = Some(SigningKey::from_pem(&private).unwrap().sign(&r, SHOP_GREEN));
        let err = trusted(&other_public).verify(&r, SHOP_GREEN).unwrap_err();
        assert!(
            err.contains("does not trust") && err.contains(&r.signature.unwrap().key_id),
            "{err}"
        );
    }

    #[test]
    fn keys_are_pem_files_and_garbage_is_refused() {
        let (private, public) = generate().unwrap();
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert!(SigningKey::from_pem(&public).is_err());
        assert!(SigningKey::from_pem(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"
        )
        .is_err());
    }
}
