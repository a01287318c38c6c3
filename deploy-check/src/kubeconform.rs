//! Validating rendered manifests with kubeconform, strict (unknown fields fail, duplicate
//! keys fail), against the JSON schemas generated from Kubernetes' OpenAPI spec of the
//! pinned `KUBERNETES_VERSION` (`deploy/tools/install`). A kind without a schema is an
//! error, never a skip: a custom resource needs its CRD's schema added first.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::tools::{self, ToolError};

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("{what}: kubeconform rejects {} of {total} objects:\n{}", .problems.len(), .problems.join("\n"))]
    Invalid {
        what: String,
        total: usize,
        problems: Vec<String>,
    },
    #[error("{what}: kubeconform printed something unexpected ({status}): {output}")]
    Output {
        what: String,
        status: String,
        output: String,
    },
}

/// Validates a YAML stream (`kustomize build`'s output); `what` names it in errors.
/// Succeeds only when every object was validated and valid (none skipped).
pub fn validate(what: &str, yaml: &str) -> Result<usize, ValidateError> {
    let t = tools::tools()?;
    let k8s = t
        .versions
        .get("KUBERNETES_VERSION")
        .map(|v| v.trim_start_matches('v').to_string())
        .ok_or_else(|| {
            ToolError::Missing("deploy/tools/versions has no KUBERNETES_VERSION".into())
        })?;
    let location = t
        .k8s_schemas
        .join("{{ .ResourceKind }}{{ .KindSuffix }}.json");
    let out = tools::run(
        Command::new(&t.kubeconform)
            .args(["-strict", "-summary", "-output", "json"])
            .args(["-kubernetes-version", &k8s])
            .arg("-schema-location")
            .arg(&location)
            .arg("-"),
        Some(yaml.as_bytes()),
        Duration::from_secs(120),
    )?;
    let unexpected = |output: String| ValidateError::Output {
        what: what.into(),
        status: out.status.to_string(),
        output,
    };
    let report: Value = serde_json::from_str(&out.stdout)
        .map_err(|e| unexpected(format!("{e}: {}", out.text())))?;
    let count = |k: &str| {
        report
            .pointer(&format!("/summary/{k}"))
            .and_then(Value::as_u64)
    };
    let (Some(valid), Some(invalid), Some(errors), Some(skipped)) = (
        count("valid"),
        count("invalid"),
        count("errors"),
        count("skipped"),
    ) else {
        return Err(unexpected(out.text()));
    };
    let total = (valid + invalid + errors + skipped) as usize;
    let mut problems: Vec<String> = report["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["status"] != "statusValid")
        .map(|r| {
            format!(
                "  {} {}: {} {}",
                r["kind"].as_str().unwrap_or("?"),
                r["name"].as_str().unwrap_or("?"),
                r["status"].as_str().unwrap_or("?"),
                r["msg"].as_str().unwrap_or("")
            )
        })
        .collect();
    if skipped > 0 && problems.is_empty() {
        problems.push(format!("  {skipped} skipped"));
    }
    if !out.ok() && problems.is_empty() {
        return Err(unexpected(out.text()));
    }
    if problems.is_empty() && out.ok() {
        Ok(valid as usize)
    } else {
        Err(ValidateError::Invalid {
            what: what.into(),
            total,
            problems,
        })
    }
}
