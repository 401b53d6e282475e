//! The backbone's wire format: the envelope in an entry's `m` field (origin, sequence number,
//! kind, bytes), the entry's `p` field, a broadcast's sender (or who joined or left) as its
//! instance authenticated it in the `f` field, and reading stream entries out of an `XREAD` or `XRANGE` reply in either
//! protocol. Pure: no Redis connection here.
//!
//! The sender has a field of its own, beside an envelope that is unchanged, so instances with and
//! without it read each other's entries (during a rolling upgrade): one without reads past the
//! field, one with it takes an entry without the field as of unknown sender.

use std::fmt;

use redis::Value;
use tungstenite::{Message, Utf8Bytes};

use crate::hub::history::{Presence, Sender};
use crate::hub::query::{FILTER_KEYS, parse_query, query_string};
use crate::hub::{Filter, Outbound};

const ENVELOPE_VERSION: u8 = 2;
const KIND_TEXT: u8 = 0;
const KIND_BINARY: u8 = 1;
const KIND_DISCONNECT: u8 = 2;
/// A presence notice: its sender joined or left the entry's path (no bytes follow).
const KIND_JOIN: u8 = 3;
const KIND_LEAVE: u8 = 4;
/// The sender field's first byte: a user (its name follows), anonymous, the admin API.
const SENDER_USER: u8 = 0;
const SENDER_ANONYMOUS: u8 = 1;
const SENDER_ADMIN: u8 = 2;
/// The stream entry's fields: the channel path, the envelope, and a broadcast's sender.
pub(super) const FIELD_PATH: &str = "p";
pub(super) const FIELD_ENVELOPE: &str = "m";
pub(super) const FIELD_SENDER: &str = "f";
/// The instance, process and place in its sequence of one envelope.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Stamp<'a> {
    pub(super) instance: &'a [u8],
    pub(super) epoch: u64,
    pub(super) seq: u64,
}

/// Encodes one broadcast or disconnect for Redis. `None` for control frames (never broadcast).
pub(super) fn encode(instance_id: &str, epoch: u64, seq: u64, out: &Outbound) -> Option<Vec<u8>> {
    let query;
    let (kind, body): (u8, &[u8]) = match out {
        Outbound::Broadcast {
            msg: Message::Text(t),
            ..
        } => (KIND_TEXT, t.as_bytes()),
        Outbound::Broadcast {
            msg: Message::Binary(b),
            ..
        } => (KIND_BINARY, b),
        Outbound::Broadcast { .. } => return None,
        Outbound::Disconnect(filter) => {
            query = query_string(filter);
            (KIND_DISCONNECT, query.as_bytes())
        }
        Outbound::Presence { what, .. } => match what {
            Presence::Join => (KIND_JOIN, &[][..]),
            Presence::Leave => (KIND_LEAVE, &[][..]),
        },
    };
    // The config keeps instance ids at most 255 bytes.
    let id = instance_id.as_bytes();
    let id_len = u8::try_from(id.len()).ok()?;
    let mut out = Vec::with_capacity(19 + id.len() + body.len());
    out.extend_from_slice(&[ENVELOPE_VERSION, id_len]);
    out.extend_from_slice(id);
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    Some(out)
}

/// The stream entry's `f` field: a broadcast's sender, or who joined or left. None for a
/// disconnect, and for a broadcast of unknown sender (one from another instance, which is
/// never sent on).
pub(super) fn encode_sender(out: &Outbound) -> Option<Vec<u8>> {
    let from = match out {
        Outbound::Broadcast { from, .. } | Outbound::Presence { from, .. } => from,
        Outbound::Disconnect(_) => return None,
    };
    match from {
        Sender::User(name) => Some([&[SENDER_USER][..], name.as_bytes()].concat()),
        Sender::Anonymous => Some(vec![SENDER_ANONYMOUS]),
        Sender::Admin => Some(vec![SENDER_ADMIN]),
        Sender::Unknown => None,
    }
}

