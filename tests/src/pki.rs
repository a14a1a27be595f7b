//! A throwaway certificate authority for tests, made with the openssl CLI: a CA, server
//! certificates valid for loopback (etcd, agents' gRPC, PostgreSQL) and client certificates whose
//! CN names an etcd user.
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Pki {
    dir: tempfile::TempDir,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().expect("pki dir"),
        };
        openssl(
            pki.dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=bluegreen test CA",
            ],
        );
        pki
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A server certificate for `localhost` and every loopback address tests use.
    pub fn server(&self, name: &str) -> CertPair {
        let ips: Vec<String> = std::iter::once("127.0.0.1".to_string())
            .chain((11..=30).map(|n| format!("127.0.0.{n}")))
            .map(|ip| format!("IP:{ip}"))
            .collect();
        self.issue(
            name,
            &format!("DNS:localhost,{}", ips.join(",")),
            "serverAuth",
        )
    }

    /// A server certificate for the host name `dns` only (a site behind an LB, chosen by SNI).
    pub fn site(&self, name: &str, dns: &str) -> CertPair {
        self.issue(name, &format!("DNS:{dns}"), "serverAuth")
    }

    /// A client certificate whose CN is `name` (etcd takes it as the user when there is no password).
    pub fn client(&self, name: &str) -> CertPair {
        self.issue(name, &format!("DNS:{name}"), "clientAuth")
    }

    fn issue(&self, name: &str, san: &str, usage: &str) -> CertPair {
        let dir = self.dir.path();
        let (key, csr, cert) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        let ext = dir.join(format!("{name}.ext"));
        std::fs::write(
            &ext,
            format!("subjectAltName={san}\nextendedKeyUsage={usage}\n"),
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "2",
                "-extfile",
                ext.to_str().unwrap(),
            ],
        );
        CertPair {
            cert: dir.join(cert),
            key: dir.join(key),
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
