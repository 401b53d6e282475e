//! The stages a connection meets, in order, each a module:
//!
//! 1. [`listener`]: one thread, blocking `poll`/`accept`; never touches client bytes.
//! 2. [`admit`]: the bounds (pool and queue, the pre-auth budget, the per-IP cap); refuses at
//!    once, or hands the connection to a handshake thread ([`pool`]).
//! 3. [`tls`]: the rustls handshake, under its deadline ([`deadline`]), with [`certs`] loaded
//!    (or generated) at start. Behind a load balancer, [`proxy_protocol`] first reads its PROXY
//!    header, under the same deadline.
//! 4. [`upgrade`]: reads the HTTP head (bounded), lets [`crate::policy`] decide, and has
//!    tungstenite answer 101 or the refusal; serves [`demo`] at `GET /` when enabled. Before
//!    its 101 an admitted connection takes a place on a worker thread ([`pool`]), which it is
//!    then handed to: the data flows one way.
//! 5. [`connection`]: the connection's own loop — reads through [`inbound`] (frame limits by
//!    [`frames`], the read share of the memory cap, rights, rates by [`ratelimit`], traffic
//!    counters), writes its outbox, pings, closes. A `mode = proxy` channel's connection runs in
//!    [`relay`] instead, which opened the backend WebSocket before the 101 and reads its client
//!    through the same [`inbound`] path.
//!
//! The hub a connection joins is [`crate::hub`]; the thread that drives one connection through
//! these stages is in [`crate::server`]. [`close`] is the close loop the connection loop and the
//! relay share.

pub(crate) mod admit;
pub mod certs;
pub(crate) mod close;
pub(crate) mod connection;
pub(crate) mod deadline;
pub(crate) mod demo;
pub(crate) mod end;
pub mod frames;
pub(crate) mod inbound;
pub(crate) mod listener;
pub(crate) mod pool;
pub mod proxy_protocol;
pub mod ratelimit;
pub(crate) mod relay;
pub(crate) mod tls;
pub mod upgrade;
