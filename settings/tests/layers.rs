//! The shared layer on a small struct shaped like the binaries' (a section, a map, a list,
//! an optional section, a hidden secret).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use settings::{Error, Origin, Override, Scheme};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Conf {
    listen: String,
    ratio: f64,
    on: bool,
    nodes: Vec<String>,
    props: BTreeMap<String, String>,
    admin_key: Option<String>,
    tls: Option<Tls>,
    batch: Batch,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Batch {
    max_wait_ms: u64,
    max_events: u32,
    retention_s: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tls {
    cert: String,
    key: String,
}

impl Default for Conf {
    fn default() -> Self {
        Conf {
            listen: "127.0.0.1:1".into(),
            ratio: 1.25,
            on: false,
            nodes: vec![],
            props: BTreeMap::new(),
            admin_key: None,
            tls: None,
            batch: Batch::default(),
        }
    }
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            max_wait_ms: 100,
            max_events: 1000,
            retention_s: 3600,
        }
    }
}

static SCHEME: Scheme = Scheme {
    env_prefix: "APP",
    root: None,
    aliases: &[("batch.max_wait_ms", "APP_BATCH_MAX_WAIT_MS")],
    maps: &["props"],
    hidden: &[("password", "APP_PASSWORD")],
    secrets: &["admin_key"],
};

fn load(
    file: Option<&str>,
    env: &[(&str, &str)],
    set: &[&str],
) -> Result<(Conf, settings::Layers), Error> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (base, file_tree) = match file {
        Some(text) => {
            let mut tree: Value = serde_yaml::from_str(text).unwrap();
            SCHEME.normalize_file(&mut tree, "f.yaml")?;
            let c: Conf = serde_json::from_value(tree.clone()).unwrap();
            (c, Some(tree))
        }
        None => (Conf::default(), None),
    };
    let base = serde_json::to_value(&base).unwrap();
    let mut overrides = SCHEME.env_overrides(&base, &|n| env.get(n).cloned());
    for s in set {
        overrides.push(settings::cli::parse_set(s)?);
    }
    SCHEME.load(base, file_tree.as_ref().map(|t| ("f.yaml", t)), &overrides)
}

#[test]
fn every_key_has_a_derived_env_name_and_aliases_follow_it() {
    let keys = SCHEME.keys(&serde_json::to_value(Conf::default()).unwrap());
    let env = |k: &str| keys.iter().find(|i| i.key == k).unwrap().env.clone();
    assert_eq!(env("listen"), vec!["APP_LISTEN"]);
    assert_eq!(
        env("batch.max_wait_ms"),
        vec!["APP_BATCH__MAX_WAIT_MS", "APP_BATCH_MAX_WAIT_MS"]
    );
    assert_eq!(env("password"), vec!["APP_PASSWORD"]);
    // A section is a key too (set whole), but not a leaf; a map is a leaf.
    assert!(!keys.iter().find(|i| i.key == "batch").unwrap().leaf);
    assert!(keys.iter().find(|i| i.key == "props").unwrap().leaf);
    // No two keys share an environment name.
    let mut names: Vec<&String> = keys.iter().flat_map(|k| &k.env).collect();
    let n = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), n);
}

#[test]
fn precedence_default_file_env_flag_with_origins() {
    let file = "listen: 127.0.0.1:2\nbatch: {max_wait_ms: 5s, max_events: 7}\n";
    let (c, l) = load(Some(file), &[], &[]).unwrap();
    assert_eq!(c.listen, "127.0.0.1:2");
    assert_eq!(c.batch.max_wait_ms, 5000, "a duration string in the file");
    assert_eq!(l.origin_of("listen"), Origin::File("f.yaml".into()));
    assert_eq!(
        l.origin_of("batch.max_events"),
        Origin::File("f.yaml".into())
    );
    assert_eq!(l.origin_of("ratio"), Origin::Default);

    let env = [
        ("APP_LISTEN", "127.0.0.1:3"),
        ("APP_BATCH_MAX_WAIT_MS", "250"),
    ];
    let (c, l) = load(Some(file), &env, &[]).unwrap();
    assert_eq!(c.listen, "127.0.0.1:3");
    assert_eq!(c.batch.max_wait_ms, 250, "the alias still works");
    assert_eq!(
        l.origin_of("batch.max_wait_ms"),
        Origin::Env("APP_BATCH_MAX_WAIT_MS".into())
    );

    // The derived name wins over the alias; the command line over both.
    let env = [
        ("APP_BATCH_MAX_WAIT_MS", "250"),
        ("APP_BATCH__MAX_WAIT_MS", "1m"),
    ];
    let (c, _) = load(Some(file), &env, &[]).unwrap();
    assert_eq!(c.batch.max_wait_ms, 60_000);
    let (c, l) = load(
        Some(file),
        &env,
        &["batch.max_wait_ms=30ms", "listen=127.0.0.1:4"],
    )
    .unwrap();
    assert_eq!(c.batch.max_wait_ms, 30);
    assert_eq!(c.listen, "127.0.0.1:4");
    assert_eq!(l.origin_of("listen"), Origin::Flag("--set listen".into()));
}

