//! The dead-letter topic. A poison event is produced there unchanged (same
//! key, same value) with headers saying why and where it came from, and the
//! batch holding it is committed only after Kafka acknowledged that copy: a
//! poison event is never lost, and never blocks the events behind it.
//!
//! Headers: `dlq_reason` (human text), `dlq_reason_kind` (the metric label),
//! `dlq_original_topic`, `dlq_original_partition`, `dlq_original_offset`,
//! plus the original record's headers.

use std::time::Duration;

use crate::config::KafkaConfig;
use futures::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::event::Poison;

/// One record to dead-letter.
pub struct DeadRecord<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub headers: &'a [(String, Vec<u8>)],
    pub reason: &'a Poison,
}

pub struct DeadLetter {
    producer: FutureProducer,
    topic: String,
    brokers: String,
}

impl DeadLetter {
    /// `kafka` gives the brokers and the security/tuning properties.
    pub fn new(kafka: &KafkaConfig, topic: String) -> Result<DeadLetter, KafkaError> {
        let producer: FutureProducer = kafka
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            .set("client.id", "quiz-persister-dlq")
            .create()?;
        Ok(DeadLetter {
            producer,
            topic,
            brokers: kafka.brokers.clone(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Produces every record and waits for all acknowledgements. `Err` if any
    /// one failed; the caller retries them all (duplicates in the dead-letter
    /// topic are possible after a retry, losses are not).
    pub async fn send_all(&self, records: &[DeadRecord<'_>]) -> Result<(), KafkaError> {
        let sends = records.iter().map(|r| {
            let reason = r.reason.to_string();
            let partition = r.partition.to_string();
            let offset = r.offset.to_string();
            let mut headers = OwnedHeaders::new_with_capacity(5 + r.headers.len())
                .insert(Header {
                    key: "dlq_reason",
                    value: Some(reason.as_bytes()),
                })
                .insert(Header {
                    key: "dlq_reason_kind",
                    value: Some(r.reason.label().as_bytes()),
                })
                .insert(Header {
                    key: "dlq_original_topic",
                    value: Some(r.topic.as_bytes()),
                })
                .insert(Header {
                    key: "dlq_original_partition",
                    value: Some(partition.as_bytes()),
                })
                .insert(Header {
                    key: "dlq_original_offset",
                    value: Some(offset.as_bytes()),
                });
            for (k, v) in r.headers {
                headers = headers.insert(Header {
                    key: k.as_str(),
                    value: Some(v.as_slice()),
                });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&self.topic).headers(headers);
            if let Some(k) = r.key {
                record = record.key(k);
            }
            if let Some(p) = r.payload {
                record = record.payload(p);
            }
            self.producer.send(record, Duration::from_secs(10))
        });
        let failed = join_all(sends)
            .await
            .into_iter()
            .find_map(|r| r.err().map(|(e, _)| e));
        match failed {
            None => Ok(()),
            Some(e) => {
                // The producer may have forgotten every broker in a full
                // Kafka restart; the caller retries the batch after this.
                crate::rebootstrap::add_bootstrap_brokers(self.producer.client(), &self.brokers);
                Err(e)
            }
        }
    }
}
