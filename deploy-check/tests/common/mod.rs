//! Helpers shared by the test files: rendered overlays (`kustomize build`), object lookup,
//! env resolution.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use deploy_check::render::{self, obj_kind, obj_name};
use serde_json::Value;

pub struct Overlay {
    pub name: String,
    pub dir: PathBuf,
    pub objects: Vec<Value>,
}

impl Overlay {
    pub fn get(&self, kind: &str, name: &str) -> &Value {
        self.find(kind, name)
            .unwrap_or_else(|| panic!("overlay {}: no {kind} named {name}", self.name))
    }

    pub fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| obj_kind(o) == kind && obj_name(o) == name)
    }

    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects.iter().filter(move |o| obj_kind(o) == kind)
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Value> {
        self.objects
            .iter()
            .filter(|o| matches!(obj_kind(o), "Deployment" | "StatefulSet"))
    }

    /// A ConfigMap's data entry.
    pub fn config_data(&self, name: &str, key: &str) -> String {
        self.get("ConfigMap", name)
            .pointer(&format!("/data/{key}"))
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("overlay {}: ConfigMap {name} has no key {key}", self.name))
            .to_string()
    }

    /// A Secret's value: from the rendered Secret, or, for a Secret the operator supplies
    /// (production), a stand-in value of the documented form.
    pub fn secret_value(&self, name: &str, key: &str) -> Option<String> {
        if let Some(s) = self.find("Secret", name) {
            let b64 = s.pointer(&format!("/data/{key}")).and_then(Value::as_str)?;
            // kustomize folds long base64 values over several lines (YAML reads the
            // breaks as spaces)
            let b64: String = b64.split_whitespace().collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("secret data is base64");
            return Some(String::from_utf8(bytes).expect("secret data is UTF-8"));
        }
        external_secret_stand_in(name, key).map(String::from)
    }
}

/// Secrets the production overlay expects the operator to create (docs/deploy.md), with
/// values of the documented form, used to check what the binaries would load.
pub const EXTERNAL_SECRETS: &[(&str, &str, &str)] = &[
    ("quiz-secrets", "token-secret", "0123456789abcdef0123456789abcdef"),
    ("quiz-secrets", "admin-key", "fedcba9876543210fedcba9876543210"),
    (
        "quiz-secrets",
        "redis-nodes",
        "redis://:password@redis-0.redis.example.internal:6379,redis://:password@redis-1.redis.example.internal:6379",
    ),
    (
        "quiz-secrets",
        "mongodb-uri",
        "mongodb://persister:password@mongo-0.example.internal:27017,mongo-1.example.internal:27017,mongo-2.example.internal:27017/?replicaSet=rs0&w=majority",
    ),
];

fn external_secret_stand_in(name: &str, key: &str) -> Option<&'static str> {
    EXTERNAL_SECRETS
        .iter()
        .find(|(n, k, _)| *n == name && *k == key)
        .map(|(_, _, v)| *v)
}

pub fn overlays() -> Vec<Overlay> {
    let dirs = deploy_check::overlays();
    assert!(
        dirs.len() >= 2,
        "expected the dev and production overlays, found {dirs:?}"
    );
    dirs.into_iter()
        .map(|dir| Overlay {
            name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            objects: render::build(&dir).unwrap_or_else(|e| panic!("render: {e}")),
            dir,
        })
        .collect()
}

pub fn pod_spec(o: &Value) -> &Value {
    o.pointer("/spec/template/spec")
        .unwrap_or_else(|| panic!("{} has no pod template", obj_name(o)))
}

pub fn container<'a>(o: &'a Value, name: &str) -> &'a Value {
    pod_spec(o)["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            pod_spec(o)["initContainers"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{}: no container {name}", obj_name(o)))
}

pub fn all_containers(o: &Value) -> Vec<&Value> {
    let spec = pod_spec(o);
    spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["initContainers"].as_array().into_iter().flatten())
        .collect()
}

/// The environment a container gets, references resolved (`fieldRef` → `field_values`).
/// Optional references to missing keys are left out, as the kubelet does.
pub fn resolved_env(
    ov: &Overlay,
    c: &Value,
    field_values: &BTreeMap<&str, String>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().expect("env name").to_string();
        if let Some(v) = e["value"].as_str() {
            env.insert(name, v.to_string());
            continue;
        }
        let from = &e["valueFrom"];
        let optional = |r: &Value| r["optional"].as_bool().unwrap_or(false);
        if let Some(r) = from.get("configMapKeyRef") {
            let cm = ov.find("ConfigMap", r["name"].as_str().unwrap_or(""));
            let v = cm.and_then(|cm| {
                cm.pointer(&format!("/data/{}", r["key"].as_str().unwrap_or("")))
                    .and_then(Value::as_str)
            });
            match v {
                Some(v) => {
                    env.insert(name, v.to_string());
                }
                None if optional(r) => {}
                None => panic!("overlay {}: env {name}: missing ConfigMap key {r}", ov.name),
            }
        } else if let Some(r) = from.get("secretKeyRef") {
            match ov.secret_value(
                r["name"].as_str().unwrap_or(""),
                r["key"].as_str().unwrap_or(""),
            ) {
                Some(v) => {
                    env.insert(name, v);
                }
                None if optional(r) => {}
                None => panic!("overlay {}: env {name}: missing Secret key {r}", ov.name),
            }
        } else if let Some(r) = from.get("fieldRef") {
            let path = r["fieldPath"].as_str().unwrap_or("");
            let v = field_values
                .get(path)
                .unwrap_or_else(|| panic!("env {name}: no test value for fieldRef {path}"));
            env.insert(name, v.clone());
        } else {
            panic!("env {name}: unsupported valueFrom {from}");
        }
    }
    env
}

/// The file a container sees at `path`, from a configMap volume mount.
pub fn mounted_file(ov: &Overlay, workload: &Value, c: &Value, path: &str) -> String {
    let p = Path::new(path);
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let mount = Path::new(m["mountPath"].as_str().unwrap_or("/nonexistent"));
        let Ok(rel) = p.strip_prefix(mount) else {
            continue;
        };
        let vol = pod_spec(workload)["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == m["name"])
            .expect("mounted volume exists");
        let cm = vol["configMap"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{path} is not on a configMap volume"));
        return ov.config_data(cm, &rel.to_string_lossy());
    }
    panic!("{path} is not mounted in {}", c["name"]);
}

pub fn read(rel: &str) -> String {
    let p = deploy_check::repo_root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Port number of `host:port`.
pub fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr} has no port"))
}

/// The containerPort behind a probe's or Service's port (a number or a port name).
pub fn container_port(c: &Value, port: &Value) -> u16 {
    if let Some(n) = port.as_u64() {
        return n as u16;
    }
    let name = port.as_str().expect("port is a number or a name");
    c["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("container {} has no port named {name}", c["name"])) as u16
}

/// `kustomize build` of `dir`, validated by kubeconform (strict); the number of objects.
pub fn render_and_validate(dir: &Path) -> usize {
    let yaml = render::build_yaml(dir).unwrap_or_else(|e| panic!("{e}"));
    deploy_check::kubeconform::validate(&dir.display().to_string(), &yaml)
        .unwrap_or_else(|e| panic!("{e}"))
}
