//! [`ReportingProducer`]: a librdkafka producer whose delivery reports are
//! served by a thread that sleeps until librdkafka has one.
//!
//! Why not rust-rdkafka's `FutureProducer`: its thread calls
//! `BaseProducer::poll(100 ms)`, which waits in librdkafka for the time left
//! of that deadline, converted to whole milliseconds. In the deadline's last
//! millisecond the conversion gives 0, librdkafka's "do not wait", and the
//! loop polls without sleeping until the deadline passes: about 1 ms of
//! spinning (three clock reads and a queue lock per turn) in every 100 ms,
//! loaded or idle. Measured on an idle core node: 0.9 % of a CPU, all of it
//! in that thread (docs/performance.md, "The delivery reports' thread").
//!
//! Here librdkafka calls [`wake`] when the producer's main queue (delivery
//! reports, errors, logs) turns non-empty; the thread then serves the queue
//! until it is empty again, without waiting, and parks. No timeout
//! arithmetic, so nothing to spin on.

use std::ffi::{c_char, c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::{self, JoinHandle, Thread};
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{IsError, KafkaError, KafkaResult};
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::{IntoOpaque, Timeout};
use tokio::sync::oneshot;

/// How one event's delivery ended: delivered, or librdkafka's reason why not
/// (after its own retries, at `message.timeout.ms`).
pub type Report = Result<(), KafkaError>;

/// librdkafka's `RD_KAFKA_PARTITION_UA`: the configured partitioner picks
/// the partition, by the key (the quiz id), as `BaseProducer::send` does.
const PARTITION_UNASSIGNED: i32 = -1;

/// A safety net only: librdkafka signals every time the queue turns
/// non-empty, so the thread is woken by that, not by this period.
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// Hands each delivery report to the `oneshot` its event was produced with.
pub struct ReportContext;

impl ClientContext for ReportContext {}

impl ProducerContext for ReportContext {
    type DeliveryOpaque = Box<oneshot::Sender<Report>>;

    fn delivery(&self, result: &DeliveryResult<'_>, waiter: Self::DeliveryOpaque) {
        // A dropped receiver is a publish that stopped waiting: nothing to do.
        let _ = waiter.send(result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone()));
    }
}

/// The producer's main queue, held for the thread's life.
struct MainQueue(*mut rdsys::rd_kafka_queue_t);

// SAFETY: librdkafka's queue handles are thread-safe (every operation takes
// the queue's lock); the handle is destroyed once, in `Drop`, after the
// thread that reads it has been joined.
unsafe impl Send for MainQueue {}
unsafe impl Sync for MainQueue {}

impl MainQueue {
    fn len(&self) -> usize {
        // SAFETY: the handle is valid until `Drop`.
        unsafe { rdsys::rd_kafka_queue_length(self.0) }
    }
}

impl Drop for MainQueue {
    fn drop(&mut self) {
        // SAFETY: the reference `rd_kafka_queue_get_main` gave us, released once.
        unsafe { rdsys::rd_kafka_queue_destroy(self.0) }
    }
}

/// Called by librdkafka, under the queue's lock, on whichever of its threads
/// made the queue non-empty: only unparks (no librdkafka call, no blocking).
unsafe extern "C" fn wake(_rk: *mut rdsys::rd_kafka_t, thread: *mut c_void) {
    // SAFETY: `thread` is the `Thread` boxed in `ReportingProducer`, which
    // turns this callback off before dropping it.
    let thread = unsafe { &*(thread as *const Thread) };
    thread.unpark();
}

/// A topic handle of the producer's, kept for its life: producing through
/// it skips what producing by name costs every message (a `CString` of the
/// name, and librdkafka finding the topic under its client-wide write lock).
struct TopicHandle {
    name: Box<str>,
    rkt: *mut rdsys::rd_kafka_topic_t,
}

// SAFETY: librdkafka's topic handles are thread-safe; each is destroyed
// once, in `Drop`, before the client (`ReportingProducer`'s field order).
unsafe impl Send for TopicHandle {}
unsafe impl Sync for TopicHandle {}

impl Drop for TopicHandle {
    fn drop(&mut self) {
        // SAFETY: the reference `rd_kafka_topic_new` gave us, released once.
        // Messages still queued hold their own references.
        unsafe { rdsys::rd_kafka_topic_destroy(self.rkt) }
    }
}

