//! The wire contract of `docs/api/` as a test oracle.
//!
//! `docs/api/schemas/*.json` are the JSON Schemas (2020-12) that
//! `docs/api/openapi.yaml` (HTTP) and `docs/api/asyncapi.yaml` (WebSocket,
//! Kafka) share. This module loads them from the checkout this crate was
//! compiled in (found from `CARGO_MANIFEST_DIR`, never an absolute path) and
//! checks live values against them, so a drift between the server and the
//! documents fails a test:
//!
//! - [`validate`] / [`assert_valid`]: a value against a named schema (the
//!   file name without `.json`, e.g. `"leaderboard"`).
//! - [`check_http`]: a response (method, path, status, body) against
//!   `openapi.yaml`: the route and status must be documented, and a JSON body
//!   must match the documented schema.
//! - [`check_ws_server`], [`check_ws_client`], [`check_event`]: a WebSocket
//!   message either way, a `quiz-events` record value.
//! - [`check_close_code`]: a WebSocket close code against the
//!   `x-close-codes` table of `asyncapi.yaml`.
//!
//! The schemas hold what this version sends exactly (`additionalProperties:
//! false`): a new field in a response fails until the schema documents it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

/// Where `docs/api` is in the checkout this crate was compiled in.
pub fn api_dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api")).to_path_buf()
}

/// The base URI the schema files are registered under (nothing is fetched:
/// every reference resolves to one of the loaded files).
const BASE: &str = "https://quiz-platform.invalid/api/schemas/";

/// The loaded documents and one compiled validator per schema file.
pub struct Contract {
    validators: HashMap<String, jsonschema::Validator>,
    openapi: Value,
    close_codes: Vec<u16>,
}

