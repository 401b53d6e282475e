//! The memory budget at start-up: `memory_limit` resolved on this host, the base cost of one
//! connection, and the start-up line that says how many connections fit.

use std::sync::Arc;

use crate::config::Config;
use crate::memory::{self, Budget};

/// Resolves `memory_limit` on this host and logs the start-up line: the enforced cap, what it
/// was derived from, the base cost of a connection and how many connections fit.
pub(super) fn start_budget(config: &Config) -> Arc<Budget> {
    let (cap, host) = memory::resolve(config.server.memory_limit);
    let base = base_per_connection(config);
    let connections = config
        .server
        .workers
        .get()
        .saturating_add(config.server.queue);
    log::info!(
        "{}",
        memory::startup_line(config.server.memory_limit, cap, host, base, connections)
    );
    Arc::new(Budget::new(cap))
}

/// Stack pages an idle connection's loop has touched (measured: about 20 KiB of the
/// `worker_stack_size` reserve).
const STACK_TOUCHED: usize = 20 * 1024;
/// rustls' state for an established connection with its buffers drained.
const TLS_IDLE: usize = 4 * 1024;

/// What an idle connection costs whatever its traffic, outside the cap: the touched stack, the
/// base read and write buffers (largest of any channel) and the TLS state. The cap counts only
/// what grows beyond this.
fn base_per_connection(config: &Config) -> usize {
    let limits =
        || std::iter::once(&config.limits.ws).chain(config.channels.iter().map(|c| &c.limits));
    let max = |f: fn(&crate::config::WsLimits) -> usize| limits().map(f).max().unwrap_or(0);
    // A proxied connection holds a second WebSocket, to its backend: its base buffers again (and
    // TLS state for a `wss://` backend).
    let backend = config
        .channels
        .iter()
        .filter_map(|c| c.backend.as_ref().map(|b| (&c.limits, b)))
        .map(|(l, b)| {
            let tls = match b.endpoint {
                crate::config::Endpoint::Tcp { tls: true, .. } => TLS_IDLE,
                _ => 0,
            };
            l.read_buffer_size.get() + l.write_buffer_size + tls
        })
        .max()
        .unwrap_or(0);
    STACK_TOUCHED
        + max(|l| l.read_buffer_size.get())
        + max(|l| l.write_buffer_size)
        + TLS_IDLE
        + backend
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(body: &str) -> Config {
        let text = format!(
            "[tls]\nself_signed = true\ncert = /nonexistent/c.pem\nkey = /nonexistent/k.pem\n\
             {body}\n[auth]\nusers_file = {}/Cargo.toml\nmax_concurrent_hashes = 2\n\
             cache_size = 100\n",
            env!("CARGO_MANIFEST_DIR")
        );
        Config::parse(&text, Path::new("/tmp/budget-test.ini")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn base_cost_is_the_touched_stack_the_base_buffers_and_tls() {
        let c = config(
            "[limits]\nread_buffer_size = 4KiB\nwrite_buffer_size = 4KiB\n\
             max_write_buffer_size = 64KiB\nmax_frame_size = 16KiB\nmax_message_size = 16KiB\n\
             [channel:/a]\nmode = echo\n\
             [channel:/b]\nmode = broadcast\nwrite_buffer_size = 8KiB\n",
        );
        assert_eq!(
            base_per_connection(&c),
            STACK_TOUCHED + 4 * 1024 + 8 * 1024 + TLS_IDLE
        );
    }

    #[test]
    fn base_cost_counts_a_proxy_backend_s_buffers() {
        let c = config(
            "[limits]\nread_buffer_size = 4KiB\nwrite_buffer_size = 4KiB\n\
             max_write_buffer_size = 64KiB\nmax_frame_size = 16KiB\nmax_message_size = 16KiB\n\
             [channel:/a/*]\nmode = proxy\nbackend = ws://127.0.0.1:8080\n\
             [channel:/b]\nmode = proxy\nbackend = wss://app.example:443\n",
        );
        assert_eq!(
            base_per_connection(&c),
            STACK_TOUCHED + 4 * 1024 + 4 * 1024 + TLS_IDLE + (4 * 1024 + 4 * 1024 + TLS_IDLE)
        );
    }
}
