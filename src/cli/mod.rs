//! The command line: [`args`] parses it; [`commands`] runs the one-shot commands (`check`,
//! `check-access`, `token`, …); [`passwd`] edits a users file.

pub mod args;
pub mod commands;
pub mod passwd;