impl Contract {
    /// Loads `dir/schemas/*.json`, `dir/openapi.yaml` and `dir/asyncapi.yaml`.
    pub fn load(dir: &Path) -> Result<Contract, String> {
        let schema_dir = dir.join("schemas");
        let entries =
            std::fs::read_dir(&schema_dir).map_err(|e| format!("{}: {e}", schema_dir.display()))?;
        let mut files = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| e.to_string())?.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let value: Value =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            files.push((name.to_string(), value));
        }
        if files.is_empty() {
            return Err(format!("{}: no schema files", schema_dir.display()));
        }
        let mut registry = jsonschema::Registry::new();
        for (name, value) in &files {
            registry = registry
                .add(format!("{BASE}{name}.json"), value.clone())
                .map_err(|e| format!("schemas/{name}.json: {e}"))?;
        }
        let registry = registry.prepare().map_err(|e| e.to_string())?;
        let mut validators = HashMap::new();
        for (name, _) in &files {
            let v = jsonschema::options()
                .with_registry(&registry)
                .build(&serde_json::json!({ "$ref": format!("{BASE}{name}.json") }))
                .map_err(|e| format!("schemas/{name}.json: {e}"))?;
            validators.insert(name.clone(), v);
        }
        let openapi = read_yaml(&dir.join("openapi.yaml"))?;
        let asyncapi = read_yaml(&dir.join("asyncapi.yaml"))?;
        let close_codes = asyncapi["channels"]["quizSocket"]["x-close-codes"]
            .as_array()
            .ok_or("asyncapi.yaml: channels.quizSocket.x-close-codes is missing")?
            .iter()
            .filter_map(|c| c["code"].as_u64())
            .filter_map(|c| u16::try_from(c).ok())
            .collect();
        let contract = Contract {
            validators,
            openapi,
            close_codes,
        };
        contract.check_refs()?;
        Ok(contract)
    }

    /// Every schema file an `openapi.yaml` response names exists.
    fn check_refs(&self) -> Result<(), String> {
        let mut missing = Vec::new();
        walk_refs(&self.openapi, &mut |r| {
            if let Some(name) = schema_name(r) {
                if !self.validators.contains_key(name) {
                    missing.push(r.to_string());
                }
            }
        });
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "openapi.yaml refers to missing schemas: {missing:?}"
            ))
        }
    }

    /// The names of the loaded schemas, sorted.
    pub fn schema_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.validators.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// `Ok` when `value` matches `schemas/<schema>.json`; otherwise every
    /// error, one per line, with the instance path.
    pub fn validate(&self, schema: &str, value: &Value) -> Result<(), String> {
        let v = self
            .validators
            .get(schema)
            .ok_or_else(|| format!("no schema {schema:?} in docs/api/schemas"))?;
        let errors: Vec<String> = v
            .iter_errors(value)
            .map(|e| format!("{schema}: at {:?}: {e}", e.instance_path().to_string()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    }

    /// A message or record of a `oneOf` union (`ws-server-message`,
    /// `event`): on failure, the errors of the member its `type` names
    /// (`<prefix><type with - for _>`), which say more than the union's.
    fn validate_tagged(&self, union: &str, prefix: &str, value: &Value) -> Result<(), String> {
        let Err(e) = self.validate(union, value) else {
            return Ok(());
        };
        match value["type"].as_str() {
            Some(ty) => {
                let member = format!("{prefix}{}", ty.replace('_', "-"));
                if self.validators.contains_key(&member) {
                    self.validate(&member, value).and(Err(e))
                } else {
                    Err(format!("{union}: unknown type {ty:?}\n{e}"))
                }
            }
            None => Err(e),
        }
    }

    /// A response against `openapi.yaml`: the path must match a documented
    /// route (else only a 404 error is allowed), the method one of its
    /// operations (else only a 405 error), the status one of the operation's
    /// responses, and a JSON body its schema.
    pub fn check_http(
        &self,
        method: &str,
        path: &str,
        status: u16,
        body: &str,
    ) -> Result<(), String> {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        let what = format!("{method} {path} → {status}");
        let error_body = |expected: u16| -> Result<(), String> {
            if status != expected {
                return Err(format!("{what}: undocumented (expected {expected})"));
            }
            let v: Value = serde_json::from_str(body)
                .map_err(|e| format!("{what}: body is not JSON ({e}): {body:?}"))?;
            self.validate("error", &v)
                .map_err(|e| format!("{what}: {e}"))
        };
        let Some((template, item)) = self.route(path) else {
            return error_body(404);
        };
        let what = format!("{what} ({template})");
        let m = method.to_ascii_lowercase();
        let op = match item.get(m.as_str()) {
            Some(op) => op,
            None if m == "head" => match item.get("get") {
                Some(op) => op,
                None => return error_body(405),
            },
            None => return error_body(405),
        };
        let resp = op["responses"]
            .get(status.to_string())
            .ok_or_else(|| format!("{what}: status {status} is not documented"))?;
        let resp = self.deref(resp);
        let Some(content) = resp.get("content").and_then(Value::as_object) else {
            return Ok(());
        };
        let Some(json) = content.get("application/json") else {
            return Ok(()); // text/plain, text/html: not checked here
        };
        if m == "head" {
            return Ok(());
        }
        let r = json["schema"]["$ref"].as_str().unwrap_or_default();
        let schema = schema_name(r)
            .ok_or_else(|| format!("{what}: the response schema is not a schemas/*.json $ref"))?;
        let v: Value = serde_json::from_str(body)
            .map_err(|e| format!("{what}: body is not JSON ({e}): {body:?}"))?;
        self.validate(schema, &v)
            .map_err(|e| format!("{what}: {e}\nbody: {v}"))
    }

    /// The documented route a concrete path matches; literal segments win
    /// over `{parameters}`.
    fn route(&self, path: &str) -> Option<(&str, &serde_json::Map<String, Value>)> {
        let segs: Vec<&str> = path.split('/').collect();
        let paths = self.openapi["paths"].as_object()?;
        paths
            .iter()
            .filter_map(|(t, item)| {
                let ts: Vec<&str> = t.split('/').collect();
                if ts.len() != segs.len() {
                    return None;
                }
                let mut params = 0;
                for (t, s) in ts.iter().zip(&segs) {
                    if t.starts_with('{') && t.ends_with('}') {
                        if s.is_empty() {
                            return None;
                        }
                        params += 1;
                    } else if t != s {
                        return None;
                    }
                }
                Some((params, t.as_str(), item.as_object()?))
            })
            .min_by_key(|(params, _, _)| *params)
            .map(|(_, t, item)| (t, item))
    }

    /// Follows a local `$ref` (`#/components/...`) once.
    fn deref<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v["$ref"].as_str().and_then(|r| r.strip_prefix('#')) {
            Some(pointer) => self.openapi.pointer(pointer).unwrap_or(v),
            None => v,
        }
    }

    /// A server → client WebSocket message.
    pub fn check_ws_server(&self, msg: &Value) -> Result<(), String> {
        self.validate_tagged("ws-server-message", "ws-", msg)
    }

    /// A client → server WebSocket message.
    pub fn check_ws_client(&self, msg: &Value) -> Result<(), String> {
        self.validate_tagged("ws-client-message", "ws-", msg)
    }

    /// The value of a `quiz-events` record (Kafka or the embedded event log).
    pub fn check_event(&self, event: &Value) -> Result<(), String> {
        self.validate_tagged("event", "event-", event)
    }

    /// The close codes `asyncapi.yaml` documents.
    pub fn close_codes(&self) -> &[u16] {
        &self.close_codes
    }

    /// A close code the server sent.
    pub fn check_close_code(&self, code: u16) -> Result<(), String> {
        if self.close_codes.contains(&code) {
            Ok(())
        } else {
            Err(format!(
                "close code {code} is not documented in asyncapi.yaml (x-close-codes: {:?})",
                self.close_codes
            ))
        }
    }
}

