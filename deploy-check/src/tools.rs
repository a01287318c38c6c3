//! Finding the external tools and running them with a time limit.
//!
//! kustomize, kubeconform, the Kubernetes JSON schemas and promql-metrics are installed by
//! `deploy/tools/install` (pinned in `deploy/tools/versions`, cached outside the repository
//! in `$QUIZ_TOOLS_DIR`, default `$HOME/.cache/quiz-tools`). The first use in a test
//! process runs that script: it returns at once when everything is there (CI runs it
//! before `cargo test`, from `deploy/local/test`) and builds what is missing otherwise.
//! promtool is Debian's (`prometheus` package, installed by `deploy/local/deps`), found on
//! `PATH` or at `$QUIZ_PROMTOOL`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::repo_root;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{0}")]
    Missing(String),
    #[error("`{cmd}` could not start: {err}")]
    Spawn { cmd: String, err: std::io::Error },
    #[error("`{cmd}` did not finish within {limit:?} (killed)")]
    Timeout { cmd: String, limit: Duration },
}

/// Where the tools are.
#[derive(Debug, Clone)]
pub struct Tools {
    pub kustomize: PathBuf,
    pub kubeconform: PathBuf,
    /// The folder of kubeconform schemas (`<kind>-<group>-<version>.json`).
    pub k8s_schemas: PathBuf,
    pub promql_metrics: PathBuf,
    pub promtool: PathBuf,
    /// `deploy/tools/versions`: `KUSTOMIZE_VERSION`, `KUBECONFORM_VERSION`, `KUBERNETES_VERSION`.
    pub versions: BTreeMap<String, String>,
}

/// The installer, a cold build included, must finish within this.
const INSTALL_LIMIT: Duration = Duration::from_secs(1800);

/// The tools, installed on first use (once per process; the script serialises concurrent
/// processes itself).
pub fn tools() -> Result<&'static Tools, ToolError> {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    TOOLS
        .get_or_init(|| locate().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| ToolError::Missing(e.clone()))
}

fn locate() -> Result<Tools, ToolError> {
    let script = repo_root().join("deploy/tools/install");
    let out = run(&mut Command::new(&script), None, INSTALL_LIMIT)?;
    if !out.ok() {
        return Err(ToolError::Missing(format!(
            "{} failed ({}):\n{}",
            script.display(),
            out.status,
            out.stderr
        )));
    }
    let paths: BTreeMap<&str, PathBuf> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k, PathBuf::from(v)))
        .collect();
    let get = |name: &str| {
        paths.get(name).cloned().ok_or_else(|| {
            ToolError::Missing(format!("{} printed no path for {name}", script.display()))
        })
    };
    Ok(Tools {
        kustomize: get("kustomize")?,
        kubeconform: get("kubeconform")?,
        k8s_schemas: get("k8s-schemas")?,
        promql_metrics: get("promql-metrics")?,
        promtool: promtool()?,
        versions: versions()?,
    })
}

fn promtool() -> Result<PathBuf, ToolError> {
    let p = std::env::var_os("QUIZ_PROMTOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("promtool"));
    match run(
        Command::new(&p).arg("--version"),
        None,
        Duration::from_secs(30),
    ) {
        Ok(o) if o.ok() => Ok(p),
        _ => Err(ToolError::Missing(format!(
            "promtool ({}) not found: install Debian's `prometheus` package (deploy/local/deps \
             does) or set QUIZ_PROMTOOL",
            p.display()
        ))),
    }
}

/// `deploy/tools/versions`, `KEY=VALUE` lines (comments and blank lines skipped).
pub fn versions() -> Result<BTreeMap<String, String>, ToolError> {
    let p = repo_root().join("deploy/tools/versions");
    let text = std::fs::read_to_string(&p)
        .map_err(|e| ToolError::Missing(format!("{}: {e}", p.display())))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect())
}

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Output {
    pub cmd: String,
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.status.success()
    }

    /// stdout and stderr together, for error messages.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` with `stdin` fed to it, killing it after `limit`: a hung tool fails the
/// check instead of hanging the test run.
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>, limit: Duration) -> Result<Output, ToolError> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| ToolError::Spawn {
            cmd: shown.clone(),
            err,
        })?;
    // Feed and drain on threads so a tool blocked on a full pipe cannot deadlock us.
    let feeder = stdin.map(|bytes| {
        let bytes = bytes.to_vec();
        let mut pipe = child.stdin.take().expect("stdin piped");
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes); // a tool may exit early; its status tells why
        })
    });
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ToolError::Timeout { cmd: shown, limit });
            }
        }
    };
    if let Some(f) = feeder {
        let _ = f.join();
    }
    Ok(Output {
        cmd: shown,
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}
