//! The command line: [`args`] parses it; [`commands`] runs the one-shot commands (`check`,
//! `check-access`, `token`, …) and [`access_report`] writes `check-access`'s answer and the
//! role warnings; [`passwd`] edits a users file.

pub(crate) mod access_report;
pub mod args;
pub mod commands;
pub mod passwd;
