//! Offline validation against the Kubernetes API schema: every object is deserialised into
//! its `k8s-openapi` type (Kubernetes 1.33 API) and serialised back. A type error fails the
//! first step; a field the API does not have (a typo, a field at the wrong level) is
//! silently dropped by the first step and so fails the comparison of the second.

use k8s_openapi::api::{apps, batch, core, networking, policy};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("{what}: kind {kind} of {api_version} is not one deploy-check knows")]
    UnknownKind {
        what: String,
        api_version: String,
        kind: String,
    },
    #[error("{what}: does not match the {kind} schema: {message}")]
    Invalid {
        what: String,
        kind: String,
        message: String,
    },
    #[error("{what}: fields not in the Kubernetes API (or not round-tripping): {paths:?}")]
    UnknownFields { what: String, paths: Vec<String> },
}

fn roundtrip<T>(v: &Value) -> Result<Value, String>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let typed: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

/// Validates one object; `what` names it in errors.
pub fn validate(o: &Value) -> Result<(), SchemaError> {
    let api_version = o.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = o.get("kind").and_then(Value::as_str).unwrap_or("");
    let what = format!(
        "{kind}/{}",
        o.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("?")
    );
    let back = match (api_version, kind) {
        ("v1", "Namespace") => roundtrip::<core::v1::Namespace>(o),
        ("v1", "ConfigMap") => roundtrip::<core::v1::ConfigMap>(o),
        ("v1", "Secret") => roundtrip::<core::v1::Secret>(o),
        ("v1", "Service") => roundtrip::<core::v1::Service>(o),
        ("v1", "ServiceAccount") => roundtrip::<core::v1::ServiceAccount>(o),
        ("apps/v1", "Deployment") => roundtrip::<apps::v1::Deployment>(o),
        ("apps/v1", "StatefulSet") => roundtrip::<apps::v1::StatefulSet>(o),
        ("batch/v1", "Job") => roundtrip::<batch::v1::Job>(o),
        ("policy/v1", "PodDisruptionBudget") => roundtrip::<policy::v1::PodDisruptionBudget>(o),
        ("networking.k8s.io/v1", "NetworkPolicy") => roundtrip::<networking::v1::NetworkPolicy>(o),
        _ => {
            return Err(SchemaError::UnknownKind {
                what,
                api_version: api_version.into(),
                kind: kind.into(),
            })
        }
    }
    .map_err(|message| SchemaError::Invalid {
        what: what.clone(),
        kind: kind.into(),
        message,
    })?;
    let mut paths = Vec::new();
    diff("", o, &back, &mut paths);
    if paths.is_empty() {
        Ok(())
    } else {
        Err(SchemaError::UnknownFields { what, paths })
    }
}

/// Paths where `orig` has something `back` does not reproduce.
fn diff(path: &str, orig: &Value, back: &Value, out: &mut Vec<String>) {
    match (orig, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(w) => diff(&p, v, w, out),
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}[{i}]"), v, w, out);
            }
        }
        (a, b) if a == b => {}
        _ => out.push(format!("{path} ({orig} became {back})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn catches_types_and_unknown_fields() {
        let ok = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"},
            "spec": {"ports": [{"port": 80, "targetPort": "http"}], "clusterIP": "None"}});
        validate(&ok).unwrap();
        let typo = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"},
            "spec": {"ports": [{"port": 80, "targetPrt": "http"}]}});
        let e = validate(&typo).unwrap_err().to_string();
        assert!(e.contains("spec.ports[0].targetPrt"), "{e}");
        let wrong_type = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"},
            "spec": {"ports": [{"port": "eighty"}]}});
        assert!(matches!(
            validate(&wrong_type),
            Err(SchemaError::Invalid { .. })
        ));
        let unknown = json!({"apiVersion": "v9", "kind": "Thing", "metadata": {"name": "a"}});
        assert!(matches!(
            validate(&unknown),
            Err(SchemaError::UnknownKind { .. })
        ));
    }
}
