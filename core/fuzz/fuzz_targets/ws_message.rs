//! The WebSocket message parser must never panic, whatever the bytes, and an
//! accepted answer must re-encode to something it parses again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quiz_core::protocol::{parse_client, ClientMsg};

fuzz_target!(|data: &[u8]| {
    if let Ok(ClientMsg::Answer {
        question_id,
        choices,
    }) = parse_client(data)
    {
        let again =
            format!(r#"{{"type":"answer","question_id":{question_id},"choices":{choices:?}}}"#);
        assert!(parse_client(again.as_bytes()).is_ok());
        // Normalisation and scoring on whatever came in.
        let _ = quiz_core::rules::normalize_choices(&choices, 6);
        let _ = quiz_core::rules::score(1000, 5000, u64::from(question_id));
    }
});
