//! wsgate: a small, secure, synchronous WebSocket server.
//!
//! A connection flows one way through these stages, one module each:
//!
//! 1. [`listener`]: one thread, blocking `poll`/`accept`; never touches client bytes.
//! 2. [`admit`]: the bounded worker pool, the pre-auth budget and the per-IP cap; refuses at once.
//! 3. [`tls`]: rustls handshake on the worker, under its deadline (client certificates optional).
//!    Behind a load balancer, [`proxy`] first reads its PROXY header, under the same deadline.
//! 4. [`upgrade`]: reads the HTTP head (bounded), lets [`policy`] decide (path, Origin,
//!    credentials via [`auth`], roles via [`acl`]), and has tungstenite answer 101 or the refusal.
//! 5. [`connection`]: the connection's own loop — reads (frame limits by [`frames`], rates by
//!    [`ratelimit`]), writes its outbox, pings, closes.
//!    A `mode = proxy` channel's connection runs in [`relay`] instead, which opened the backend
//!    WebSocket before the 101.
//! 6. [`hub`]: channel membership and fan-out to bounded outboxes.
//!
//! [`config`] parses the INI file once into typed values; [`server`] wires the stages together and
//! owns start-up, reload and shutdown; [`users`], [`tokens`], [`session`] and [`throttle`] are the
//! credential stores and limits behind [`auth`]; [`passwd`] and [`commands`] are the admin's
//! one-shot commands; [`certs`] loads (or generates) certificates; [`files`] opens secret files;
//! [`demo`] is the built-in demo page that [`upgrade`] serves at `GET /` when enabled.
//!
//! [`memory`] is the process-wide cap on what grows with traffic, charged by [`hub`],
//! [`connection`] and [`upgrade`] as bytes are queued.
//!
//! Operations, beside the pipeline: [`notify`] tells systemd about readiness, reloads and
//! liveness; [`metrics`] counts what the stages do; [`admin`] serves `/healthz` and `/metrics` on
//! its own thread and listener; [`signals`] turns SIGTERM/SIGHUP into a drain or a reload.
#![forbid(unsafe_code)]

pub mod acl;
pub mod admin;
pub mod admit;
pub mod auth;
pub mod certs;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod connection;
pub mod deadline;
pub mod demo;
pub mod files;
pub mod frames;
pub mod hub;
pub mod listener;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod origin;
pub mod passwd;
pub mod policy;
pub mod pool;
pub mod proxy;
pub mod ratelimit;
pub mod relay;
pub mod server;
pub mod session;
pub mod signals;
pub mod suggest;
pub mod throttle;
pub mod tls;
pub mod tokens;
pub mod upgrade;
pub mod users;
