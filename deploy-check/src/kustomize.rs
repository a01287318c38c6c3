//! A kustomize renderer for the subset of kustomize that `deploy/k8s/` uses, so CI can
//! render every overlay without a `kustomize` binary.
//!
//! Supported `Kustomization` fields (anything else is an error, so the manifests cannot
//! drift into features this renderer does not understand):
//!
//! | field | semantics (as kustomize v5) |
//! |---|---|
//! | `resources` | YAML files (several documents each) or directories with a kustomization |
//! | `namespace` | `metadata.namespace` of every namespaced object |
//! | `labels[].pairs` | added to `metadata.labels` only (`includeSelectors`/`includeTemplates` must be absent or false) |
//! | `images[]` | `name` → `newName`, `newTag` / `digest` in every container and init container |
//! | `replicas[]` | `spec.replicas` of the Deployment / StatefulSet of that name |
//! | `configMapGenerator[]`, `secretGenerator[]` | `files` (`key=path` or `path`), `literals` (`key=value`), `behavior` `create`/`merge`/`replace`, Secret `type` |
//! | `generatorOptions.disableNameSuffixHash` | must be `true` (no hash suffixes, so no reference rewriting) |
//! | `patches[]` | `path` or `patch`; a JSON array is a JSON 6902 patch (`add`/`replace`/`remove`) applied to `target` (`kind`, `name`); an object is a strategic merge patch, accepted only without lists (then it equals a JSON merge patch, RFC 7386) |
//!
//! Order, as kustomize: resources (bases built first, with their own transformers),
//! generators, patches, then namespace, labels, images, replicas.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    At { path: PathBuf, message: String },
}

fn err(path: &Path, message: impl Into<String>) -> Error {
    Error::At {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Kinds that live outside namespaces (the only ones `deploy/k8s` could use).
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "StorageClass",
];

const KNOWN_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "labels",
    "images",
    "replicas",
    "configMapGenerator",
    "secretGenerator",
    "generatorOptions",
    "patches",
];

