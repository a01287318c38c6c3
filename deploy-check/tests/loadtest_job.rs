//! deploy/k8s/loadtest: the in-cluster load test (a Job running `loadtest` next to its own
//! edge-lb), rendered and validated like the overlays.

mod common;

use std::collections::BTreeMap;

use common::*;
use deploy_check::render::{self, obj_kind};
use deploy_check::{dockerfile, repo_root};
use serde_json::Value;

fn job() -> Overlay {
    let dir = repo_root().join("deploy/k8s/loadtest");
    Overlay {
        name: "loadtest".into(),
        objects: render::build(&dir).unwrap_or_else(|e| panic!("render: {e}")),
        dir,
    }
}

fn env_of(c: &Value) -> BTreeMap<String, Value> {
    c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect()
}

#[test]
fn renders_and_matches_the_kubernetes_schema() {
    let ov = job();
    assert_eq!(render_and_validate(&ov.dir), ov.objects.len());
    assert_eq!(ov.of_kind("Job").count(), 1);
    assert_eq!(ov.of_kind("ConfigMap").count(), 1);
    assert_eq!(ov.objects.len(), 2, "only the Job and its template");
}

/// The load test's edge-lb runs the release's configuration: the file is the base's except
/// `limits.max_connections` and the per-client and per-node rate limits, which the load
/// generator (every player behind one pod address) must not trip (so its discovery of the
/// core pods is the Deployment's too).
#[test]
fn its_edge_lb_is_the_production_edge_lb() {
    let ov = job();
    let ours: Value =
        serde_yaml::from_str(&ov.config_data("loadtest-edge-lb-config", "edge-lb.yaml")).unwrap();
    let base: Value = serde_yaml::from_str(&read("deploy/k8s/base/edge-lb/edge-lb.yaml")).unwrap();
    let strip = |mut v: Value| {
        v["edge_lb"]["limits"]
            .as_object_mut()
            .unwrap()
            .remove("max_connections");
        v["edge_lb"]["limits"]
            .as_object_mut()
            .unwrap()
            .remove("per_client");
        // Its admin API stays inside the Job's pod: no token file mounted.
        v["edge_lb"]
            .as_object_mut()
            .unwrap()
            .remove("admin_token_file");
        if let Some(t) = v["edge_lb"]["tunnel"].as_object_mut() {
            t.remove("new_per_node_per_sec");
            t.remove("new_per_node_burst");
        }
        v
    };
    assert_eq!(
        strip(ours.clone()),
        strip(base),
        "configurations drifted apart"
    );
    let text = ov.config_data("loadtest-edge-lb-config", "edge-lb.yaml");
    let (_, edge) = edge_lb::parse_config(&text).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        edge.pools[0].discovery.is_some(),
        "the core pods are discovered"
    );

    let j = ov.of_kind("Job").next().unwrap();
    for dev in overlays() {
        let e = dev.get("Deployment", "edge-lb");
        assert_eq!(
            env_of(container(e, "edge-lb")),
            env_of(container(j, "edge-lb")),
            "edge-lb's environment differs from overlay {}",
            dev.name
        );
        // admitted by core's NetworkPolicy, like the edge-lb pods
        let np = dev.get("NetworkPolicy", "core");
        let pod_labels = &j["spec"]["template"]["metadata"]["labels"];
        let admitted = np["spec"]["ingress"][0]["from"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["podSelector"]["matchLabels"].as_object())
            .any(|sel| sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
        assert!(
            admitted,
            "core's NetworkPolicy would drop the load test's traffic"
        );
        let edge_labels = &e["spec"]["template"]["metadata"]["labels"];
        let admitted = np["spec"]["ingress"][0]["from"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["podSelector"]["matchLabels"].as_object())
            .any(|sel| sel.iter().all(|(k, v)| edge_labels.get(k) == Some(v)));
        assert!(
            admitted,
            "overlay {}: core's NetworkPolicy drops edge-lb",
            dev.name
        );
    }

    // native sidecars, edge-lb started before the load tool
    let spec = pod_spec(j);
    assert_eq!(spec["restartPolicy"], "Never");
    assert_eq!(container(j, "edge-lb")["restartPolicy"], "Always");
    assert_eq!(
        all_containers(j).len(),
        2,
        "edge-lb and the load tool only (no discovery sidecar)"
    );
    let lb = container(j, "edge-lb");
    let sp = &lb["startupProbe"]["httpGet"];
    assert_eq!(sp["path"], "/healthz");
    assert_eq!(
        container_port(lb, &sp["port"]),
        port_of(&edge.admin_listen),
        "startup probe on the admin port"
    );

    // the load tool: a shipped scenario, against this pod's edge-lb on loopback
    let lt = container(j, "loadtest");
    let args: Vec<&str> = lt["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args[..2], ["/usr/local/bin/loadtest", "run"]);
    let scenario = args[2]
        .strip_prefix("/usr/share/quiz/scenarios/")
        .expect("a scenario shipped in the image");
    let sc =
        loadtest::scenario::Scenario::load(&repo_root().join("loadtest/scenarios").join(scenario))
            .unwrap_or_else(|e| panic!("{scenario}: {e}"));
    let target = args
        .windows(2)
        .find(|w| w[0] == "--target")
        .map(|w| w[1])
        .expect("--target");
    assert_eq!(
        target,
        format!("http://127.0.0.1:{}", port_of(&edge.listen[0])),
        "the target is this pod's edge-lb"
    );
    assert!(
        sc.load.players as usize <= edge.limits.max_connections,
        "{scenario}: {} players over the sidecar's max_connections",
        sc.load.players
    );
    // stadium-size quizzes fit through one pod
    let stadium =
        loadtest::scenario::Scenario::load(&repo_root().join("loadtest/scenarios/stadium.toml"))
            .unwrap();
    assert!(stadium.load.players as usize <= edge.limits.max_connections);
    for c in all_containers(j) {
        let image = c["image"].as_str().unwrap();
        let name = image.rsplit_once(':').map_or(image, |(r, _)| r);
        let name = name.rsplit('/').next().unwrap();
        assert!(
            repo_root()
                .join(format!("deploy/docker/{name}.Dockerfile"))
                .is_file(),
            "no Dockerfile for {image}"
        );
    }
    assert!(obj_kind(j) == "Job");
}

#[test]
fn loadtest_image_ships_the_scenarios() {
    let df = dockerfile::parse(&read("deploy/docker/loadtest.Dockerfile")).unwrap();
    assert!(df.stages.len() >= 2);
    let runtime = df.stages.last().unwrap();
    assert_eq!(runtime.image, "debian:bookworm-slim");
    let runs: String = df.stages[0].all("RUN").map(|i| i.args.clone()).collect();
    assert!(runs.contains("-p loadtest ") && runs.contains("--bin loadtest"));
    for p in [
        "cmake",
        "libssl-dev",
        "libcurl4-openssl-dev",
        "pkg-config",
        "zlib1g-dev",
        "g++",
    ] {
        assert!(
            runs.split_whitespace().any(|w| w == p),
            "build installs {p}"
        );
    }
    let copies: Vec<String> = runtime.all("COPY").map(|i| i.args.clone()).collect();
    assert!(copies
        .iter()
        .any(|c| c == "loadtest/scenarios /usr/share/quiz/scenarios"));
    // `loadtest run` spawns its workers from the binary next to it.
    assert!(runs.contains("--bin loadtest-worker"));
    assert!(copies
        .iter()
        .any(|c| c.ends_with(" /usr/local/bin/loadtest-worker")));
    for c in &copies {
        if let Some(srcs) = dockerfile::copy_sources(c) {
            for s in srcs {
                assert!(repo_root().join(&s).exists(), "COPY source {s}");
            }
        }
    }
    let user = runtime.all("USER").next().expect("USER").args.clone();
    assert_eq!(user, "10001:10001");
    let hc = runtime.all("HEALTHCHECK").next().expect("HEALTHCHECK");
    assert_eq!(hc.args, "NONE", "a batch tool has no health endpoint");
}
