//! [`MemoryBus`]: the in-process [`ControlBus`] for a single core node.

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{BusError, Changed, ControlBus};

/// How many notifications a slow subscriber may fall behind before it sees
/// `Lagged` (and re-reads all its rooms). Bounded so one stuck room can't
/// grow memory without limit.
pub const DEFAULT_CAPACITY: usize = 1024;

/// A tokio broadcast channel: every `publish` reaches every current
/// subscriber of this process.
pub struct MemoryBus {
    tx: broadcast::Sender<Changed>,
}

impl MemoryBus {
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    pub fn with_capacity(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        MemoryBus { tx }
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl ControlBus for MemoryBus {
    async fn publish(&self, changed: Changed) -> Result<(), BusError> {
        // No subscriber is not an error: nobody on this node cares yet.
        let _ = self.tx.send(changed);
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Changed> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_subscriber_sees_every_message() {
        let bus = MemoryBus::new();
        let mut a = bus.subscribe();
        let mut b = bus.subscribe();
        let msg = Changed {
            quiz_id: "q1".into(),
            version: 7,
        };
        bus.publish(msg.clone()).await.expect("publish");
        assert_eq!(a.recv().await.expect("a"), msg);
        assert_eq!(b.recv().await.expect("b"), msg);
    }
}