/// Renders the kustomization in `dir` into its list of objects.
pub fn build(dir: &Path) -> Result<Vec<Value>, Error> {
    let kpath = dir.join("kustomization.yaml");
    let text = std::fs::read_to_string(&kpath).map_err(|e| err(&kpath, e.to_string()))?;
    let k: Value = serde_yaml::from_str(&text).map_err(|e| err(&kpath, e.to_string()))?;
    let k = k
        .as_object()
        .ok_or_else(|| err(&kpath, "not a mapping"))?
        .clone();
    for key in k.keys() {
        if !KNOWN_FIELDS.contains(&key.as_str()) {
            return Err(err(
                &kpath,
                format!("kustomization field `{key}` is not supported by deploy-check's renderer"),
            ));
        }
    }
    if k.get("kind").and_then(Value::as_str) != Some("Kustomization") {
        return Err(err(&kpath, "kind must be Kustomization"));
    }

    // 1. resources
    let mut objects = Vec::new();
    for r in strings(&k, "resources", &kpath)? {
        let p = dir.join(&r);
        if p.is_dir() {
            objects.extend(build(&p)?);
        } else {
            objects.extend(read_objects(&p)?);
        }
    }

    // 2. generators
    if let Some(opts) = k.get("generatorOptions") {
        if opts.get("disableNameSuffixHash") != Some(&Value::Bool(true)) {
            return Err(err(
                &kpath,
                "generatorOptions.disableNameSuffixHash must be true (hash suffixes are not rendered)",
            ));
        }
    } else if k.contains_key("configMapGenerator") || k.contains_key("secretGenerator") {
        return Err(err(
            &kpath,
            "generators need generatorOptions.disableNameSuffixHash: true",
        ));
    }
    for (field, kind) in [
        ("configMapGenerator", "ConfigMap"),
        ("secretGenerator", "Secret"),
    ] {
        for g in array(&k, field, &kpath)? {
            generate(dir, &kpath, &g, kind, &mut objects)?;
        }
    }

    // 3. patches
    for p in array(&k, "patches", &kpath)? {
        apply_patch(dir, &kpath, &p, &mut objects)?;
    }

    // 4. namespace
    if let Some(ns) = k.get("namespace").and_then(Value::as_str) {
        for o in &mut objects {
            let kind = o.get("kind").and_then(Value::as_str).unwrap_or("");
            if !CLUSTER_SCOPED.contains(&kind) {
                meta_mut(o).insert("namespace".into(), Value::String(ns.into()));
            }
        }
    }

    // 5. labels (metadata only)
    for l in array(&k, "labels", &kpath)? {
        for flag in ["includeSelectors", "includeTemplates"] {
            if l.get(flag).is_some_and(|v| v != &Value::Bool(false)) {
                return Err(err(&kpath, format!("labels[].{flag} is not supported")));
            }
        }
        let pairs = l
            .get("pairs")
            .and_then(Value::as_object)
            .ok_or_else(|| err(&kpath, "labels[].pairs must be a mapping"))?;
        for o in &mut objects {
            let meta = meta_mut(o);
            let labels = meta
                .entry("labels")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(labels) = labels.as_object_mut() {
                for (key, v) in pairs {
                    labels.insert(key.clone(), v.clone());
                }
            }
        }
    }

    // 6. images
    for img in array(&k, "images", &kpath)? {
        let name = img
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| err(&kpath, "images[].name is required"))?;
        for o in &mut objects {
            for c in containers_mut(o) {
                let Some(image) = c.get("image").and_then(Value::as_str) else {
                    continue;
                };
                let (repo, tag) = split_image(image);
                if repo != name {
                    continue;
                }
                let new_repo = img.get("newName").and_then(Value::as_str).unwrap_or(repo);
                let new = if let Some(d) = img.get("digest").and_then(Value::as_str) {
                    format!("{new_repo}@{d}")
                } else if let Some(t) = img.get("newTag").and_then(Value::as_str) {
                    format!("{new_repo}:{t}")
                } else {
                    format!("{new_repo}{tag}")
                };
                c.insert("image".into(), Value::String(new));
            }
        }
    }

    // 7. replicas
    for r in array(&k, "replicas", &kpath)? {
        let name = r.get("name").and_then(Value::as_str);
        let count = r.get("count").and_then(Value::as_u64);
        let (Some(name), Some(count)) = (name, count) else {
            return Err(err(&kpath, "replicas[] needs name and count"));
        };
        let mut found = false;
        for o in &mut objects {
            let kind = o.get("kind").and_then(Value::as_str).unwrap_or("");
            if matches!(kind, "Deployment" | "StatefulSet" | "ReplicaSet") && obj_name(o) == name {
                if let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.insert("replicas".into(), Value::from(count));
                    found = true;
                }
            }
        }
        if !found {
            return Err(err(&kpath, format!("replicas: no workload named {name}")));
        }
    }
    Ok(objects)
}

/// Every YAML document of a file (empty documents skipped).
pub fn read_objects(path: &Path) -> Result<Vec<Value>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| err(path, e.to_string()))?;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value =
            serde::Deserialize::deserialize(doc).map_err(|e| err(path, e.to_string()))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

pub fn obj_name(o: &Value) -> &str {
    o.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub fn obj_kind(o: &Value) -> &str {
    o.get("kind").and_then(Value::as_str).unwrap_or("")
}

fn meta_mut(o: &mut Value) -> &mut Map<String, Value> {
    if !o.get("metadata").is_some_and(Value::is_object) {
        o.as_object_mut()
            .map(|m| m.insert("metadata".into(), Value::Object(Map::new())));
    }
    o.get_mut("metadata")
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| unreachable!("metadata was just made an object"))
}

/// The containers and init containers of a workload's pod template (or a Pod).
pub fn containers_mut(o: &mut Value) -> Vec<&mut Map<String, Value>> {
    let spec = if o.get("kind").and_then(Value::as_str) == Some("Pod") {
        o.get_mut("spec")
    } else {
        o.pointer_mut("/spec/template/spec")
    };
    let Some(spec) = spec.and_then(Value::as_object_mut) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, list) in spec.iter_mut() {
        if key == "containers" || key == "initContainers" {
            if let Some(list) = list.as_array_mut() {
                out.extend(list.iter_mut().filter_map(Value::as_object_mut));
            }
        }
    }
    out
}

