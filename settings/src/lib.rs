//! One configuration scheme for the workspace's binaries (quiz-core, persister, edge-lb).
//!
//! Each binary keeps its typed config struct (serde, defaults, `validate` naming the key)
//! and its file format (core and persister TOML, edge-lb YAML). This crate layers the
//! sources over it, lowest first:
//!
//! 1. defaults (the struct's `Default` / serde defaults);
//! 2. the file, parsed by the binary as before (unknown keys are errors);
//! 3. the environment: every key has a name derived from its path
//!    (`<PREFIX>_<SEGMENTS JOINED BY __>`, upper case: `QUIZ_JOIN_QUEUE_MS`,
//!    `PERSISTER_BATCH__MAX_WAIT_MS`, `EDGE_LB_HEALTH__INTERVAL`), plus each binary's
//!    older names kept as aliases (the derived name wins when both are set);
//! 4. the command line: the binary's named flags, then `--set key=value` (repeatable).
//!
//! How it works: the struct after the file is serialized to a JSON tree; each override
//! (a string, from the environment or the command line) is converted by the type of the
//! value it replaces ([`layers`]), the tree is deserialized back into the struct, and the
//! layer every key came from is kept, so an error names the key and its layer and
//! `--check-config` prints where each value came from ([`render`]).
//!
//! Modules: [`duration`] (the one duration syntax), [`layers`] (scheme, overrides, the
//! tree), [`render`] (the effective configuration, secrets redacted), [`cli`] (`--set`,
//! `--check-config`, `--version`), [`docs`] (checking a doc's key table against the code).

pub mod cli;
pub mod docs;
pub mod duration;
pub mod layers;
pub mod render;

pub use cli::{version, ConfigArgs, EXIT_INVALID};
pub use layers::{Error, KeyInfo, Layers, Origin, Override, Scheme};
