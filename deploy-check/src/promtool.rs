//! Prometheus's own checks, through `promtool`: rule files (`check rules`), their unit tests
//! (`test rules`) and the scrape configuration (`check config`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::tools::{self, ToolError};

#[derive(Debug, thiserror::Error)]
pub enum PromtoolError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("promtool {what} failed ({status}):\n{output}")]
    Failed {
        what: String,
        status: String,
        output: String,
    },
}

fn promtool(args: &[&str], files: &[&Path], cwd: Option<&Path>) -> Result<String, PromtoolError> {
    let t = tools::tools()?;
    let mut cmd = Command::new(&t.promtool);
    cmd.args(args).args(files);
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let out = tools::run(&mut cmd, None, Duration::from_secs(120))?;
    if out.ok() {
        Ok(out.text())
    } else {
        Err(PromtoolError::Failed {
            what: format!(
                "{} {}",
                args.join(" "),
                files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            status: out.status.to_string(),
            output: out.text(),
        })
    }
}

/// `promtool check rules`: the files parse, every expression is valid PromQL, every
/// template renders.
pub fn check_rules(files: &[&Path]) -> Result<String, PromtoolError> {
    promtool(&["check", "rules", "--lint-fatal"], files, None)
}

/// `promtool test rules`: the unit tests pass. `rule_files` inside a test file are relative
/// to the test file's folder, so promtool runs there.
pub fn test_rules(test_file: &Path) -> Result<String, PromtoolError> {
    let dir = test_file.parent().unwrap_or(Path::new("."));
    let name = test_file.file_name().map(Path::new).unwrap_or(test_file);
    promtool(&["test", "rules"], &[name], Some(dir))
}

/// `promtool check config`: a whole Prometheus configuration (`--syntax-only`: the rule
/// files it names are checked separately, and need not exist at the paths a server uses).
pub fn check_config(file: &Path) -> Result<String, PromtoolError> {
    promtool(&["check", "config", "--syntax-only"], &[file], None)
}