/// A broadcast's sender from its entry's `f` field; unknown without one.
fn decode_sender(field: Option<&[u8]>) -> Result<Sender, BadEnvelope> {
    match field {
        None => Ok(Sender::Unknown),
        Some([SENDER_USER, name @ ..]) => std::str::from_utf8(name)
            .map(|n| Sender::User(n.to_string()))
            .map_err(|_| BadEnvelope::BadSender),
        Some([SENDER_ANONYMOUS]) => Ok(Sender::Anonymous),
        Some([SENDER_ADMIN]) => Ok(Sender::Admin),
        Some(_) => Err(BadEnvelope::BadSender),
    }
}

/// The stream entry's `p` field: the broadcast's path, or for a disconnect the path it names
/// (`*` for none), so `XRANGE` reads well.
pub(super) fn entry_path(out: &Outbound) -> &str {
    match out {
        Outbound::Broadcast { path, .. } | Outbound::Presence { path, .. } => path,
        Outbound::Disconnect(filter) => filter.path.as_deref().unwrap_or("*"),
    }
}

/// What an envelope carries.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Inbound {
    /// A broadcast, and its sender as its instance authenticated it.
    Broadcast(Message, Sender),
    Disconnect(Filter),
    /// A presence notice: who joined or left the entry's path.
    Presence(Presence, Sender),
}

/// Why an envelope from Redis was not delivered.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum BadEnvelope {
    Truncated,
    Version(u8),
    Kind(u8),
    NotUtf8,
    /// A disconnect whose filter does not parse, or is empty.
    BadFilter,
    /// The stream entry lacks the path or the envelope field.
    Fields,
    /// The sender field is none of the known forms.
    BadSender,
}

impl fmt::Display for BadEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadEnvelope::Truncated => f.write_str("truncated envelope"),
            BadEnvelope::Version(v) => write!(f, "unknown envelope version {v}"),
            BadEnvelope::Kind(k) => write!(f, "unknown message kind {k}"),
            BadEnvelope::NotUtf8 => f.write_str("text message is not valid UTF-8"),
            BadEnvelope::BadFilter => f.write_str("disconnect without a valid filter"),
            BadEnvelope::Fields => f.write_str("entry without the `p` and `m` fields"),
            BadEnvelope::BadSender => f.write_str("entry with a malformed sender field `f`"),
        }
    }
}

/// Decodes an envelope, with its entry's sender field, into where it comes from and what it
/// carries.
pub(super) fn decode<'a>(
    payload: &'a [u8],
    sender: Option<&[u8]>,
) -> Result<(Stamp<'a>, Inbound), BadEnvelope> {
    let [version, id_len, rest @ ..] = payload else {
        return Err(BadEnvelope::Truncated);
    };
    if *version != ENVELOPE_VERSION {
        return Err(BadEnvelope::Version(*version));
    }
    let id_len = usize::from(*id_len);
    if rest.len() <= id_len + 16 {
        return Err(BadEnvelope::Truncated);
    }
    let (instance, rest) = rest.split_at(id_len);
    let (epoch, rest) = rest.split_at(8);
    let (seq, rest) = rest.split_at(8);
    let number = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or_default());
    let origin = Stamp {
        instance,
        epoch: number(epoch),
        seq: number(seq),
    };
    let (kind, body) = (rest[0], &rest[1..]);
    let inbound = match kind {
        KIND_TEXT => Inbound::Broadcast(
            Message::Text(Utf8Bytes::try_from(body.to_vec()).map_err(|_| BadEnvelope::NotUtf8)?),
            decode_sender(sender)?,
        ),
        KIND_BINARY => Inbound::Broadcast(
            Message::Binary(body.to_vec().into()),
            decode_sender(sender)?,
        ),
        KIND_DISCONNECT => {
            let query = std::str::from_utf8(body).map_err(|_| BadEnvelope::BadFilter)?;
            let filter = parse_query(query, FILTER_KEYS)
                .ok()
                .filter(|f| !f.is_empty())
                .ok_or(BadEnvelope::BadFilter)?;
            Inbound::Disconnect(filter)
        }
        KIND_JOIN => Inbound::Presence(Presence::Join, decode_sender(sender)?),
        KIND_LEAVE => Inbound::Presence(Presence::Leave, decode_sender(sender)?),
        other => return Err(BadEnvelope::Kind(other)),
    };
    Ok((origin, inbound))
}

