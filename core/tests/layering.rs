//! The import graphs of the workspace's crates have no cycle: `core/src`,
//! and beside it the other crates' `src` (edge-lb, loadtest, persister), so
//! none of them grows one back (`farm-studio look` draws the same graph).
//!
//! Reads every source file of a library, collects its `crate::…`
//! references (in `use` lines and in paths; comments and string literals
//! are skipped, so a doc link is not an import), and draws an edge from the
//! file's top-level module to each module it names (`store/memory.rs`
//! belongs to `store`; `crate::Config` and other items of `lib.rs` belong to
//! the crate root, `lib`). The test fails on any cycle and prints it,
//! module -> module -> … -> back. With `--nocapture` it also prints every
//! module's imports, lowest layer first.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn core_src_has_no_import_cycle() {
    assert_no_cycle(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
}

#[test]
fn the_other_crates_have_no_import_cycle() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for krate in ["edge-lb", "loadtest", "persister"] {
        assert_no_cycle(&workspace.join(krate).join("src"));
    }
}

fn assert_no_cycle(src: &Path) {
    let mut files = Vec::new();
    collect(src, src, &mut files);
    assert!(
        files.iter().any(|(p, _)| p == "lib.rs") && files.len() > 10,
        "read too little of {}: {:?}",
        src.display(),
        files.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    let graph = graph(&files);
    println!("{}:", src.display());
    for (module, imports) in layered(&graph) {
        println!("{module:>12} -> {}", join(&imports));
    }
    let cycles = cycles(&graph);
    assert!(
        cycles.is_empty(),
        "import cycles in {}:\n{}",
        src.display(),
        cycles
            .iter()
            .map(|c| format!("  {}", c.join(" -> ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The cycle finder on deliberately bad input: it must see the cycle.
#[test]
fn finds_a_planted_cycle() {
    let files = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(p, s)| (p.to_string(), s.to_string()))
            .collect()
    };
    let bad = files(&[
        ("lib.rs", "pub mod a; pub mod b; pub mod c; pub mod m;"),
        ("a.rs", "use crate::b::B;\nfn f() { crate::m::now(); }"),
        ("b/inner.rs", "use crate::{c::C, m};"),
        // A multi-line group, as rustfmt writes them.
        ("c.rs", "use crate::{\n    a::A,\n    m::{X, Y},\n};"),
        ("m.rs", "pub fn now() {}"),
    ]);
    let g = graph(&bad);
    assert_eq!(join(&g["a"]), "b, m");
    assert_eq!(join(&g["b"]), "c, m");
    assert_eq!(join(&g["c"]), "a, m");
    let found = cycles(&g);
    assert_eq!(found, vec![vec!["a", "b", "c", "a"]], "{found:?}");

    // A root item used from below the root closes a cycle through `lib`.
    let root = files(&[
        ("lib.rs", "pub mod s; pub fn run() { s::go(); }"),
        ("s.rs", "pub fn go() { let _ = crate::run; }"),
    ]);
    assert_eq!(cycles(&graph(&root)), vec![vec!["lib", "s", "lib"]]);

    // Comments, doc links and strings are not imports; `super::` inside a
    // module stays in it.
    let quiet = files(&[
        ("lib.rs", "pub mod a; pub mod b;"),
        (
            "a.rs",
            "//! See [`crate::b::X`].\n/* crate::b */ const S: &str = \"crate::b::x\";\nuse crate::b::Y; // crate::a\nmod t { use super::*; }",
        ),
        ("b.rs", "/// Uses [`crate::a::Z`] in a doc link only.\nfn f() -> char { '\"' }\nconst R: &str = r#\"crate::a\"#;"),
    ]);
    let g = graph(&quiet);
    assert_eq!(join(&g["a"]), "b");
    assert!(g["b"].is_empty(), "{:?}", g["b"]);
    assert!(cycles(&g).is_empty());
}

/// `(path relative to src, text)` of every `.rs` file under `dir`, but the
/// binary's `main.rs` (it uses the library by its crate name).
fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).expect("under src");
            let rel = rel.to_string_lossy().replace('\\', "/");
            if rel != "main.rs" {
                let text = std::fs::read_to_string(&path).expect("read source");
                out.push((rel, text));
            }
        }
    }
}

/// The top-level module a file belongs to: `lib` for `lib.rs`.
fn module_of(rel: &str) -> String {
    let first = rel.split('/').next().unwrap_or(rel);
    first.strip_suffix(".rs").unwrap_or(first).to_string()
}

/// Module → the modules it names. `lib.rs` names its modules by their own
/// names (`service::QuizService`); every other file through `crate::`.
fn graph(files: &[(String, String)]) -> Graph {
    let modules: BTreeSet<String> = files.iter().map(|(p, _)| module_of(p)).collect();
    let mut g = Graph::new();
    for (path, text) in files {
        let from = module_of(path);
        let code = code_only(text);
        let named = if from == "lib" {
            root_references(&code, &modules)
        } else {
            crate_references(&code)
        };
        let entry = g.entry(from.clone()).or_default();
        for to in named {
            let to = if modules.contains(&to) && to != "lib" {
                to
            } else {
                "lib".to_string() // an item of the crate root
            };
            if to != from {
                entry.insert(to);
            }
        }
    }
    g
}

