//! The real tools fail on broken input: each test copies part of the tree to a temporary
//! folder, breaks one thing there, and runs the same check as CI on the copy. A check that
//! passed these would be checking nothing.

use std::path::{Path, PathBuf};

use deploy_check::{kubeconform, promtool, render, repo_root, runbooks};
use serde_json::Value;

/// A copy of `rel` (a folder of the repository) under a fresh temporary folder, removed on
/// drop.
struct TreeCopy {
    root: PathBuf,
}

impl TreeCopy {
    fn of(rel: &str, tag: &str) -> TreeCopy {
        let root =
            std::env::temp_dir().join(format!("deploy-check-broken-{tag}-{}", std::process::id()));
        std::fs::remove_dir_all(&root).ok();
        copy_dir(&repo_root().join(rel), &root.join(rel));
        TreeCopy { root }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Replaces the one occurrence of `from` in file `rel`.
    fn edit(&self, rel: &str, from: &str, to: &str) {
        let p = self.path(rel);
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(
            text.matches(from).count(),
            1,
            "{rel}: `{from}` must occur once to be broken"
        );
        std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    }
}

impl Drop for TreeCopy {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.root).ok();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// kubeconform's verdict on `kustomize build` of an overlay in the copy.
fn validate(c: &TreeCopy, overlay: &str) -> Result<usize, kubeconform::ValidateError> {
    let dir = c.path(overlay);
    let yaml = render::build_yaml(&dir).unwrap_or_else(|e| panic!("{e}"));
    kubeconform::validate(overlay, &yaml)
}

const DEV: &str = "deploy/k8s/overlays/dev";

#[test]
fn an_unknown_field_fails_kubeconform() {
    let c = TreeCopy::of("deploy/k8s", "unknown-field");
    // the copy as it is passes: what fails below is the edit
    validate(&c, DEV).unwrap_or_else(|e| panic!("unbroken copy: {e}"));
    c.edit(
        "deploy/k8s/base/core/service-headless.yaml",
        "publishNotReadyAddresses: true",
        "publishNotReadyAdresses: true",
    );
    let e = validate(&c, DEV)
        .expect_err("a misspelt field must fail")
        .to_string();
    assert!(
        e.contains("Service core-headless") && e.contains("publishNotReadyAdresses"),
        "{e}"
    );
}

#[test]
fn a_wrong_type_fails_kubeconform() {
    let c = TreeCopy::of("deploy/k8s", "wrong-type");
    c.edit(
        "deploy/k8s/base/core/statefulset.yaml",
        "containerPort: 8080",
        "containerPort: eighty-eighty",
    );
    let e = validate(&c, DEV)
        .expect_err("a string port must fail")
        .to_string();
    assert!(
        e.contains("StatefulSet core") && e.contains("containerPort"),
        "{e}"
    );
}

#[test]
fn a_kind_without_a_schema_fails_kubeconform() {
    // A custom resource (here a made-up one) is an error, not a silent skip.
    let yaml = "apiVersion: monitoring.example.com/v1\nkind: Thing\nmetadata: {name: x}\n";
    let e = kubeconform::validate("a custom resource", yaml)
        .expect_err("no schema must fail")
        .to_string();
    assert!(e.contains("could not find schema for Thing"), "{e}");
}

#[test]
fn a_broken_kustomization_fails_kustomize() {
    let c = TreeCopy::of("deploy/k8s", "kustomization");
    c.edit(
        "deploy/k8s/overlays/dev/kustomization.yaml",
        "../../base",
        "../../no-such-base",
    );
    let e = render::build_yaml(&c.path(DEV))
        .expect_err("a missing base must fail")
        .to_string();
    assert!(e.contains("no-such-base"), "{e}");
}

const ALERTS: &str = "deploy/monitoring/prometheus-alerts.yaml";
const TESTS: &str = "deploy/monitoring/tests/alerts.test.yaml";

#[test]
fn bad_promql_fails_promtool_check_rules() {
    let c = TreeCopy::of("deploy/monitoring", "promql");
    promtool::check_rules(&[&c.path(ALERTS)]).unwrap_or_else(|e| panic!("unbroken copy: {e}"));
    c.edit(
        ALERTS,
        "rate(quiz_sink_errors_total[5m])",
        "rate(quiz_sink_errors_total[5m]",
    );
    let e = promtool::check_rules(&[&c.path(ALERTS)])
        .expect_err("unbalanced parentheses must fail")
        .to_string();
    assert!(e.contains("parse error"), "{e}");
}

#[test]
fn a_moved_threshold_fails_the_alert_unit_tests() {
    let c = TreeCopy::of("deploy/monitoring", "threshold");
    promtool::test_rules(&c.path(TESTS)).unwrap_or_else(|e| panic!("unbroken copy: {e}"));
    // 1 close per second -> 3: the test where it fires at 2 per second fails
    c.edit(
        ALERTS,
        "(rate(quiz_slow_consumer_closes_total[5m])), \"node\", \"$1\", \"pod\", \"(.*)\") > 1",
        "(rate(quiz_slow_consumer_closes_total[5m])), \"node\", \"$1\", \"pod\", \"(.*)\") > 3",
    );
    let e = promtool::test_rules(&c.path(TESTS))
        .expect_err("a raised threshold must fail the firing test")
        .to_string();
    assert!(e.contains("QuizCoreSlowConsumers"), "{e}");

    // the other way: 1 -> 0.25, and the test where it stays silent at 0.5 per second fails
    let c = TreeCopy::of("deploy/monitoring", "threshold-down");
    c.edit(
        ALERTS,
        "(rate(quiz_slow_consumer_closes_total[5m])), \"node\", \"$1\", \"pod\", \"(.*)\") > 1",
        "(rate(quiz_slow_consumer_closes_total[5m])), \"node\", \"$1\", \"pod\", \"(.*)\") > 0.25",
    );
    let e = promtool::test_rules(&c.path(TESTS))
        .expect_err("a lowered threshold must fail the silent test")
        .to_string();
    assert!(e.contains("QuizCoreSlowConsumers"), "{e}");
}

#[test]
fn a_missing_runbook_is_reported() {
    let c = TreeCopy::of("deploy/monitoring", "runbook");
    c.edit(
        ALERTS,
        "runbook_url: docs/runbooks.md#quizpersisternopartitions\n",
        "",
    );
    let rules: Value =
        serde_yaml::from_str(&std::fs::read_to_string(c.path(ALERTS)).unwrap()).unwrap();
    let doc = std::fs::read_to_string(repo_root().join(runbooks::DOC)).unwrap();
    let p = runbooks::problems(&rules, &doc);
    assert_eq!(
        p,
        vec!["QuizPersisterNoPartitions: no annotations.runbook_url".to_string()]
    );
    // and a dangling anchor
    let doc = doc.replace("### QuizTargetDown", "### QuizTargetGone");
    let p = runbooks::problems(&rules, &doc);
    assert!(
        p.iter()
            .any(|x| x.starts_with("QuizTargetDown:") && x.contains("#quiztargetdown")),
        "{p:?}"
    );
}
