//! Placeholder for the guarded fetcher (inline only) until the real module lands.
use crate::config::MediaSettings;
use crate::event::MediaRef;
use base64::Engine;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid base64")]
    InvalidBase64,
    #[error("unsupported")]
    Unsupported,
}
impl FetchError {
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::InvalidBase64 => "invalid_base64",
            FetchError::Unsupported => "guard",
        }
    }
}
pub struct MediaFetcher;
impl MediaFetcher {
    pub fn new(_settings: &MediaSettings) -> Result<Self, FetchError> {
        Ok(MediaFetcher)
    }
    pub async fn fetch(&self, media: &MediaRef) -> Result<Vec<u8>, FetchError> {
        match media {
            MediaRef::Inline(b) => {
                base64::engine::general_purpose::STANDARD.decode(b).map_err(|_| FetchError::InvalidBase64)
            }
            _ => Err(FetchError::Unsupported),
        }
    }
}
