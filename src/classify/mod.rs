//! Classifier stage: open_nsfw through ONNX Runtime, batched across events.
//!
//! - [`preprocess`]: decoded pixels → model input, equal to the Python reference.
//! - [`manifest`]: the model manifest (weights file, sha256, tensor contract).
//! - [`onnx`]: [`onnx::OnnxClassifier`], the ONNX Runtime session behind [`Classifier`].
//! - [`batcher`]: an async handle that batches requests across events for any [`Classifier`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub mod batcher;
pub mod manifest;
pub mod onnx;
pub mod preprocess;

pub use batcher::Announcement;

/// Model outputs for one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    pub sfw: f32,
    pub nsfw: f32,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClassifyError {
    #[error("model not available: {0}")]
    Unavailable(String),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("preprocessing failed: {0}")]
    Preprocess(String),
}

/// A loaded model. `classify` is blocking CPU work: call it off the async runtime.
pub trait Classifier: Send + Sync {
    /// e.g. "open_nsfw"
    fn model_name(&self) -> &str;
    /// hex sha256 of the weights file
    fn model_sha256(&self) -> &str;
    /// One score per input tensor (each `preprocess::INPUT_LEN` floats, NHWC BGR).
    fn classify(&self, batch: &[Vec<f32>]) -> Result<Vec<Score>, ClassifyError>;
}

/// The classifier as the screen sees it: one preprocessed image in, one score out, batched
/// across events behind the scenes.
pub trait ImageScorer: Send + Sync {
    fn model_name(&self) -> &str;
    fn model_sha256(&self) -> &str;
    /// Says an image will be scored shortly (it is being preprocessed), so a batch short of its
    /// size waits for it rather than running without it. Pass it to [`ImageScorer::score`].
    fn announce(&self) -> Announcement {
        Announcement::none()
    }
    fn score(&self, input: Vec<f32>, announced: Announcement) -> Pin<Box<dyn Future<Output = Result<Score, ClassifyError>> + Send + '_>>;
}

/// A loaded model behind the micro-batcher.
pub struct BatchedModel {
    batcher: batcher::Batcher,
    sha256: String,
}

impl ImageScorer for BatchedModel {
    fn model_name(&self) -> &str {
        self.batcher.model_name()
    }
    fn model_sha256(&self) -> &str {
        &self.sha256
    }
    fn announce(&self) -> Announcement {
        self.batcher.announce()
    }
    fn score(&self, input: Vec<f32>, announced: Announcement) -> Pin<Box<dyn Future<Output = Result<Score, ClassifyError>> + Send + '_>> {
        Box::pin(self.batcher.classify_announced(input, announced))
    }
}

/// Loads the ONNX model (checking its sha256 against the manifest) and starts its batcher.
pub fn scorer(
    settings: &crate::config::ClassifierSettings,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<Arc<dyn ImageScorer>, ClassifyError> {
    let model: Arc<dyn Classifier> = Arc::new(onnx::OnnxClassifier::load(settings)?);
    let sha256 = model.model_sha256().to_string();
    Ok(Arc::new(BatchedModel { batcher: batcher::Batcher::from_settings(model, metrics, settings), sha256 }))
}
