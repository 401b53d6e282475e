//! The `/metrics` text as a Prometheus scraper reads it: [`Metrics::render`] after every counter
//! is bumped, checked line by line with the exposition validator of `tests/common/prometheus.rs`,
//! and that validator's own cases.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::prometheus::validate_exposition;
use wsgate::ops::metrics::{ClusterLinks, Counter, Gauges, Metrics, Outcome};

fn value_of(text: &str, prefix: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in\n{text}"))
        .trim()
        .to_string()
}

#[test]
fn fresh_metrics_render_valid_exposition() {
    let m = Metrics::new(["/echo", "/chat/*"]);
    let text = m.render(&Gauges::default());
    validate_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(text.contains(&format!(
        "wsgate_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    )));
    assert!(text.contains("wsgate_connections_open{channel=\"/chat/*\"} 0\n"));
    assert!(text.contains("wsgate_upgrade_duration_seconds_bucket{le=\"+Inf\"} 0\n"));
    assert!(text.contains("wsgate_upgrade_duration_seconds_count 0\n"));
}

#[test]
fn bumps_show_up() {
    let m = Metrics::new(["/echo"]);
    m.outcome(Outcome::Accepted);
    m.outcome(Outcome::Accepted);
    m.outcome(Outcome::from_status(401).unwrap());
    m.outcome(Outcome::Busy);
    m.channel_opened("/echo");
    m.channel_opened("/echo");
    m.channel_closed("/echo");
    m.channel_opened("/new/*"); // a pattern first seen after a reload
    m.message_in(10);
    m.message_out(5);
    m.message_out(7);
    m.bump(Counter::BroadcastDropped, 1);
    m.bump(Counter::BroadcastTooBig, 1);
    m.bump(Counter::SlowConsumerCloses, 1);
    m.bump(Counter::RateLimited, 1);
    m.bump(Counter::PublishDenied, 1);
    m.bump(Counter::AdminPublishes, 1);
    m.bump(Counter::AdminDisconnects, 1);
    m.bump(Counter::AuthCacheHits, 1);
    m.bump(Counter::Argon2Runs, 1);
    let links = std::sync::Arc::new(ClusterLinks::default());
    m.attach_cluster(std::sync::Arc::clone(&links));
    links.publisher.store(true, Ordering::Release);
    links.subscriber.store(true, Ordering::Release);
    links.clash.store(true, Ordering::Release);
    m.bump(Counter::ClusterForwarded, 1);
    m.bump(Counter::ClusterNotForwarded, 1);
    m.bump(Counter::ClusterReceived, 1);
    m.bump(Counter::ClusterLost, 1);
    m.bump(Counter::MemoryRefusals, 1);
    m.bump(Counter::MemoryDrops, 1);
    m.observe_upgrade(Duration::from_micros(500)); // 0.001
    m.observe_upgrade(Duration::from_millis(30)); // 0.05
    m.observe_upgrade(Duration::from_secs(60)); // +Inf
    let text = m.render(&Gauges {
        pool_busy: 3,
        pool_idle: 61,
        pool_queued: 2,
        memory_used: 1,
        memory_limit: 1,
    });
    validate_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let v = |p: &str| value_of(&text, p);
    assert_eq!(v("wsgate_connections_total{outcome=\"accepted\"}"), "2");
    assert_eq!(v("wsgate_connections_total{outcome=\"401\"}"), "1");
    assert_eq!(v("wsgate_connections_total{outcome=\"busy\"}"), "1");
    assert_eq!(v("wsgate_connections_total{outcome=\"403\"}"), "0");
    assert_eq!(v("wsgate_connections_open{channel=\"/echo\"}"), "1");
    assert_eq!(v("wsgate_connections_open{channel=\"/new/*\"}"), "1");
    assert_eq!(v("wsgate_messages_received_total"), "1");
    assert_eq!(v("wsgate_received_bytes_total"), "10");
    assert_eq!(v("wsgate_messages_sent_total"), "2");
    assert_eq!(v("wsgate_sent_bytes_total"), "12");
    for name in [
        "wsgate_broadcast_dropped_total",
        "wsgate_broadcast_too_big_total",
        "wsgate_slow_consumer_closes_total",
        "wsgate_rate_limited_total",
        "wsgate_publish_denied_total",
        "wsgate_admin_publishes_total",
        "wsgate_admin_disconnects_total",
        "wsgate_auth_cache_hits_total",
        "wsgate_argon2_runs_total",
        "wsgate_cluster_connected",
        "wsgate_cluster_id_clash",
        "wsgate_cluster_forwarded_total",
        "wsgate_cluster_not_forwarded_total",
        "wsgate_cluster_received_total",
        "wsgate_cluster_lost_total",
        "wsgate_memory_bytes",
        "wsgate_memory_limit_bytes",
        "wsgate_memory_refusals_total",
        "wsgate_memory_drops_total",
    ] {
        assert_eq!(v(&format!("{name} ")), "1", "{name}");
    }
    let b = |le: &str| {
        v(&format!(
            "wsgate_upgrade_duration_seconds_bucket{{le=\"{le}\"}}"
        ))
    };
    assert_eq!(b("0.001"), "1");
    assert_eq!(b("0.025"), "1");
    assert_eq!(b("0.05"), "2");
    assert_eq!(b("10"), "2");
    assert_eq!(b("+Inf"), "3");
    assert_eq!(v("wsgate_upgrade_duration_seconds_count"), "3");
    let sum: f64 = v("wsgate_upgrade_duration_seconds_sum").parse().unwrap();
    assert!((sum - 60.0305).abs() < 1e-9, "{sum}");
    assert_eq!(v("wsgate_pool_workers{state=\"busy\"}"), "3");
    assert_eq!(v("wsgate_pool_workers{state=\"idle\"}"), "61");
    assert_eq!(v("wsgate_pool_queued"), "2");
    assert_eq!(m.open_on("/echo"), 1);
    assert_eq!(m.outcome_count(Outcome::Accepted), 2);
}

#[test]
fn label_values_are_escaped() {
    let m = Metrics::new(["/a\"b\\c\nd"]);
    let text = m.render(&Gauges::default());
    assert!(
        text.contains("wsgate_connections_open{channel=\"/a\\\"b\\\\c\\nd\"} 0\n"),
        "{text}"
    );
    validate_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
}

#[test]
fn validator_accepts_the_format() {
    let ok = "# HELP a_total Things.\n# TYPE a_total counter\na_total 3\n\
                  # a comment\n\
                  # HELP g A \\\\ gauge\\n.\n# TYPE g gauge\ng{x=\"1\",y=\"a\\\"b\",} -1.5e3 1700000000\n\
                  g{x=\"2\"} NaN\n\
                  # HELP h H.\n# TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 2\n\
                  h_sum 0.7\nh_count 2\n";
    validate_exposition(ok).unwrap();
    validate_exposition("").unwrap();
}

#[test]
fn validator_rejects_what_it_must() {
    let bad = [
        ("a 1\n", "before HELP"),
        ("# HELP a A.\na 1\n", "before TYPE"),
        ("# TYPE a gauge\na 1\n", "before HELP"),
        ("# HELP a A.\n# TYPE a gauge\na 1", "line feed"),
        ("# HELP 1a A.\n# TYPE 1a gauge\n1a 1\n", "bad metric name"),
        (
            "# HELP a A.\n# TYPE a gauge\na{1x=\"v\"} 1\n",
            "bad label name",
        ),
        ("# HELP a A.\n# TYPE a gauge\na{x=v} 1\n", "not quoted"),
        (
            "# HELP a A.\n# TYPE a gauge\na{x=\"\\t\"} 1\n",
            "bad escape",
        ),
        ("# HELP a A.\n# TYPE a gauge\na{x=\"v\" 1\n", "expected"),
        ("# HELP a A.\n# TYPE a gauge\na one\n", "bad value"),
        ("# HELP a A.\n# TYPE a gauge\na inf\n", "bad value"),
        ("# HELP a A.\n# TYPE a gauge\na 1\na 2\n", "duplicate"),
        ("# HELP a A.\n# TYPE a wibble\n", "unknown type"),
        ("# HELP a A.\n# TYPE a counter\na -1\n", "negative"),
        (
            "# HELP a A.\n# TYPE a gauge\na{x=\"1\"} 1\n# HELP b B.\n# TYPE b gauge\nb 1\na{x=\"2\"} 1\n",
            "contiguous",
        ),
        (
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
            "cumulative",
        ),
        (
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
            "+Inf",
        ),
        (
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n",
            "_count",
        ),
        (
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\n",
            "not increasing",
        ),
        (
            "# HELP h H.\n# TYPE h histogram\nh_bucket 1\n",
            "without le",
        ),
    ];
    for (text, want) in bad {
        let e = validate_exposition(text).expect_err(text);
        assert!(e.contains(want), "{text:?}: got {e:?}, want {want:?}");
    }
}
