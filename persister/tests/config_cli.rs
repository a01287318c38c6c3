//! The real `persister` executable's configuration: the layers' precedence as
//! `--check-config` shows it (the older environment names included), errors
//! (exit 2, naming the key and its layer), secrets redacted, `--version`; and
//! docs/persister.md's key table against the code. No Kafka or MongoDB needed:
//! `--check-config` only loads and validates.

use std::process::{Command, Output};

/// The binary with exactly `env` as its environment.
fn persister(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_persister"))
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run persister")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn line(out: &str, key: &str) -> String {
    out.lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} in:\n{out}"))
        .to_string()
}

fn config_file(name: &str, body: &str) -> String {
    let dir = std::env::temp_dir().join(format!("persister-config-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

#[test]
fn file_env_and_command_line_in_that_order() {
    let file = config_file(
        "layers.toml",
        "[batch]\nmax_wait_ms = 150\nmax_events = 20\n",
    );
    let check = |env: &[(&str, &str)], set: &[&str]| {
        let mut args = vec!["--config", file.as_str(), "--check-config"];
        for s in set {
            args.extend(["--set", s]);
        }
        let o = persister(&args, env);
        assert!(o.status.success(), "{}", text(&o.stderr));
        text(&o.stdout)
    };
    let out = check(&[], &[]);
    let l = line(&out, "batch.max_wait_ms");
    assert!(
        l.starts_with("batch.max_wait_ms = 150 ") && l.ends_with(&format!("# file {file}")),
        "{l}"
    );
    assert!(line(&out, "retry.max_backoff_ms").ends_with("# default"));

    // The older name still works; the derived name wins over it.
    let out = check(&[("PERSISTER_BATCH_MAX_WAIT_MS", "250")], &[]);
    let l = line(&out, "batch.max_wait_ms");
    assert!(
        l.starts_with("batch.max_wait_ms = 250 ")
            && l.ends_with("# environment PERSISTER_BATCH_MAX_WAIT_MS"),
        "{l}"
    );
    let env = [
        ("PERSISTER_BATCH_MAX_WAIT_MS", "250"),
        ("PERSISTER_BATCH__MAX_WAIT_MS", "2s"),
        ("QUIZ_KAFKA_TOPIC", "events-from-env"),
    ];
    let out = check(&env, &[]);
    let l = line(&out, "batch.max_wait_ms");
    assert!(
        l.starts_with("batch.max_wait_ms = 2000 ")
            && l.ends_with("# environment PERSISTER_BATCH__MAX_WAIT_MS"),
        "{l}"
    );
    assert!(line(&out, "kafka.topic").contains("events-from-env"));
    assert!(line(&out, "batch.max_events").ends_with(&format!("# file {file}")));

    let out = check(&env, &["batch.max_wait_ms=3s", "kafka.topic=t3"]);
    let l = line(&out, "batch.max_wait_ms");
    assert!(
        l.starts_with("batch.max_wait_ms = 3000 ")
            && l.ends_with("# command line --set batch.max_wait_ms"),
        "{l}"
    );
    assert!(line(&out, "kafka.topic").contains("\"t3\""));
}

#[test]
fn errors_exit_2_naming_the_key_and_the_layer() {
    let bad_file = config_file("bad.toml", "[retry]\nmax_backoff_ms = \"later\"\n");
    let unknown_file = config_file("unknown.toml", "[batch]\nmax_evnts = 3\n");
    for (args, env, key, layer) in [
        (
            vec!["--check-config", "--set", "batch.max_wait_ms=soon"],
            vec![],
            "`batch.max_wait_ms`",
            "command line --set batch.max_wait_ms",
        ),
        (
            vec!["--check-config", "--set", "batch.max_evnts=3"],
            vec![],
            "`batch.max_evnts`",
            "unknown key",
        ),
        (
            vec!["--check-config"],
            vec![("PERSISTER_MONGODB__MAX_COMMAND_BYTES", "big")],
            "`mongodb.max_command_bytes`",
            "environment PERSISTER_MONGODB__MAX_COMMAND_BYTES",
        ),
        (
            vec!["--check-config"],
            vec![("PERSISTER_BATCH_MAX_EVENTS", "0")],
            "`batch.max_events`",
            "environment PERSISTER_BATCH_MAX_EVENTS",
        ),
        (
            vec!["--check-config", "--config", bad_file.as_str()],
            vec![],
            "`retry.max_backoff_ms`",
            "file ",
        ),
        (
            vec!["--check-config", "--config", unknown_file.as_str()],
            vec![],
            "max_evnts",
            "config file",
        ),
    ] {
        let o = persister(&args, &env);
        let e = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?} {env:?}: {e}");
        assert!(
            e.contains(key) && e.contains(layer),
            "{args:?} {env:?}: {e}"
        );
    }
}

#[test]
fn secrets_are_redacted() {
    let o = persister(
        &["--check-config"],
        &[
            ("QUIZ_KAFKA_SASL_PASSWORD", "sasl-pass-0123"),
            (
                "QUIZ_MONGODB_URI",
                "mongodb://quiz:mongo-pass-0123@127.0.0.1:27017/",
            ),
            (
                "QUIZ_KAFKA_PROPERTIES",
                "ssl.key.password=key-pass-0123,linger.ms=5",
            ),
        ],
    );
    let out = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    for s in ["sasl-pass-0123", "mongo-pass-0123", "key-pass-0123"] {
        assert!(!out.contains(s), "{s} printed:\n{out}");
    }
    assert!(line(&out, "kafka.sasl_password").contains("<redacted>"));
    assert!(line(&out, "mongodb.uri").contains("quiz:<redacted>@127.0.0.1"));
    assert!(line(&out, "kafka.properties").contains("\"linger.ms\":\"5\""));
}

#[test]
fn version_is_printed() {
    let o = persister(&["--version"], &[]);
    assert!(o.status.success());
    let out = text(&o.stdout);
    assert!(
        out.starts_with(&format!("persister {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
}

/// Every key has a row in docs/persister.md's table with all its environment
/// names; every name the persister read before still maps to its key.
#[test]
fn docs_table_lists_every_key_with_its_env_names() {
    let md = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/persister.md"))
        .unwrap();
    let keys = persister::Config::keys();
    let missing = settings::docs::undocumented(&md, &keys);
    assert!(
        missing.is_empty(),
        "not in docs/persister.md's table: {missing:#?}"
    );
    let reads = |key: &str, name: &str| {
        keys.iter()
            .any(|k| k.key == key && k.env.iter().any(|e| e == name))
    };
    for (key, old) in [
        ("kafka.brokers", "QUIZ_KAFKA_BROKERS"),
        ("kafka.topic", "QUIZ_KAFKA_TOPIC"),
        ("kafka.sasl_password", "QUIZ_KAFKA_SASL_PASSWORD"),
        ("kafka.properties", "QUIZ_KAFKA_PROPERTIES"),
        (
            "kafka.dlq_replication_factor",
            "PERSISTER_DLQ_REPLICATION_FACTOR",
        ),
        ("kafka.group_id", "PERSISTER_GROUP_ID"),
        ("kafka.dlq_topic", "PERSISTER_DLQ_TOPIC"),
        ("kafka.session_timeout_ms", "PERSISTER_SESSION_TIMEOUT_MS"),
        (
            "kafka.max_poll_interval_ms",
            "PERSISTER_MAX_POLL_INTERVAL_MS",
        ),
        ("kafka.assignment_strategy", "PERSISTER_ASSIGNMENT_STRATEGY"),
        (
            "kafka.statistics_interval_ms",
            "PERSISTER_STATISTICS_INTERVAL_MS",
        ),
        ("kafka.create_dlq_topic", "PERSISTER_CREATE_DLQ_TOPIC"),
        ("mongodb.uri", "QUIZ_MONGODB_URI"),
        ("mongodb.database", "QUIZ_MONGODB_DB"),
        ("mongodb.max_command_bytes", "PERSISTER_MAX_COMMAND_BYTES"),
        (
            "mongodb.parallel_collections",
            "PERSISTER_PARALLEL_COLLECTIONS",
        ),
        ("mongodb.command_timeout_ms", "PERSISTER_COMMAND_TIMEOUT_MS"),
        (
            "mongodb.max_statements_per_command",
            "PERSISTER_MAX_STATEMENTS_PER_COMMAND",
        ),
        ("mongodb.insert_immutable", "PERSISTER_INSERT_IMMUTABLE"),
        (
            "mongodb.max_documents_per_insert",
            "PERSISTER_MAX_DOCUMENTS_PER_INSERT",
        ),
        ("batch.max_events", "PERSISTER_BATCH_MAX_EVENTS"),
        ("batch.max_wait_ms", "PERSISTER_BATCH_MAX_WAIT_MS"),
        (
            "retry.initial_backoff_ms",
            "PERSISTER_RETRY_INITIAL_BACKOFF_MS",
        ),
        ("retry.max_backoff_ms", "PERSISTER_RETRY_MAX_BACKOFF_MS"),
        (
            "retry.revoke_flush_timeout_ms",
            "PERSISTER_REVOKE_FLUSH_TIMEOUT_MS",
        ),
        ("http.listen", "PERSISTER_HTTP_LISTEN"),
        ("log.format", "PERSISTER_LOG_FORMAT"),
        ("log.level", "PERSISTER_LOG_LEVEL"),
        ("shutdown_grace_ms", "PERSISTER_SHUTDOWN_GRACE_MS"),
    ] {
        assert!(reads(key, old), "{old} no longer sets {key}");
    }
    let mut names: Vec<&String> = keys.iter().flat_map(|k| &k.env).collect();
    let n = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), n, "an env name for two keys");
}
