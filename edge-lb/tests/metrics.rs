//! edge-lb's admin `/metrics`, scraped over HTTP from a real edge-lb (pingora, its own thread)
//! on loopback: the process metrics (open files against the limit are what caps an edge-lb
//! process) and `edge_lb_build_info`.

mod common;

use common::*;
use edge_lb_testing::http_get;

/// The value of the first series named `name` (any labels).
fn value(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_process_and_the_build() {
    let bs = backends(1).await;
    let e = edge(&bs, Opts::default()).await;
    let (s, _, page) = http_get(e.admin, "/metrics").await.unwrap();
    assert_eq!(s, 200);
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "process_threads",
    ] {
        assert!(value(&page, name).is_some(), "no {name} in:\n{page}");
    }
    let v = |name| value(&page, name).unwrap();
    // The listeners and the admin socket at least, under this process's limit.
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
        .find(|l| l.starts_with("edge_lb_build_info{"))
        .unwrap_or_else(|| panic!("no edge_lb_build_info in:\n{page}"));
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
}
