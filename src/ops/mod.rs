//! Operations, beside the pipeline: [`notify`] tells systemd about readiness, reloads and
//! liveness; [`metrics`] counts what the stages do; [`admin`] serves `/healthz`, `/metrics` and
//! the admin API on its own thread and listener; [`signals`] turns SIGTERM/SIGHUP into a drain or
//! a reload; [`logging`] is the stderr logger, whose level a reload changes.

pub mod admin;
pub mod logging;
pub mod metrics;
pub(crate) mod notify;
pub mod signals;
