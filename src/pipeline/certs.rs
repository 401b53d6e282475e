//! The server certificate: loading the PEM chain and key, generating a self-signed pair at first
//! run when the config allows it, and the SHA-256 fingerprint an admin compares with a client's.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::auth::files;

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
    /// `self_signed`: one half of the pair exists and the other is missing; generating would
    /// overwrite the half that exists.
    HalfPair { missing: PathBuf, present: PathBuf },
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
            CertError::HalfPair { missing, present } => write!(
                f,
                "tls: {} is missing but {} exists: self_signed generates a pair only when both \
                 are missing; restore the missing file, or remove the other to generate a new pair",
                missing.display(),
                present.display()
            ),
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

/// Loads the chain and key from PEM files. The key is opened as every secret file is
/// ([`files::open_private`]): a regular file only, with a warning when group or others can read it.
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
    let (file, _) = files::open_private(key, "TLS private key")
        .map_err(|e| pem_err(key, "private key", e.to_string()))?;
    let key_der = PrivateKeyDer::from_pem_reader(io::BufReader::new(file))
        .map_err(|e| pem_err(key, "private key", e.to_string()))?;
    Ok(CertifiedKey {
        chain,
        key: key_der,
    })
}

/// How long a generated self-signed certificate is valid by default: 825 days, the most Apple
/// devices accept for a TLS server certificate, so one generated pair serves a LAN for two years.
pub const SELF_SIGNED_DAYS: u32 = 825;

/// Whether `self_signed` has a pair to generate at `cert`/`key`: true when both are missing,
/// false when both exist (they are loaded as any pair).
///
/// # Errors
/// [`CertError::HalfPair`] when only one exists: generating would overwrite it.
pub fn needs_self_signed(cert: &Path, key: &Path) -> Result<bool, CertError> {
    match (cert.exists(), key.exists()) {
        (true, true) => Ok(false),
        (false, false) => Ok(true),
        (true, false) => Err(CertError::HalfPair {
            missing: key.to_path_buf(),
            present: cert.to_path_buf(),
        }),
        (false, true) => Err(CertError::HalfPair {
            missing: cert.to_path_buf(),
            present: key.to_path_buf(),
        }),
    }
}

/// Writes a fresh self-signed certificate for this host ([`host_names`]) and its key (mode 0600),
/// unless both files exist. Returns true if it generated them.
///
/// # Errors
/// [`CertError::HalfPair`] when only one exists ([`needs_self_signed`]); [`CertError::Generate`]
/// if generation or writing fails.
pub fn ensure_self_signed(cert: &Path, key: &Path) -> Result<bool, CertError> {
    if !needs_self_signed(cert, key)? {
        return Ok(false);
    }
    write_self_signed(cert, key, &host_names(), SELF_SIGNED_DAYS, false)?;
    Ok(true)
}

/// The names a certificate for this host should carry: `localhost`, `127.0.0.1`, `::1`, and the
/// host's name with its mDNS form (`pi` and `pi.local`, as a LAN reaches a Raspberry Pi).
pub fn host_names() -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Some(host) = host_name() {
        if !host.contains('.') {
            names.push(format!("{host}.local"));
        }
        names.insert(0, host);
    }
    names
}

/// This host's name (`/etc/hostname`, else the kernel's), if it is one worth naming.
pub fn host_name() -> Option<String> {
    ["/etc/hostname", "/proc/sys/kernel/hostname"]
        .iter()
        .filter_map(|p| fs::read_to_string(p).ok())
        .map(|h| h.trim().to_ascii_lowercase())
        .find(|h| {
            !h.is_empty()
                && h != "localhost"
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        })
}

/// A self-signed pair written by [`write_self_signed`].
pub struct SelfSigned {
    pub fingerprint: String,
    /// The last day of validity, `YYYY-MM-DD` (UTC).
    pub expires: String,
}

/// Generates a self-signed certificate for `names` (DNS names or IP addresses; the first is the
/// subject's common name), valid from yesterday for `days` days, and writes the key (mode 0600)
/// then the certificate (0644). Existing files are refused unless `replace`, and then replaced
/// atomically.
///
/// # Errors
/// [`CertError::Generate`] naming the file that could not be written, or the name rcgen refused.
pub fn write_self_signed(
    cert: &Path,
    key: &Path,
    names: &[String],
    days: u32,
    replace: bool,
) -> Result<SelfSigned, CertError> {
    let gen_err = |path: &Path, error: String| CertError::Generate {
        path: path.to_path_buf(),
        error,
    };
    if !replace {
        if let Some(existing) = [cert, key].into_iter().find(|p| p.exists()) {
            return Err(gen_err(existing, "exists; refusing to overwrite it".into()));
        }
    }
    let mut params =
        rcgen::CertificateParams::new(names.to_vec()).map_err(|e| gen_err(cert, e.to_string()))?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(
        rcgen::DnType::CommonName,
        names.first().map_or("localhost", String::as_str),
    );
    dn.push(rcgen::DnType::OrganizationName, "wsgate self-signed");
    params.distinguished_name = dn;
    let today = days_since_epoch();
    let (y, m, d) = civil_date(today - 1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let last = civil_date(today + i64::from(days));
    params.not_after = rcgen::date_time_ymd(last.0, last.1, last.2);
    let pair = rcgen::KeyPair::generate().map_err(|e| gen_err(key, e.to_string()))?;
    let generated = params
        .self_signed(&pair)
        .map_err(|e| gen_err(cert, e.to_string()))?;
    for (path, text, mode) in [
        (key, pair.serialize_pem(), 0o600),
        (cert, generated.pem(), 0o644),
    ] {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir {
            fs::create_dir_all(dir).map_err(|e| gen_err(path, e.to_string()))?;
        }
        // Written beside the target and renamed over it: a reader never sees half a file.
        let tmp = path.with_extension("tmp-wsgate");
        let _ = fs::remove_file(&tmp);
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
            .and_then(|()| fs::rename(&tmp, path))
            .map_err(|e| {
                let _ = fs::remove_file(&tmp);
                gen_err(path, e.to_string())
            })?;
    }
    Ok(SelfSigned {
        fingerprint: fingerprint(generated.der()),
        expires: format!("{:04}-{:02}-{:02}", last.0, last.1, last.2),
    })
}

fn days_since_epoch() -> i64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    i64::try_from(secs / 86_400).unwrap_or(0)
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_date(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        i32::try_from(y).unwrap_or(9999),
        u8::try_from(m).unwrap_or(1),
        u8::try_from(d).unwrap_or(1),
    )
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
    fn civil_dates_from_day_counts() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(-1), (1969, 12, 31));
        assert_eq!(civil_date(59), (1970, 3, 1));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(20_793), (2026, 12, 6));
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