/// `repo[:tag|@digest]` → (repo, ":tag" / "@digest" / "").
fn split_image(image: &str) -> (&str, &str) {
    if let Some(at) = image.find('@') {
        return image.split_at(at);
    }
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].find(':') {
        Some(c) => image.split_at(slash + c),
        None => (image, ""),
    }
}

fn array(k: &Map<String, Value>, field: &str, path: &Path) -> Result<Vec<Value>, Error> {
    match k.get(field) {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => Ok(a.clone()),
        Some(_) => Err(err(path, format!("{field} must be a list"))),
    }
}

fn strings(k: &Map<String, Value>, field: &str, path: &Path) -> Result<Vec<String>, Error> {
    array(k, field, path)?
        .into_iter()
        .map(|v| {
            v.as_str()
                .map(String::from)
                .ok_or_else(|| err(path, format!("{field}[] must be strings")))
        })
        .collect()
}

fn generate(
    dir: &Path,
    kpath: &Path,
    g: &Value,
    kind: &str,
    objects: &mut Vec<Value>,
) -> Result<(), Error> {
    let known = ["name", "behavior", "files", "literals", "type"];
    let gm = g
        .as_object()
        .ok_or_else(|| err(kpath, "generator must be a mapping"))?;
    for key in gm.keys() {
        if !known.contains(&key.as_str()) || (key == "type" && kind != "Secret") {
            return Err(err(
                kpath,
                format!("generator field `{key}` is not supported"),
            ));
        }
    }
    let name = g
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| err(kpath, "generator needs a name"))?;
    let mut data = BTreeMap::new();
    for f in strings(gm, "files", kpath)? {
        let (key, file) = match f.split_once('=') {
            Some((key, file)) => (key.to_string(), file.to_string()),
            None => (
                Path::new(&f)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                f.clone(),
            ),
        };
        let p = dir.join(&file);
        let text = std::fs::read_to_string(&p).map_err(|e| err(&p, e.to_string()))?;
        data.insert(key, text);
    }
    for l in strings(gm, "literals", kpath)? {
        let (key, value) = l
            .split_once('=')
            .ok_or_else(|| err(kpath, format!("literal `{l}` is not key=value")))?;
        data.insert(key.to_string(), value.to_string());
    }
    let encode = |v: &str| -> Value {
        if kind == "Secret" {
            Value::String(base64::engine::general_purpose::STANDARD.encode(v))
        } else {
            Value::String(v.to_string())
        }
    };
    let data: Map<String, Value> = data.iter().map(|(k, v)| (k.clone(), encode(v))).collect();
    let behavior = g
        .get("behavior")
        .and_then(Value::as_str)
        .unwrap_or("create");
    let existing = objects
        .iter_mut()
        .find(|o| obj_kind(o) == kind && obj_name(o) == name);
    match (behavior, existing) {
        ("create", None) => {
            let mut o = serde_json::json!({
                "apiVersion": "v1",
                "kind": kind,
                "metadata": {"name": name},
                "data": data,
            });
            if kind == "Secret" {
                let t = g.get("type").and_then(Value::as_str).unwrap_or("Opaque");
                o["type"] = Value::String(t.into());
            }
            objects.push(o);
        }
        ("create", Some(_)) => {
            return Err(err(
                kpath,
                format!("{kind} {name} already exists (use behavior: merge or replace)"),
            ))
        }
        ("merge", Some(o)) => {
            let d = o
                .as_object_mut()
                .map(|m| m.entry("data").or_insert_with(|| Value::Object(Map::new())));
            if let Some(Value::Object(d)) = d {
                d.extend(data);
            }
        }
        ("replace", Some(o)) => {
            o["data"] = Value::Object(data);
        }
        (b, None) if b == "merge" || b == "replace" => {
            return Err(err(kpath, format!("{kind} {name}: nothing to {b}")))
        }
        (b, _) => return Err(err(kpath, format!("generator behavior `{b}` is unknown"))),
    }
    Ok(())
}

