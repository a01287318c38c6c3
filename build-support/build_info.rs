// What the `*_build_info` metric of core, persister and edge-lb says about the build, as
// compile-time variables for `env!`: `QUIZ_BUILD_COMMIT` (the git commit, 12 hex digits) and
// `QUIZ_BUILD_RUSTC` (the compiler's version). Each crate's `build.rs` includes this file, so
// the three binaries agree on how it is found.
//
// It never fails the build: a source tarball without `.git`, a machine without git, or a
// Docker build context that leaves `.git` out gives "unknown" — unless `QUIZ_GIT_COMMIT` is
// set (say, a Docker build argument), which wins.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=QUIZ_GIT_COMMIT");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = std::env::var("QUIZ_GIT_COMMIT")
        .ok()
        .filter(|c| label_safe(c))
        .or_else(|| git_commit(&dir))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=QUIZ_BUILD_COMMIT={commit}");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    // "rustc 1.91.0 (f8297e351 2025-10-28)" → "1.91.0"
    let version = output(Command::new(rustc).arg("--version"))
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_string))
        .filter(|v| label_safe(v))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=QUIZ_BUILD_RUSTC={version}");
}

/// The checkout's commit, and the files whose change means a new one (HEAD, the branch it
/// points to, packed-refs): the script runs again only then, not on every build.
fn git_commit(dir: &Path) -> Option<String> {
    let git = |args: &[&str]| output(Command::new("git").arg("-C").arg(dir).args(args));
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).filter(|c| label_safe(c))?;
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for f in watched {
        if let Some(p) = git(&["rev-parse", "--path-format=absolute", "--git-path", &f]) {
            // Only files that exist: cargo reruns a script on every build while one it
            // watches is missing.
            if Path::new(&p).is_file() {
                println!("cargo:rerun-if-changed={p}");
            }
        }
    }
    Some(commit)
}

/// A command's trimmed stdout when it ran and succeeded.
fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// A value that reads well as a label: short, no spaces or quotes.
fn label_safe(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}
