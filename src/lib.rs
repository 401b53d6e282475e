//! wsgate: a small, secure, synchronous WebSocket server.
//!
//! A connection flows one way through these stages, one module each:
//!
//! 1. [`listener`]: one thread, blocking `accept`; never touches client bytes.
//! 2. [`admit`]: the bounded worker pool and the per-IP cap; refuses at once when full.
//! 3. [`tls`]: rustls handshake on the worker, under its deadline.
//! 4. [`upgrade`]: reads the HTTP head (bounded), lets [`policy`] decide (path, Origin,
//!    credentials), and has tungstenite answer 101 or the refusal.
//! 5. [`connection`]: the connection's own loop — reads, writes its outbox, pings, closes.
//! 6. [`hub`]: channel membership and fan-out to bounded outboxes.
//!
//! [`config`] parses the INI file once into typed values; [`server`] wires the stages together and
//! owns start-up and shutdown; [`users`] and [`passwd`] manage credentials; [`certs`] loads (or
//! generates) the certificate.
//!
//! Operations, beside the pipeline: [`notify`] tells systemd about readiness, reloads and
//! liveness; [`metrics`] counts what the stages do; [`admin`] serves `/healthz` and `/metrics` on
//! its own thread and listener.
#![forbid(unsafe_code)]

pub mod acl;
pub mod admin;
pub mod admit;
pub mod auth;
pub mod certs;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod connection;
pub mod deadline;
pub mod hub;
pub mod listener;
pub mod metrics;
pub mod notify;
pub mod origin;
pub mod passwd;
pub mod policy;
pub mod ratelimit;
pub mod server;
pub mod session;
pub mod signals;
pub mod throttle;
pub mod tls;
pub mod tokens;
pub mod upgrade;
pub mod users;