fn apply_patch(dir: &Path, kpath: &Path, p: &Value, objects: &mut [Value]) -> Result<(), Error> {
    let (text, where_) = match (
        p.get("path").and_then(Value::as_str),
        p.get("patch").and_then(Value::as_str),
    ) {
        (Some(file), None) => {
            let fp = dir.join(file);
            (
                std::fs::read_to_string(&fp).map_err(|e| err(&fp, e.to_string()))?,
                fp,
            )
        }
        (None, Some(inline)) => (inline.to_string(), kpath.to_path_buf()),
        _ => return Err(err(kpath, "a patch needs exactly one of path, patch")),
    };
    let patch: Value = serde_yaml::from_str(&text).map_err(|e| err(&where_, e.to_string()))?;
    let target = p.get("target");
    let t_kind = target.and_then(|t| t.get("kind")).and_then(Value::as_str);
    let t_name = target.and_then(|t| t.get("name")).and_then(Value::as_str);
    if let Some(t) = target.and_then(Value::as_object) {
        for key in t.keys() {
            if !matches!(key.as_str(), "kind" | "name") {
                return Err(err(
                    kpath,
                    format!("patch target field `{key}` is not supported"),
                ));
            }
        }
    }
    match &patch {
        Value::Array(ops) => {
            let (Some(kind), Some(name)) = (t_kind, t_name) else {
                return Err(err(&where_, "a JSON 6902 patch needs target kind and name"));
            };
            let o = find(objects, kind, name)
                .ok_or_else(|| err(&where_, format!("no {kind} named {name}")))?;
            for op in ops {
                json6902(o, op).map_err(|m| err(&where_, m))?;
            }
        }
        Value::Object(_) => {
            if has_list(&patch) {
                return Err(err(
                    &where_,
                    "strategic merge patches with lists are not supported (their merge keys differ from a JSON merge patch); use a JSON 6902 patch",
                ));
            }
            let kind = t_kind.unwrap_or_else(|| obj_kind(&patch));
            let name = t_name.unwrap_or_else(|| obj_name(&patch));
            let o = find(objects, kind, name)
                .ok_or_else(|| err(&where_, format!("no {kind} named {name}")))?;
            merge_patch(o, &patch);
        }
        _ => return Err(err(&where_, "a patch must be a list or a mapping")),
    }
    Ok(())
}

fn find<'a>(objects: &'a mut [Value], kind: &str, name: &str) -> Option<&'a mut Value> {
    objects
        .iter_mut()
        .find(|o| obj_kind(o) == kind && obj_name(o) == name)
}

fn has_list(v: &Value) -> bool {
    match v {
        Value::Array(_) => true,
        Value::Object(m) => m.values().any(has_list),
        _ => false,
    }
}

