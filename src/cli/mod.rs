//! The command line: [`args`] parses it; [`commands`] runs the one-shot commands (`check`,
//! `check-access`, `token`, …) and [`access_report`] writes `check-access`'s answer and the
//! role warnings; [`passwd`] edits a users file; [`client`] is `wsgate client`, a WebSocket client
//! for trying a channel; [`terminal`] turns the echo off while a secret is typed.

pub(crate) mod access_report;
pub mod args;
pub mod client;
pub mod commands;
pub mod passwd;
pub(crate) mod terminal;
