//! What one admin request means: the endpoints by path and method (`/healthz`, `/metrics`,
//! `/publish`, `/connections`, `/disconnect`, `/presence`), the bearer check, and each endpoint's answer. A
//! publish head passes its checks here before [`super::serve`] reads its body.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use tungstenite::Message;

use super::answer::{Answer, bad_request, json_string};
use super::browser;
use super::token::bearer_matches;
use super::{AdminState, Api, MAX_HEADERS};
use crate::hub::query::{FILTER_KEYS, describe, parse_query};
use crate::hub::{Filter, Hub, Tally};
use crate::ops::metrics::Counter;

/// What a complete request head leads to.
pub(super) enum Routed {
    Answer(Answer),
    /// A publish whose head passed every check: read `need` body bytes, then publish.
    Body {
        publish: Publish,
        need: usize,
        expect_continue: bool,
    },
}

impl From<Answer> for Routed {
    fn from(a: Answer) -> Routed {
        Routed::Answer(a)
    }
}

impl Routed {
    /// The answer, now or after the body, names `origin` in its CORS headers.
    fn with_cors(mut self, origin: &str) -> Routed {
        match &mut self {
            Routed::Answer(a) => a.extra.push_str(&browser::cors_headers(origin)),
            Routed::Body { publish, .. } => publish.cors = Some(browser::cors_headers(origin)),
        }
        self
    }
}

/// A publish waiting for its body.
pub(super) struct Publish {
    path: String,
    /// `Content-Type: application/octet-stream`: a binary message; otherwise text.
    binary: bool,
    /// What the channel keeps of it.
    history: Option<crate::config::Retention>,
    /// The CORS header lines for an allowed page, added to the answer.
    cors: Option<String>,
}

/// The endpoints, by request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Healthz,
    Metrics,
    Publish,
    Connections,
    Disconnect,
    Presence,
}

impl Route {
    fn of(path: &str) -> Option<Route> {
        Some(match path {
            "/healthz" => Route::Healthz,
            "/metrics" => Route::Metrics,
            "/publish" => Route::Publish,
            "/connections" => Route::Connections,
            "/disconnect" => Route::Disconnect,
            "/presence" => Route::Presence,
            _ => return None,
        })
    }

    fn method(self) -> &'static str {
        match self {
            Route::Healthz | Route::Metrics | Route::Connections | Route::Presence => "GET",
            Route::Publish | Route::Disconnect => "POST",
        }
    }

    /// The query keys it takes (anything else is a 400: a typo must not widen a disconnect).
    fn keys(self) -> &'static [&'static str] {
        match self {
            Route::Healthz | Route::Metrics => &[],
            Route::Publish | Route::Presence => &["path"],
            Route::Connections | Route::Disconnect => FILTER_KEYS,
        }
    }
}

/// The answer to one complete request head, or the body a publish still needs.
pub(super) fn route(head: &[u8], state: &AdminState, peer: SocketAddr) -> Routed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => {
            return Answer::text(431, "Request Header Fields Too Large", "too many headers\n")
                .into();
        }
        Ok(httparse::Status::Partial) | Err(_) => return bad_request("bad request").into(),
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return bad_request("bad request").into();
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let Some(endpoint) = Route::of(path) else {
        return Answer::text(404, "Not Found", "not found\n").into();
    };
    // The API's endpoints exist only once the server attached it.
    let api = match (endpoint, state.api.get()) {
        (Route::Healthz | Route::Metrics, _) => None,
        (_, Some(api)) => Some(api),
        (_, None) => return Answer::text(404, "Not Found", "not found\n").into(),
    };
    // What a web page sends is refused unless `[admin]` allowed it; an allowed page's origin
    // is named in the answer's CORS headers, and its preflight answered.
    let cors = match api.map(|api| api.browser.check(req.headers)) {
        None | Some(Ok(None)) => None,
        Some(Ok(Some(origin))) => Some(origin),
        Some(Err(refusal)) => return refusal.answer().into(),
    };
    if let Some(origin) = cors
        && method == "OPTIONS"
    {
        return browser::preflight(origin, endpoint.method()).into();
    }
    let routed = answer_request(method, endpoint, query, req.headers, api, state, peer);
    match cors {
        Some(origin) => routed.with_cors(origin),
        None => routed,
    }
}

