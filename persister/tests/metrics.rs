//! The persister's `/metrics`, scraped over HTTP from a running persister (against the real
//! Kafka and MongoDB of `deploy/local/stack up`): the process metrics and
//! `persister_build_info`.

mod common;

use common::*;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_process_and_the_build() {
    let config = test_config("metrics", 1).await;
    let shutdown = CancellationToken::new();
    let running = persister::start(config, shutdown.clone())
        .await
        .expect("start");
    let _stop = shutdown.clone().drop_guard();
    let (status, page) = http_get(running.http_addr.expect("http"), "/metrics")
        .await
        .expect("metrics");
    assert_eq!(status, 200);
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "process_threads",
    ] {
        assert!(metric(&page, name).is_some(), "no {name} in:\n{page}");
    }
    let v = |name| metric(&page, name).unwrap();
    // The Kafka and MongoDB connections at least, under this process's limit.
    assert!(v("process_open_fds") >= 3.0);
    assert!(v("process_open_fds") < v("process_max_fds"));
    assert!(v("process_resident_memory_bytes") > 1e6);
    assert!(v("process_threads") >= 2.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = v("process_start_time_seconds");
    assert!(started <= now + 1.0 && started > now - 3600.0, "{started}");

    let info = page
        .lines()
        .find(|l| l.starts_with("persister_build_info{"))
        .unwrap_or_else(|| panic!("no persister_build_info in:\n{page}"));
    assert!(info.ends_with(" 1"), "{info}");
    let version = env!("CARGO_PKG_VERSION");
    assert!(info.contains(&format!("version=\"{version}\"")), "{info}");
    assert!(
        info.contains("commit=\"") && !info.contains("commit=\"\""),
        "{info}"
    );
    assert!(
        info.contains("rustc=\"") && !info.contains("rustc=\"\""),
        "{info}"
    );
    shutdown.cancel();
    running.wait().await.expect("clean stop");
}