/// RFC 7386.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// One RFC 6902 operation: `add`, `replace`, `remove`.
pub fn json6902(doc: &mut Value, op: &Value) -> Result<(), String> {
    let kind = op.get("op").and_then(Value::as_str).ok_or("op missing")?;
    let path = op
        .get("path")
        .and_then(Value::as_str)
        .ok_or("path missing")?;
    let tokens: Vec<String> = path
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    let (last, parents) = tokens.split_last().ok_or("empty path")?;
    let mut cur = &mut *doc;
    for t in parents {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("{path}: `{t}` does not exist"))?;
    }
    let value = || {
        op.get("value")
            .cloned()
            .ok_or_else(|| format!("{path}: value missing"))
    };
    match (kind, cur) {
        ("add", Value::Object(m)) => {
            m.insert(last.clone(), value()?);
        }
        ("replace", Value::Object(m)) => {
            let slot = m
                .get_mut(last)
                .ok_or_else(|| format!("{path}: nothing to replace"))?;
            *slot = value()?;
        }
        ("remove", Value::Object(m)) => {
            m.remove(last)
                .ok_or_else(|| format!("{path}: nothing to remove"))?;
        }
        ("add", Value::Array(a)) => {
            let v = value()?;
            if last == "-" {
                a.push(v);
            } else {
                let i: usize = last.parse().map_err(|_| format!("{path}: bad index"))?;
                if i > a.len() {
                    return Err(format!("{path}: index out of range"));
                }
                a.insert(i, v);
            }
        }
        ("replace", Value::Array(a)) => {
            let i: usize = last.parse().map_err(|_| format!("{path}: bad index"))?;
            *a.get_mut(i)
                .ok_or_else(|| format!("{path}: index out of range"))? = value()?;
        }
        ("remove", Value::Array(a)) => {
            let i: usize = last.parse().map_err(|_| format!("{path}: bad index"))?;
            if i >= a.len() {
                return Err(format!("{path}: index out of range"));
            }
            a.remove(i);
        }
        (k, _) => return Err(format!("{path}: op `{k}` is not supported here")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json6902_ops() {
        let mut d = json!({"a": {"b": [1, 2]}, "c": 1});
        json6902(&mut d, &json!({"op": "add", "path": "/a/b/-", "value": 3})).unwrap();
        json6902(&mut d, &json!({"op": "replace", "path": "/c", "value": 2})).unwrap();
        json6902(
            &mut d,
            &json!({"op": "add", "path": "/a/x~1y", "value": true}),
        )
        .unwrap();
        json6902(&mut d, &json!({"op": "remove", "path": "/a/b/0"})).unwrap();
        assert_eq!(d, json!({"a": {"b": [2, 3], "x/y": true}, "c": 2}));
        assert!(json6902(&mut d, &json!({"op": "replace", "path": "/zz", "value": 1})).is_err());
    }

    #[test]
    fn merge_patch_rfc7386() {
        let mut d = json!({"a": {"b": 1, "c": 2}, "l": [1]});
        merge_patch(&mut d, &json!({"a": {"b": null, "d": 3}, "l": [2]}));
        assert_eq!(d, json!({"a": {"c": 2, "d": 3}, "l": [2]}));
    }

    fn scratch(files: &[(&str, &str)]) -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("deploy-check-kz-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        dir
    }

    const DEPLOY: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  replicas: 1\n  template:\n    spec:\n      containers: [{name: c, image: 'quiz/x:1'}]\n";

    #[test]
    fn renders_the_supported_subset() {
        let dir = scratch(&[
            ("d.yaml", DEPLOY),
            ("p.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, annotations: {a: b}}\n"),
            ("j.json", r#"[{"op": "add", "path": "/spec/template/spec/containers/-", "value": {"name": "s", "image": "quiz/x"}}]"#),
            (
                "kustomization.yaml",
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: n\nresources: [d.yaml]\nimages: [{name: quiz/x, newName: r/x, newTag: '2'}]\nreplicas: [{name: d, count: 3}]\ngeneratorOptions: {disableNameSuffixHash: true}\nsecretGenerator: [{name: s, literals: ['k=v=w']}]\npatches:\n  - path: p.yaml\n  - {path: j.json, target: {kind: Deployment, name: d}}\n",
            ),
        ]);
        let out = build(&dir).unwrap();
        let d = &out[0];
        assert_eq!(d["metadata"]["namespace"], "n");
        assert_eq!(d["metadata"]["annotations"]["a"], "b");
        assert_eq!(d["spec"]["replicas"], 3);
        let images: Vec<_> = d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["image"].as_str().unwrap())
            .collect();
        assert_eq!(images, vec!["r/x:2", "r/x:2"]);
        assert_eq!(out[1]["data"]["k"], "dj13"); // base64("v=w")
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn refuses_what_it_cannot_render_faithfully() {
        let k = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [d.yaml]\n";
        let dir = scratch(&[
            ("d.yaml", DEPLOY),
            ("kustomization.yaml", &format!("{k}namePrefix: x-\n")),
        ]);
        assert!(build(&dir).unwrap_err().to_string().contains("namePrefix"));
        let dir = scratch(&[
            ("d.yaml", DEPLOY),
            ("p.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {template: {spec: {containers: []}}}\n"),
            ("kustomization.yaml", &format!("{k}patches: [{{path: p.yaml}}]\n")),
        ]);
        assert!(build(&dir).unwrap_err().to_string().contains("lists"));
        let dir = scratch(&[
            ("d.yaml", DEPLOY),
            (
                "kustomization.yaml",
                &format!("{k}configMapGenerator: [{{name: c, literals: [a=b]}}]\n"),
            ),
        ]);
        assert!(build(&dir)
            .unwrap_err()
            .to_string()
            .contains("disableNameSuffixHash"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn image_split() {
        assert_eq!(split_image("quiz/core:latest"), ("quiz/core", ":latest"));
        assert_eq!(
            split_image("localhost:5000/quiz/core"),
            ("localhost:5000/quiz/core", "")
        );
        assert_eq!(split_image("a/b@sha256:00"), ("a/b", "@sha256:00"));
    }
}
