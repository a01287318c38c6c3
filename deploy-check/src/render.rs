//! Rendering a kustomization with the real `kustomize build` (pinned in
//! `deploy/tools/versions`), and reading the objects it prints.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::tools::{self, ToolError};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("kustomize build {dir}: {output}")]
    Failed { dir: String, output: String },
    #[error("kustomize build {dir} printed YAML that does not parse: {err}")]
    Yaml { dir: String, err: serde_yaml::Error },
}

/// `kustomize build <dir>`: the rendered YAML stream.
pub fn build_yaml(dir: &Path) -> Result<String, RenderError> {
    let t = tools::tools()?;
    let out = tools::run(
        Command::new(&t.kustomize).arg("build").arg(dir),
        None,
        Duration::from_secs(120),
    )?;
    if !out.ok() {
        return Err(RenderError::Failed {
            dir: dir.display().to_string(),
            output: out.text(),
        });
    }
    Ok(out.stdout)
}

/// `kustomize build <dir>`: the rendered objects, in kustomize's order.
pub fn build(dir: &Path) -> Result<Vec<Value>, RenderError> {
    let yaml = build_yaml(dir)?;
    parse_stream(&yaml).map_err(|err| RenderError::Yaml {
        dir: dir.display().to_string(),
        err,
    })
}

/// The documents of a YAML stream, empty ones skipped.
pub fn parse_stream(yaml: &str) -> Result<Vec<Value>, serde_yaml::Error> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v: Value = serde::Deserialize::deserialize(doc)?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// `metadata.name`, or "" without one.
pub fn obj_name(o: &Value) -> &str {
    o.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `kind`, or "" without one.
pub fn obj_kind(o: &Value) -> &str {
    o.get("kind").and_then(Value::as_str).unwrap_or("")
}
