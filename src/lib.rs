//! wsgate: a small, secure, synchronous WebSocket server.
//!
//! Where the code is, one folder per concern, listed from the roof down: each imports only the
//! ones listed below it (`tests/layers.rs` holds the crate to this order; the drawing is in
//! docs/design.md).
//!
//! - [`cli`]: the command line, the admin's one-shot commands and `wsgate client`.
//! - [`server`]: wires the stages together; start-up, reload, shutdown, the signals and the
//!   per-connection worker.
//! - [`admin`]: `/healthz`, `/metrics` and the admin API, on their own thread and listener.
//! - [`pipeline`]: the stages a connection meets, in order — listener, admission, then on a
//!   handshake thread the PROXY header, TLS and the HTTP upgrade, then on its worker the
//!   connection loop (or the proxy relay).
//! - [`hub`]: channel membership and fan-out to bounded outboxes; the eventfd waker; the Redis
//!   cluster bridge.
//! - [`auth`]: the credential stores and limits behind the policy's verifier — users, tokens,
//!   sessions, the login throttle, and the secret files they are read from and written to.
//! - [`ops`]: the instruments — metrics counters and systemd notification.
//! - [`policy`]: the pure upgrade decisions — route, Origin, credentials, roles — and a reload's
//!   re-check of a live connection.
//! - [`memory`]: the process-wide cap on what grows with traffic, charged by the hub, the
//!   connection loop and the upgrade as bytes are queued.
//! - [`config`]: the INI file parsed once into typed values.
//! - [`rules`]: the access rules as values — roles and path patterns ([`rules::acl`]), allowed
//!   origins, user names — that the config parses into and the policy applies.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub(crate) mod hub;
pub mod memory;
pub mod ops;
pub mod pipeline;
pub mod policy;
pub mod rules;
pub mod server;
#[cfg(test)]
mod testing;
