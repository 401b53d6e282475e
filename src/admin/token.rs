//! The admin API's bearer token: the `[admin] token_file` it is read from, the digest the server
//! keeps, and the constant-time check of a request's `Authorization` header.

use std::io::{self, Read};
use std::path::Path;

use super::MIN_TOKEN_LEN;

/// Whether the request carries `Authorization: Bearer TOKEN` with the configured token,
/// compared as SHA-256 digests in constant time. The error is our text for the 401 and the log.
pub(super) fn bearer_matches(
    headers: &[httparse::Header<'_>],
    want: &[u8; 32],
) -> Result<(), &'static str> {
    let mut auth = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("authorization"));
    let (Some(h), None) = (auth.next(), auth.next()) else {
        return Err("bearer token required\n");
    };
    let value = std::str::from_utf8(h.value).map_err(|_| "bearer token required\n")?;
    let token = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .ok_or("bearer token required\n")?;
    if crate::auth::tokens::digests_equal(&token_digest(token), want) {
        Ok(())
    } else {
        Err("wrong token\n")
    }
}

/// SHA-256 of a bearer token, as [`Api::token`] holds it.
#[must_use]
pub fn token_digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Why `[admin] token_file` cannot be used.
#[derive(Debug)]
pub enum TokenFileError {
    Read(io::Error),
    /// Empty, or shorter than [`MIN_TOKEN_LEN`], or with a space or control character inside.
    Unfit,
}

impl std::fmt::Display for TokenFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenFileError::Read(e) => {
                write!(f, "cannot read it: {}", e.to_string().to_lowercase())
            }
            TokenFileError::Unfit => write!(
                f,
                "it must hold one token of at least {MIN_TOKEN_LEN} visible characters \
                 (e.g. `head -c 32 /dev/urandom | base64 > FILE`)"
            ),
        }
    }
}

impl std::error::Error for TokenFileError {}

/// Reads the bearer token from `[admin] token_file`: its one line, surrounding whitespace
/// trimmed, opened as every secret file is ([`crate::auth::files::open_private`]: a regular file, a
/// warning when group or others may read it). The server keeps only its digest; `wsgate
/// connections` sends it.
///
/// # Errors
/// The file cannot be read, or does not hold a token fit to guard the API.
pub fn read_token(path: &Path) -> Result<String, TokenFileError> {
    let (mut file, _) = crate::auth::files::open_private(path, "[admin] token_file")
        .map_err(TokenFileError::Read)?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(TokenFileError::Read)?;
    let token = text.trim();
    if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenFileError::Unfit);
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_token_is_compared_as_a_digest() {
        let want = token_digest("0123456789abcdef");
        let check = |value: &str| {
            let headers = [httparse::Header {
                name: "Authorization",
                value: value.as_bytes(),
            }];
            bearer_matches(&headers, &want)
        };
        assert_eq!(check("Bearer 0123456789abcdef"), Ok(()));
        assert_eq!(check("bearer   0123456789abcdef  "), Ok(()));
        assert_eq!(check("Bearer 0123456789abcdeF"), Err("wrong token\n"));
        assert_eq!(
            check("Basic 0123456789abcdef"),
            Err("bearer token required\n")
        );
        assert_eq!(check("Bearer"), Err("bearer token required\n"));
        assert_eq!(bearer_matches(&[], &want), Err("bearer token required\n"));
        let two = [
            httparse::Header {
                name: "authorization",
                value: b"Bearer 0123456789abcdef",
            },
            httparse::Header {
                name: "Authorization",
                value: b"Bearer 0123456789abcdef",
            },
        ];
        assert_eq!(bearer_matches(&two, &want), Err("bearer token required\n"));
    }
}
