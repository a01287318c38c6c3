//! A Dockerfile reader for linting (no Docker engine needed): instructions with their
//! continuation lines joined, grouped by stage, `ARG` defaults substituted in `FROM`.

use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct Instruction {
    pub keyword: String,
    pub args: String,
    pub line: usize,
}

#[derive(Debug, Clone)]
pub struct Stage {
    /// `FROM` image with global `ARG` defaults substituted.
    pub image: String,
    pub name: Option<String>,
    pub instructions: Vec<Instruction>,
}

impl Stage {
    pub fn all<'a>(&'a self, keyword: &'a str) -> impl Iterator<Item = &'a Instruction> + 'a {
        self.instructions
            .iter()
            .filter(move |i| i.keyword == keyword)
    }
}

#[derive(Debug, Clone)]
pub struct Dockerfile {
    pub global_args: BTreeMap<String, String>,
    pub stages: Vec<Stage>,
}

pub fn parse(text: &str) -> Result<Dockerfile, String> {
    let mut logical: Vec<(usize, String)> = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        if pending.is_none() && (line.trim_start().starts_with('#') || line.trim().is_empty()) {
            continue;
        }
        if pending.is_some() && line.trim_start().starts_with('#') {
            continue;
        }
        let (cont, body) = match line.strip_suffix('\\') {
            Some(b) => (true, b),
            None => (false, line),
        };
        let entry = pending.get_or_insert((n + 1, String::new()));
        entry.1.push_str(body.trim());
        entry.1.push(' ');
        if !cont {
            logical.extend(pending.take());
        }
    }
    if pending.is_some() {
        return Err("file ends inside a continued line".into());
    }
    let mut df = Dockerfile {
        global_args: BTreeMap::new(),
        stages: Vec::new(),
    };
    for (line, text) in logical {
        let text = text.trim();
        let (kw, args) = text.split_once(' ').unwrap_or((text, ""));
        let keyword = kw.to_ascii_uppercase();
        let args = args.trim().to_string();
        if keyword == "FROM" {
            let mut parts = args.split_whitespace();
            let mut image = parts.next().unwrap_or("").to_string();
            for (k, v) in &df.global_args {
                image = image.replace(&format!("${{{k}}}"), v);
                image = image.replace(&format!("${k}"), v);
            }
            let name = match (parts.next(), parts.next()) {
                (Some(a), Some(n)) if a.eq_ignore_ascii_case("as") => Some(n.to_string()),
                _ => None,
            };
            df.stages.push(Stage {
                image,
                name,
                instructions: Vec::new(),
            });
        } else if let Some(stage) = df.stages.last_mut() {
            stage.instructions.push(Instruction {
                keyword,
                args,
                line,
            });
        } else if keyword == "ARG" {
            let (k, v) = args.split_once('=').unwrap_or((args.as_str(), ""));
            df.global_args.insert(k.to_string(), v.to_string());
        } else {
            return Err(format!("line {line}: {keyword} before the first FROM"));
        }
    }
    Ok(df)
}

/// Sources of a `COPY`/`ADD` (flags removed; JSON form understood); `None` for `--from=`.
pub fn copy_sources(args: &str) -> Option<Vec<String>> {
    let mut words: Vec<String> = if args.trim_start().starts_with('[') {
        serde_json::from_str(args).ok()?
    } else {
        args.split_whitespace().map(String::from).collect()
    };
    if words.iter().any(|w| w.starts_with("--from=")) {
        return None;
    }
    words.retain(|w| !w.starts_with("--"));
    words.pop(); // destination
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_args_continuations() {
        let df = parse(
            "# c\nARG V=1.2\nFROM rust:${V}-bookworm AS build\nRUN a \\\n  # note\n  && b\nFROM debian:slim\nUSER 10001\n",
        )
        .unwrap();
        assert_eq!(df.stages.len(), 2);
        assert_eq!(df.stages[0].image, "rust:1.2-bookworm");
        assert_eq!(df.stages[0].name.as_deref(), Some("build"));
        assert_eq!(df.stages[0].instructions[0].args, "a && b");
        assert_eq!(df.stages[1].all("USER").count(), 1);
        assert_eq!(copy_sources("--chown=1:1 a b /x/").unwrap(), vec!["a", "b"]);
        assert!(copy_sources("--from=build /out/x /y").is_none());
    }
}
