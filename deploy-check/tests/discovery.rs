//! edge-lb's discovery sidecar (deploy/docker/edge-lb-discover.sh), run for real with a
//! fake resolver standing in for the headless Service's DNS: the backend list follows the
//! StatefulSet's pods, the result is a configuration edge-lb accepts, and edge-lb is asked
//! to reload exactly when the list changed.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deploy_check::repo_root;

struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    fn new(tag: &str) -> Sandbox {
        let dir =
            std::env::temp_dir().join(format!("deploy-check-disc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("dns")).unwrap();
        std::fs::create_dir_all(dir.join("out")).unwrap();
        // fake resolver: `resolve NAME` prints "IP NAME" if dns/<first label> exists
        let resolver = dir.join("resolve");
        std::fs::write(
            &resolver,
            format!(
                "#!/bin/bash\nf='{}'/\"${{1%%.*}}\"\n[[ -f \"$f\" ]] || exit 2\necho \"$(cat \"$f\") $1\"\n",
                dir.join("dns").display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&resolver, std::fs::Permissions::from_mode(0o755)).unwrap();
        Sandbox { dir }
    }

    fn set(&self, pod: &str, ip: Option<&str>) {
        let f = self.dir.join("dns").join(pod);
        match ip {
            Some(ip) => std::fs::write(f, ip).unwrap(),
            None => {
                let _ = std::fs::remove_file(f);
            }
        }
    }

    fn output(&self) -> PathBuf {
        self.dir.join("out/edge-lb.yaml")
    }

    fn command(&self, reload_url: &str) -> Command {
        let mut c = Command::new("bash");
        c.arg(repo_root().join("deploy/docker/edge-lb-discover.sh"))
            .env(
                "DISCOVER_TEMPLATE",
                repo_root().join("deploy/k8s/base/edge-lb/edge-lb.template.yaml"),
            )
            .env("DISCOVER_OUTPUT", self.output())
            .env("DISCOVER_RESOLVE", self.dir.join("resolve"))
            .env("DISCOVER_RELOAD_URL", reload_url)
            .env("POD_NAMESPACE", "quiz")
            .env("DISCOVER_INTERVAL", "0.2")
            .env("DISCOVER_FORGET_AFTER", "2")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// (name, addr) of the core pool's backends, as edge-lb parses the file.
fn backends(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let (_, edge) = edge_lb::parse_config(&text).unwrap_or_else(|e| panic!("edge-lb: {e}\n{text}"));
    edge.pools[0]
        .backends
        .iter()
        .map(|b| (b.name.clone(), b.addr.to_string()))
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn once_mode_lists_every_resolvable_pod_in_ordinal_order() {
    let s = Sandbox::new("once");
    s.set("core-0", Some("10.0.0.10"));
    s.set("core-1", Some("10.0.0.11"));
    // core-2 is being recreated (no DNS record right now); core-3 has an IPv6 address
    s.set("core-3", Some("fd00::3"));
    let status = s.command("").arg("--once").status().unwrap();
    assert!(status.success());
    assert_eq!(
        backends(&s.output()),
        pairs(&[
            ("core-0", "10.0.0.10:8080"),
            ("core-1", "10.0.0.11:8080"),
            ("core-3", "[fd00::3]:8080"),
        ])
    );
}

/// A tiny HTTP server counting `POST /admin/reload`.
fn reload_server() -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/admin/reload", l.local_addr().unwrap());
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 1024];
            let got = s.read(&mut buf).unwrap_or(0);
            if buf[..got].starts_with(b"POST /admin/reload ") {
                count.fetch_add(1, Ordering::SeqCst);
            }
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
            );
        }
    });
    (url, n)
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sidecar_follows_scaling_keeps_recreated_pods_and_reloads_on_change() {
    let s = Sandbox::new("loop");
    let (url, reloads) = reload_server();
    s.set("core-0", Some("10.0.0.10"));
    s.set("core-1", Some("10.0.0.11"));
    let _child = Killed(s.command(&url).spawn().unwrap());
    let out = s.output();
    let t = Duration::from_secs(10);
    wait_for("two backends", t, || {
        out.exists() && backends(&out).len() == 2 && reloads.load(Ordering::SeqCst) == 1
    });

    // scale up: core-2 appears → listed, one more reload
    s.set("core-2", Some("10.0.0.12"));
    wait_for("core-2 added", t, || backends(&out).len() == 3);
    wait_for("reload after scale-up", t, || {
        reloads.load(Ordering::SeqCst) == 2
    });

    // a pod restarted with a new IP: same name (ring key), new address
    s.set("core-0", Some("10.0.0.20"));
    wait_for("core-0 moved", t, || {
        backends(&out).first() == Some(&("core-0".into(), "10.0.0.20:8080".into()))
    });
    wait_for("reload after move", t, || {
        reloads.load(Ordering::SeqCst) == 3
    });

    // core-1 disappears: kept for DISCOVER_FORGET_AFTER (2 s), then removed
    s.set("core-1", None);
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(
        backends(&out).len(),
        3,
        "a briefly missing pod stays listed"
    );
    wait_for("core-1 forgotten", t, || backends(&out).len() == 2);
    assert_eq!(
        backends(&out),
        pairs(&[("core-0", "10.0.0.20:8080"), ("core-2", "10.0.0.12:8080")])
    );
    wait_for("reload after removal", t, || {
        reloads.load(Ordering::SeqCst) == 4
    });

    // nothing changes → no more reloads
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(reloads.load(Ordering::SeqCst), 4, "reload only on change");

    // every pod gone: entries expire one by one, but the file never becomes an empty
    // pool (edge-lb would refuse it): the last non-empty list stays
    s.set("core-0", None);
    s.set("core-2", None);
    std::thread::sleep(Duration::from_millis(3500));
    let last = backends(&out);
    assert!(!last.is_empty(), "never writes an empty backend list");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(backends(&out), last, "the last list stays");
}