/// One stream entry as the bridge writes it: its id, and its `p`, `m` and `f` fields if
/// present.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct StreamEntry<'a> {
    pub(super) id: &'a str,
    pub(super) path: Option<&'a str>,
    pub(super) envelope: Option<&'a [u8]>,
    pub(super) sender: Option<&'a [u8]>,
    /// A kept broadcast's time (ms), on the path's stream and the backbone (`t`).
    pub(super) time: Option<&'a [u8]>,
    /// A kept broadcast's position and epoch, on the backbone (`n`, `e`).
    pub(super) pos: Option<&'a [u8]>,
    pub(super) epoch: Option<&'a [u8]>,
    /// The publishing member's id in its process (`w`), on the backbone.
    pub(super) member: Option<&'a [u8]>,
}

/// The reply did not have the shape of `XREAD`'s or `XRANGE`'s.
fn bad_reply() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "unexpected reply shape for a stream read",
    ))
}

/// Calls `f` with each stream's entry list of an `XREAD` reply: RESP2 `[[key, entries], ...]`
/// or RESP3 `{key: entries}`; nothing for nil (the block time passed).
pub(super) fn for_each_stream(
    reply: &Value,
    mut f: impl FnMut(&Value) -> redis::RedisResult<()>,
) -> redis::RedisResult<()> {
    match reply {
        Value::Nil => Ok(()),
        Value::Array(streams) => streams.iter().try_for_each(|s| match s {
            Value::Array(pair) if pair.len() == 2 => f(&pair[1]),
            _ => Err(bad_reply()),
        }),
        Value::Map(streams) => streams.iter().try_for_each(|(_, entries)| f(entries)),
        _ => Err(bad_reply()),
    }
}

