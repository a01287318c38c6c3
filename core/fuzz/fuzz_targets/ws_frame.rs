//! The WebSocket frame reader (frame.rs) over arbitrary bytes: never a
//! panic, never a payload above the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quiz_core::frame::{read_frame, InFrame, Partial};

fuzz_target!(|data: &[u8]| {
    let mut rd = data;
    let mut partial = Partial::default();
    // Read frames until an error, as the read loop would.
    for _ in 0..64 {
        match futures::executor::block_on(read_frame(&mut rd, 4096, &mut partial)) {
            Ok(InFrame::Text(p)) => assert!(p.len() <= 4096),
            Ok(_) => {}
            Err(_) => break,
        }
    }
});
