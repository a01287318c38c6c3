//! The layers over a JSON tree: which keys a binary has, their environment names, and
//! applying overrides (environment, command line) on the tree built from defaults and file.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::duration::{self, Unit};

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    /// The configuration file (its path).
    File(String),
    /// An environment variable (its name).
    Env(String),
    /// A command-line flag (`--listen`, `--set listen`).
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            Origin::File(p) => write!(f, "file {p}"),
            Origin::Env(n) => write!(f, "environment {n}"),
            Origin::Flag(s) => write!(f, "command line {s}"),
        }
    }
}

/// A configuration error; it always names the key (or the file) and the layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
    #[error("config key `{key}` (from {origin}): {message}")]
    Key {
        key: String,
        origin: Origin,
        message: String,
    },
    /// A malformed command-line argument (`--set` without `=`).
    #[error("{0}")]
    Usage(String),
}

/// One override: a key path, its value as text, where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub key: String,
    pub value: String,
    pub origin: Origin,
}

impl Override {
    pub fn flag(key: &str, flag: &str, value: impl Into<String>) -> Override {
        Override {
            key: key.into(),
            value: value.into(),
            origin: Origin::Flag(flag.into()),
        }
    }
}

/// A key and the environment variables that set it (the derived name first, then the
/// aliases).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub key: String,
    pub env: Vec<String>,
    /// A key with a value of its own (not a section of other keys): what a doc table lists.
    pub leaf: bool,
}

/// A binary's naming rules.
#[derive(Debug)]
pub struct Scheme {
    /// The first part of every environment name: `QUIZ`, `PERSISTER`, `EDGE_LB`.
    pub env_prefix: &'static str,
    /// The file section the keys live under (edge-lb: `edge_lb`, next to pingora's own
    /// keys), part of every key path but not of the environment names.
    pub root: Option<&'static str>,
    /// Older environment names still read: `(key, name)`.
    pub aliases: &'static [(&'static str, &'static str)],
    /// Keys whose values are free-form maps (`kafka_properties`): their entries are not
    /// keys. From the environment or `--set` they take `k=v,k=v`, merged over the lower
    /// layers' entries.
    pub maps: &'static [&'static str],
    /// Keys never in the file nor serialized (secrets from a Secret): `(key, env name)`.
    /// Set from the environment or the command line; the binary copies them in.
    pub hidden: &'static [(&'static str, &'static str)],
    /// Keys whose values `--check-config` never prints (beyond the names that say it:
    /// `*password*`, `*secret*`, `*token*`).
    pub secrets: &'static [&'static str],
}

/// The layers applied: the tree, where each key came from, the hidden keys' values.
#[derive(Debug, Clone)]
pub struct Layers {
    pub tree: Value,
    origins: BTreeMap<String, Origin>,
    pub hidden: BTreeMap<String, (String, Origin)>,
}

impl Scheme {
    /// `health.interval` (relative to the root) → `EDGE_LB_HEALTH__INTERVAL`.
    pub fn env_name(&self, rel: &str) -> String {
        format!(
            "{}_{}",
            self.env_prefix,
            rel.replace('.', "__").to_ascii_uppercase()
        )
    }

    /// The key path as shown and as given to `--set` (with the root).
    pub fn full_key(&self, rel: &str) -> String {
        match self.root {
            Some(r) => format!("{r}.{rel}"),
            None => rel.to_string(),
        }
    }