/// The answer to a request that passed the browser checks.
fn answer_request(
    method: &str,
    endpoint: Route,
    query: &str,
    headers: &[httparse::Header<'_>],
    api: Option<&Api>,
    state: &AdminState,
    peer: SocketAddr,
) -> Routed {
    if method != endpoint.method() {
        let mut a = Answer::text(405, "Method Not Allowed", "method not allowed\n");
        a.extra = format!("Allow: {}\r\n", endpoint.method());
        return a.into();
    }
    let Some(api) = api else {
        return health_or_metrics(endpoint, state).into();
    };
    if let Some(want) = &api.token {
        if let Err(why) = bearer_matches(headers, want) {
            let mut a = Answer::text(401, "Unauthorized", why);
            a.extra = "WWW-Authenticate: Bearer realm=\"wsgate-admin\"\r\n".into();
            return a.into();
        }
    }
    let query = match parse_query(query, endpoint.keys()) {
        Ok(q) => q,
        Err(why) => return bad_request(&why).into(),
    };
    match endpoint {
        Route::Publish => route_publish(headers, &query, api),
        Route::Connections => {
            let list = list_connections(&api.hub, &query);
            Answer::json(200, "OK", list).into()
        }
        Route::Presence => {
            let Some(path) = &query.path else {
                return bad_request("name the channel: /presence?path=/CHANNEL").into();
            };
            if (api.broadcast_limit)(path).is_none() {
                return Answer::text(404, "Not Found", "no broadcast channel serves this path\n")
                    .into();
            }
            match api.hub.presence_everywhere(path) {
                Ok(tally) => Answer::json(200, "OK", list_presence(path, tally)).into(),
                Err(why) => {
                    let mut answer = Answer::text(503, "Service Unavailable", &format!("{why}\n"));
                    answer.extra.push_str("Retry-After: 2\r\n");
                    answer.into()
                }
            }
        }
        Route::Disconnect => {
            if query.is_empty() {
                return bad_request("name the connections to end: user, session or path").into();
            }
            let n = api.hub.disconnect(&query);
            state.metrics.bump(Counter::AdminDisconnects, n as u64);
            let forwarded = api.hub.forward_disconnect(&query);
            log::info!(
                "admin disconnect {} closing={n}{} peer={peer}",
                describe(&query),
                if forwarded {
                    " (sent to the other instances)"
                } else {
                    ""
                }
            );
            // Each one is told to close and is gone within a second (a proxied one too, its
            // buffers full or not); the answer does not wait for that, so it says `closing`.
            Answer::json(
                200,
                "OK",
                format!("{{\"closing\":{n},\"forwarded\":{forwarded}}}\n"),
            )
            .into()
        }
        Route::Healthz | Route::Metrics => unreachable!("answered above"),
    }
}

fn health_or_metrics(endpoint: Route, state: &AdminState) -> Answer {
    if endpoint == Route::Healthz {
        if state.draining.load(Ordering::Acquire) {
            Answer::text(503, "Service Unavailable", "draining\n")
        } else {
            // Without Redis this instance still serves its own clients: 200 either way, and
            // the backbone's state as a detail for whoever reads it, read from the links now.
            let Some(cluster) = state.metrics.cluster_state() else {
                return Answer::text(200, "OK", "ok\n");
            };
            let mut body = String::from(if cluster.connected {
                "ok\ncluster: up\n"
            } else {
                "ok\ncluster: down\n"
            });
            if cluster.clash {
                body.push_str(
                    "cluster: instance id clash (another process uses this instance_id)\n",
                );
            }
            Answer::text(200, "OK", &body)
        }
    } else {
        let gauges = (state.gauges)();
        Answer {
            status: 200,
            reason: "OK",
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            extra: String::new(),
            body: state.metrics.render(&gauges),
        }
    }
}

/// A publish head's checks: a path a broadcast channel serves (404), a declared length
/// (411; no chunked bodies) within that channel's `max_message_size` (413).
fn route_publish(headers: &[httparse::Header<'_>], query: &Filter, api: &Api) -> Routed {
    let Some(path) = &query.path else {
        return bad_request("name the channel: /publish?path=/CHANNEL").into();
    };
    let Some(channel) = (api.broadcast_limit)(path) else {
        return Answer::text(404, "Not Found", "no broadcast channel serves this path\n").into();
    };
    let header = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    if header("transfer-encoding").next().is_some() {
        return Answer::text(
            411,
            "Length Required",
            "send the body with Content-Length\n",
        )
        .into();
    }
    let mut lengths = header("content-length");
    let need = match (lengths.next(), lengths.next()) {
        (None, _) => {
            return Answer::text(
                411,
                "Length Required",
                "send the body with Content-Length\n",
            )
            .into();
        }
        (Some(v), None) => match std::str::from_utf8(v)
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .map(str::parse::<u64>)
        {
            Some(Ok(n)) => n,
            Some(Err(_)) => u64::MAX, // more digits than a u64: over any limit
            None => return bad_request("bad Content-Length").into(),
        },
        (Some(_), Some(_)) => return bad_request("Content-Length given twice").into(),
    };
    let limit = channel.max_message;
    let Some(need) = usize::try_from(need).ok().filter(|&n| n <= limit) else {
        return Answer::text(
            413,
            "Content Too Large",
            &format!("message larger than the channel's max_message_size ({limit} bytes)\n"),
        )
        .into();
    };
    let binary = header("content-type").next().is_some_and(|v| {
        let media = v.split(|&b| b == b';').next().unwrap_or_default();
        media
            .trim_ascii()
            .eq_ignore_ascii_case(b"application/octet-stream")
    });
    let expect_continue = header("expect")
        .next()
        .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue"));
    Routed::Body {
        publish: Publish {
            path: path.clone(),
            binary,
            history: channel.history,
            cors: None,
        },
        need,
        expect_continue,
    }
}

/// Publishes a complete body: 202 with the number of local subscribers it reached.
pub(super) fn publish_now(
    state: &AdminState,
    publish: &Publish,
    body: Vec<u8>,
    peer: SocketAddr,
) -> Answer {
    let mut answer = publish_body(state, publish, body, peer);
    if let Some(cors) = &publish.cors {
        answer.extra.push_str(cors);
    }
    answer
}

fn publish_body(state: &AdminState, publish: &Publish, body: Vec<u8>, peer: SocketAddr) -> Answer {
    let Some(api) = state.api.get() else {
        return Answer::text(404, "Not Found", "not found\n");
    };
    let len = body.len();
    let msg = if publish.binary {
        Message::binary(body)
    } else {
        match String::from_utf8(body) {
            Ok(text) => Message::text(text),
            Err(_) => {
                return bad_request(
                    "the body is not UTF-8 text; send binary with Content-Type: application/octet-stream",
                );
            }
        }
    };
    let reached = api.hub.inject(&publish.path, &msg, publish.history);
    state.metrics.bump(Counter::AdminPublishes, 1);
    log::debug!(
        "admin publish path={} bytes={len} subscribers={reached} peer={peer}",
        publish.path
    );
    Answer::json(202, "Accepted", format!("{{\"subscribers\":{reached}}}\n"))
}

/// The open connections `filter` matches, as a JSON array (one object per line).
fn list_connections(hub: &Hub, filter: &Filter) -> String {
    let mut out = String::from("[");
    let mut first = true;
    hub.for_each_member(|path, m| {
        let Some(p) = m.profile.get() else {
            return; // still in its handshake
        };
        let user = m.holder.user.as_deref();
        if !filter.matches(user, Some(&p.session_id), path) {
            return;
        }
        let t = m.traffic.moved();
        let since = p
            .since
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        out.push_str(if first { "\n" } else { ",\n" });
        first = false;
        let _ = write!(
            out,
            "{{\"user\":{},\"auth\":\"{}\",\"path\":{},\"mode\":\"{}\",\"peer\":\"{}\",\
             \"since\":{since},\"messages_in\":{},\"bytes_in\":{},\"messages_out\":{},\
             \"bytes_out\":{},\"session\":{}}}",
            user.map_or_else(|| "null".to_string(), json_string),
            p.method,
            json_string(path),
            p.mode,
            p.peer,
            t.messages_in,
            t.bytes_in,
            t.messages_out,
            t.bytes_out,
            json_string(&p.session_id),
        );
    });
    out.push_str(if first { "]\n" } else { "\n]\n" });
    out
}

/// Who is subscribed to `path` (`tally`), as JSON: each user (`null`: anonymous) and their
/// open connections there.
fn list_presence(path: &str, tally: Tally) -> String {
    let entries: Vec<String> = tally
        .into_iter()
        .map(|(user, n)| {
            format!(
                "{{\"user\":{},\"connections\":{n}}}",
                user.as_deref()
                    .map_or_else(|| "null".to_string(), json_string)
            )
        })
        .collect();
    format!(
        "{{\"path\":{},\"subscribers\":[{}]}}\n",
        json_string(path),
        entries.join(",")
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ops::metrics::{Gauges, Metrics};

    fn state() -> AdminState {
        AdminState::new(Arc::new(Metrics::new(["/echo"])), Gauges::default).unwrap()
    }

    fn answer(head: &[u8], st: &AdminState) -> Answer {
        match route(head, st, "127.0.0.1:1".parse().unwrap()) {
            Routed::Answer(a) => a,
            Routed::Body { .. } => panic!("wants a body"),
        }
    }

    fn status(head: &[u8], st: &AdminState) -> u16 {
        answer(head, st).status
    }

    #[test]
    fn routes() {
        let st = state();
        assert_eq!(status(b"GET /healthz HTTP/1.1\r\n\r\n", &st), 200);
        assert_eq!(status(b"GET /healthz?x=1 HTTP/1.0\r\n\r\n", &st), 200);
        assert_eq!(
            status(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n", &st),
            200
        );
        assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n", &st), 404);
        assert_eq!(status(b"POST /healthz HTTP/1.1\r\n\r\n", &st), 405);
        assert_eq!(status(b"GET /healthz HTTP/2.0\r\n\r\n", &st), 400);
        assert_eq!(status(b"\x00\x01 nonsense\r\n\r\n", &st), 400);
        let many: String = (0..40).map(|i| format!("X-{i}: v\r\n")).collect();
        let head = format!("GET /healthz HTTP/1.1\r\n{many}\r\n");
        assert_eq!(status(head.as_bytes(), &st), 431);
        st.set_draining(true);
        let a = answer(b"GET /healthz HTTP/1.1\r\n\r\n", &st);
        assert_eq!((a.status, a.body.as_str()), (503, "draining\n"));
    }
}
