//! An admin answer: status, content type, body, and the HTTP/1.1 bytes that carry it (always
//! with its length and `Connection: close`: one request per connection).

use std::fmt::Write as _;

pub(super) fn bad_request(why: &str) -> Answer {
    Answer::text(400, "Bad Request", &format!("{why}\n"))
}

/// `s` as a JSON string literal.
pub(super) fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One answer, before it is written.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) reason: &'static str,
    pub(super) content_type: &'static str,
    /// More header lines, each ending in CRLF.
    pub(super) extra: String,
    pub(super) body: String,
}

impl Answer {
    pub(super) fn text(status: u16, reason: &'static str, body: &str) -> Answer {
        Answer {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            extra: String::new(),
            body: body.to_string(),
        }
    }

    pub(super) fn json(status: u16, reason: &'static str, body: String) -> Answer {
        Answer {
            status,
            reason,
            content_type: "application/json",
            extra: String::new(),
            body,
        }
    }

    pub(super) fn into_bytes(self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
             Connection: close\r\n{}\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len(),
            self.extra
        )
        .into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_quotes_backslashes_and_controls() {
        assert_eq!(
            json_string("a\"b\\c\u{1}\u{7f}é"),
            "\"a\\\"b\\\\c\\u0001\\u007fé\""
        );
    }

    #[test]
    fn answers_carry_length_and_close() {
        let a = Answer::text(200, "OK", "ok\n").into_bytes();
        let text = String::from_utf8(a).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 3\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nok\n"));
    }
}
