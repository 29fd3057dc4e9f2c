//! Model manifests (`models/*.toml`): which weights file, its sha256, and the tensor contract.
//!
//! The manifest is what ties a deployment to exact weights: the loader refuses a weights file
//! whose sha256 differs, so scores (and the policy bands tuned on them) cannot drift silently.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::preprocess::SIDE;
use super::ClassifyError;

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub name: String,
    /// File name of the weights (installed under `.cache/models/` by scripts/setup).
    pub file: String,
    /// Lowercase hex sha256 of the weights file.
    pub sha256: String,
    pub input: TensorSpec,
    pub output: OutputSpec,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: String,
    /// `"N"` for the batch dimension, numbers otherwise.
    pub shape: Vec<toml::Value>,
    #[serde(default)]
    pub channel_order: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OutputSpec {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<toml::Value>,
    pub labels: Vec<String>,
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Self, ClassifyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ClassifyError::Unavailable(format!("cannot read model manifest {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| ClassifyError::Unavailable(format!("model manifest {}: {e}", path.display())))
    }

    /// Parses and checks that the manifest describes what this crate feeds and reads:
    /// float32 NHWC BGR `SIDE`×`SIDE` in, `[sfw, nsfw]` out.
    pub fn parse(text: &str) -> Result<Self, String> {
        let m: Manifest = toml::from_str(text).map_err(|e| e.to_string())?;
        if m.sha256.len() != 64 || !m.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(format!("sha256 must be 64 lowercase hex digits, got {:?}", m.sha256));
        }
        if m.file.is_empty() || m.file.contains('/') || m.file.contains('\\') {
            return Err(format!("file must be a plain file name, got {:?}", m.file));
        }
        let side = SIDE as i64;
        let dims = |shape: &[toml::Value]| shape.iter().skip(1).map(|v| v.as_integer()).collect::<Option<Vec<_>>>();
        if m.input.dtype != "float32" || dims(&m.input.shape) != Some(vec![side, side, 3]) {
            return Err(format!("input must be float32 [N, {side}, {side}, 3]"));
        }
        if m.input.channel_order.as_deref().is_some_and(|c| c != "BGR") {
            return Err("input channel_order must be BGR".into());
        }
        if m.output.dtype != "float32" || dims(&m.output.shape) != Some(vec![2]) || m.output.labels != ["sfw", "nsfw"] {
            return Err("output must be float32 [N, 2] with labels [\"sfw\", \"nsfw\"]".into());
        }
        Ok(m)
    }

    /// Where the weights are when `model_path` is not configured: `.cache/models/<file>` beside
    /// the directory holding the manifest (the layout scripts/setup creates).
    pub fn default_model_path(&self, manifest_path: &Path) -> PathBuf {
        let models_dir = manifest_path.parent().unwrap_or(Path::new("."));
        let root = models_dir.parent().unwrap_or(Path::new("."));
        root.join(".cache").join("models").join(&self.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../models/open_nsfw.toml");

    #[test]
    fn the_shipped_manifest_parses() {
        let m = Manifest::parse(SHIPPED).unwrap();
        assert_eq!(m.name, "open_nsfw");
        assert_eq!(m.file, "open-nsfw.onnx");
        assert_eq!(m.input.name, "input:0");
        assert_eq!(m.output.name, "outputs");
        assert_eq!(m.default_model_path(Path::new("models/open_nsfw.toml")), Path::new(".cache/models/open-nsfw.onnx"));
    }

    #[test]
    fn a_manifest_that_does_not_fit_is_refused() {
        let bad_sha = SHIPPED.replace("sha256 = \"864b", "sha256 = \"864B");
        assert!(Manifest::parse(&bad_sha).unwrap_err().contains("sha256"));
        let bad_labels = SHIPPED.replace("labels = [\"sfw\", \"nsfw\"]", "labels = [\"nsfw\", \"sfw\"]");
        assert!(Manifest::parse(&bad_labels).unwrap_err().contains("labels"));
        let bad_shape = SHIPPED.replace("shape = [\"N\", 224, 224, 3]", "shape = [\"N\", 3, 224, 224]");
        assert!(Manifest::parse(&bad_shape).unwrap_err().contains("input"));
    }
}
