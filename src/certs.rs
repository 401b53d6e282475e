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

/// The user name a client certificate names: the subject's last common name (CN), else the first
/// DNS subject alternative name. Only called on certificates rustls has verified against the
/// configured client CA.
pub fn user_name(cert: &CertificateDer<'_>) -> Option<String> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    common_name(parsed.subject())
        .or_else(|| parsed.valid_dns_names().next().map(str::to_string))
        .filter(|name| !name.is_empty())
}

/// The last `CN` in a DER `RDNSequence` body (the subject without its outer SEQUENCE header).
fn common_name(mut rdns: &[u8]) -> Option<String> {
    const CN_OID: &[u8] = &[0x55, 0x04, 0x03];
    let mut found = None;
    while !rdns.is_empty() {
        let (tag, set, rest) = der_item(rdns)?;
        rdns = rest;
        if tag != 0x31 {
            return None; // every RDN is a SET
        }
        let mut attrs = set;
        while !attrs.is_empty() {
            let (tag, attr, rest) = der_item(attrs)?;
            attrs = rest;
            if tag != 0x30 {
                return None;
            }
            let (oid_tag, oid, value) = der_item(attr)?;
            let (value_tag, value, _) = der_item(value)?;
            // UTF8String, PrintableString, IA5String
            if oid_tag == 0x06 && oid == CN_OID && matches!(value_tag, 0x0c | 0x13 | 0x16) {
                found = std::str::from_utf8(value).ok().map(str::to_string);
            }
        }
    }
    found
}

/// Splits one DER item off `input`: (tag, contents, rest). Short-form and long-form lengths up to
/// four bytes; anything else is refused.
fn der_item(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(cn: Option<&str>, sans: &[&str]) -> CertificateDer<'static> {
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example Org");
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn client_user_is_the_common_name_else_the_first_dns_san() {
        assert_eq!(
            user_name(&cert_with(Some("alice"), &["device.example"])).as_deref(),
            Some("alice")
        );
        assert_eq!(
            user_name(&cert_with(None, &["sensor-7.example", "x.example"])).as_deref(),
            Some("sensor-7.example")
        );
        assert_eq!(user_name(&cert_with(None, &[])), None);
    }

    #[test]
    fn der_walker_refuses_truncated_input() {
        assert_eq!(der_item(&[0x30, 0x05, 1, 2]), None);
        assert_eq!(der_item(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(
            der_item(&[0x30, 0x02, 1, 2, 9]),
            Some((0x30, &[1u8, 2][..], &[9u8][..]))
        );
        assert_eq!(common_name(&[0x31, 0x03, 0x30, 0x01]), None);
    }

    #[test]
    fn fingerprint_is_colon_separated_sha256() {
        let fp = fingerprint(&cert_with(Some("x"), &[]));
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(
            fp.split(':')
                .all(|b| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit()))
        );
    }
}
