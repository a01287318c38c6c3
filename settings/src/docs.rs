//! Checking a component doc's key table against the code: every key has a table row
//! (a Markdown line starting with `|`) naming it in backticks with each of its
//! environment names in backticks.

use crate::layers::KeyInfo;

/// The keys (those with a value of their own) that no table row documents with all their
/// environment names; empty when the table is complete.
pub fn undocumented(md: &str, keys: &[KeyInfo]) -> Vec<String> {
    let rows: Vec<&str> = md
        .lines()
        .filter(|l| l.trim_start().starts_with('|'))
        .collect();
    keys.iter()
        .filter(|k| k.leaf)
        .filter(|k| {
            let key = format!("`{}`", k.key);
            !rows.iter().any(|row| {
                row.contains(&key) && k.env.iter().all(|e| row.contains(&format!("`{e}`")))
            })
        })
        .map(|k| format!("{} ({})", k.key, k.env.join(", ")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_needs_the_key_and_every_env_name() {
        let md = "| key | env |\n|---|---|\n| `a.b` | `X_A__B`, `OLD_B` |\n| `c` | file |\n";
        let k = |key: &str, env: &[&str]| KeyInfo {
            key: key.into(),
            env: env.iter().map(|s| s.to_string()).collect(),
            leaf: true,
        };
        assert!(undocumented(md, &[k("a.b", &["X_A__B", "OLD_B"])]).is_empty());
        assert_eq!(undocumented(md, &[k("c", &["X_C"])]), vec!["c (X_C)"]);
        assert_eq!(undocumented(md, &[k("d", &["X_D"])]), vec!["d (X_D)"]);
    }
}
