//! The server certificate: loading the PEM chain and key, generating a self-signed pair at first
//! run when the config allows it, and the SHA-256 fingerprint an admin compares with a client's.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the certificate or key could not be used.
#[derive(Debug)]
pub enum CertError {
    /// A PEM file could not be read or holds nothing usable.
    Pem {
        path: PathBuf,
        what: &'static str,
        error: String,
    },
    /// Generating or writing the self-signed pair failed.
    Generate { path: PathBuf, error: String },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    Rejected {
        cert: PathBuf,
        key: PathBuf,
        error: rustls::Error,
    },
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertError::Pem { path, what, error } => {
                write!(f, "tls: {}: cannot load {what}: {error}", path.display())
            }
            CertError::Generate { path, error } => {
                write!(
                    f,
                    "tls: {}: cannot write self-signed certificate: {error}",
                    path.display()
                )
            }
            CertError::Rejected { cert, key, error } => write!(
                f,
                "tls: {} / {}: certificate and key are not usable together: {error}",
                cert.display(),
                key.display()
            ),
        }
    }
}

impl std::error::Error for CertError {}

/// A loaded certificate chain (leaf first) and its private key.
pub struct CertifiedKey {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// Loads the chain and key from PEM files.
///
/// # Errors
/// [`CertError::Pem`] naming the file that is missing, unreadable or empty.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, CertError> {
    let pem_err = |path: &Path, what, error: String| CertError::Pem {
        path: path.to_path_buf(),
        what,
        error,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_err(cert, "certificate", e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert, "certificate", e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_err(
            cert,
            "certificate",
            "no CERTIFICATE block found".into(),
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| pem_err(key, "private key", e.to_string()))?;
    Ok(CertifiedKey {
        chain,
        key: key_der,
    })
}

/// Writes a fresh self-signed certificate for `localhost` (plus this host's name) and its key
/// (mode 0600), unless both files exist. Returns true if it generated them.
///
/// # Errors
/// [`CertError::Generate`] if generation or writing fails; refuses to overwrite one half of a pair.
pub fn ensure_self_signed(cert: &Path, key: &Path) -> Result<bool, CertError> {
    match (cert.exists(), key.exists()) {
        (true, true) => return Ok(false),
        (true, false) | (false, true) => {
            let missing = if cert.exists() { key } else { cert };
            return Err(CertError::Generate {
                path: missing.to_path_buf(),
                error: "only one of cert/key exists; refusing to overwrite the other".into(),
            });
        }
        (false, false) => {}
    }
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(host) = fs::read_to_string("/etc/hostname") {
        let host = host.trim();
        if !host.is_empty() && host != "localhost" {
            names.push(host.to_string());
        }
    }
    let gen_err = |path: &Path, error: String| CertError::Generate {
        path: path.to_path_buf(),
        error,
    };
    let pair =
        rcgen::generate_simple_self_signed(names).map_err(|e| gen_err(cert, e.to_string()))?;
    for (path, text, mode) in [
        (key, pair.signing_key.serialize_pem(), 0o600),
        (cert, pair.cert.pem(), 0o644),
    ] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| gen_err(path, e.to_string()))?;
        }
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
            .map_err(|e| gen_err(path, e.to_string()))?;
    }
    Ok(true)
}

/// The SHA-256 fingerprint of a DER certificate, as colon-separated upper-case hex
/// (the form `openssl x509 -fingerprint -sha256` prints).
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}
