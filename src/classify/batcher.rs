//! Micro-batching across events: each event's task awaits one score while a dedicated inference
//! thread gathers requests into batches of up to `max_batch`. Batching pays because the model
//! runs several images per call faster than one at a time.
//!
//! Batches are sized from the queue: a batch takes every request already queued (those that came
//! during the previous inference), and waits — at most `max_wait` after its first request — only
//! while more images are *announced*: an event announces its image before preprocessing it, so
//! the thread knows a request is on its way. A lone upload is never held back waiting for a
//! partner that is not coming; under load, batches fill from the queue.
//!
//! Inference runs on its own OS thread, never on the async runtime. One failing batch answers
//! every request in it with the error (the caller turns it into a `media_error` verdict) and the
//! thread carries on. The thread ends once every handle is dropped.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::preprocess::INPUT_LEN;
use super::{Classifier, ClassifyError, Score};
use crate::config::ClassifierSettings;
use crate::metrics::Metrics;

enum Message {
    Request(Request),
    /// An announcement was dropped unused: a batch waiting for it checks again.
    Withdrawn,
}

struct Request {
    input: Vec<f32>,
    reply: oneshot::Sender<Result<Score, ClassifyError>>,
    /// Ends as the inference thread takes the request: from then on it is in a batch.
    announced: Announcement,
}

/// An image that will be scored shortly (it is being preprocessed): while any is outstanding, a
/// batch short of `max_batch` waits for it, at most `max_wait`. It counts until the inference
/// thread takes its request; dropped unused (preprocessing failed), it withdraws itself.
pub struct Announcement(Option<(Arc<AtomicUsize>, mpsc::Sender<Message>)>);

impl Announcement {
    /// No announcement: a request sent with it is taken as it comes.
    pub fn none() -> Self {
        Announcement(None)
    }