    /// The path inside the tree, or `None` for a key outside the root.
    pub fn rel_key<'a>(&self, key: &'a str) -> Option<&'a str> {
        match self.root {
            Some(r) => key.strip_prefix(r)?.strip_prefix('.'),
            None => Some(key),
        }
    }

    fn is_map(&self, rel: &str) -> bool {
        self.maps.contains(&rel)
    }

    /// Every key of `tree` (sections first, then their keys; not inside lists, not inside
    /// maps), and the hidden keys, with their environment names.
    pub fn keys(&self, tree: &Value) -> Vec<KeyInfo> {
        let mut out = Vec::new();
        self.walk_keys(tree, "", &mut out);
        for (key, env) in self.hidden {
            out.push(KeyInfo {
                key: key.to_string(),
                env: vec![env.to_string()],
                leaf: true,
            });
        }
        out
    }

    fn walk_keys(&self, node: &Value, prefix: &str, out: &mut Vec<KeyInfo>) {
        let Value::Object(map) = node else { return };
        for (k, v) in map {
            let rel = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            let section = matches!(v, Value::Object(m) if !m.is_empty()) && !self.is_map(&rel);
            let mut env = vec![self.env_name(&rel)];
            env.extend(
                self.aliases
                    .iter()
                    .filter(|(key, _)| *key == rel)
                    .map(|(_, name)| name.to_string()),
            );
            out.push(KeyInfo {
                key: self.full_key(&rel),
                env,
                leaf: !section,
            });
            if section {
                self.walk_keys(v, &rel, out);
            }
        }
    }

    /// The overrides the environment holds for the keys of `tree`, a section before its
    /// keys, an alias before the derived name (so the derived name wins).
    pub fn env_overrides(
        &self,
        tree: &Value,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Vec<Override> {
        let mut out = Vec::new();
        for info in self.keys(tree) {
            for name in info.env.iter().skip(1).chain(info.env.first()) {
                if let Some(value) = lookup(name) {
                    out.push(Override {
                        key: info.key.clone(),
                        value,
                        origin: Origin::Env(name.clone()),
                    });
                }
            }
        }
        out
    }

    /// Apply `overrides` in order on `base` (the struct after defaults and file, as a
    /// tree) and deserialize the result. `file` names the file and the keys it set.
    pub fn load<T: DeserializeOwned>(
        &self,
        base: Value,
        file: Option<(&str, &Value)>,
        overrides: &[Override],
    ) -> Result<(T, Layers), Error> {
        let mut origins = BTreeMap::new();
        if let Some((path, file_tree)) = file {
            for key in self.file_keys(file_tree) {
                origins.insert(key, Origin::File(path.to_string()));
            }
        }
        let mut layers = Layers {
            tree: base.clone(),
            origins,
            hidden: BTreeMap::new(),
        };
        for o in overrides {
            self.apply(&mut layers, o)?;
        }
        match serde_json::from_value::<T>(layers.tree.clone()) {
            Ok(t) => Ok((t, layers)),
            Err(e) => Err(self.blame::<T>(base, overrides, e.to_string())),
        }
    }

    /// The override that made the tree unreadable: the first one after which the tree no
    /// longer deserializes (the tree before any override is the struct itself, so it does).
    fn blame<T: DeserializeOwned>(
        &self,
        base: Value,
        overrides: &[Override],
        fallback: String,
    ) -> Error {
        let mut layers = Layers {
            tree: base,
            origins: BTreeMap::new(),
            hidden: BTreeMap::new(),
        };
        for o in overrides {
            if self.apply(&mut layers, o).is_err() {
                break;
            }
            if let Err(e) = serde_json::from_value::<T>(layers.tree.clone()) {
                return Error::Key {
                    key: o.key.clone(),
                    origin: o.origin.clone(),
                    message: e.to_string(),
                };
            }
        }
        Error::Usage(fallback)
    }

    fn apply(&self, layers: &mut Layers, o: &Override) -> Result<(), Error> {
        let err = |message: String| Error::Key {
            key: o.key.clone(),
            origin: o.origin.clone(),
            message,
        };
        if self.hidden.iter().any(|(k, _)| *k == o.key) {
            layers
                .hidden
                .insert(o.key.clone(), (o.value.clone(), o.origin.clone()));
            return Ok(());
        }
        let rel = self.rel_key(&o.key).ok_or_else(|| {
            err(format!(
                "unknown key (keys start with `{}.`)",
                self.root.unwrap_or("")
            ))
        })?;
        if rel.is_empty() || rel.split('.').any(str::is_empty) {
            return Err(err("not a key path (`section.key`)".into()));
        }
        self.set_path(&mut layers.tree, rel, &o.value)
            .map_err(err)?;
        let below = format!("{}.", o.key);
        layers
            .origins
            .retain(|k, _| k != &o.key && !k.starts_with(&below));
        layers.origins.insert(o.key.clone(), o.origin.clone());
        Ok(())
    }

    fn set_path(&self, tree: &mut Value, rel: &str, raw: &str) -> Result<(), String> {
        let segs: Vec<&str> = rel.split('.').collect();
        let mut node = tree;
        // Below a section that is absent by default (`tls`), any key may be created: the
        // struct's own deserialization then says which are unknown or missing.
        let mut free = false;
        for (i, seg) in segs.iter().enumerate() {
            if node.is_null() {
                *node = Value::Object(Map::new());
                free = true;
            }
            let Value::Object(map) = node else {
                return Err(format!(
                    "`{}` has no keys of its own",
                    self.full_key(&segs[..i].join("."))
                ));
            };
            if i > 0 && self.is_map(&segs[..i].join(".")) {
                return Err(format!(
                    "set the map `{}` whole: `{}=key=value,key=value`",
                    self.full_key(&segs[..i].join(".")),
                    self.full_key(&segs[..i].join("."))
                ));
            }
            if !free && !map.contains_key(*seg) {
                return Err("unknown key".into());
            }
            if i + 1 == segs.len() {
                let value = convert(rel, map.get(*seg), raw, self.is_map(rel))?;
                map.insert(seg.to_string(), value);
                return Ok(());
            }
            node = map.entry(seg.to_string()).or_insert(Value::Null);
        }
        Ok(())
    }

    /// The keys a file sets (under the root), as key paths: a list or a map is one key.
    pub fn file_keys(&self, file_tree: &Value) -> Vec<String> {
        let start = match self.root {
            Some(r) => file_tree.get(r).unwrap_or(&Value::Null),
            None => file_tree,
        };
        let mut out = Vec::new();
        self.walk_leaves(start, "", &mut |rel, _| out.push(self.full_key(rel)));
        out
    }

    /// Every key with a value (not sections), in the tree's order.
    pub fn walk_leaves(&self, node: &Value, prefix: &str, f: &mut dyn FnMut(&str, &Value)) {
        match node {
            Value::Object(map) if !map.is_empty() && !self.is_map(prefix) => {
                for (k, v) in map {
                    let rel = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    self.walk_leaves(v, &rel, f);
                }
            }
            _ if prefix.is_empty() => {}
            v => f(prefix, v),
        }
    }

    /// Durations in a file: a `*_ms` / `*_s` key given as a duration string becomes the
    /// integer the struct reads. Returns whether anything changed.
    pub fn normalize_file(&self, file_tree: &mut Value, path: &str) -> Result<bool, Error> {
        fn walk(node: &mut Value, at: &str, path: &str, changed: &mut bool) -> Result<(), Error> {
            match node {
                Value::Object(map) => {
                    for (k, v) in map.iter_mut() {
                        let key = if at.is_empty() {
                            k.clone()
                        } else {
                            format!("{at}.{k}")
                        };
                        if let (Value::String(s), Some(unit)) = (&*v, Unit::of_key(k)) {
                            let n = duration::to_units(s, unit).map_err(|message| Error::Key {
                                key: key.clone(),
                                origin: Origin::File(path.to_string()),
                                message,
                            })?;
                            *v = Value::from(n);
                            *changed = true;
                        } else {
                            walk(v, &key, path, changed)?;
                        }
                    }
                }
                Value::Array(items) => {
                    for (i, v) in items.iter_mut().enumerate() {
                        walk(v, &format!("{at}[{i}]"), path, changed)?;
                    }
                }
                _ => {}
            }
            Ok(())
        }
        let mut changed = false;
        walk(file_tree, "", path, &mut changed)?;
        Ok(changed)
    }
}

