//! The real `quiz-core` executable's configuration: the layers' precedence as
//! `--check-config` shows it, errors (exit 2, naming the key and its layer),
//! secrets redacted, `--version`; and docs/core.md's key table against the code.
//! No network: `--check-config` only loads and validates.

use std::process::{Command, Output};

use quiz_core::Config;

/// The binary with exactly `env` as its environment (the test process's own
/// `QUIZ_*` variables, e.g. from `stack env`, must not leak in).
fn core(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quiz-core"))
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run quiz-core")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The `key = value  # layer` line of `--check-config`'s output.
fn line(out: &str, key: &str) -> String {
    out.lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} in:\n{out}"))
        .to_string()
}

fn config_file(name: &str, text: &str) -> String {
    let dir = std::env::temp_dir().join(format!("quiz-core-config-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn file_env_and_command_line_in_that_order() {
    let file = config_file(
        "layers.toml",
        "join_queue_ms = 1500\nnode_name = \"from-file\"\nleaderboard_top = 20\n",
    );
    let check = |env: &[(&str, &str)], extra: &[&str]| {
        let mut args = vec!["--config", file.as_str(), "--check-config"];
        args.extend_from_slice(extra);
        let o = core(&args, env);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let out = check(&[], &[]);
    assert!(line(&out, "join_queue_ms").starts_with("join_queue_ms = 1500 "));
    assert!(line(&out, "join_queue_ms").ends_with(&format!("# file {file}")));
    assert!(line(&out, "ws_write_timeout_ms").ends_with("# default"));

    let env = [("QUIZ_JOIN_QUEUE_MS", "2s"), ("QUIZ_NODE_NAME", "from-env")];
    let out = check(&env, &[]);
    let l = line(&out, "join_queue_ms");
    assert!(
        l.starts_with("join_queue_ms = 2000 ") && l.ends_with("# environment QUIZ_JOIN_QUEUE_MS"),
        "{l}"
    );
    assert!(line(&out, "leaderboard_top").ends_with(&format!("# file {file}")));

    let out = check(
        &env,
        &[
            "--set",
            "join_queue_ms=3s",
            "--node-name",
            "from-flag",
            "--set",
            "leaderboard_top=30",
        ],
    );
    let l = line(&out, "join_queue_ms");
    assert!(
        l.starts_with("join_queue_ms = 3000 ") && l.ends_with("# command line --set join_queue_ms"),
        "{l}"
    );
    let l = line(&out, "node_name");
    assert!(
        l.contains("\"from-flag\"") && l.ends_with("# command line --node-name"),
        "{l}"
    );
    assert!(line(&out, "leaderboard_top").starts_with("leaderboard_top = 30 "));
    // `--set` wins over the named flag.
    let out = check(&env, &["--node-name", "a", "--set", "node_name=b"]);
    assert!(line(&out, "node_name").contains("\"b\""));
}

#[test]
fn errors_exit_2_naming_the_key_and_the_layer() {
    let bad_file = config_file("bad.toml", "ws_ping_interval_ms = \"often\"\n");
    for (args, env, key, layer) in [
        (
            vec!["--check-config", "--set", "join_queue_ms=soon"],
            vec![],
            "`join_queue_ms`",
            "command line --set join_queue_ms",
        ),
        (
            vec!["--check-config", "--set", "join_queue_msec=1"],
            vec![],
            "`join_queue_msec`",
            "unknown key",
        ),
        (
            vec!["--check-config"],
            vec![("QUIZ_MAX_SPREAD", "many")],
            "`max_spread`",
            "environment QUIZ_MAX_SPREAD",
        ),
        (
            vec!["--check-config"],
            vec![("QUIZ_LEADERBOARD_TOP", "0")],
            "`leaderboard_top`",
            "environment QUIZ_LEADERBOARD_TOP",
        ),
        (
            vec!["--check-config", "--config", bad_file.as_str()],
            vec![],
            "`ws_ping_interval_ms`",
            "file ",
        ),
        (
            vec!["--check-config", "--set", "demo_quiz=perhaps"],
            vec![],
            "`demo_quiz`",
            "boolean",
        ),
    ] {
        let o = core(&args, &env);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?} {env:?}: {e}");
        assert!(
            e.contains(key) && e.contains(layer),
            "{args:?} {env:?}: {e}"
        );
        assert!(!e.contains("panicked"), "{e}");
    }
    // Without --check-config a bad configuration stops the start the same way.
    let o = core(&["--set", "leaderboard_top=0"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("`leaderboard_top`"));
}

#[test]
fn secrets_are_redacted() {
    let secrets = [
        ("QUIZ_TOKEN_SECRET", "token-secret-0123456789"),
        ("QUIZ_ADMIN_KEY", "admin-key-0123456789"),
        ("QUIZ_REDIS_PASSWORD", "redis-pass-0123"),
        ("QUIZ_KAFKA_SASL_PASSWORD", "sasl-pass-0123"),
    ];
    let mut env = secrets.to_vec();
    env.extend([
        ("QUIZ_REDIS_USERNAME", "quiz"),
        (
            "QUIZ_REDIS_NODES",
            "127.0.0.1:7000,redis://u:url-pass-0123@127.0.0.1:7001",
        ),
        ("QUIZ_KAFKA_BROKERS", "127.0.0.1:9092"),
    ]);
    let o = core(&["--check-config"], &env);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    for (_, s) in secrets.iter().chain([&("", "url-pass-0123")]) {
        assert!(!out.contains(s), "{s} printed:\n{out}");
    }
    for key in [
        "token_secret",
        "admin_key",
        "redis_password",
        "kafka_sasl_password",
    ] {
        assert!(line(&out, key).contains("<redacted>"), "{out}");
    }
    assert!(line(&out, "redis_password").ends_with("# environment QUIZ_REDIS_PASSWORD"));
    assert!(line(&out, "redis_nodes").contains("u:<redacted>@127.0.0.1:7001"));
}

#[test]
fn version_is_printed() {
    let o = core(&["--version"], &[]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(
        out.starts_with(&format!("quiz-core {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
}

/// Every key of `Config` has a row in docs/core.md's table with its
/// environment name; the names core read before the shared scheme still work.
#[test]
fn docs_table_lists_every_key_with_its_env_name() {
    let md =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/core.md")).unwrap();
    let keys = Config::keys();
    let missing = settings::docs::undocumented(&md, &keys);
    assert!(
        missing.is_empty(),
        "not in docs/core.md's table: {missing:#?}"
    );
    let names: Vec<&String> = keys.iter().flat_map(|k| &k.env).collect();
    for old in [
        "QUIZ_LISTEN",
        "QUIZ_NODE_NAME",
        "QUIZ_TIER",
        "QUIZ_TOKEN_SECRET",
        "QUIZ_REDIS_NODES",
        "QUIZ_KAFKA_BROKERS",
        "QUIZ_KAFKA_TOPIC",
        "QUIZ_KAFKA_PROPERTIES",
        "QUIZ_KAFKA_SASL_PASSWORD",
        "QUIZ_REDIS_TLS",
        "QUIZ_REDIS_USERNAME",
        "QUIZ_REDIS_PASSWORD",
        "QUIZ_EVENT_LOG",
        "QUIZ_DEMO_QUIZ",
        "QUIZ_ADMIN_KEY",
        "QUIZ_ADMIN_OPEN",
        "QUIZ_MAX_PLAYERS_PER_QUIZ",
        "QUIZ_PLAYERS_PER_NODE",
        "QUIZ_PLAYERS_PER_SHARD",
        "QUIZ_MAX_CONNECTIONS",
        "QUIZ_LOG_FORMAT",
        "QUIZ_TRUSTED_PROXIES",
    ] {
        assert!(names.iter().any(|n| *n == old), "{old} no longer read");
    }
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "an env name for two keys");
}
