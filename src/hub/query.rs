//! A connection [`Filter`] as a query string (`user=alice&path=%2Fchat`): written by `wsgate
//! disconnect` and by a disconnect sent to the other instances, read by the admin API; and the
//! filter as a log line.

use std::fmt::Write as _;

use crate::hub::Filter;
use crate::policy::{LogSafeUser, percent_decode};

/// The keys `f` sets and their values, in [`FILTER_KEYS`]' order.
fn given(f: &Filter) -> impl Iterator<Item = (&'static str, &str)> {
    FILTER_KEYS
        .iter()
        .zip([&f.user, &f.session, &f.path])
        .filter_map(|(&key, value)| Some((key, value.as_deref()?)))
}

/// For a log line: the filter's keys, each value escaped and capped as a user name is.
pub(crate) fn describe(f: &Filter) -> String {
    let mut out = String::new();
    for (key, v) in given(f) {
        let _ = write!(out, "{key}=\"{}\" ", LogSafeUser::new(v));
    }
    out.trim_end().to_string()
}

/// The filter as a query string (`user=alice&path=%2Fchat`, without `?`), values
/// percent-encoded but for unreserved characters, `/` and `*`: how `wsgate disconnect` asks, and
/// how a disconnect travels to the other instances. [`parse_query`] reads it back.
#[must_use]
pub fn query_string(f: &Filter) -> String {
    let mut out = String::new();
    for (key, v) in given(f) {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(key);
        out.push('=');
        for b in v.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~/*".contains(&b) {
                out.push(char::from(b));
            } else {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// The keys a [`Filter`] has, for [`parse_query`].
pub const FILTER_KEYS: &[&str] = &["user", "session", "path"];

/// Parses `query` (`a=1&b=2`) into a [`Filter`], taking only `keys`: each key at most once,
/// not empty, values percent-decoded as the upgrade's query values are ([`percent_decode`]).
///
/// # Errors
/// What is wrong, for a 400.
pub fn parse_query(query: &str, keys: &[&str]) -> Result<Filter, String> {
    let mut f = Filter::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match key {
            "user" if keys.contains(&"user") => &mut f.user,
            "session" if keys.contains(&"session") => &mut f.session,
            "path" if keys.contains(&"path") => &mut f.path,
            _ => {
                // Not named: what a client puts there (a token, say) must not reach the log.
                let known = if keys.is_empty() {
                    "none".to_string()
                } else {
                    keys.join(", ")
                };
                return Err(format!("unknown query key; this endpoint takes {known}"));
            }
        };
        if slot.is_some() {
            return Err(format!("query key `{key}` given twice"));
        }
        let value =
            percent_decode(value).ok_or_else(|| format!("query key `{key}`: bad escape"))?;
        if value.is_empty() {
            return Err(format!("query key `{key}` is empty"));
        }
        *slot = Some(value);
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_once_per_key_decoded_and_nothing_else() {
        let f = parse_query("user=al%20ice&path=/chat/*", FILTER_KEYS).unwrap();
        assert_eq!(
            f,
            Filter {
                user: Some("al ice".into()),
                session: None,
                path: Some("/chat/*".into())
            }
        );
        assert_eq!(parse_query(&query_string(&f), FILTER_KEYS), Ok(f));
        assert_eq!(parse_query("", FILTER_KEYS), Ok(Filter::default()));
        assert_eq!(parse_query("&&", FILTER_KEYS), Ok(Filter::default()));
        for (query, why) in [
            ("user=a&user=b", "query key `user` given twice"),
            ("user=", "query key `user` is empty"),
            ("path", "query key `path` is empty"),
            ("path=%zz", "query key `path`: bad escape"),
            (
                "S3CRET",
                "unknown query key; this endpoint takes user, session, path",
            ),
        ] {
            assert_eq!(parse_query(query, FILTER_KEYS).unwrap_err(), why, "{query}");
        }
        // `;` is no separator: one value.
        assert_eq!(
            parse_query("user=a;path=/x", FILTER_KEYS)
                .unwrap()
                .user
                .as_deref(),
            Some("a;path=/x")
        );
        assert_eq!(
            parse_query("session=x", &["path"]).unwrap_err(),
            "unknown query key; this endpoint takes path"
        );
    }
}
