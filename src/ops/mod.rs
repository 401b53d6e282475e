//! The instruments every layer above reads or writes, using nothing but the decisions' names:
//! [`metrics`] counts what the stages do; [`notify`] tells systemd about readiness, reloads and
//! liveness. Who serves them is above: `/metrics` is [`crate::admin`], the signals
//! [`crate::server::signals`].

pub mod metrics;
pub(crate) mod notify;