impl Layers {
    /// Where `key` got its value: its own layer, or its nearest section's (a list element
    /// `pools[0].name` counts as `pools`).
    pub fn origin_of(&self, key: &str) -> Origin {
        let mut k = key.split('[').next().unwrap_or(key);
        loop {
            if let Some(o) = self.origins.get(k) {
                return o.clone();
            }
            match k.rsplit_once('.') {
                Some((parent, _)) => k = parent,
                None => return Origin::Default,
            }
        }
    }

    /// A validation error of the struct, with the layer its key came from.
    pub fn error(&self, key: &str, message: impl Into<String>) -> Error {
        Error::Key {
            key: key.to_string(),
            origin: self.origin_of(key),
            message: message.into(),
        }
    }

    /// A hidden key's value, if some layer set it.
    pub fn hidden(&self, key: &str) -> Option<&str> {
        self.hidden.get(key).map(|(v, _)| v.as_str())
    }

    /// Replace the tree with the final struct's (so what is shown is what was read).
    pub fn set_tree(&mut self, tree: Value) {
        self.tree = tree;
    }
}

/// A value given as text, read by the type of the value it replaces.
fn convert(rel: &str, current: Option<&Value>, raw: &str, is_map: bool) -> Result<Value, String> {
    let t = raw.trim();
    let structured = |text: &str| {
        serde_yaml::from_str::<Value>(text).map_err(|e| format!("{text:?} is not a value: {e}"))
    };
    match current {
        Some(Value::String(_)) => Ok(Value::String(raw.to_string())),
        Some(Value::Bool(_)) => parse_bool(t).map(Value::Bool),
        Some(Value::Number(n)) => match Unit::of_key(rel) {
            Some(unit) if !n.is_f64() => duration::to_units(t, unit).map(Value::from),
            _ if n.is_f64() => t
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(Value::from)
                .ok_or_else(|| format!("{t:?} is not a number")),
            _ => t
                .parse::<u64>()
                .map(Value::from)
                .or_else(|_| t.parse::<i64>().map(Value::from))
                .map_err(|_| format!("{t:?} is not an integer")),
        },
        Some(Value::Array(_)) if t.starts_with('[') => structured(t),
        Some(Value::Array(_)) => Ok(Value::Array(
            t.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        )),
        Some(Value::Object(_)) if t.starts_with('{') => structured(t),
        Some(Value::Object(m)) if is_map => {
            let mut m = m.clone();
            for item in t.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let Some((k, v)) = item.split_once('=') else {
                    return Err(format!("{item:?} is not key=value"));
                };
                let (k, v) = (k.trim(), v.trim());
                if k.is_empty() || v.is_empty() {
                    return Err(format!("{item:?}: expected a non-empty key=value"));
                }
                m.insert(k.to_string(), Value::String(v.to_string()));
            }
            Ok(Value::Object(m))
        }
        Some(Value::Object(_)) => {
            Err("a section: give it whole (`{key: value, …}`) or set its keys one by one".into())
        }
        None | Some(Value::Null) if t.starts_with('[') || t.starts_with('{') => structured(t),
        None | Some(Value::Null) => match Unit::of_key(rel) {
            Some(unit) => duration::to_units(t, unit).map(Value::from),
            None => Ok(Value::String(raw.to_string())),
        },
    }
}

fn parse_bool(t: &str) -> Result<bool, String> {
    match t.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("{t:?} is not a boolean (true or false)")),
    }
}