#[test]
fn values_are_read_by_the_type_they_replace() {
    let (c, _) = load(
        None,
        &[
            ("APP_RATIO", "2.5"),
            ("APP_ON", "yes"),
            ("APP_NODES", "a:1, b:2,"),
            ("APP_PROPS", "x.y=1, z=2"),
            ("APP_ADMIN_KEY", "k"),
            ("APP_BATCH__RETENTION_S", "2h"),
        ],
        &["props=w=3", "tls={cert: c.pem, key: k.pem}"],
    )
    .unwrap();
    assert_eq!(c.ratio, 2.5);
    assert!(c.on);
    assert_eq!(c.nodes, vec!["a:1", "b:2"]);
    assert_eq!(c.props.len(), 3, "a map merges: {:?}", c.props);
    assert_eq!(c.admin_key.as_deref(), Some("k"));
    assert_eq!(c.batch.retention_s, 7200);
    assert_eq!(c.tls.unwrap().cert, "c.pem");
    let (c, _) = load(None, &[("APP_NODES", "[x, y]")], &["nodes=[z]"]).unwrap();
    assert_eq!(c.nodes, vec!["z"]);
}

#[test]
fn errors_name_the_key_and_the_layer() {
    let err = |file: Option<&str>, env: &[(&str, &str)], set: &[&str]| {
        load(file, env, set).unwrap_err().to_string()
    };
    let e = err(None, &[("APP_BATCH__MAX_EVENTS", "lots")], &[]);
    assert!(
        e.contains("`batch.max_events`") && e.contains("environment APP_BATCH__MAX_EVENTS"),
        "{e}"
    );
    let e = err(None, &[], &["batch.max_wait_ms=5 parsecs"]);
    assert!(
        e.contains("`batch.max_wait_ms`") && e.contains("command line --set"),
        "{e}"
    );
    let e = err(Some("batch: {max_wait_ms: soon}\n"), &[], &[]);
    assert!(
        e.contains("`batch.max_wait_ms`") && e.contains("file f.yaml"),
        "{e}"
    );
    let e = err(None, &[], &["batch.max_evnts=1"]);
    assert!(
        e.contains("`batch.max_evnts`") && e.contains("unknown key"),
        "{e}"
    );
    let e = err(None, &[], &["on=maybe"]);
    assert!(e.contains("`on`") && e.contains("boolean"), "{e}");
    // Accepted as an integer, refused by the struct (u32): still blamed on its key.
    let e = err(
        None,
        &[],
        &["listen=127.0.0.1:9", "batch.max_events=99999999999"],
    );
    assert!(
        e.contains("`batch.max_events`") && e.contains("--set batch.max_events"),
        "{e}"
    );
    let e = err(None, &[], &["tls={cert: c.pem, bogus: 1}"]);
    assert!(e.contains("`tls`") && e.contains("bogus"), "{e}");
    let e = err(None, &[("APP_PROPS", "novalue")], &[]);
    assert!(e.contains("`props`") && e.contains("key=value"), "{e}");
    let e = err(None, &[], &["batch=1"]);
    assert!(e.contains("`batch`") && e.contains("section"), "{e}");
    assert!(err(None, &[], &["nokey"]).contains("KEY=VALUE"));
}

#[test]
fn render_redacts_secrets_and_shows_layers() {
    let (_, l) = load(
        Some("listen: 127.0.0.1:2\n"),
        &[
            ("APP_PASSWORD", "hunter2"),
            ("APP_ADMIN_KEY", "adminkey-0123456789"),
        ],
        &[
            "nodes=redis://u:pw@h:1",
            "props=sasl.password=pw2,linger.ms=5",
        ],
    )
    .unwrap();
    assert_eq!(l.hidden("password"), Some("hunter2"));
    let out = SCHEME.render(&l);
    for secret in ["hunter2", "adminkey-0123456789", "pw@", "pw2"] {
        assert!(!out.contains(secret), "{secret} leaked:\n{out}");
    }
    let line = |k: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{k} = ")))
            .unwrap_or_else(|| panic!("{k} missing:\n{out}"))
            .to_string()
    };
    assert!(line("listen").ends_with("# file f.yaml"), "{out}");
    assert!(
        line("password").contains("<redacted>")
            && line("password").ends_with("environment APP_PASSWORD")
    );
    assert!(line("admin_key").contains("<redacted>"));
    assert!(
        line("nodes").contains("u:<redacted>@h:1")
            && line("nodes").ends_with("# command line --set nodes")
    );
    assert!(line("props").contains("\"linger.ms\":\"5\""), "{out}");
    assert!(line("batch.max_wait_ms").ends_with("# default"));
}

#[test]
fn a_validation_error_takes_the_layer_of_its_key() {
    let (_, l) = load(None, &[("APP_BATCH__MAX_EVENTS", "0")], &[]).unwrap();
    let e = l.error("batch.max_events", "must be > 0").to_string();
    assert_eq!(
        e,
        "config key `batch.max_events` (from environment APP_BATCH__MAX_EVENTS): must be > 0"
    );
    assert_eq!(l.origin_of("nodes[0].name"), Origin::Default);
    let _ = Override::flag("listen", "--listen", "x");
}
