//! The effective configuration as `--check-config` prints it: one line per key,
//! `key = value  # layer`, secrets redacted.

use serde_json::Value;

use crate::layers::{Layers, Scheme};

/// What a redacted value is shown as.
pub const REDACTED: &str = "<redacted>";

/// Names that say their value is a secret (`admin_token`, `token_secret`,
/// `sasl.password`, `ssl.key.password`); a `*_file` key names a file, not a secret.
pub fn secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    !n.ends_with("_file") && (n.contains("password") || n.contains("secret") || n.contains("token"))
}

/// `scheme://user:password@host/…` → `scheme://user:<redacted>@host/…` (a URL's
/// credentials: Redis node URLs, a MongoDB URI).
pub fn redact_url(s: &str) -> String {
    let Some(start) = s.find("://").map(|i| i + 3) else {
        return s.to_string();
    };
    let rest = &s[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return s.to_string();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split(':').next().unwrap_or("");
    if !userinfo.contains(':') {
        return s.to_string();
    }
    format!("{}{user}:{REDACTED}{}", &s[..start], &rest[at..])
}

impl Scheme {
    fn redact(&self, key: &str, v: &Value) -> Value {
        let last = key.rsplit('.').next().unwrap_or(key);
        let empty = matches!(v, Value::Null) || v.as_str() == Some("");
        if !empty && (self.secrets.contains(&key) || secret_name(last)) {
            return Value::String(REDACTED.into());
        }
        match v {
            Value::String(s) => Value::String(redact_url(s)),
            Value::Array(items) => {
                Value::Array(items.iter().map(|x| self.redact(key, x)).collect())
            }
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, x)| {
                        let x = if secret_name(k) {
                            Value::String(REDACTED.into())
                        } else {
                            self.redact(&format!("{key}.{k}"), x)
                        };
                        (k.clone(), x)
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// The effective configuration: every key with its value (JSON syntax) and its layer;
    /// the hidden keys show only whether they are set.
    pub fn render(&self, layers: &Layers) -> String {
        let mut rows = Vec::new();
        self.walk_leaves(&layers.tree, "", &mut |rel, v| {
            let key = self.full_key(rel);
            let shown = self.redact(&key, v);
            rows.push((
                format!("{key} = {shown}"),
                layers.origin_of(&key).to_string(),
            ));
        });
        for (key, _) in self.hidden {
            let (shown, origin) = match layers.hidden.get(*key) {
                Some((v, o)) if !v.is_empty() => (format!("\"{REDACTED}\""), o.to_string()),
                _ => ("\"\"".to_string(), "default".to_string()),
            };
            rows.push((format!("{key} = {shown}"), origin));
        }
        let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0).min(72);
        rows.iter()
            .map(|(l, o)| format!("{l:<width$}  # {o}\n"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password_only() {
        assert_eq!(
            redact_url("redis://quiz:p@ss@10.0.0.1:6379"),
            "redis://quiz:<redacted>@10.0.0.1:6379"
        );
        assert_eq!(
            redact_url("mongodb://u:pw@db:27017/quiz?w=majority"),
            "mongodb://u:<redacted>@db:27017/quiz?w=majority"
        );
        assert_eq!(redact_url("mongodb://db:27017/"), "mongodb://db:27017/");
        assert_eq!(redact_url("redis://user@h:1"), "redis://user@h:1");
        assert_eq!(redact_url("10.0.0.1:6379"), "10.0.0.1:6379");
        assert_eq!(redact_url("http://h/p@q"), "http://h/p@q");
    }

    #[test]
    fn secret_names() {
        for n in [
            "admin_token",
            "token_secret",
            "sasl.password",
            "ssl.key.password",
        ] {
            assert!(secret_name(n), "{n}");
        }
        for n in ["admin_token_file", "listen", "admin_key"] {
            assert!(!secret_name(n), "{n}");
        }
    }
}
