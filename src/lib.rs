//! wsgate: a small, secure, synchronous WebSocket server.
//!
//! Where the code is, one folder per concern:
//!
//! - [`pipeline`]: the stages a connection meets, in order — listener, admission, then on a
//!   handshake thread the PROXY header, TLS and the HTTP upgrade, then on its worker the
//!   connection loop (or the proxy relay).
//! - [`hub`]: channel membership and fan-out to bounded outboxes; the eventfd waker; the Redis
//!   cluster bridge.
//! - [`policy`]: the pure upgrade decisions — route, Origin, credentials, roles ([`policy::acl`]).
//! - [`auth`]: the credential stores and limits behind the policy's verifier — users, tokens,
//!   sessions, the login throttle, and the secret files they are read from and written to.
//! - [`server`]: wires the stages together; start-up, reload, shutdown and the per-connection
//!   worker.
//! - [`config`]: the INI file parsed once into typed values.
//! - [`memory`]: the process-wide cap on what grows with traffic, charged by the hub, the
//!   connection loop and the upgrade as bytes are queued.
//! - [`ops`]: beside the pipeline — systemd notification, metrics, the admin listener, signals.
//! - [`cli`]: the command line and the admin's one-shot commands.
#![forbid(unsafe_code)]

pub mod auth;
pub mod cli;
pub mod config;
pub(crate) mod hub;
pub mod memory;
pub mod ops;
pub mod pipeline;
pub mod policy;
pub mod server;
#[cfg(test)]
mod testing;
