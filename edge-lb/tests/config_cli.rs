//! The real `edge-lb` executable's configuration: the layers' precedence as
//! `--check-config` shows it, errors (exit 2, naming the key and its layer), the
//! admin token redacted, `--version`, `-t` still validating; and docs/edge-lb.md's
//! key table against the code. Nothing is bound: `--check-config` only loads.

use std::process::{Command, Output};

fn edge(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edge-lb"))
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run edge-lb")
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

const FILE: &str = "version: 1
edge_lb:
  listen: ['127.0.0.1:0']
  admin_listen: '127.0.0.1:0'
  health: {interval: 1500ms}
  pools:
    - name: core
      backends:
        - {name: core-1, addr: '127.0.0.1:7001'}
";

fn config_file(name: &str, body: &str) -> String {
    let dir = std::env::temp_dir().join(format!("edge-lb-config-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

#[test]
fn file_env_and_command_line_in_that_order() {
    let file = config_file("layers.yaml", FILE);
    let check = |env: &[(&str, &str)], set: &[&str]| {
        let mut args = vec!["-c", file.as_str(), "--check-config"];
        for s in set {
            args.extend(["--set", s]);
        }
        let o = edge(&args, env);
        assert!(o.status.success(), "{}", text(&o.stderr));
        text(&o.stdout)
    };
    let out = check(&[], &[]);
    let l = line(&out, "edge_lb.health.interval");
    assert!(
        l.contains("\"1s 500ms\"") && l.ends_with(&format!("# file {file}")),
        "{l}"
    );
    assert!(line(&out, "edge_lb.health.timeout").ends_with("# default"));
    assert!(line(&out, "edge_lb.pools").ends_with(&format!("# file {file}")));

    let env = [
        ("EDGE_LB_HEALTH__INTERVAL", "2s"),
        ("EDGE_LB_LIMITS__PER_CLIENT__MAX_CONNECTIONS", "77"),
    ];
    let out = check(&env, &[]);
    let l = line(&out, "edge_lb.health.interval");
    assert!(
        l.contains("\"2s\"") && l.ends_with("# environment EDGE_LB_HEALTH__INTERVAL"),
        "{l}"
    );
    let l = line(&out, "edge_lb.limits.per_client.max_connections");
    assert!(
        l.starts_with("edge_lb.limits.per_client.max_connections = 77 "),
        "{l}"
    );

    let out = check(&env, &["edge_lb.health.interval=3s", "edge_lb.vnodes=200"]);
    let l = line(&out, "edge_lb.health.interval");
    assert!(
        l.contains("\"3s\"") && l.ends_with("# command line --set edge_lb.health.interval"),
        "{l}"
    );
    assert!(line(&out, "edge_lb.vnodes").starts_with("edge_lb.vnodes = 200 "));
    // A section set whole, from the environment.
    let out = check(
        &[(
            "EDGE_LB_POOLS",
            "[{name: core, backends: [{name: core-9, addr: '127.0.0.1:7009'}]}]",
        )],
        &[],
    );
    assert!(line(&out, "edge_lb.pools").contains("core-9"));
}

#[test]
fn errors_exit_2_naming_the_key_and_the_layer() {
    let file = config_file("errors.yaml", FILE);
    for (set, env, key, layer) in [
        (
            vec!["edge_lb.health.interval=soon"],
            vec![],
            "`edge_lb.health.interval`",
            "command line --set edge_lb.health.interval",
        ),
        (
            vec!["edge_lb.health.intervals=1s"],
            vec![],
            "`edge_lb.health.intervals`",
            "unknown key",
        ),
        (vec!["threads=4"], vec![], "`threads`", "unknown key"),
        (
            vec![],
            vec![("EDGE_LB_VNODES", "many")],
            "`edge_lb.vnodes`",
            "environment EDGE_LB_VNODES",
        ),
        (
            vec![],
            vec![("EDGE_LB_BALANCE_FACTOR", "0.5")],
            "`edge_lb.balance_factor`",
            "environment EDGE_LB_BALANCE_FACTOR",
        ),
        (
            vec!["edge_lb.routes.http=nowhere"],
            vec![],
            "`edge_lb.routes.http`",
            "command line --set edge_lb.routes.http",
        ),
    ] {
        let mut args = vec!["-c", file.as_str(), "--check-config"];
        for s in &set {
            args.extend(["--set", s]);
        }
        let o = edge(&args, &env);
        let e = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{set:?} {env:?}: {e}");
        assert!(e.contains(key) && e.contains(layer), "{set:?} {env:?}: {e}");
    }
    // `-t` validates with the same layers.
    let o = edge(&["-c", &file, "-t", "--set", "edge_lb.vnodes=0"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let o = edge(&["-c", &file, "-t"], &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn the_admin_token_is_redacted() {
    let file = config_file("token.yaml", FILE);
    let o = edge(
        &["-c", &file, "--check-config"],
        &[("EDGE_LB_ADMIN_TOKEN", "admin-token-0123456789")],
    );
    let out = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!out.contains("admin-token-0123456789"), "{out}");
    let l = line(&out, "edge_lb.admin_token");
    assert!(
        l.contains("<redacted>") && l.ends_with("# environment EDGE_LB_ADMIN_TOKEN"),
        "{l}"
    );
}

#[test]
fn version_is_printed() {
    let o = edge(&["--version"], &[]);
    assert!(o.status.success());
    let out = text(&o.stdout);
    assert!(
        out.starts_with(&format!("edge-lb {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
}

#[test]
fn docs_table_lists_every_key_with_its_env_name() {
    let md = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/edge-lb.md"))
        .unwrap();
    let missing = settings::docs::undocumented(&md, &edge_lb::EdgeConfig::keys());
    assert!(
        missing.is_empty(),
        "not in docs/edge-lb.md's table: {missing:#?}"
    );
}
