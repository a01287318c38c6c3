//! deploy-check: the checks of everything under `deploy/` that Kubernetes operators use,
//! with the real tools, offline (no cluster, no Docker engine, no Prometheus server).
//!
//! | module | what it does |
//! |---|---|
//! | [`tools`] | finds the pinned tools (`deploy/tools/install`, `deploy/tools/versions`; promtool from Debian) and runs them with a time limit |
//! | [`render`] | `kustomize build` of an overlay, parsed into objects |
//! | [`kubeconform`] | strict validation of rendered manifests against the pinned Kubernetes version's schemas |
//! | [`promtool`] | `promtool check rules`, `test rules`, `check config` |
//! | [`promql_names`] | the metrics a PromQL expression reads, by Prometheus's own parser |
//! | [`runbooks`] | every alert's `runbook_url` points at a heading of `docs/runbooks.md` |
//! | [`sources`] | lists the metrics each binary registers, from its source |
//! | [`dockerfile`] | parses the Dockerfiles for linting |
//!
//! The checks themselves are the tests in `tests/`: `k8s.rs` (render, schema, references,
//! probes, grace periods, sysctls, sizes, and the configuration each binary would load,
//! parsed with the binaries' own config types), `monitoring.rs` (rules checked and unit
//! tested by promtool, runbooks, dashboard and alert metrics exist), `broken.rs` (a broken
//! manifest or rule, in a copy of the tree, fails the tools), `docker.rs` (Dockerfile
//! lint), `loadtest_job.rs` (the in-cluster load-test Job).
//! `docs/deploy.md` ("How it is checked") lists every check.

pub mod dockerfile;
pub mod kubeconform;
pub mod promql_names;
pub mod promtool;
pub mod render;
pub mod runbooks;
pub mod sources;
pub mod tools;

use std::path::PathBuf;

/// The workspace root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// The overlays CI renders: every directory under `deploy/k8s/overlays`.
pub fn overlays() -> Vec<PathBuf> {
    let dir = repo_root().join("deploy/k8s/overlays");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("kustomization.yaml").is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