/// The first segment after every `crate::`, with `{…}` groups expanded.
fn crate_references(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `quiz_crate::`, not ours
        }
        let rest_trim = rest.trim_start();
        if let Some(group) = rest_trim.strip_prefix('{') {
            for item in top_level_items(group) {
                if let Some(id) = ident(item.trim_start()) {
                    out.insert(id.to_string());
                }
            }
        } else if let Some(id) = ident(rest_trim) {
            out.insert(id.to_string());
        }
    }
    out
}

/// `lib.rs`: every `module::` of a known module, at a word start.
fn root_references(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for m in modules {
        let pat = format!("{m}::");
        let mut from = 0;
        while let Some(i) = code[from..].find(&pat) {
            let at = from + i;
            let before = code[..at].chars().next_back();
            if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                out.insert(m.clone());
            }
            from = at + pat.len();
        }
    }
    out.extend(crate_references(code));
    out
}

/// The items of a `{…}` group (whose opening brace is already consumed),
/// split at its top-level commas.
fn top_level_items(group: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items
}

fn ident(s: &str) -> Option<&str> {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (end > 0).then(|| &s[..end])
}

/// `text` with comments and string and char literals blanked out.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == b'/' && next == Some(b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && next == Some(b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == b'r' && (next == Some(b'"') || next == Some(b'#')) && raw_start(b, i) {
            // r"…" or r#"…"#: ends at a quote followed by as many hashes.
            let hashes = b[i + 1..].iter().take_while(|&&h| h == b'#').count();
            i += 2 + hashes;
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            while i < b.len() && !b[i..].starts_with(&close) {
                i += 1;
            }
            i += close.len();
            out.push_str("\"\"");
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == b'\'' && next == Some(b'\\') {
            // An escaped char literal: '\n', '\'', '\u{..}'.
            i += 2;
            while i < b.len() && b[i] != b'\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else if c == b'\'' && b.get(i + 2) == Some(&b'\'') {
            i += 3; // 'x' (a lifetime never has a quote two bytes on)
            out.push_str("' '");
        } else {
            // Copy one whole UTF-8 character.
            let len = text[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&text[i..i + len]);
            i += len;
        }
    }
    out
}

/// `r` at `i` opens a raw string (not the end of an identifier like `br`
/// or `for`).
fn raw_start(b: &[u8], i: usize) -> bool {
    let before = i.checked_sub(1).map(|j| b[j]);
    let word = before.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_');
    let hashes = b[i + 1..].iter().take_while(|&&h| h == b'#').count();
    !word && b.get(i + 1 + hashes) == Some(&b'"')
}

/// Every cycle, one per strongly connected component, as a path that
/// starts and ends at the component's first module.
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(n) = todo.pop() {
            for m in g.get(&n).into_iter().flatten() {
                if seen.insert(m.clone()) {
                    todo.push(m.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&String, BTreeSet<String>> = g.keys().map(|k| (k, reach(k))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for a in g.keys() {
        if done.contains(a) || !reachable[a].contains(a) {
            continue;
        }
        let scc: BTreeSet<String> = g
            .keys()
            .filter(|b| reachable[a].contains(*b) && reachable[*b].contains(a))
            .cloned()
            .collect();
        done.extend(scc.iter().cloned());
        out.push(shortest_cycle(g, a, &scc));
    }
    out
}

/// A shortest path from `a` back to `a` inside `scc` (breadth first).
fn shortest_cycle(g: &Graph, a: &str, scc: &BTreeSet<String>) -> Vec<String> {
    let mut prev: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = VecDeque::from([a.to_string()]);
    while let Some(n) = queue.pop_front() {
        for m in g.get(&n).into_iter().flatten() {
            if !scc.contains(m) {
                continue;
            }
            if m == a {
                let mut path = vec![a.to_string()];
                let mut at = n.clone();
                while at != a {
                    path.push(at.clone());
                    at = prev[&at].clone();
                }
                path.push(a.to_string());
                path.reverse();
                return path;
            }
            if !prev.contains_key(m) {
                prev.insert(m.clone(), n.clone());
                queue.push_back(m.clone());
            }
        }
    }
    vec![a.to_string(), a.to_string()]
}

/// Modules in layers, lowest first (each after everything it imports;
/// modules on a cycle come last).
fn layered(g: &Graph) -> Vec<(String, BTreeSet<String>)> {
    let mut placed = BTreeSet::new();
    let mut out = Vec::new();
    while placed.len() < g.len() {
        let layer: Vec<&String> = g
            .iter()
            .filter(|(k, v)| !placed.contains(*k) && v.iter().all(|m| placed.contains(m)))
            .map(|(k, _)| k)
            .collect();
        if layer.is_empty() {
            for (k, v) in g.iter().filter(|(k, _)| !placed.contains(*k)) {
                out.push((k.clone(), v.clone()));
            }
            break;
        }
        for k in layer {
            placed.insert(k.clone());
            out.push((k.clone(), g[k].clone()));
        }
    }
    out
}

fn join(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(", ")
}
