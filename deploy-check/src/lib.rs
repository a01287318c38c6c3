//! deploy-check: offline checks of everything under `deploy/` that Kubernetes operators use.
//!
//! No cluster, no Docker engine, no `kustomize` binary needed:
//!
//! | module | what it does |
//! |---|---|
//! | [`kustomize`] | renders `deploy/k8s/overlays/*` (the subset of kustomize the manifests use) |
//! | [`schema`] | validates each rendered object against the Kubernetes 1.33 API (k8s-openapi round trip) |
//! | [`sources`] | lists the metrics each binary registers, from its source |
//! | [`promql`] | lists the metrics a PromQL expression reads |
//! | [`dockerfile`] | parses the Dockerfiles for linting |
//!
//! The checks themselves are the tests in `tests/`: `k8s.rs` (render, schema, references,
//! probes, grace periods, sysctls, sizes, and the configuration each binary would load,
//! parsed with the binaries' own config types), `monitoring.rs` (dashboard and alert
//! metrics exist), `docker.rs` (Dockerfile lint), `loadtest_job.rs` (the in-cluster
//! load-test Job).
//! `docs/deploy.md` ("How it is checked") lists every check.

pub mod dockerfile;
pub mod kustomize;
pub mod promql;
pub mod schema;
pub mod sources;

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
