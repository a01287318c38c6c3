//! The command-line part every binary shares: `--set`, `--check-config`, `--version`.

use std::sync::OnceLock;

use crate::layers::{Error, Origin, Override};

/// Exit status of a configuration error (clap's own usage errors exit 2 as well).
pub const EXIT_INVALID: u8 = 2;

/// Flattened into each binary's clap command.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ConfigArgs {
    /// Set one configuration key, e.g. `--set batch.max_wait_ms=250ms` (repeatable; wins over
    /// the file, the environment and the named flags).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    pub set: Vec<String>,
    /// Load every layer, validate, print the effective configuration (secrets redacted) and
    /// exit 0; on an error exit 2 naming the key and the layer it came from.
    #[arg(long, global = true)]
    pub check_config: bool,
}

impl ConfigArgs {
    /// The `--set` overrides, in the order given.
    pub fn overrides(&self) -> Result<Vec<Override>, Error> {
        self.set.iter().map(|s| parse_set(s)).collect()
    }
}

/// `key=value` (the value may contain `=`: `kafka_properties=linger.ms=5`).
pub fn parse_set(s: &str) -> Result<Override, Error> {
    let Some((key, value)) = s.split_once('=') else {
        return Err(Error::Usage(format!(
            "--set {s:?}: expected KEY=VALUE (e.g. --set section.key=value)"
        )));
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(Error::Usage(format!("--set {s:?}: the key is empty")));
    }
    Ok(Override {
        key: key.to_string(),
        value: value.to_string(),
        origin: Origin::Flag(format!("--set {key}")),
    })
}

/// The version clap prints for `--version`: the package version, and the git commit
/// when the build provides one (`QUIZ_GIT_COMMIT` at compile time, see [`crate::version!`]).
pub fn version(pkg_version: &'static str, commit: Option<&'static str>) -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| match commit.map(str::trim).filter(|c| !c.is_empty()) {
        Some(c) => format!("{pkg_version} (commit {c})"),
        None => pkg_version.to_string(),
    })
}

/// `settings::version!()` in a binary: its own package version and, when its build sets
/// `QUIZ_GIT_COMMIT` (a build script, CI), the commit.
#[macro_export]
macro_rules! version {
    () => {
        $crate::version(env!("CARGO_PKG_VERSION"), option_env!("QUIZ_GIT_COMMIT"))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_takes_key_equals_value() {
        let o = parse_set("kafka_properties=linger.ms=5").unwrap();
        assert_eq!(o.key, "kafka_properties");
        assert_eq!(o.value, "linger.ms=5");
        assert_eq!(o.origin, Origin::Flag("--set kafka_properties".into()));
        assert!(parse_set("listen")
            .unwrap_err()
            .to_string()
            .contains("KEY=VALUE"));
        assert!(parse_set("=x").is_err());
    }
}