fn read_yaml(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// `schemas/<name>.json` (with or without `./`) → `name`.
fn schema_name(r: &str) -> Option<&str> {
    r.trim_start_matches("./")
        .strip_prefix("schemas/")?
        .strip_suffix(".json")
}

fn walk_refs(v: &Value, f: &mut impl FnMut(&str)) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => f(r),
                    _ => walk_refs(v, f),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| walk_refs(v, f)),
        _ => {}
    }
}

/// The contract of this checkout, loaded once per test binary. Panics
/// (failing the test) when a document does not load or parse.
pub fn contract() -> &'static Contract {
    static C: OnceLock<Contract> = OnceLock::new();
    C.get_or_init(|| {
        Contract::load(&api_dir()).unwrap_or_else(|e| panic!("docs/api does not load: {e}"))
    })
}

/// [`Contract::validate`] on [`contract`].
pub fn validate(schema: &str, value: &Value) -> Result<(), String> {
    contract().validate(schema, value)
}

/// Panics with every error when `value` does not match `schema`.
#[track_caller]
pub fn assert_valid(schema: &str, value: &Value) {
    if let Err(e) = validate(schema, value) {
        panic!("contract drift:\n{e}\nvalue: {value}");
    }
}

/// [`Contract::check_http`] on [`contract`]; panics on a drift.
#[track_caller]
pub fn check_http(method: &str, path: &str, status: u16, body: &str) {
    if let Err(e) = contract().check_http(method, path, status, body) {
        panic!("contract drift (docs/api/openapi.yaml):\n{e}");
    }
}

/// [`Contract::check_ws_server`] on [`contract`]; panics on a drift.
#[track_caller]
pub fn check_ws_server(msg: &Value) {
    if let Err(e) = contract().check_ws_server(msg) {
        panic!("contract drift (docs/api/asyncapi.yaml, server message):\n{e}\nmessage: {msg}");
    }
}

/// [`Contract::check_ws_client`] on [`contract`]; panics on a drift.
#[track_caller]
pub fn check_ws_client(msg: &Value) {
    if let Err(e) = contract().check_ws_client(msg) {
        panic!("contract drift (docs/api/asyncapi.yaml, client message):\n{e}\nmessage: {msg}");
    }
}

/// [`Contract::check_event`] on [`contract`]; panics on a drift.
#[track_caller]
pub fn check_event(event: &Value) {
    if let Err(e) = contract().check_event(event) {
        panic!(
            "contract drift (docs/api/asyncapi.yaml, quiz-events record):\n{e}\nrecord: {event}"
        );
    }
}

/// [`Contract::check_close_code`] on [`contract`]; panics on a drift.
#[track_caller]
pub fn check_close_code(code: u16) {
    if let Err(e) = contract().check_close_code(code) {
        panic!("contract drift: {e}");
    }
}
