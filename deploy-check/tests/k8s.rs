//! Every overlay under deploy/k8s/overlays: rendered by kustomize, validated by kubeconform
//! against the Kubernetes API schema, its references resolved, the operational rules of docs/deploy.md checked, and
//! the configuration each binary would load parsed with that binary's own config types.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use deploy_check::dockerfile;
use deploy_check::render::{obj_kind, obj_name};
use serde_json::Value;

/// `kustomize build` renders every overlay, and kubeconform (strict, the pinned Kubernetes
/// version's schemas) finds every object valid: a wrong type or a field the API does not
/// have fails.
#[test]
fn every_overlay_renders_and_every_object_matches_the_kubernetes_schema() {
    for ov in overlays() {
        let validated = render_and_validate(&ov.dir);
        assert_eq!(validated, ov.objects.len(), "overlay {}", ov.name);
        let mut seen = BTreeSet::new();
        for o in &ov.objects {
            let key = (obj_kind(o).to_string(), obj_name(o).to_string());
            assert!(
                seen.insert(key.clone()),
                "overlay {}: {key:?} twice",
                ov.name
            );
            if obj_kind(o) != "Namespace" {
                assert!(
                    o.pointer("/metadata/namespace").is_some(),
                    "overlay {}: {key:?} has no namespace",
                    ov.name
                );
            }
        }
        for kind in [
            "Namespace",
            "StatefulSet",
            "Deployment",
            "Service",
            "ConfigMap",
            "PodDisruptionBudget",
        ] {
            assert!(
                ov.of_kind(kind).count() > 0,
                "overlay {}: no {kind}",
                ov.name
            );
        }
    }
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

#[test]
fn selectors_services_and_references_resolve() {
    for ov in overlays() {
        let pods: Vec<(&str, &Value)> = ov
            .workloads()
            .map(|w| (obj_name(w), &w["spec"]["template"]["metadata"]["labels"]))
            .collect();
        for w in ov.workloads() {
            let sel = &w["spec"]["selector"]["matchLabels"];
            assert!(
                labels_match(sel, &w["spec"]["template"]["metadata"]["labels"]),
                "overlay {}: {} selector does not match its pods",
                ov.name,
                obj_name(w)
            );
            // volumes, mounts, config and secret references
            let spec = pod_spec(w);
            let volumes: BTreeSet<&str> = spec["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v["name"].as_str())
                .collect();
            for v in spec["volumes"].as_array().into_iter().flatten() {
                if let Some(cm) = v["configMap"]["name"].as_str() {
                    assert!(
                        ov.find("ConfigMap", cm).is_some(),
                        "overlay {}: volume of missing ConfigMap {cm}",
                        ov.name
                    );
                }
            }
            for c in all_containers(w) {
                for m in c["volumeMounts"].as_array().into_iter().flatten() {
                    let name = m["name"].as_str().unwrap_or("");
                    assert!(
                        volumes.contains(name),
                        "overlay {}: {} mounts unknown volume {name}",
                        ov.name,
                        c["name"]
                    );
                }
                // panics on any unresolved non-optional reference
                let fields = BTreeMap::from([
                    ("metadata.name", format!("{}-0", obj_name(w))),
                    ("metadata.namespace", ov.name.clone()),
                ]);
                resolved_env(&ov, c, &fields);
                for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                    if let Some(p) = c[probe]["httpGet"]["port"].as_str() {
                        container_port(c, &Value::String(p.into()));
                    }
                }
            }
        }
        for s in ov.of_kind("Service") {
            let sel = &s["spec"]["selector"];
            let (name, labels) = pods
                .iter()
                .find(|(_, l)| labels_match(sel, l))
                .unwrap_or_else(|| {
                    panic!(
                        "overlay {}: Service {} selects no pods",
                        ov.name,
                        obj_name(s)
                    )
                });
            let w = ov
                .workloads()
                .find(|w| obj_name(w) == *name)
                .expect("workload");
            let _ = labels;
            for p in s["spec"]["ports"].as_array().into_iter().flatten() {
                let target = &p["targetPort"];
                let c = &pod_spec(w)["containers"][0];
                container_port(c, target);
            }
        }
        for pdb in ov.of_kind("PodDisruptionBudget") {
            let sel = &pdb["spec"]["selector"]["matchLabels"];
            assert!(
                pods.iter().any(|(_, l)| labels_match(sel, l)),
                "overlay {}: PDB {} selects no pods",
                ov.name,
                obj_name(pdb)
            );
        }
        for np in ov.of_kind("NetworkPolicy") {
            let sel = &np["spec"]["podSelector"]["matchLabels"];
            assert!(
                pods.iter().any(|(_, l)| labels_match(sel, l)),
                "overlay {}: NetworkPolicy {} selects no pods",
                ov.name,
                obj_name(np)
            );
        }
        // Secrets that are not rendered must be the documented external ones.
        let deploy_md = read("docs/deploy.md");
        for w in ov.workloads() {
            for c in all_containers(w) {
                for e in c["env"].as_array().into_iter().flatten() {
                    let Some(r) = e["valueFrom"].get("secretKeyRef") else {
                        continue;
                    };
                    let (name, key) = (r["name"].as_str().unwrap(), r["key"].as_str().unwrap());
                    if ov.find("Secret", name).is_none() {
                        assert!(
                            deploy_md.contains(&format!("`{key}`")) && deploy_md.contains(name),
                            "overlay {}: external Secret {name} key {key} is not documented in docs/deploy.md",
                            ov.name
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn workloads_follow_the_deployment_rules() {
    for ov in overlays() {
        let n = &ov.name;
        // core: a StatefulSet with a headless Service that publishes not-ready pods.
        let core = ov.get("StatefulSet", "core");
        let svc_name = core["spec"]["serviceName"].as_str().expect("serviceName");
        let headless = ov.get("Service", svc_name);
        assert_eq!(
            headless["spec"]["clusterIP"], "None",
            "{n}: {svc_name} must be headless"
        );
        assert_eq!(headless["spec"]["publishNotReadyAddresses"], true, "{n}");
        // node name = pod name (the ring key of edge-lb)
        let c = container(core, "core");
        let node = c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == "QUIZ_NODE_NAME")
            .expect("QUIZ_NODE_NAME");
        assert_eq!(
            node["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name",
            "{n}"
        );

        // edge-lb: several replicas behind a LoadBalancer.
        let edge = ov.get("Deployment", "edge-lb");
        assert!(
            edge["spec"]["replicas"].as_u64().unwrap_or(1) >= 2,
            "{n}: edge-lb replicas"
        );
        let lb = ov
            .of_kind("Service")
            .find(|s| s["spec"]["type"] == "LoadBalancer")
            .unwrap_or_else(|| panic!("{n}: no LoadBalancer Service"));
        assert_eq!(
            lb["spec"]["selector"]["app.kubernetes.io/name"], "edge-lb",
            "{n}"
        );

        // persister: sized to the topic's partitions.
        let p = ov.get("Deployment", "persister");
        let parts: u64 = p["metadata"]["annotations"]["quiz.platform/topic-partitions"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{n}: persister needs quiz.platform/topic-partitions"));
        let replicas = p["spec"]["replicas"].as_u64().unwrap_or(1);
        assert!(
            replicas >= 1 && replicas <= parts && parts % replicas == 0,
            "{n}: {replicas} persister replicas for {parts} partitions"
        );

        // every workload: a PDB, probes, sized, non-root like the images, file limits.
        for w in ov.workloads() {
            let name = obj_name(w);
            let pod_labels = &w["spec"]["template"]["metadata"]["labels"];
            assert!(
                ov.of_kind("PodDisruptionBudget")
                    .any(|pdb| labels_match(&pdb["spec"]["selector"]["matchLabels"], pod_labels)),
                "{n}: {name} has no PodDisruptionBudget"
            );
            let spec = pod_spec(w);
            assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{n}: {name}");
            assert_eq!(
                spec["securityContext"]["runAsUser"], 10001,
                "{n}: {name} uid = image USER"
            );
            for c in all_containers(w) {
                let cn = c["name"].as_str().unwrap_or("");
                let r = &c["resources"];
                for key in ["/requests/cpu", "/requests/memory", "/limits/memory"] {
                    assert!(r.pointer(key).is_some(), "{n}: {name}/{cn} resources{key}");
                }
                assert_eq!(
                    c["securityContext"]["allowPrivilegeEscalation"], false,
                    "{n}: {cn}"
                );
                assert_eq!(
                    c["securityContext"]["readOnlyRootFilesystem"], true,
                    "{n}: {cn}"
                );
            }
            let main = &spec["containers"][0];
            assert!(
                main["readinessProbe"]["httpGet"].is_object()
                    && main["livenessProbe"]["httpGet"].is_object(),
                "{n}: {name} needs HTTP readiness and liveness probes"
            );
        }
        // high connection counts: sysctls and the open-file limit.
        for (kind, name) in [("StatefulSet", "core"), ("Deployment", "edge-lb")] {
            let w = ov.get(kind, name);
            let sysctls: BTreeMap<&str, &str> = pod_spec(w)["securityContext"]["sysctls"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| (s["name"].as_str().unwrap(), s["value"].as_str().unwrap()))
                .collect();
            assert_eq!(
                sysctls.get("net.ipv4.ip_local_port_range"),
                Some(&"1024 65535"),
                "{n}: {name} sysctls"
            );
            if ov.name == "production" {
                assert!(
                    sysctls.contains_key("net.core.somaxconn"),
                    "{n}: {name} somaxconn"
                );
            }
            let c = &pod_spec(w)["containers"][0];
            let nofile = c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["name"] == "QUIZ_NOFILE")
                .and_then(|e| e["value"].as_str())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            assert!(nofile >= 100_000, "{n}: {name} QUIZ_NOFILE");
        }
    }
}

/// Probes hit the endpoints the binaries serve, on the ports their configuration listens on.
#[test]
fn probes_use_the_real_endpoints_on_the_configured_ports() {
    for ov in overlays() {
        let n = &ov.name;
        let core = ov.get("StatefulSet", "core");
        let c = container(core, "core");
        let listen = port_of(&load_core(&ov).listen);
        probe(c, "readinessProbe", "/readyz", listen, n);
        probe(c, "livenessProbe", "/healthz", listen, n);

        let p = ov.get("Deployment", "persister");
        let c = container(p, "persister");
        let listen = port_of(&load_persister(&ov).http.listen);
        probe(c, "readinessProbe", "/readyz", listen, n);
        probe(c, "livenessProbe", "/healthz", listen, n);

        let e = ov.get("Deployment", "edge-lb");
        let c = container(e, "edge-lb");
        let t: Value =
            serde_yaml::from_str(&ov.config_data("edge-lb-config", "edge-lb.yaml")).unwrap();
        let admin = port_of(t["edge_lb"]["admin_listen"].as_str().unwrap());
        probe(c, "readinessProbe", "/readyz", admin, n);
        probe(c, "livenessProbe", "/healthz", admin, n);
        // The public port: the plain listener, or the TLS one where there is none
        // (production, HTTPS only).
        let proxy = t["edge_lb"]["listen"][0]
            .as_str()
            .or_else(|| t["edge_lb"]["tls"]["listen"][0].as_str())
            .map(port_of)
            .expect("a plain or a TLS listener");
        let lb = ov.get("Service", "edge-lb");
        assert_eq!(
            container_port(c, &lb["spec"]["ports"][0]["targetPort"]),
            proxy,
            "{n}"
        );
        // edge-lb discovers core from the headless Service's SRV records: the name is
        // _<port name>._tcp.<Service> (relative: the pod's search list adds its namespace),
        // the StatefulSet's serviceName is that Service (so SRV targets are the pods' own
        // names, the ring keys), and not-ready pods stay published (edge-lb checks /readyz
        // itself and must not lose a pod's ring position when it turns unready).
        let hl = ov.get("Service", "core-headless");
        let dns = &t["edge_lb"]["pools"][0]["discovery"]["dns"];
        let srv = format!(
            "_{}._tcp.core-headless",
            hl["spec"]["ports"][0]["name"].as_str().unwrap()
        );
        assert_eq!(
            dns["name"].as_str(),
            Some(srv.as_str()),
            "{n}: edge-lb's SRV name does not match Service core-headless's port name"
        );
        assert_eq!(hl["spec"]["ports"][0]["protocol"], "TCP", "{n}");
        assert!(dns.get("nameserver").is_none(), "{n}: use the cluster DNS");
        assert!(
            dns.get("port").is_none(),
            "{n}: the SRV records carry the port"
        );
        assert_eq!(core["spec"]["serviceName"], "core-headless", "{n}");
        assert_eq!(hl["spec"]["publishNotReadyAddresses"], true, "{n}");
        assert_eq!(
            hl["spec"]["ports"][0]["port"].as_u64(),
            Some(u64::from(port_of(&load_core(&ov).listen))),
            "{n}: the SRV port is core's listen port"
        );
        // Prometheus annotations point at /metrics on the same ports.
        for (w, port) in [(core, port_of("x:8080")), (p, 0), (e, admin)] {
            let a = &w["spec"]["template"]["metadata"]["annotations"];
            assert_eq!(a["prometheus.io/path"], "/metrics", "{n}");
            if port != 0 {
                assert_eq!(a["prometheus.io/port"], port.to_string(), "{n}");
            }
        }
    }
}

fn probe(c: &Value, which: &str, path: &str, port: u16, overlay: &str) {
    let g = &c[which]["httpGet"];
    assert_eq!(g["path"], path, "{overlay}: {} {which}", c["name"]);
    assert_eq!(
        container_port(c, &g["port"]),
        port,
        "{overlay}: {} {which} port",
        c["name"]
    );
}

/// terminationGracePeriodSeconds leaves each binary's drain logic time to finish.
#[test]
fn termination_grace_covers_the_drain_logic() {
    for ov in overlays() {
        let n = &ov.name;
        let grace = |w: &Value| {
            pod_spec(w)["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap()
        };
        let core = load_core(&ov);
        let core_ms = core.shutdown_drain_ms + core.shutdown_grace_ms;
        assert!(
            grace(ov.get("StatefulSet", "core")) * 1000 >= core_ms + 5000,
            "{n}: core grace vs shutdown_drain_ms + shutdown_grace_ms = {core_ms}"
        );
        // The drain must outlast edge-lb's health checks noticing the 503.
        let t: Value =
            serde_yaml::from_str(&ov.config_data("edge-lb-config", "edge-lb.yaml")).unwrap();
        let h = &t["edge_lb"]["health"];
        let interval_ms = humantime_ms(h["interval"].as_str().unwrap_or("1s"));
        let fails = h["failure_threshold"].as_u64().unwrap_or(1);
        assert!(
            core.shutdown_drain_ms >= interval_ms * fails,
            "{n}: shutdown_drain_ms {} < edge-lb health interval {interval_ms} ms × failure_threshold {fails}",
            core.shutdown_drain_ms
        );
        let p_ms = load_persister(&ov).shutdown_grace_ms;
        assert!(
            grace(ov.get("Deployment", "persister")) * 1000 >= p_ms + 5000,
            "{n}: persister grace vs shutdown_grace_ms {p_ms}"
        );
        let e = ov.get("Deployment", "edge-lb");
        let t: Value =
            serde_yaml::from_str(&ov.config_data("edge-lb-config", "edge-lb.yaml")).unwrap();
        let pre_stop: u64 = container(e, "edge-lb")["lifecycle"]["preStop"]["exec"]["command"]
            .as_array()
            .and_then(|c| (c.first()? == "sleep").then(|| c.get(1)?.as_str()?.parse().ok())?)
            .expect("edge-lb preStop sleep N");
        let needed = pre_stop
            + t["grace_period_seconds"]
                .as_u64()
                .expect("grace_period_seconds")
            + t["graceful_shutdown_timeout_seconds"]
                .as_u64()
                .expect("graceful_shutdown_timeout_seconds");
        assert!(
            grace(e) >= needed + 2,
            "{n}: edge-lb grace {} < {needed} + 2",
            grace(e)
        );
    }
}

/// Env names a script reads (`${NAME` / `$NAME`).
fn script_env(rel: &str) -> BTreeSet<String> {
    let text = read(rel);
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices('$') {
        let rest = text[i + 1..].trim_start_matches('{');
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if name.len() > 1 {
            out.insert(name);
        }
    }
    out
}

/// The environment a container of image `image` runs with: the image's `ENV` (from its
/// Dockerfile), overridden by the container's `env`, references resolved.
fn runtime_env(
    ov: &Overlay,
    image: &str,
    c: &Value,
    fields: &BTreeMap<&str, String>,
) -> BTreeMap<String, String> {
    let df = dockerfile::parse(&read(&format!("deploy/docker/{image}.Dockerfile"))).unwrap();
    let mut env = BTreeMap::new();
    for i in df.stages.last().unwrap().all("ENV") {
        for kv in i.args.split_whitespace() {
            let (k, v) = kv.split_once('=').expect("ENV KEY=VALUE");
            env.insert(k.to_string(), v.to_string());
        }
    }
    env.extend(resolved_env(ov, c, fields));
    env
}

/// core's configuration in an overlay, loaded exactly as `quiz-core` does
/// (`Config::load_with`: core.toml from the ConfigMap with unknown keys rejected, then the
/// environment, then validation). Every env var must be one quiz-core or the entrypoint
/// reads.
fn load_core(ov: &Overlay) -> quiz_core::Config {
    let n = &ov.name;
    let entrypoint_env = script_env("deploy/docker/entrypoint.sh");
    let w = ov.get("StatefulSet", "core");
    let c = container(w, "core");
    let fields = BTreeMap::from([("metadata.name", "core-0".to_string())]);
    let env = runtime_env(ov, "core", c, &fields);
    let dir = std::env::temp_dir().join(format!(
        "deploy-check-core-{}-{n}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cli = quiz_core::config::Cli::default();
    if let Some(v) = env.get("QUIZ_CONFIG") {
        let file = dir.join("core.toml");
        std::fs::write(&file, mounted_file(ov, w, c, v)).unwrap();
        cli.config = Some(file);
    }
    let reads: BTreeSet<String> = quiz_core::Config::keys()
        .into_iter()
        .flat_map(|k| k.env)
        .collect();
    for k in env.keys() {
        assert!(
            k == "QUIZ_CONFIG"
                || reads.contains(k)
                || entrypoint_env.contains(k)
                || k == "RUST_LOG",
            "{n}: env {k} is read by neither quiz-core nor the entrypoint"
        );
    }
    // The overlay's environment alone: the test process's own QUIZ_* variables must not
    // leak in.
    let (cfg, _) = quiz_core::Config::load_with(&cli, &|k| env.get(k).cloned())
        .unwrap_or_else(|e| panic!("{n}: quiz-core: {e}"));
    std::fs::remove_dir_all(&dir).ok();
    cfg
}

/// The persister's configuration in an overlay, loaded as the persister does
/// (`Config::layered`: persister.toml with unknown keys rejected, then the environment, then
/// validation); every variable set must be one the persister reads (`Config::keys`).
fn load_persister(ov: &Overlay) -> persister::Config {
    let n = &ov.name;
    let entrypoint_env = script_env("deploy/docker/entrypoint.sh");
    let main_rs = read("persister/src/main.rs");
    let w = ov.get("Deployment", "persister");
    let c = container(w, "persister");
    let env = runtime_env(ov, "persister", c, &BTreeMap::new());
    let file = env.get("PERSISTER_CONFIG").expect("PERSISTER_CONFIG");
    assert!(
        main_rs.contains("env = \"PERSISTER_CONFIG\""),
        "persister reads PERSISTER_CONFIG"
    );
    let text = mounted_file(ov, w, c, file);
    let (cfg, _) = persister::Config::layered(Some((file, &text)), &|k| env.get(k).cloned(), &[])
        .unwrap_or_else(|e| panic!("{n}: persister: {e}"));
    let reads: BTreeSet<String> = persister::Config::keys()
        .into_iter()
        .flat_map(|k| k.env)
        .collect();
    for k in env.keys() {
        assert!(
            reads.contains(k) || k == "PERSISTER_CONFIG" || entrypoint_env.contains(k),
            "{n}: env {k} is read by neither the persister nor the entrypoint"
        );
    }
    cfg
}

fn not_loopback(s: &str, what: &str) {
    assert!(
        !s.contains("127.0.0.1") && !s.contains("localhost"),
        "{what}: {s} is a loopback default"
    );
}

/// core loads, in distributed mode, with no loopback defaults left.
#[test]
fn core_config_loads_with_quiz_core_config() {
    for ov in overlays() {
        let n = &ov.name;
        let cfg = load_core(&ov);
        assert!(!cfg.is_embedded(), "{n}: core must run in distributed mode");
        assert_eq!(cfg.node_name, "core-0", "{n}: node name = pod name");
        assert!(!cfg.demo_quiz, "{n}: no demo quiz in a cluster");
        for s in cfg.redis_nodes.iter().chain([&cfg.kafka_brokers]) {
            not_loopback(s, n);
        }
        assert!(
            !cfg.listen.starts_with("127."),
            "{n}: core must listen on the pod network"
        );
    }
}

/// The persister loads and drains the topic core produces to, from the same brokers.
#[test]
fn persister_config_loads_with_persister_config() {
    for ov in overlays() {
        let n = &ov.name;
        let cfg = load_persister(&ov);
        not_loopback(&cfg.kafka.brokers, n);
        not_loopback(&cfg.mongodb.uri, n);
        assert!(
            !cfg.http.listen.starts_with("127."),
            "{n}: metrics on the pod network"
        );
        assert!(
            !cfg.kafka.create_dlq_topic,
            "{n}: the operator creates the DLQ topic"
        );
        let core = load_core(&ov);
        assert_eq!(core.kafka_topic, cfg.kafka.topic, "{n}");
        assert_eq!(core.kafka_brokers, cfg.kafka.brokers, "{n}");
    }
}

/// edge-lb: the file it is started with (ConfigMap edge-lb-config, mounted), parsed by
/// `edge_lb::parse_config` (edge-lb's own keys, unknown ones rejected, and pingora's). The
/// core pool is discovered, not listed.
#[test]
fn edge_lb_config_loads_with_edge_lb_parser() {
    for ov in overlays() {
        let n = &ov.name;
        let e = ov.get("Deployment", "edge-lb");
        let c = container(e, "edge-lb");
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let conf_path = args
            .windows(2)
            .find(|w| w[0] == "-c")
            .map(|w| w[1])
            .expect("edge-lb -c <file>");
        let text = mounted_file(&ov, e, c, conf_path);
        let (_server, edge) =
            edge_lb::parse_config(&text).unwrap_or_else(|err| panic!("{n}: edge-lb: {err}"));
        let pool = edge.pool(&edge.routes.websocket).expect("websocket pool");
        assert!(pool.backends.is_empty(), "{n}: core pods are discovered");
        let dns = &pool.discovery.as_ref().expect("discovery").dns;
        assert!(
            dns.remove_after >= dns.interval * 2,
            "{n}: remove_after must outlast a missed answer or two"
        );
        assert_eq!(edge.routes.http, edge.routes.websocket, "{n}");
        assert!(
            !edge.admin_listen.starts_with("127."),
            "{n}: probes need the pod network"
        );
        for s in edge.listen.iter() {
            assert!(!s.starts_with("127."), "{n}: {s}");
        }
        assert_eq!(
            all_containers(e).len(),
            1,
            "{n}: edge-lb discovers by itself, no sidecar"
        );
    }
}

/// Every key set in core.toml is in docs/core.md's configuration table.
#[test]
fn configmap_keys_are_documented() {
    let core_md = read("docs/core.md");
    for ov in overlays() {
        let cfg: toml::Table = toml::from_str(&ov.config_data("core-config", "core.toml")).unwrap();
        for k in cfg.keys() {
            assert!(
                in_table(&core_md, k),
                "core key {k} not in docs/core.md's table"
            );
        }
        let t: Value =
            serde_yaml::from_str(&ov.config_data("edge-lb-config", "edge-lb.yaml")).unwrap();
        let edge_md = read("docs/edge-lb.md");
        for (k, v) in t["edge_lb"].as_object().unwrap() {
            if let Some(m) = v.as_object() {
                for sub in m.keys() {
                    assert!(
                        in_table(&edge_md, &format!("edge_lb.{k}.{sub}")),
                        "edge_lb.{k}.{sub} not in docs/edge-lb.md"
                    );
                }
            } else if k == "pools" {
                // pools[].name, pools[].discovery.dns.*, …
                for pool in v.as_array().unwrap() {
                    for (pk, pv) in pool.as_object().unwrap() {
                        let mut keys = vec![format!("edge_lb.pools[].{pk}")];
                        if let Some(d) = pv.as_object() {
                            keys = d
                                .iter()
                                .flat_map(|(dk, dv)| {
                                    let pre = format!("edge_lb.pools[].{pk}.{dk}");
                                    dv.as_object()
                                        .map(|m| m.keys().map(|s| format!("{pre}.{s}")).collect())
                                        .unwrap_or_else(|| vec![pre.clone()])
                                })
                                .collect();
                        }
                        for key in keys {
                            assert!(in_table(&edge_md, &key), "{key} not in docs/edge-lb.md");
                        }
                    }
                }
            } else {
                assert!(
                    in_table(&edge_md, &format!("edge_lb.{k}")),
                    "edge_lb.{k} not in docs/edge-lb.md"
                );
            }
        }
    }
}

/// `key` in backticks on a table row of a Markdown document.
fn in_table(md: &str, key: &str) -> bool {
    let needle = format!("`{key}`");
    md.lines()
        .any(|l| l.trim_start().starts_with('|') && l.contains(&needle))
}

/// `500ms`, `2s`, `1m` → milliseconds (the subset edge-lb's durations use here).
fn humantime_ms(s: &str) -> u64 {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().unwrap_or_else(|_| panic!("duration {s:?}"));
    match unit {
        "ms" => n,
        "s" | "" => n * 1000,
        "m" => n * 60_000,
        _ => panic!("duration {s:?}: unknown unit"),
    }
}

/// Production is HTTPS/WSS only: the public Service exposes 443 alone, aimed at the
/// container port edge-lb's TLS listener binds; edge-lb has no plain listener; the
/// certificate and key it reads are on the mounted `edge-lb-tls` Secret (cert-manager's
/// `tls.crt` / `tls.key`), which docs/deploy.md tells the operator to create; the
/// NetworkPolicy admits clients on that port.
#[test]
fn production_serves_https_only() {
    let ov = overlays()
        .into_iter()
        .find(|o| o.name == "production")
        .expect("production overlay");
    let service = ov.get("Service", "edge-lb");
    let ports = service["spec"]["ports"].as_array().expect("ports");
    assert_eq!(ports.len(), 1, "production exposes one port: {ports:?}");
    assert_eq!(ports[0]["port"], 443);
    let e = ov.get("Deployment", "edge-lb");
    let c = container(e, "edge-lb");
    let target = container_port(c, &ports[0]["targetPort"]);

    let text = mounted_file(&ov, e, c, "/etc/edge-lb/edge-lb.yaml");
    let (_server, edge) = edge_lb::parse_config(&text).expect("edge-lb config");
    assert!(
        edge.listen.is_empty(),
        "no plain listener: {:?}",
        edge.listen
    );
    let tls = edge.tls.as_ref().expect("a TLS listener");
    assert!(
        tls.listen.iter().any(|l| port_of(l) == target),
        "the Service's target port {target} is a TLS listener: {:?}",
        tls.listen
    );
    let spec = pod_spec(e);
    for file in [&tls.cert, &tls.key] {
        let file = file.to_str().expect("utf-8 path");
        let mount = c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| {
                m["mountPath"]
                    .as_str()
                    .is_some_and(|p| file.starts_with(&format!("{p}/")))
            })
            .unwrap_or_else(|| panic!("{file} is on no mounted volume"));
        let volume = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == mount["name"])
            .expect("the mount's volume");
        assert_eq!(volume["secret"]["secretName"], "edge-lb-tls", "{file}");
        let key = file.rsplit('/').next().unwrap_or_default();
        assert!(
            ["tls.crt", "tls.key"].contains(&key),
            "{file}: a kubernetes.io/tls key"
        );
    }
    let deploy_md = read("docs/deploy.md");
    assert!(
        deploy_md.contains("edge-lb-tls") && deploy_md.contains("cert-manager"),
        "docs/deploy.md documents the edge-lb-tls Secret"
    );
    let policy = ov.get("NetworkPolicy", "edge-lb");
    assert!(
        policy["spec"]["ingress"][0]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["port"] == target),
        "clients may reach port {target}"
    );
}
