//! Classifier stage: open_nsfw through ONNX Runtime, batched across events.
//!
//! - [`preprocess`]: decoded pixels → model input, equal to the Python reference.
//! - [`manifest`]: the model manifest (weights file, sha256, tensor contract).
//! - [`onnx`]: [`onnx::OnnxClassifier`], the ONNX Runtime session behind [`Classifier`].
//! - [`batcher`]: an async handle that batches requests across events for any [`Classifier`].

pub mod batcher;
pub mod manifest;
pub mod onnx;
pub mod preprocess;

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

/// Placeholder until the ONNX classifier lands: the lead wires the real batcher here.
pub fn scorer(
    _settings: &crate::config::ClassifierSettings,
    _metrics: std::sync::Arc<crate::metrics::Metrics>,
) -> Result<std::sync::Arc<dyn crate::screen::ImageScorer>, ClassifyError> {
    Err(ClassifyError::Unavailable("the ONNX classifier is not built into this version".into()))
}
