//! Certificates made at run time for tests of TLS and mutual TLS (feature `test-util`).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A CA that signs leaf certificates, written as PEM files into a directory.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    name: &'static str,
}

impl Authority {
    pub fn new(dir: &Path, name: &'static str) -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(Self {
            issuer,
            dir: dir.to_owned(),
            name,
        })
    }

    /// The CA's certificate as a PEM file.
    pub fn ca_file(&self) -> std::io::Result<PathBuf> {
        let path = self.dir.join(format!("{}-ca.pem", self.name));
        std::fs::write(&path, self.issuer.pem())?;
        Ok(path)
    }

    /// (certificate, key) files for `names`.
    pub fn leaf(&self, file: &str, names: &[&str]) -> Result<(PathBuf, PathBuf), BoxError> {
        let key = KeyPair::generate()?;
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let cert = CertificateParams::new(names)?.signed_by(&key, &self.issuer)?;
        let (cert_path, key_path) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}-key.pem")),
        );
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        Ok((cert_path, key_path))
    }
}
