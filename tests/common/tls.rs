//! Throwaway certificates for tests of TLS: a CA made for one test, a
//! server certificate it signed for `localhost` and `127.0.0.1`, and a CA
//! the server does not know (for "untrusted certificate" cases). Written as
//! PEM files into a fresh directory, for servers that read files
//! (redis-server, Tansu) and clients given a CA file.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// PEM files of one throwaway CA and a server certificate it signed.
pub struct TestCerts {
    pub dir: PathBuf,
    /// The CA certificate clients trust.
    pub ca: PathBuf,
    /// The server's certificate (signed by `ca`) and its private key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A CA that signed nothing the server presents.
    pub other_ca: PathBuf,
}

fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "payctl test CA");
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

impl TestCerts {
    /// Makes the files in a new directory under the system temp dir.
    pub fn new(name: &str) -> TestCerts {
        let dir = std::env::temp_dir().join(super::unique(&format!("certs-{name}")));
        std::fs::create_dir_all(&dir).expect("cert dir");
        let ca = ca();
        let server_key = KeyPair::generate().expect("server key");
        let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("server params")
            .signed_by(&server_key, &ca)
            .expect("server certificate");
        let write = |file: &str, pem: String| -> PathBuf {
            let path = dir.join(file);
            std::fs::write(&path, pem).expect("write PEM");
            path
        };
        TestCerts {
            ca: write("ca.pem", ca.pem()),
            server_cert: write("server.pem", server.pem()),
            server_key: write("server.key", server_key.serialize_pem()),
            other_ca: write("other-ca.pem", self::ca().pem()),
            dir,
        }
    }

    /// The directory, for a test that writes more files beside the certs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
