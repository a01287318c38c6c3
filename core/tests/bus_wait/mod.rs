//! Waiting for control-bus notifications, for the tests of the buses
//! (`redis_bus.rs`, `control_bus_conformance.rs`).

use std::time::Duration;

use quiz_core::bus::Changed;
use tokio::sync::broadcast::{self, error::RecvError};

/// How long a notification may take to reach a subscriber.
pub const DELIVERY: Duration = Duration::from_secs(5);

/// Waits for `want` on `rx`, skipping everything else (other quizzes'
/// messages: other tests share the channel; `Lagged`); panics after
/// [`DELIVERY`].
pub async fn expect(rx: &mut broadcast::Receiver<Changed>, want: &Changed) {
    let found = tokio::time::timeout(DELIVERY, async {
        loop {
            match rx.recv().await {
                Ok(c) if &c == want => return,
                Ok(_) | Err(RecvError::Lagged(_)) => continue,
                Err(e) => panic!("bus closed: {e}"),
            }
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "did not receive {want:?} within {DELIVERY:?}"
    );
}
