//! Operations, beside the pipeline: [`notify`] tells systemd about readiness, reloads and
//! liveness; [`metrics`] counts what the stages do; [`admin`] serves `/healthz`, `/metrics` and
//! the admin API on its own thread and listener; [`signals`] turns SIGTERM/SIGHUP into a drain or
//! a reload.

pub mod admin;
pub mod metrics;
pub(crate) mod notify;
pub mod signals;
