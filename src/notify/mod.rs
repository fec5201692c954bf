//! Notifications (`[notifications]`): webhooks told of what happened to
//! the registry's content, in distribution's envelope format
//! ([`event`]): `push` of a manifest (with `tag` when pushed by tag, which
//! is also a tag move) and of a blob (a finished upload), `mount` of a blob
//! from another repository, `pull` of a manifest or a blob (`GET`, not
//! `HEAD`), `delete` of a manifest, a tag or a blob. Only requests that
//! succeeded make events.
//!
//! Per endpoint: a filter (repository globs, actions), a bounded channel
//! from the requests to one writer task, a durable queue on disk
//! ([`queue`]) and one delivery task ([`deliver`]). A request only
//! serializes its event and hands it over (`try_send`), so its latency is
//! untouched by the disk or the receiver.
//!
//! Delivery is **at least once**: an event leaves the queue only after the
//! receiver answered 2xx to the POST that carried it, and a restart sends
//! again what was not acknowledged. Each event's `id` is made once, so a
//! receiver drops the duplicates that at least once allows (an answer lost
//! in a timeout, a crash between the 2xx and the segment's deletion).
//! What can be lost: on SIGTERM, nothing (the writer writes what it holds
//! before the process exits: [`Notifier::flush`]); on SIGKILL or a crash,
//! the events not yet written, those of the batch being written (the
//! writer writes as soon as an event comes, so a few milliseconds' worth);
//! and, counted in `portcullis_notifications_total{result="dropped"}` and
//! logged, events past an endpoint's `max_pending` or arriving while its
//! channel is full. Past `max_pending` the newest are dropped, not the
//! oldest: the queued ones are already on disk and being delivered in
//! order, so what the receiver gets stays the oldest events, without holes,
//! and the gap is at the end where the log and the counter say it is.

pub mod deliver;
pub mod event;
pub mod queue;

use std::sync::Arc;
use std::sync::Mutex;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::{Metrics, NotifyMetrics};
use crate::policy::RepoPattern;
pub use event::Event;
use queue::Queue;

/// Events queued for an endpoint's writer before new ones are dropped.
const CHANNEL: usize = 4096;
/// Events the writer keeps in one segment at most.
const BATCH: usize = 64;

enum Message {
    Event(String),
    /// Answered once everything sent before it is on disk.
    Flush(oneshot::Sender<()>),
}

/// Which events an endpoint wants.
struct Filter {
    repositories: Vec<RepoPattern>,
    actions: Vec<String>,
}

impl Filter {
    fn wants(&self, action: &str, repository: &str) -> bool {
        self.actions.iter().any(|a| a == action)
            && self.repositories.iter().any(|g| g.matches(repository))
    }
}

struct Sink {
    name: String,
    filter: Filter,
    events: mpsc::Sender<Message>,
    metrics: NotifyMetrics,
}

pub struct Notifier {
    sinks: Vec<Sink>,
    source: event::Source,
    /// Stops the delivery tasks (after their attempt in flight).
    stop: CancellationToken,
    /// The delivery tasks, and how long an attempt of each may take.
    deliveries: Mutex<Vec<(tokio::task::JoinHandle<()>, std::time::Duration)>>,
}

impl Notifier {
    pub fn disabled() -> Self {
        Self {
            sinks: Vec::new(),
            source: event::Source::default(),
            stop: CancellationToken::new(),
            deliveries: Mutex::new(Vec::new()),
        }
    }

