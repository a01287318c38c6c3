//! Lint of deploy/docker/*.Dockerfile (they cannot be built here: no Docker engine).

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::*;
use deploy_check::{dockerfile, repo_root};

/// (Dockerfile, cargo package, binary, port of the health check)
const IMAGES: &[(&str, &str, &str, u16)] = &[
    ("core", "quiz-core", "quiz-core", 8080),
    ("edge-lb", "edge-lb", "edge-lb", 9090),
    ("persister", "persister", "persister", 9464),
];

const BUILD_PACKAGES: &[&str] = &[
    "cmake",
    "libssl-dev",
    "libcurl4-openssl-dev",
    "pkg-config",
    "zlib1g-dev",
    "g++",
];

#[test]
fn every_dockerfile_is_multi_stage_small_non_root_and_health_checked() {
    let root = repo_root();
    for (name, pkg, bin, port) in IMAGES {
        let rel = format!("deploy/docker/{name}.Dockerfile");
        let df = dockerfile::parse(&read(&rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert!(df.stages.len() >= 2, "{rel}: multi-stage");
        let build = &df.stages[0];
        let runtime = df.stages.last().unwrap();
        assert!(
            build.image.starts_with("rust:"),
            "{rel}: build stage {}",
            build.image
        );
        assert!(
            build.image.ends_with("-bookworm"),
            "{rel}: build on bookworm like the runtime"
        );
        assert_eq!(
            runtime.image, "debian:bookworm-slim",
            "{rel}: runtime image"
        );

        // build: the Debian packages the native dependencies need, the right binary
        let runs: String = build
            .all("RUN")
            .map(|i| i.args.clone())
            .collect::<Vec<_>>()
            .join("\n");
        for p in BUILD_PACKAGES {
            assert!(
                runs.split_whitespace().any(|w| w == *p),
                "{rel}: build stage does not install {p}"
            );
        }
        assert!(
            runs.contains(&format!("-p {pkg} ")) && runs.contains(&format!("--bin {bin}")),
            "{rel}: must build -p {pkg} --bin {bin}"
        );
        assert!(runs.contains("--locked"), "{rel}: build with --locked");
        let manifest = read(&format!("{}/Cargo.toml", pkg_dir(pkg)));
        assert!(
            manifest.contains(&format!("name = \"{pkg}\"")),
            "{rel}: package {pkg}"
        );
        assert!(
            manifest.contains(&format!("name = \"{bin}\"")),
            "{rel}: binary {bin}"
        );

        // every COPY source exists; every --from names an earlier stage
        let stage_names: BTreeSet<String> =
            df.stages.iter().filter_map(|s| s.name.clone()).collect();
        for stage in &df.stages {
            for i in stage.all("COPY").chain(stage.all("ADD")) {
                assert!(i.keyword == "COPY", "{rel}:{}: use COPY, not ADD", i.line);
                match dockerfile::copy_sources(&i.args) {
                    Some(srcs) => {
                        assert!(!srcs.is_empty(), "{rel}:{}: COPY without source", i.line);
                        for s in srcs {
                            assert!(
                                root.join(&s).exists(),
                                "{rel}:{}: COPY source {s} does not exist",
                                i.line
                            );
                        }
                    }
                    None => {
                        let from = i
                            .args
                            .split_whitespace()
                            .find_map(|w| w.strip_prefix("--from="))
                            .unwrap();
                        assert!(
                            stage_names.contains(from),
                            "{rel}:{}: --from={from}",
                            i.line
                        );
                        assert!(
                            i.args.contains(&format!("/{bin} ")),
                            "{rel}:{}: copies {bin}",
                            i.line
                        );
                    }
                }
            }
        }

        // runtime: a numeric non-root USER (Kubernetes' runAsNonRoot can verify it)
        let users: Vec<_> = runtime.all("USER").collect();
        assert_eq!(users.len(), 1, "{rel}: one USER in the runtime stage");
        let uid: u32 = users[0]
            .args
            .split(':')
            .next()
            .and_then(|u| u.parse().ok())
            .unwrap_or_else(|| panic!("{rel}: USER must be numeric"));
        assert!(uid >= 1000, "{rel}: USER {uid} is not an unprivileged uid");
        assert_eq!(uid, 10001, "{rel}: the manifests' runAsUser is 10001");
        let user_line = users[0].line;
        for i in runtime.all("RUN") {
            assert!(
                i.line < user_line,
                "{rel}: RUN after USER would run unprivileged"
            );
        }
        let runtime_runs: String = runtime.all("RUN").map(|i| i.args.clone()).collect();
        assert!(
            runtime_runs.contains("rm -rf /var/lib/apt/lists/*"),
            "{rel}: apt lists removed"
        );
        assert!(
            !runtime_runs.contains("-dev"),
            "{rel}: no -dev packages at runtime"
        );

        // health check on the binary's real endpoint and port
        let hc: Vec<_> = runtime.all("HEALTHCHECK").collect();
        assert_eq!(hc.len(), 1, "{rel}: HEALTHCHECK");
        assert!(
            hc[0]
                .args
                .contains(&format!("http://127.0.0.1:{port}/healthz")),
            "{rel}: HEALTHCHECK must hit /healthz on {port}: {}",
            hc[0].args
        );
        assert!(
            runtime_runs.contains("curl"),
            "{rel}: curl is installed for the HEALTHCHECK"
        );
        let expose: String = runtime.all("EXPOSE").map(|i| i.args.clone()).collect();
        assert!(
            expose.split_whitespace().any(|p| p == port.to_string()),
            "{rel}: EXPOSE {port}"
        );

        // exec-form entrypoint through the rlimit script, then the binary
        let ep = runtime.all("ENTRYPOINT").last().expect("ENTRYPOINT");
        assert!(ep.args.starts_with('['), "{rel}: exec-form ENTRYPOINT");
        let cmd = runtime.all("CMD").last().expect("CMD");
        assert!(
            cmd.args.contains(&format!("/usr/local/bin/{bin}")),
            "{rel}: CMD runs {bin}"
        );

        // the dockerignore keeps the build context small
        let ignore = read(&format!("deploy/docker/{name}.Dockerfile.dockerignore"));
        for p in ["target/", ".stack/"] {
            assert!(ignore.lines().any(|l| l.trim() == p), "{rel}: ignore {p}");
        }
    }
}

/// The ports the images default to are the ones their health checks use.
#[test]
fn image_defaults_listen_where_the_health_check_looks() {
    let core = dockerfile::parse(&read("deploy/docker/core.Dockerfile")).unwrap();
    let env: String = core
        .stages
        .last()
        .unwrap()
        .all("ENV")
        .map(|i| i.args.clone())
        .collect();
    assert!(env.contains("QUIZ_LISTEN=0.0.0.0:8080"), "{env}");
    let p = dockerfile::parse(&read("deploy/docker/persister.Dockerfile")).unwrap();
    let env: String = p
        .stages
        .last()
        .unwrap()
        .all("ENV")
        .map(|i| i.args.clone())
        .collect();
    assert!(env.contains("PERSISTER_HTTP_LISTEN=0.0.0.0:9464"), "{env}");
    // edge-lb's admin port comes from its configuration (admin_listen)
    let t: serde_json::Value =
        serde_yaml::from_str(&read("deploy/k8s/base/edge-lb/edge-lb.yaml")).unwrap();
    assert_eq!(
        port_of(t["edge_lb"]["admin_listen"].as_str().unwrap()),
        9090
    );
}

/// Every image the manifests use has a Dockerfile here.
#[test]
fn every_manifest_image_has_a_dockerfile() {
    for ov in overlays() {
        for w in ov.workloads() {
            for c in all_containers(w) {
                let image = c["image"].as_str().unwrap();
                let repo = image.split(':').next().unwrap_or(image);
                let repo = image.rsplit_once(':').map_or(repo, |(r, _)| r);
                let name = repo.rsplit('/').next().unwrap();
                assert!(
                    repo_root()
                        .join(format!("deploy/docker/{name}.Dockerfile"))
                        .is_file(),
                    "overlay {}: image {image} has no deploy/docker/{name}.Dockerfile",
                    ov.name
                );
            }
        }
    }
}

#[test]
fn shell_scripts_parse() {
    // The images' only script (edge-lb discovers core by itself, no sidecar script).
    let (shell, script) = ("sh", "deploy/docker/entrypoint.sh");
    {
        let path = repo_root().join(script);
        let out = Command::new(shell)
            .arg("-n")
            .arg(&path)
            .output()
            .expect("run shell");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert!(mode & 0o111 != 0, "{script} must be executable");
    }
}

/// The entrypoint raises the soft open-file limit and execs its arguments.
#[test]
fn entrypoint_raises_the_open_file_limit() {
    let out = Command::new("sh")
        .arg(repo_root().join("deploy/docker/entrypoint.sh"))
        .args(["sh", "-c", "ulimit -Sn; ulimit -Hn"])
        .env("QUIZ_NOFILE", "4096")
        .output()
        .expect("run entrypoint");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let soft: u64 = lines.next().unwrap().parse().unwrap();
    let hard = lines.next().unwrap();
    let expected = match hard.parse::<u64>() {
        Ok(h) => h.min(4096),
        Err(_) => 4096,
    };
    assert_eq!(
        soft,
        expected,
        "soft limit; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pkg_dir(pkg: &str) -> &'static str {
    match pkg {
        "quiz-core" => "core",
        "edge-lb" => "edge-lb",
        "persister" => "persister",
        other => panic!("unknown package {other}"),
    }
}
