//! Origin control against cross-site WebSocket hijacking: parsing allow-list entries and deciding
//! whether a request's `Origin` header is allowed. Pure functions only; no I/O, no logging.

/// One allow-list entry, normalised: scheme and host lower case, port explicit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    // filled in by the implementation
}

/// The Origin rules from `[origins]`.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// `allow`: exact origins and `scheme://*.domain[:port]` wildcards.
    pub allow: Vec<OriginPattern>,
    /// `allow_missing`: a request with no Origin header (a non-browser client) may pass.
    pub allow_missing: bool,
    /// `allow_any`: every origin passes (written deliberately; warned about at start).
    pub allow_any: bool,
}

/// Why an Origin was refused (all become 403).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginRefusal {
    Missing,
    Multiple,
    Malformed,
    TooLong,
    NotAllowed,
}

impl OriginPattern {
    /// Parses an allow-list entry such as `https://app.example.com` or `https://*.example.com:8443`.
    ///
    /// # Errors
    /// A message saying what is wrong with the entry.
    pub fn parse(s: &str) -> Result<OriginPattern, String> {
        let _ = s;
        todo!()
    }
}

impl OriginPolicy {
    /// Decides on the request's Origin header values (zero, one or several).
    ///
    /// # Errors
    /// The reason the origin is refused.
    pub fn check(&self, values: &[&[u8]]) -> Result<(), OriginRefusal> {
        let _ = values;
        todo!()
    }
}