    /// Opens each endpoint's queue (what a previous run left is delivered
    /// first) and starts its writer and delivery tasks. Call inside the
    /// runtime.
    pub async fn start(config: &Config, metrics: &Metrics) -> Result<Self, String> {
        let mut notifier = Self::disabled();
        notifier.source = event::Source {
            addr: config.server.listen.to_string(),
            instance_id: uuid::Uuid::new_v4().to_string(),
        };
        let dir = config.notifications.queue_dir(&config.storage.root);
        let mut deliveries = Vec::new();
        for endpoint in &config.notifications.endpoints {
            let receiver = deliver::Receiver::new(endpoint)?;
            let filter = Filter {
                repositories: endpoint
                    .repositories
                    .iter()
                    .map(|g| RepoPattern::parse(g))
                    .collect::<Result<_, _>>()?,
                actions: endpoint.actions.clone(),
            };
            let queue_dir = dir.join(&endpoint.name);
            let queue = tokio::task::spawn_blocking(move || Queue::open(&queue_dir))
                .await
                .map_err(|e| e.to_string())??;
            let queue = Arc::new(queue);
            let endpoint_metrics = metrics.notifications(&endpoint.name);
            endpoint_metrics.pending.set(queue.pending() as i64);
            if queue.pending() > 0 {
                tracing::info!(
                    endpoint = %endpoint.name,
                    events = queue.pending(),
                    "notifications: undelivered events from before, sent first"
                );
            }
            let written = Arc::new(tokio::sync::Notify::new());
            let (tx, rx) = mpsc::channel(CHANNEL);
            tokio::spawn(write(
                rx,
                Arc::clone(&queue),
                Arc::clone(&written),
                endpoint.max_pending,
                endpoint_metrics.clone(),
                endpoint.name.clone(),
            ));
            let delivery = tokio::spawn(deliver::run(
                receiver,
                queue,
                written,
                endpoint_metrics.clone(),
                notifier.stop.clone(),
            ));
            deliveries.push((
                delivery,
                std::time::Duration::from_secs(endpoint.timeout_secs),
            ));
            notifier.sinks.push(Sink {
                name: endpoint.name.clone(),
                filter,
                events: tx,
                metrics: endpoint_metrics,
            });
        }
        notifier.deliveries = Mutex::new(deliveries);
        Ok(notifier)
    }

    pub fn enabled(&self) -> bool {
        !self.sinks.is_empty()
    }

    /// Whether any endpoint wants `action` on `repository` (so that no
    /// event is built for nobody).
    pub fn wants(&self, action: &str, repository: &str) -> bool {
        self.sinks
            .iter()
            .any(|s| s.filter.wants(action, repository))
    }

    /// This server, as events name it.
    pub fn source(&self) -> &event::Source {
        &self.source
    }

    /// Queues `event` for every endpoint that wants it.
    pub fn record(&self, event: &Event) {
        let repository = &event.target.repository;
        let mut line = None;
        for sink in &self.sinks {
            if !sink.filter.wants(event.action, repository) {
                continue;
            }
            let line = match &line {
                Some(line) => line,
                None => match serde_json::to_string(event) {
                    Ok(text) => line.insert(text),
                    Err(_) => return,
                },
            };
            if sink.events.try_send(Message::Event(line.clone())).is_err() {
                sink.metrics.dropped.inc();
                let dropped = sink.metrics.dropped.get();
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        endpoint = %sink.name,
                        dropped,
                        "notifications dropped: the queue's writer cannot keep up"
                    );
                }
            }
        }
    }

    /// At shutdown, once no request is in flight: every event made so far
    /// is written to its queue, and the delivery tasks stop after the
    /// attempt they are in (so an acknowledged batch is also deleted).
    pub async fn flush(&self) {
        for sink in &self.sinks {
            let (done, written) = oneshot::channel();
            if sink.events.send(Message::Flush(done)).await.is_ok() {
                let _ = written.await;
            }
        }
        self.stop.cancel();
        let deliveries =
            std::mem::take(&mut *self.deliveries.lock().unwrap_or_else(|e| e.into_inner()));
        for (task, timeout) in deliveries {
            // An attempt in flight ends within its timeout.
            let _ = tokio::time::timeout(timeout + std::time::Duration::from_secs(1), task).await;
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An endpoint's writer: takes what has come (up to [`BATCH`] events),
/// keeps it as one segment, wakes the delivery task.
async fn write(
    mut rx: mpsc::Receiver<Message>,
    queue: Arc<Queue>,
    written: Arc<tokio::sync::Notify>,
    max_pending: u64,
    metrics: NotifyMetrics,
    name: String,
) {
    let mut batch = Vec::new();
    let mut flushes = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Event(line) => batch.push(line),
                Message::Flush(done) => flushes.push(done),
            }
            if batch.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        let room = max_pending.saturating_sub(queue.pending()) as usize;
        if batch.len() > room {
            let dropped = (batch.len() - room) as u64;
            batch.truncate(room);
            metrics.dropped.inc_by(dropped);
            tracing::warn!(
                endpoint = %name,
                dropped,
                max_pending,
                "notifications dropped: the endpoint's queue is full (its receiver is behind or down)"
            );
        }
        if !batch.is_empty() {
            let lines = std::mem::take(&mut batch);
            let events = lines.len() as u64;
            match deliver::blocking(&queue, move |q| q.append(&lines)).await {
                Ok(()) => written.notify_one(),
                Err(e) => {
                    metrics.dropped.inc_by(events);
                    tracing::error!(endpoint = %name, error = %e, events, "notifications: events could not be queued; dropped");
                }
            }
            metrics.pending.set(queue.pending() as i64);
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}