    /// The inference thread took the request: no longer coming.
    fn taken(mut self) {
        if let Some((coming, _)) = self.0.take() {
            coming.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Announcement {
    fn drop(&mut self) {
        if let Some((coming, wake)) = self.0.take() {
            coming.fetch_sub(1, Ordering::AcqRel);
            let _ = wake.send(Message::Withdrawn);
        }
    }
}

/// Cheap to clone; all clones feed the same inference thread.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Message>,
    model: Arc<str>,
    /// Announcements outstanding.
    coming: Arc<AtomicUsize>,
}

impl Batcher {
    pub fn new(classifier: Arc<dyn Classifier>, metrics: Arc<Metrics>, max_batch: usize, max_wait: Duration) -> Self {
        let (tx, rx) = mpsc::channel();
        let model: Arc<str> = classifier.model_name().into();
        let coming = Arc::new(AtomicUsize::new(0));
        let batch_loop = BatchLoop {
            classifier,
            metrics,
            max_batch: max_batch.max(1),
            max_wait,
            model: model.clone(),
            coming: coming.clone(),
        };
        std::thread::Builder::new()
            .name("perisai-classifier".into())
            .spawn(move || batch_loop.run(rx))
            .expect("spawning the classifier thread");
        Self { tx, model, coming }
    }

    pub fn from_settings(
        classifier: Arc<dyn Classifier>,
        metrics: Arc<Metrics>,
        settings: &ClassifierSettings,
    ) -> Self {
        Self::new(classifier, metrics, settings.max_batch, Duration::from_millis(settings.max_wait_ms))
    }

    pub fn model_name(&self) -> &str {
        &self.model
    }

    /// Announces an image that will be scored shortly (see [`Announcement`]).
    pub fn announce(&self) -> Announcement {
        self.coming.fetch_add(1, Ordering::AcqRel);
        Announcement(Some((self.coming.clone(), self.tx.clone())))
    }

    /// Score one preprocessed image (`preprocess::INPUT_LEN` floats).
    pub async fn classify(&self, input: Vec<f32>) -> Result<Score, ClassifyError> {
        self.classify_announced(input, Announcement::none()).await
    }

    /// Score one preprocessed image announced before (the announcement ends as it is taken).
    pub async fn classify_announced(&self, input: Vec<f32>, announced: Announcement) -> Result<Score, ClassifyError> {
        if input.len() != INPUT_LEN {
            return Err(ClassifyError::Inference(format!("input has {} floats, expected {INPUT_LEN}", input.len())));
        }
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Message::Request(Request { input, reply, announced }))
            .map_err(|_| ClassifyError::Unavailable("the classifier thread has stopped".into()))?;
        answer.await.map_err(|_| ClassifyError::Unavailable("the classifier thread has stopped".into()))?
    }
}

struct BatchLoop {
    classifier: Arc<dyn Classifier>,
    metrics: Arc<Metrics>,
    max_batch: usize,
    max_wait: Duration,
    model: Arc<str>,
    coming: Arc<AtomicUsize>,
}

impl BatchLoop {
    fn run(self, rx: mpsc::Receiver<Message>) {
        let take = |mut r: Request| {
            std::mem::replace(&mut r.announced, Announcement::none()).taken();
            r
        };
        // `recv` fails only once every sender (every Batcher handle and announcement) is gone.
        while let Ok(first) = rx.recv() {
            let Message::Request(first) = first else { continue };
            let mut batch = vec![take(first)];
            let deadline = Instant::now() + self.max_wait;
            while batch.len() < self.max_batch {
                // Requests that queued up during the previous inference are taken without waiting.
                match rx.try_recv() {
                    Ok(Message::Request(r)) => {
                        batch.push(take(r));
                        continue;
                    }
                    Ok(Message::Withdrawn) => continue,
                    Err(TryRecvError::Disconnected) => break,
                    Err(TryRecvError::Empty) => {}
                }
                // An announced image counts until its request is taken, so none is missed
                // between the two checks.
                if self.coming.load(Ordering::Acquire) == 0 {
                    break;
                }
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(Message::Request(r)) => batch.push(take(r)),
                    Ok(Message::Withdrawn) => {}
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
            self.infer(batch);
        }
    }

    fn infer(&self, batch: Vec<Request>) {
        // Callers that gave up (timeout, shutdown) need no inference.
        let (inputs, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().filter(|r| !r.reply.is_closed()).map(|r| (r.input, r.reply)).unzip();
        if inputs.is_empty() {
            return;
        }
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| self.classifier.classify(&inputs)))
            .unwrap_or_else(|_| Err(ClassifyError::Inference("the classifier panicked".into())));
        self.metrics.classifier_inference_seconds.observe(started.elapsed().as_secs_f64());
        self.metrics.classifier_batch_size.observe(inputs.len() as f64);
        match result {
            Ok(scores) if scores.len() == replies.len() => {
                let hist = self.metrics.classifier_score.with_label_values(&[&*self.model]);
                for (reply, score) in replies.into_iter().zip(scores) {
                    hist.observe(f64::from(score.nsfw));
                    let _ = reply.send(Ok(score));
                }
            }
            Ok(scores) => {
                let e = ClassifyError::Inference(format!("{} scores for {} inputs", scores.len(), replies.len()));
                replies.into_iter().for_each(|r| drop(r.send(Err(e.clone()))));
            }
            Err(e) => replies.into_iter().for_each(|r| drop(r.send(Err(e.clone())))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Scores each input by its first float, fails any batch holding a NaN, and records batch
    /// sizes: enough to observe the batching and failure behaviour without a model.
    struct Probe {
        sizes: Mutex<Vec<usize>>,
        calls: AtomicUsize,
        delay: Duration,
    }

    impl Classifier for Probe {
        fn model_name(&self) -> &str {
            "probe"
        }
        fn model_sha256(&self) -> &str {
            "0"
        }
        fn classify(&self, batch: &[Vec<f32>]) -> Result<Vec<Score>, ClassifyError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.sizes.lock().unwrap().push(batch.len());
            std::thread::sleep(self.delay);
            if batch.iter().any(|t| t[0].is_nan()) {
                return Err(ClassifyError::Inference("NaN in batch".into()));
            }
            Ok(batch.iter().map(|t| Score { sfw: 1.0 - t[0], nsfw: t[0] }).collect())
        }
    }

    fn input(v: f32) -> Vec<f32> {
        let mut t = vec![0.0; INPUT_LEN];
        t[0] = v;
        t
    }

    fn probe(delay_ms: u64) -> Arc<Probe> {
        Arc::new(Probe {
            sizes: Mutex::new(vec![]),
            calls: AtomicUsize::new(0),
            delay: Duration::from_millis(delay_ms),
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_are_batched_and_answered_in_order() {
        let p = probe(20);
        let metrics = Metrics::new();
        let b = Batcher::new(p.clone(), metrics.clone(), 4, Duration::from_millis(50));
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { (i, b.classify(input(i as f32 / 10.0)).await.unwrap()) })
            })
            .collect();
        for t in tasks {
            let (i, score) = t.await.unwrap();
            assert_eq!(score.nsfw, i as f32 / 10.0);
        }
        let sizes = p.sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 10);
        assert!(sizes.iter().all(|&s| s <= 4), "{sizes:?}");
        assert!(sizes.len() < 10, "no batching happened: {sizes:?}");
        assert_eq!(metrics.classifier_batch_size.get_sample_count(), sizes.len() as u64);
        assert_eq!(metrics.classifier_inference_seconds.get_sample_count(), sizes.len() as u64);
        assert_eq!(metrics.classifier_score.with_label_values(&["probe"]).get_sample_count(), 10);
    }

    #[tokio::test]
    async fn a_lone_request_runs_at_once() {
        let p = probe(0);
        let b = Batcher::new(p.clone(), Metrics::new(), 16, Duration::from_secs(10));
        let started = Instant::now();
        b.classify(input(0.5)).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5), "waited {:?} for a partner never announced", started.elapsed());
        assert_eq!(*p.sizes.lock().unwrap(), [1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_waits_for_an_announced_image() {
        let p = probe(0);
        let b = Batcher::new(p.clone(), Metrics::new(), 8, Duration::from_secs(10));
        let announced = b.announce();
        let late = {
            let b = b.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                b.classify_announced(input(0.75), announced).await
            })
        };
        let started = Instant::now();
        assert_eq!(b.classify(input(0.25)).await.unwrap().nsfw, 0.25);
        let took = started.elapsed();
        assert_eq!(late.await.unwrap().unwrap().nsfw, 0.75);
        assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(5), "{took:?}");
        assert_eq!(*p.sizes.lock().unwrap(), [2], "one batch for both");
        assert_eq!(b.coming.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_withdrawn_announcement_ends_the_wait() {
        let p = probe(0);
        let b = Batcher::new(p.clone(), Metrics::new(), 8, Duration::from_secs(10));
        let announced = b.announce();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(announced); // preprocessing failed: no request follows
        });
        let started = Instant::now();
        b.classify(input(0.5)).await.unwrap();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(150) && took < Duration::from_secs(5), "{took:?}");
        assert_eq!(*p.sizes.lock().unwrap(), [1]);
    }

    #[tokio::test]
    async fn an_announced_image_waits_at_most_max_wait() {
        let b = Batcher::new(probe(0), Metrics::new(), 16, Duration::from_millis(30));
        let _never_sent = b.announce();
        let started = Instant::now();
        b.classify(input(0.5)).await.unwrap();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(30) && took < Duration::from_secs(2), "{took:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_batch_fails_its_requests_and_the_batcher_goes_on() {
        let p = probe(0);
        let b = Batcher::new(p.clone(), Metrics::new(), 8, Duration::from_millis(100));
        // Both announced, so the first waits for the second: one batch, whatever the timing.
        let (first, second) = (b.announce(), b.announce());
        let (good, bad) =
            tokio::join!(b.classify_announced(input(0.25), first), b.classify_announced(input(f32::NAN), second));
        assert!(matches!(bad, Err(ClassifyError::Inference(_))));
        assert!(matches!(good, Err(ClassifyError::Inference(_))), "same batch, same fate: {good:?}");
        assert_eq!(b.classify(input(0.75)).await.unwrap().nsfw, 0.75);
    }

    #[tokio::test]
    async fn a_wrong_sized_input_is_refused_without_inference() {
        let p = probe(0);
        let b = Batcher::new(p.clone(), Metrics::new(), 8, Duration::from_millis(1));
        assert!(b.classify(vec![0.0; 3]).await.is_err());
        assert_eq!(p.calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn the_thread_ends_when_every_handle_is_dropped() {
        let p = probe(0);
        let b = Batcher::new(p.clone(), Metrics::new(), 8, Duration::from_millis(1));
        let b2 = b.clone();
        drop(b);
        drop(b2);
        // The batch loop holds the only other reference to the classifier; it drops it on exit.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&p) > 1 {
            assert!(Instant::now() < deadline, "classifier thread still running");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
