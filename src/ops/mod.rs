//! The instruments every layer above reads or writes, using nothing but the decisions' names:
//! [`metrics`] counts what the stages do; [`notify`] tells systemd about readiness, reloads and
//! liveness; [`logging`] is the stderr logger, whose level a reload sets (`log::set_max_level`).
//! Who serves them is above: `/metrics` is [`crate::admin`], the signals
//! [`crate::server::signals`].

pub mod logging;
pub mod metrics;
pub(crate) mod notify;
