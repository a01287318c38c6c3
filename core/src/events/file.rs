//! [`FileSink`]: the embedded mode's event log, an append-only JSON-lines
//! file (one `docs/events.md` record per line).
//!
//! `publish` returns once the line is written and flushed to the OS (not
//! fsynced: embedded mode is for one machine, a demo or a test; the durable
//! record of a real deployment is Kafka). Lines are written whole under one
//! lock, so concurrent publishers never interleave, and events of one quiz
//! published from one task keep their order.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

use super::{Event, EventError, EventSink};

pub struct FileSink {
    path: PathBuf,
    file: tokio::sync::Mutex<tokio::fs::File>,
    /// False after a failed write, until a write succeeds again.
    healthy: AtomicBool,
}

impl FileSink {
    /// Opens (creating if needed) `path` for appending.
    pub async fn open(path: impl AsRef<Path>) -> std::io::Result<FileSink> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await?;
        Ok(FileSink {
            path,
            file: tokio::sync::Mutex::new(file),
            healthy: AtomicBool::new(true),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl EventSink for FileSink {
    async fn publish(&self, event: &Event) -> Result<(), EventError> {
        let mut line = event
            .to_json()
            .map_err(|e| EventError::Delivery(e.to_string()))?;
        line.push(b'\n');
        let mut file = self.file.lock().await;
        let r = async {
            file.write_all(&line).await?;
            file.flush().await
        }
        .await;
        drop(file);
        match r {
            Ok(()) => {
                self.healthy.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.healthy.store(false, Ordering::Relaxed);
                Err(EventError::Delivery(format!(
                    "{}: {e}",
                    self.path.display()
                )))
            }
        }
    }

    fn ready(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    async fn flush(&self, timeout: Duration) -> Result<(), EventError> {
        let work = async {
            let file = self.file.lock().await;
            file.sync_data().await
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(EventError::Delivery(e.to_string())),
            Err(_) => Err(EventError::Delivery("flush timed out".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKind;

    #[tokio::test]
    async fn appends_json_lines() {
        let dir = std::env::temp_dir().join(format!("filesink-{}", std::process::id()));
        let path = dir.join("events.jsonl");
        let _ = std::fs::remove_file(&path);
        let sink = FileSink::open(&path).await.unwrap();
        for i in 0..3 {
            let e = Event::new(
                "q1",
                i,
                EventKind::PlayerJoined {
                    player_id: format!("p{i}"),
                    nickname: "n".into(),
                },
            );
            sink.publish(&e).await.unwrap();
        }
        sink.flush(Duration::from_secs(1)).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Event> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2].event_id, "q1:joined:p2");
        assert!(sink.ready());
    }
}
