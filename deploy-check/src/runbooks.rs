//! Every alert links its runbook: `annotations.runbook_url` is `docs/runbooks.md#<anchor>`
//! (optionally behind the URL prefix where the repository is published), and the anchor
//! is a heading of that document, by GitHub's rules for heading anchors.

use std::collections::BTreeSet;

use serde_json::Value;

/// The document the URLs point at, relative to the repository root.
pub const DOC: &str = "docs/runbooks.md";

/// GitHub's anchor of a heading: lower case; letters, digits, `-` and `_` kept; spaces
/// become `-`; everything else is dropped; a repeated anchor gets `-1`, `-2`, ….
pub fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_fence = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let Some(title) = line.strip_prefix('#').map(|t| t.trim_start_matches('#')) else {
            continue;
        };
        if !title.starts_with(' ') {
            continue;
        }
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let mut unique = slug.clone();
        let mut n = 1;
        while out.contains(&unique) {
            unique = format!("{slug}-{n}");
            n += 1;
        }
        out.insert(unique);
    }
    out
}

/// The problems of the alerts in `rules` (a parsed rule file) against the runbook
/// document's text: an alert without `runbook_url`, one not pointing at [`DOC`], one whose
/// anchor is not a heading there. Empty when all is well.
pub fn problems(rules: &Value, doc: &str) -> Vec<String> {
    let anchors = anchors(doc);
    let mut out = Vec::new();
    let alerts = rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter(|r| r.get("alert").is_some());
    for r in alerts {
        let name = r["alert"].as_str().unwrap_or("?");
        let Some(url) = r
            .pointer("/annotations/runbook_url")
            .and_then(Value::as_str)
        else {
            out.push(format!("{name}: no annotations.runbook_url"));
            continue;
        };
        let Some((path, anchor)) = url.split_once('#') else {
            out.push(format!("{name}: runbook_url {url} has no #anchor"));
            continue;
        };
        if path != DOC && !path.ends_with(&format!("/{DOC}")) {
            out.push(format!("{name}: runbook_url {url} does not point at {DOC}"));
        } else if !anchors.contains(anchor) {
            out.push(format!(
                "{name}: runbook_url {url}: {DOC} has no heading with anchor #{anchor}"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn anchors_follow_github() {
        let a = anchors("# Runbooks\n## QuizCoreSinkErrors\n```\n# not a heading\n```\n### What it means: p99 > 100 ms\n## QuizCoreSinkErrors\n#nope");
        let want: BTreeSet<String> = [
            "runbooks",
            "quizcoresinkerrors",
            "what-it-means-p99--100-ms",
            "quizcoresinkerrors-1",
        ]
        .map(String::from)
        .into();
        assert_eq!(a, want);
    }

    #[test]
    fn missing_url_and_dangling_anchor_are_reported() {
        let rules = json!({"groups": [{"name": "g", "rules": [
            {"alert": "A", "annotations": {"runbook_url": "docs/runbooks.md#a"}},
            {"alert": "B", "annotations": {"runbook_url": "https://example.com/x/docs/runbooks.md#b"}},
            {"alert": "C", "annotations": {}},
            {"alert": "D", "annotations": {"runbook_url": "docs/runbooks.md#gone"}},
            {"alert": "E", "annotations": {"runbook_url": "docs/other.md#a"}},
            {"record": "r", "expr": "up"}
        ]}]});
        let p = problems(&rules, "## A\n## B\n");
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].starts_with("C: no annotations.runbook_url"), "{p:?}");
        assert!(p[1].contains("#gone"), "{p:?}");
        assert!(p[2].contains("does not point at"), "{p:?}");
    }
}