/// Fields drop in this order: the queue and topic references before the
/// producer (librdkafka wants every handle released before the client is
/// destroyed), the producer last.
pub struct ReportingProducer {
    main: Arc<MainQueue>,
    /// The topics produced to so far (one, in practice).
    topics: RwLock<Vec<TopicHandle>>,
    stop: Arc<AtomicBool>,
    reports: Option<JoinHandle<()>>,
    /// What [`wake`] unparks, read only through librdkafka (the callback's
    /// opaque pointer): boxed so its address is stable, kept alive here.
    _wake_target: Box<Thread>,
    producer: Arc<BaseProducer<ReportContext>>,
}

impl ReportingProducer {
    /// Creates the producer (librdkafka checks every property here) and
    /// starts its reports' thread.
    pub fn new(config: &ClientConfig) -> KafkaResult<Self> {
        let producer: Arc<BaseProducer<ReportContext>> =
            Arc::new(config.create_with_context(ReportContext)?);
        // SAFETY: the client handle is valid while `producer` lives; the
        // returned reference is released by `MainQueue`'s drop.
        let main = Arc::new(MainQueue(unsafe {
            rdsys::rd_kafka_queue_get_main(producer.client().native_ptr())
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let reports = {
            let (producer, main, stop) = (producer.clone(), main.clone(), stop.clone());
            thread::Builder::new()
                .name("kafka-reports".into())
                .spawn(move || serve_reports(&producer, &main, &stop))
                .map_err(|e| KafkaError::ClientCreation(format!("reports thread: {e}")))?
        };
        let wake_target = Box::new(reports.thread().clone());
        // SAFETY: `wake_target` outlives the callback: `Drop` turns it off
        // (under the queue's lock, so no call is in progress after) first.
        unsafe {
            rdsys::rd_kafka_queue_cb_event_enable(
                main.0,
                Some(wake),
                &*wake_target as *const Thread as *mut c_void,
            );
        }
        // Anything queued before the callback was on is served now.
        reports.thread().unpark();
        Ok(ReportingProducer {
            main,
            topics: RwLock::new(Vec::new()),
            stop,
            reports: Some(reports),
            _wake_target: wake_target,
            producer,
        })
    }

    /// Hands one event to librdkafka; the receiver gets its delivery report.
    /// `Err` is librdkafka refusing it at once (`QueueFull` when the bound
    /// is reached). What rust-rdkafka's `BaseProducer::send` does, through
    /// a kept topic handle instead of the topic's name, and with the
    /// headers built straight into librdkafka's list.
    pub fn send(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<oneshot::Receiver<Report>, KafkaError> {
        let rkt = self.topic(topic)?;
        let (tx, rx) = oneshot::channel();
        let waiter: <ReportContext as ProducerContext>::DeliveryOpaque = Box::new(tx);
        let opaque = waiter.into_ptr();
        // SAFETY: the client and `rkt` are valid while `self` lives; the
        // payload and key are copied (`MSG_F_COPY`) before this returns;
        // the headers list is librdkafka's once the call succeeds, and
        // `opaque` comes back in the delivery report (`ReportContext`).
        let err = unsafe {
            let hdrs = rdsys::rd_kafka_headers_new(headers.len());
            for (name, value) in headers {
                rdsys::rd_kafka_header_add(
                    hdrs,
                    name.as_ptr() as *const c_char,
                    name.len() as isize,
                    value.as_ptr() as *const c_void,
                    value.len() as isize,
                );
            }
            let err = rdsys::rd_kafka_producev(
                self.producer.client().native_ptr(),
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_RKT,
                rkt,
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_PARTITION,
                PARTITION_UNASSIGNED,
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_MSGFLAGS,
                rdsys::RD_KAFKA_MSG_F_COPY,
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_VALUE,
                payload.as_ptr() as *mut c_void,
                payload.len(),
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_KEY,
                key.as_ptr() as *const c_void,
                key.len(),
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_OPAQUE,
                opaque,
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_HEADERS,
                hdrs,
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_END,
            );
            if !err.is_error() {
                return Ok(rx);
            }
            // Refused: the list and the waiter are still ours.
            rdsys::rd_kafka_headers_destroy(hdrs);
            drop(<ReportContext as ProducerContext>::DeliveryOpaque::from_ptr(opaque));
            err
        };
        Err(KafkaError::MessageProduction(RDKafkaErrorCode::from(err)))
    }

    /// The kept handle of `topic`, made on its first use.
    fn topic(&self, topic: &str) -> Result<*mut rdsys::rd_kafka_topic_t, KafkaError> {
        let find =
            |topics: &[TopicHandle]| topics.iter().find(|t| &*t.name == topic).map(|t| t.rkt);
        if let Some(rkt) = find(&self.topics.read().unwrap_or_else(|e| e.into_inner())) {
            return Ok(rkt);
        }
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        if let Some(rkt) = find(&topics) {
            return Ok(rkt);
        }
        let name = CString::new(topic)?;
        // SAFETY: the client is valid while `self` lives; the handle is
        // released by `TopicHandle`'s drop, before the client's.
        let rkt = unsafe {
            rdsys::rd_kafka_topic_new(
                self.producer.client().native_ptr(),
                name.as_ptr(),
                std::ptr::null_mut(),
            )
        };
        if rkt.is_null() {
            // SAFETY: reads this thread's last librdkafka error.
            let err = unsafe { rdsys::rd_kafka_last_error() };
            return Err(KafkaError::MessageProduction(RDKafkaErrorCode::from(err)));
        }
        topics.push(TopicHandle {
            name: topic.into(),
            rkt,
        });
        Ok(rkt)
    }

    /// The underlying client, for metadata requests and broker lists.
    pub fn client(&self) -> &rdkafka::client::Client<ReportContext> {
        self.producer.client()
    }

    /// Blocks until every queued event is delivered or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        self.producer.flush(Timeout::After(timeout))
    }
}

/// The reports' thread: serve what is queued, then sleep until woken.
fn serve_reports(producer: &BaseProducer<ReportContext>, main: &MainQueue, stop: &AtomicBool) {
    loop {
        // Each poll serves one event (a delivery-report event carries a
        // whole batch's reports) without waiting: its deadline is now.
        while main.len() > 0 {
            producer.poll(Duration::ZERO);
        }
        if stop.load(Ordering::Acquire) {
            return;
        }
        // An unpark between the length check and here is kept as a token:
        // this returns at once, nothing is missed.
        thread::park_timeout(IDLE_RECHECK);
    }
}

impl Drop for ReportingProducer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(reports) = self.reports.take() {
            reports.thread().unpark();
            if reports.join().is_err() {
                tracing::warn!("kafka reports thread panicked");
            }
        }
        // SAFETY: turning the callback off takes the queue's lock, so once
        // this returns no `wake` runs and `_wake_target` may be dropped.
        unsafe { rdsys::rd_kafka_queue_cb_event_enable(self.main.0, None, std::ptr::null_mut()) };
        // Then the fields, the producer last: its own drop purges and serves
        // what is left, so every publish still waiting gets its report.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No broker listens here, so nothing is ever delivered: dropping the
    /// producer must still answer every waiting send (purged), stop its
    /// thread, and release the queue before the client.
    #[tokio::test]
    async fn dropping_the_producer_answers_every_waiting_send() {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("message.timeout.ms", "60000");
        let producer = ReportingProducer::new(&config).expect("producer");
        let waiting: Vec<_> = (0..20)
            .map(|i| {
                let payload = format!("event {i}");
                producer
                    .send("reports-test", "quiz", payload.as_bytes(), &[])
                    .expect("queued")
            })
            .collect();
        tokio::task::spawn_blocking(move || drop(producer))
            .await
            .expect("drop");
        for rx in waiting {
            let report = tokio::time::timeout(Duration::from_secs(5), rx)
                .await
                .expect("answered, not left waiting")
                .expect("the report itself, not a dropped sender");
            assert!(report.is_err(), "nothing can have been delivered");
        }
    }

    /// librdkafka refuses at once what exceeds the queue's bound.
    #[test]
    fn a_full_queue_is_refused_at_once() {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("queue.buffering.max.messages", "2");
        let producer = ReportingProducer::new(&config).expect("producer");
        let send = || producer.send("reports-test", "quiz", b"x", &[]);
        let _kept = (send().expect("1st"), send().expect("2nd"));
        let refused = send().expect_err("3rd is over the bound");
        assert!(matches!(
            refused,
            KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull)
        ));
    }
}
