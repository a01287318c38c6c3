//! The documents of `docs/api/` load, agree with each other, accept what the
//! platform sends and refuse a deliberately wrong value. No service needed.

use serde_json::{json, Value};
use testkit::api::{self, contract};

fn board() -> Value {
    json!({"quiz_id": "q1", "version": 3, "total_players": 2,
           "top": [{"rank": 1, "player_id": "p1", "nickname": "ann", "score": 1000},
                   {"rank": 2, "player_id": "p2", "nickname": "bob", "score": 0}]})
}

#[test]
fn every_document_loads_and_every_referenced_schema_exists() {
    let c = contract();
    let names = c.schema_names();
    for want in [
        "error",
        "quiz-view",
        "join-response",
        "ws-server-message",
        "event",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let dir = api::api_dir();
    let openapi: Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("openapi.yaml")).unwrap()).unwrap();
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3.1"));
    let asyncapi: Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("asyncapi.yaml")).unwrap()).unwrap();
    assert!(asyncapi["asyncapi"].as_str().unwrap().starts_with("3."));
    // Every schema file asyncapi.yaml names exists, and every message of a
    // schema union is a message of asyncapi.yaml.
    let text = std::fs::read_to_string(dir.join("asyncapi.yaml")).unwrap();
    for line in text.lines() {
        if let Some(r) = line.trim().strip_prefix("$ref: \"./schemas/") {
            let name = r.trim_end_matches("\"").trim_end_matches(".json");
            assert!(names.contains(&name), "asyncapi.yaml: {name}.json missing");
        }
    }
    for union in ["ws-server-message", "ws-client-message", "event"] {
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("schemas/{union}.json"))).unwrap(),
        )
        .unwrap();
        for member in v["oneOf"].as_array().unwrap() {
            let r = member["$ref"].as_str().unwrap();
            assert!(
                text.contains(&format!("./schemas/{r}")),
                "{r} not in asyncapi.yaml"
            );
        }
    }
    assert_eq!(
        c.close_codes(),
        [1000, 1001, 1002, 1008, 1009, 1011, 1012, 4001, 4004, 4008, 4009, 4010]
    );
}

#[test]
fn values_the_platform_sends_are_valid() {
    api::assert_valid("leaderboard", &board());
    let mut lb = board();
    lb["type"] = json!("leaderboard");
    lb["ts_ms"] = json!(1_700_000_000_000u64);
    api::check_ws_server(&lb);
    api::check_ws_server(
        &json!({"type": "welcome", "role": "host", "player_id": null,
                                 "score": 0, "rank": 0, "state": "lobby"}),
    );
    api::check_ws_server(
        &json!({"type": "answer_result", "question_id": 0, "accepted": false,
                                 "reason": "late", "correct": true, "points": 0,
                                 "score": 0, "rank": 1}),
    );
    api::check_ws_client(&json!({"type": "answer", "question_id": 0, "choices": [1]}));
    api::check_event(
        &json!({"v": 1, "event_id": "q1:started", "type": "quiz_started",
                             "quiz_id": "q1", "at_ms": 1}),
    );
    api::check_http("GET", "/healthz", 200, r#"{"status":"ok","node":"n1"}"#);
    api::check_http(
        "GET",
        "/v1/quizzes/q1/leaderboard?limit=2",
        200,
        &board().to_string(),
    );
    api::check_http(
        "GET",
        "/v1/quizzes/q1",
        404,
        r#"{"error":{"code":"not_found","message":"quiz_id: no quiz"}}"#,
    );
    // An unknown path is a 404 error, a known path's unknown method a 405.
    let e405 = r#"{"error":{"code":"method_not_allowed","message":"DELETE"}}"#;
    api::check_http("DELETE", "/v1/quizzes", 405, e405);
    let e404 = r#"{"error":{"code":"not_found","message":"no route"}}"#;
    api::check_http("GET", "/nope", 404, e404);
    api::check_http("GET", "/metrics", 200, "# HELP x\n");
    api::check_close_code(4001);
}

/// A deliberately wrong value fails, and the error names what is wrong.
#[test]
fn a_wrong_value_fails_the_check() {
    let c = contract();
    let mut missing = board();
    missing.as_object_mut().unwrap().remove("total_players");
    let e = c.validate("leaderboard", &missing).unwrap_err();
    assert!(e.contains("total_players"), "{e}");

    let mut extra = board();
    extra["surprise"] = json!(1);
    let e = c.validate("leaderboard", &extra).unwrap_err();
    assert!(e.contains("surprise"), "{e}");

    let mut wrong_type = board();
    wrong_type["top"][0]["score"] = json!("1000");
    let e = c.validate("leaderboard", &wrong_type).unwrap_err();
    assert!(e.contains("/top/0/score"), "{e}");

    // A WebSocket message: the member its type names explains the failure.
    let e = c
        .check_ws_server(
            &json!({"type": "answer_result", "question_id": 0, "accepted": false,
                                 "reason": "too_slow", "correct": false, "points": 0,
                                 "score": 0, "rank": 1}),
        )
        .unwrap_err();
    assert!(
        e.contains("ws-answer-result") && e.contains("too_slow"),
        "{e}"
    );
    let e = c.check_ws_server(&json!({"type": "surprise"})).unwrap_err();
    assert!(e.contains("unknown type"), "{e}");

    // An event without its deterministic id.
    let e = c
        .check_event(&json!({"v": 1, "type": "quiz_started", "quiz_id": "q1", "at_ms": 1}))
        .unwrap_err();
    assert!(e.contains("event_id"), "{e}");

    // HTTP: an undocumented status, a body of the wrong shape, an error
    // without the contract's envelope.
    let e = c
        .check_http("GET", "/v1/quizzes/q1/leaderboard", 418, "{}")
        .unwrap_err();
    assert!(e.contains("418 is not documented"), "{e}");
    let e = c
        .check_http("GET", "/v1/quizzes/q1/leaderboard", 200, r#"{"top":[]}"#)
        .unwrap_err();
    assert!(e.contains("leaderboard"), "{e}");
    let e = c
        .check_http("POST", "/v1/quizzes", 400, r#"{"code":"invalid"}"#)
        .unwrap_err();
    assert!(e.contains("error"), "{e}");
    let e = c.check_http("GET", "/nope", 200, "{}").unwrap_err();
    assert!(e.contains("undocumented"), "{e}");

    assert!(c.check_close_code(4999).is_err());
    assert!(std::panic::catch_unwind(|| api::assert_valid("leaderboard", &missing)).is_err());
}
