//! open_nsfw on ONNX Runtime through the `ort` crate, with the runtime library loaded at run time
//! from the configured path (scripts/setup installs both it and the weights).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use sha2::{Digest, Sha256};

use super::manifest::Manifest;
use super::preprocess::{INPUT_LEN, SIDE};
use super::{Classifier, ClassifyError, Score};
use crate::config::ClassifierSettings;

const SETUP_HINT: &str = "run `make setup` (scripts/setup) to install it";

/// ONNX Runtime is loaded once per process (it cannot be unloaded, and `ort` keeps one global
/// library and environment), so the first successful load fixes the library path.
static ENVIRONMENT: OnceLock<Result<(PathBuf, Environment), String>> = OnceLock::new();

fn environment(library: &Path) -> Result<Environment, ClassifyError> {
    let canonical = std::fs::canonicalize(library).map_err(|_| {
        ClassifyError::Unavailable(format!("ONNX Runtime library {} is missing; {SETUP_HINT}", library.display()))
    })?;
    let loaded = ENVIRONMENT.get_or_init(|| {
        let env = ort::init_from(&canonical)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", canonical.display()))?
            .with_name("perisai")
            .with_telemetry(false)
            .build()
            .map_err(|e| format!("cannot create the ONNX Runtime environment: {e}"))?;
        Ok((canonical.clone(), env))
    });
    match loaded {
        Ok((path, env)) if *path == canonical => Ok(env.clone()),
        Ok((path, _)) => Err(ClassifyError::Unavailable(format!(
            "ONNX Runtime is already loaded from {} in this process; cannot also load {}",
            path.display(),
            canonical.display()
        ))),
        Err(e) => Err(ClassifyError::Unavailable(e.clone())),
    }
}

pub struct OnnxClassifier {
    name: String,
    sha256: String,
    input_name: String,
    output_name: String,
    // `ort` needs `&mut Session` to run; inference is serialised anyway (it uses every intra-op
    // thread), so a mutex costs nothing.
    session: Mutex<Session>,
}

impl OnnxClassifier {
    /// Loads the manifest, checks the weights' sha256 against it, loads ONNX Runtime from
    /// `settings.ort_library` and builds a session with the reference's graph optimisation.
    pub fn load(settings: &ClassifierSettings) -> Result<Self, ClassifyError> {
        let manifest_path = Path::new(&settings.manifest);
        let manifest = Manifest::load(manifest_path)?;
        let model_path = if settings.model_path.is_empty() {
            manifest.default_model_path(manifest_path)
        } else {
            PathBuf::from(&settings.model_path)
        };
        let library = Path::new(&settings.ort_library);
        if !library.is_file() {
            return Err(ClassifyError::Unavailable(format!(
                "ONNX Runtime library {} is missing; {SETUP_HINT}",
                library.display()
            )));
        }
        if !model_path.is_file() {
            return Err(ClassifyError::Unavailable(format!(
                "model weights {} ({}) are missing; {SETUP_HINT}",
                model_path.display(),
                manifest.name
            )));
        }
        // Hash the bytes the session is built from, so the check cannot be raced by a file swap.
        let weights = std::fs::read(&model_path)
            .map_err(|e| ClassifyError::Unavailable(format!("cannot read {}: {e}", model_path.display())))?;
        let actual = hex::encode(Sha256::digest(&weights));
        if actual != manifest.sha256 {
            return Err(ClassifyError::Unavailable(format!(
                "model weights {} have sha256 {actual}, but {} expects {}; {SETUP_HINT}",
                model_path.display(),
                manifest_path.display(),
                manifest.sha256
            )));
        }

        let env = environment(library)?;
        let ort_err =
            |e: ort::Error| ClassifyError::Unavailable(format!("cannot create the ONNX Runtime session: {e}"));
        let builder_err = |e: ort::Error<ort::session::builder::SessionBuilder>| {
            ClassifyError::Unavailable(format!("cannot configure the ONNX Runtime session: {e}"))
        };
        let session = Session::builder(&env)
            .map_err(ort_err)?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(builder_err)?
            .with_intra_threads(settings.intra_threads.max(1))
            .map_err(builder_err)?
            // The intra-op threads sleep between parallel sections instead of spinning: in the
            // service, decode and preprocessing of the next uploads run beside inference, and
            // spinning threads took their cores (benches/whole_screen.rs: 15 % more photos/s,
            // 15 % less CPU per photo; a lone batch of one runs ~1 ms slower).
            .with_intra_op_spinning(false)
            .map_err(builder_err)?
            .commit_from_memory(&weights)
            .map_err(ort_err)?;

        let has = |outlets: &[ort::value::Outlet], name: &str| outlets.iter().any(|o| o.name() == name);
        if !has(session.inputs(), &manifest.input.name) || !has(session.outputs(), &manifest.output.name) {
            return Err(ClassifyError::Unavailable(format!(
                "model {} has no input `{}` or no output `{}` as its manifest says",
                model_path.display(),
                manifest.input.name,
                manifest.output.name
            )));
        }
        Ok(Self {
            name: manifest.name,
            sha256: manifest.sha256,
            input_name: manifest.input.name,
            output_name: manifest.output.name,
            session: Mutex::new(session),
        })
    }

    /// Runs one batch already laid out as `[n, SIDE, SIDE, 3]`.
    pub fn classify_flat(&self, n: usize, flat: &[f32]) -> Result<Vec<Score>, ClassifyError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        if flat.len() != n * INPUT_LEN {
            return Err(ClassifyError::Inference(format!(
                "expected {} floats for {n} images, got {}",
                n * INPUT_LEN,
                flat.len()
            )));
        }
        let err = |e: ort::Error| ClassifyError::Inference(e.to_string());
        let tensor = TensorRef::from_array_view(([n, SIDE, SIDE, 3], flat)).map_err(err)?;
        let mut session = self.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let outputs = session.run(ort::inputs![self.input_name.as_str() => tensor]).map_err(err)?;
        let value = outputs
            .get(&self.output_name)
            .ok_or_else(|| ClassifyError::Inference(format!("no output `{}`", self.output_name)))?;
        let (shape, probs) = value.try_extract_tensor::<f32>().map_err(err)?;
        if shape.len() != 2 || shape[0] != n as i64 || shape[1] != 2 || probs.len() != n * 2 {
            return Err(ClassifyError::Inference(format!("unexpected output shape {shape:?}")));
        }
        Ok(probs.chunks_exact(2).map(|p| Score { sfw: p[0], nsfw: p[1] }).collect())
    }
}

impl Classifier for OnnxClassifier {
    fn model_name(&self) -> &str {
        &self.name
    }

    fn model_sha256(&self) -> &str {
        &self.sha256
    }

    fn classify(&self, batch: &[Vec<f32>]) -> Result<Vec<Score>, ClassifyError> {
        if let Some((i, bad)) = batch.iter().enumerate().find(|(_, t)| t.len() != INPUT_LEN) {
            return Err(ClassifyError::Inference(format!("input {i} has {} floats, expected {INPUT_LEN}", bad.len())));
        }
        let flat = batch.concat();
        self.classify_flat(batch.len(), &flat)
    }
}
