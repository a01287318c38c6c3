//! No tracked file names a directory of the machine it was written on: the
//! repository must read the same, and its scripts run the same, on any
//! checkout. Paths are relative to the repository (or `$CARGO_TARGET_DIR`,
//! `$HOME`, `${TMPDIR:-/tmp}` in scripts).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).to_path_buf()
}

/// The files git tracks (or, outside a git checkout, every file but build
/// output and local state).
fn tracked_files(root: &Path) -> Vec<PathBuf> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["ls-files", "-z"])
        .output();
    if let Ok(out) = out {
        if out.status.success() {
            return out
                .stdout
                .split(|b| *b == 0)
                .filter(|p| !p.is_empty())
                .map(|p| root.join(String::from_utf8_lossy(p).as_ref()))
                .collect();
        }
    }
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let name = e.file_name();
            if matches!(
                name.to_str(),
                Some("target" | ".git" | ".stack" | "node_modules")
            ) {
                continue;
            }
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files
}

#[test]
fn no_tracked_file_holds_an_absolute_path_of_this_machine() {
    // Spelled in pieces so this file does not match itself.
    let needles: Vec<String> = ["work", "root", "home"]
        .iter()
        .map(|d| format!("/{d}/"))
        .collect();
    let root = repo();
    let files = tracked_files(&root);
    assert!(
        files.len() > 50,
        "only {} files found under {}",
        files.len(),
        root.display()
    );
    let mut hits = Vec::new();
    for f in &files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue; // binary, or deleted in the work tree
        };
        for (i, line) in text.lines().enumerate() {
            if needles.iter().any(|n| line.contains(n.as_str())) {
                let rel = f.strip_prefix(&root).unwrap_or(f);
                hits.push(format!("{}:{}: {}", rel.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        hits.is_empty(),
        "absolute paths of a machine in tracked files (use a path relative to the repository):\n{}",
        hits.join("\n")
    );
}