/// Calls `f` with each entry of an entry list (`XRANGE`'s reply, or one stream's part of
/// `XREAD`'s): `[[id, [field, value, ...]], ...]`. Read straight from the reply, without the
/// copy into a map per entry that the redis crate's typed stream replies make.
pub(super) fn for_each_entry(
    entries: &Value,
    mut f: impl FnMut(StreamEntry<'_>),
) -> redis::RedisResult<()> {
    let Value::Array(entries) = entries else {
        return Err(bad_reply());
    };
    for entry in entries {
        let Value::Array(parts) = entry else {
            return Err(bad_reply());
        };
        let (Some(Value::BulkString(id)), fields) = (parts.first(), parts.get(1)) else {
            return Err(bad_reply());
        };
        let id = std::str::from_utf8(id).map_err(|_| bad_reply())?;
        let mut e = StreamEntry {
            id,
            path: None,
            envelope: None,
            sender: None,
            time: None,
            pos: None,
            epoch: None,
            member: None,
        };
        if let Some(Value::Array(fields)) = fields {
            for pair in fields.chunks_exact(2) {
                if let [Value::BulkString(name), Value::BulkString(value)] = pair {
                    match name.as_slice() {
                        b"p" => e.path = std::str::from_utf8(value).ok(),
                        b"m" => e.envelope = Some(value),
                        b"f" => e.sender = Some(value),
                        b"t" => e.time = Some(value),
                        b"n" => e.pos = Some(value),
                        b"e" => e.epoch = Some(value),
                        b"w" => e.member = Some(value),
                        _ => {}
                    }
                }
            }
        }
        f(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_text_and_binary() {
        let text = Message::text("héllo");
        let binary = Message::binary(vec![0u8, 1, 255, 0]);
        for msg in [text, binary, Message::text(""), Message::binary(Vec::new())] {
            let e = encode("pi-1", 7, u64::MAX, &broadcast(msg.clone())).unwrap();
            let (origin, back) = decode(&e, None).unwrap();
            let want = Stamp {
                instance: b"pi-1",
                epoch: 7,
                seq: u64::MAX,
            };
            assert_eq!(origin, want);
            assert_eq!(back, Inbound::Broadcast(msg, Sender::Unknown));
        }
        let e = encode("a", 1, 2, &broadcast(Message::text("x"))).unwrap();
        let mut want = vec![2, 1, b'a'];
        want.extend_from_slice(&1u64.to_be_bytes());
        want.extend_from_slice(&2u64.to_be_bytes());
        want.extend_from_slice(&[KIND_TEXT, b'x']);
        assert_eq!(e, want);
        assert_eq!(
            encode("a", 1, 1, &broadcast(Message::Ping(Vec::new().into()))),
            None
        );
    }

    fn broadcast(msg: Message) -> Outbound {
        Outbound::broadcast("/c", Sender::Anonymous, msg)
    }

    #[test]
    fn a_broadcast_carries_its_sender_and_an_entry_without_one_is_of_unknown_sender() {
        let senders = [
            Sender::User("al\"ice ✓".into()),
            Sender::User(String::new()),
            Sender::Anonymous,
            Sender::Admin,
        ];
        for from in senders {
            let out = Outbound::broadcast("/c", from.clone(), Message::text("x"));
            let (e, f) = (encode("a", 1, 1, &out).unwrap(), encode_sender(&out));
            let (_, back) = decode(&e, f.as_deref()).unwrap();
            assert_eq!(back, Inbound::Broadcast(Message::text("x"), from));
        }
        let out = Outbound::broadcast("/c", Sender::User("bob".into()), Message::binary(vec![1u8]));
        assert_eq!(encode_sender(&out).unwrap(), b"\x00bob");
        // An entry from an instance that does not write the field.
        let e = encode("a", 1, 1, &out).unwrap();
        assert_eq!(
            decode(&e, None).unwrap().1,
            Inbound::Broadcast(Message::binary(vec![1u8]), Sender::Unknown)
        );
        // A broadcast from another instance is never sent on; a disconnect has no sender.
        let unknown = Outbound::broadcast("/c", Sender::Unknown, Message::text("x"));
        assert_eq!(encode_sender(&unknown), None);
        assert_eq!(
            encode_sender(&Outbound::Disconnect(Filter::default())),
            None
        );
        for bad in [&b""[..], b"\x01x", b"\x02\x00", b"\x03", b"\x00\xff"] {
            assert_eq!(
                decode(&e, Some(bad)).unwrap_err(),
                BadEnvelope::BadSender,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn presence_notices_travel_with_who_joined_or_left() {
        for what in [Presence::Join, Presence::Leave] {
            for from in [Sender::User("bob".into()), Sender::Anonymous] {
                let out = Outbound::Presence {
                    path: "/chat/room".into(),
                    from: from.clone(),
                    what,
                };
                assert_eq!(entry_path(&out), "/chat/room");
                let (e, f) = (encode("a", 1, 1, &out).unwrap(), encode_sender(&out));
                assert_eq!(e.len(), 3 + 16 + 1, "the kind alone");
                let (_, back) = decode(&e, f.as_deref()).unwrap();
                assert_eq!(back, Inbound::Presence(what, from));
            }
        }
    }

    #[test]
    fn disconnects_travel_as_their_query_and_an_empty_one_is_refused() {
        let filter = Filter {
            user: Some("al ice&x".into()),
            session: None,
            path: Some("/chat/*".into()),
        };
        let out = Outbound::Disconnect(filter.clone());
        assert_eq!(entry_path(&out), "/chat/*");
        let e = encode("pi-1", 7, 3, &out).unwrap();
        assert!(e.ends_with(b"\x02user=al%20ice%26x&path=/chat/*"));
        assert_eq!(decode(&e, None).unwrap().1, Inbound::Disconnect(filter));
        let numbers = [0u8; 16];
        for body in [&b""[..], b"bogus=1", b"user=%zz", b"\xff"] {
            let e = [&[2u8, 0][..], &numbers, &[KIND_DISCONNECT], body].concat();
            assert_eq!(
                decode(&e, None).unwrap_err(),
                BadEnvelope::BadFilter,
                "{body:?}"
            );
        }
    }

    #[test]
    fn bad_envelopes_are_refused() {
        let numbers = [0u8; 16];
        let with = |head: &[u8], tail: &[u8]| [head, &numbers, tail].concat();
        assert_eq!(decode(b"", None).unwrap_err(), BadEnvelope::Truncated);
        assert_eq!(decode(&[2], None).unwrap_err(), BadEnvelope::Truncated);
        assert_eq!(
            decode(&with(&[2, 3, b'a', b'b'], &[]), None).unwrap_err(),
            BadEnvelope::Truncated
        );
        assert_eq!(
            decode(&with(&[2, 1, b'a'], &[]), None).unwrap_err(),
            BadEnvelope::Truncated
        );
        // Version 1 (pub/sub, no sequence numbers) is not understood.
        assert_eq!(
            decode(&[1, 1, b'a', KIND_TEXT, b'x'], None).unwrap_err(),
            BadEnvelope::Version(1)
        );
        assert_eq!(
            decode(&with(&[2, 0], &[7, 1]), None).unwrap_err(),
            BadEnvelope::Kind(7)
        );
        assert_eq!(
            decode(&with(&[2, 0], &[KIND_TEXT, 0xff]), None).unwrap_err(),
            BadEnvelope::NotUtf8
        );
        assert_eq!(
            decode(&with(&[2, 0], &[KIND_BINARY, 0xff]), None)
                .unwrap()
                .1,
            Inbound::Broadcast(Message::binary(vec![0xffu8]), Sender::Unknown)
        );
    }

    fn bulk(b: &[u8]) -> Value {
        Value::BulkString(b.to_vec())
    }

    fn entry(id: &str, fields: &[&[u8]]) -> Value {
        Value::Array(vec![
            bulk(id.as_bytes()),
            Value::Array(fields.iter().map(|f| bulk(f)).collect()),
        ])
    }

    /// An entry's id, path and envelope, owned.
    type Owned = (String, Option<String>, Option<Vec<u8>>);

    fn entries_of(reply: &Value) -> redis::RedisResult<Vec<Owned>> {
        let mut out = Vec::new();
        for_each_stream(reply, |entries| {
            for_each_entry(entries, |e| {
                out.push((
                    e.id.to_string(),
                    e.path.map(str::to_string),
                    e.envelope.map(<[u8]>::to_vec),
                ));
            })
        })?;
        Ok(out)
    }

    #[test]
    fn xread_replies_are_read_in_both_protocols() {
        let list = Value::Array(vec![
            entry("1-0", &[b"p", b"/a", b"m", b"\x02x"]),
            entry(
                "1-1",
                &[b"m", b"y", b"p", b"/b", b"extra", b"z", b"f", b"\x01"],
            ),
            entry("2-0", &[b"other", b"v"]),
        ]);
        let want = vec![
            (
                "1-0".to_string(),
                Some("/a".to_string()),
                Some(b"\x02x".to_vec()),
            ),
            (
                "1-1".to_string(),
                Some("/b".to_string()),
                Some(b"y".to_vec()),
            ),
            ("2-0".to_string(), None, None),
        ];
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk(b"wsgate:broadcasts"),
            list.clone(),
        ])]);
        let resp3 = Value::Map(vec![(bulk(b"wsgate:broadcasts"), list)]);
        assert_eq!(entries_of(&resp2).unwrap(), want);
        assert_eq!(entries_of(&resp3).unwrap(), want);
        assert_eq!(entries_of(&Value::Nil).unwrap(), []);
        // Anything else is a broken link, not a panic.
        for bad in [
            Value::Int(1),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Array(vec![bulk(b"k"), Value::Int(1)])]),
            Value::Array(vec![Value::Array(vec![
                bulk(b"k"),
                Value::Array(vec![Value::Nil]),
            ])]),
        ] {
            assert!(entries_of(&bad).is_err(), "{bad:?}");
        }
        // XREVRANGE's reply is an entry list itself; empty for a stream that does not exist.
        let mut ids = Vec::new();
        for_each_entry(&Value::Array(vec![entry("7-3", &[])]), |e| {
            ids.push(e.id.to_string())
        })
        .unwrap();
        for_each_entry(&Value::Array(vec![]), |e| ids.push(e.id.to_string())).unwrap();
        assert_eq!(ids, ["7-3"]);
    }
}
