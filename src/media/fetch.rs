//! Getting an event's media bytes: inline base64, a file under the configured root, or a URL on
//! an allowlisted host. Every source is capped at `media.max_bytes`, or `video.max_bytes` once
//! its first bytes say video (a URL body stops as soon as they say otherwise), and every refusal
//! is a [`FetchError`] whose [`kind`](FetchError::kind) is a stable label for metrics and verdicts.
//!
//! Error messages never carry media bytes; URLs in them lose their query string, fragment and
//! credentials, which often hold signed tokens.

pub mod guard;

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use url::{Host, Url};

use super::video;
use crate::config::MediaSettings;
use crate::event::MediaRef;

use self::guard::{AddressRefused, HostAllowlist, VettingResolver};

const INITIAL_BODY_CAPACITY: u64 = 1 << 20;

const USER_AGENT: &str = concat!("perisai/", env!("CARGO_PKG_VERSION"), " (media screening)");

/// Standard alphabet; padding may be present or absent, but bad characters and non-zero
/// trailing bits are still errors.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("inline media is not valid base64: {0}")]
    InvalidBase64(String),
    #[error("media is larger than the {limit}-byte limit: {detail}")]
    TooLarge { limit: usize, detail: String },
    #[error("path media refused: {0}")]
    Path(String),
    #[error("URL media refused: {0}")]
    Guard(String),
    #[error("URL media timed out: {0}")]
    Timeout(String),
    #[error("URL media fetch failed: {0}")]
    Fetch(String),
    /// Only from [`MediaFetcher::new`].
    #[error("media fetcher setup failed: {0}")]
    Setup(String),
}

impl FetchError {
    /// Stable label for `perisai_media_errors_total{kind}` and `media_error` reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::InvalidBase64(_) => "invalid_base64",
            FetchError::TooLarge { .. } => "too_large",
            FetchError::Path(_) => "path",
            FetchError::Guard(_) => "guard",
            FetchError::Timeout(_) => "timeout",
            FetchError::Fetch(_) => "fetch",
            FetchError::Setup(_) => "setup",
        }
    }
}

/// Bytes enough to tell a video container from its first bytes (an MPEG-TS needs three packets).
const SNIFF_BYTES: usize = 188 * 3;

/// Fetches media under the limits and guards of one [`MediaSettings`]. Build it once and share
/// it: it holds the HTTP connection pool.
pub struct MediaFetcher {
    /// Media whose first bytes say video may be as large as `video_max_bytes`; all other media
    /// stops at `max_bytes` (see [`MediaFetcher::limit_for`]).
    max_bytes: usize,
    video_max_bytes: usize,
    path_root: Option<PathBuf>,
    client: reqwest::Client,
    allow_hosts: HostAllowlist,
    allow_schemes: Vec<String>,
    allow_private: bool,
    connect_timeout: Duration,
    total_timeout: Duration,
    max_redirects: usize,
}

impl MediaFetcher {
    pub fn new(settings: &MediaSettings) -> Result<Self, FetchError> {
        Self::with_video_max_bytes(settings, settings.max_bytes)
    }

    /// A fetcher that lets videos be as large as `video_max_bytes` (`video.max_bytes`).
    pub fn with_video_max_bytes(settings: &MediaSettings, video_max_bytes: usize) -> Result<Self, FetchError> {
        let http = &settings.http;
        let allow_hosts = HostAllowlist::new(&http.allow_hosts).map_err(FetchError::Setup)?;
        let allow_schemes: Vec<String> = http.allow_schemes.iter().map(|s| s.to_ascii_lowercase()).collect();
        let client = reqwest::Client::builder()
            // Redirects are followed by hand so that every hop passes the same checks.
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would do its own resolving and defeat the address check.
            .no_proxy()
            .referer(false)
            .https_only(allow_schemes.iter().all(|s| s == "https"))
            .connect_timeout(Duration::from_millis(http.connect_timeout_ms))
            .user_agent(USER_AGENT)
            .dns_resolver(Arc::new(VettingResolver { allow_private: http.allow_private_addresses }))
            .build()
            .map_err(|e| FetchError::Setup(error_chain(&e)))?;
        Ok(MediaFetcher {
            max_bytes: settings.max_bytes,
            video_max_bytes: video_max_bytes.max(settings.max_bytes),
            path_root: (!settings.path_root.is_empty()).then(|| PathBuf::from(&settings.path_root)),
            client,
            allow_hosts,
            allow_schemes,
            allow_private: http.allow_private_addresses,
            connect_timeout: Duration::from_millis(http.connect_timeout_ms),
            total_timeout: Duration::from_millis(http.total_timeout_ms),
            max_redirects: http.max_redirects,
        })
    }

    pub async fn fetch(&self, media: &MediaRef) -> Result<Vec<u8>, FetchError> {
        match media {
            MediaRef::Inline(data) => self.decode_inline(data),
            MediaRef::Path(path) => self.read_path(path).await,
            MediaRef::Url(url) => self.fetch_url(url).await,
        }
    }

    fn too_large(&self, limit: usize, detail: impl Into<String>) -> FetchError {
        FetchError::TooLarge { limit, detail: detail.into() }
    }

    /// The limit for media that starts with `head`: the video limit once the bytes say video,
    /// the larger one while too few have arrived to tell, else the media limit.
    fn limit_for(&self, head: &[u8], complete: bool) -> usize {
        if video::sniff(head).is_some() {
            self.video_max_bytes
        } else if head.len() < SNIFF_BYTES && !complete {
            self.video_max_bytes
        } else {
            self.max_bytes
        }
    }

    /// Refuses media over the limit its bytes call for.
    fn checked(&self, bytes: Vec<u8>, what: impl FnOnce() -> String) -> Result<Vec<u8>, FetchError> {
        let limit = self.limit_for(&bytes, true);
        if bytes.len() > limit {
            return Err(self.too_large(limit, format!("{} is {} bytes", what(), bytes.len())));
        }
        Ok(bytes)
    }

    fn decode_inline(&self, data: &str) -> Result<Vec<u8>, FetchError> {
        // The decoded size follows from the length alone, so oversized media is refused before
        // any buffer is allocated for it.
        let unpadded = data.trim_end_matches('=');
        let decoded_len = (unpadded.len() / 4) * 3
            + match unpadded.len() % 4 {
                0 => 0,
                2 => 1,
                3 => 2,
                _ => return Err(FetchError::InvalidBase64(format!("invalid length ({} characters)", data.len()))),
            };
        if decoded_len > self.video_max_bytes {
            return Err(self.too_large(self.video_max_bytes, format!("inline media decodes to {decoded_len} bytes")));
        }
        let bytes = BASE64.decode(data).map_err(|e| {
            // The decoder's own message quotes the offending byte; the offset is enough.
            FetchError::InvalidBase64(match e {
                base64::DecodeError::InvalidByte(offset, b'\n' | b'\r') => {
                    format!("a line break at offset {offset}: send base64 on one line (no MIME line wrapping)")
                }
                base64::DecodeError::InvalidByte(offset, b'=') => {
                    format!("padding '=' at offset {offset}, before the end or more than two of it")
                }
                base64::DecodeError::InvalidByte(offset, b'-' | b'_') => {
                    format!("a URL-safe base64 character at offset {offset}: use the standard alphabet (+ and /)")
                }
                base64::DecodeError::InvalidByte(offset, _) => format!("invalid character at offset {offset}"),
                base64::DecodeError::InvalidLength(n) => format!("invalid length ({n} symbols)"),
                base64::DecodeError::InvalidLastSymbol(offset, _) => {
                    format!("invalid last symbol at offset {offset} (non-zero trailing bits)")
                }
                base64::DecodeError::InvalidPadding => "invalid padding".to_string(),
            })
        })?;
        self.checked(bytes, || "inline media".into())
    }

    async fn read_path(&self, rel: &str) -> Result<Vec<u8>, FetchError> {
        let Some(root) = &self.path_root else {
            return Err(FetchError::Path("path media is disabled (media.path_root is empty)".into()));
        };
        let rel_path = relative_path(rel).map_err(|why| FetchError::Path(format!("{rel:?}: {why}")))?;
        let (root, name, max) = (root.clone(), rel.to_string(), self.video_max_bytes);
        // Blocking file calls on a blocking thread; none of them can wait on a FIFO or a device.
        let read = tokio::task::spawn_blocking(move || read_beneath(&root, &rel_path, max))
            .await
            .map_err(|e| FetchError::Path(format!("{name:?}: reading thread failed ({e})")))?;
        let bytes = read.map_err(|problem| match problem {
            PathProblem::TooLarge(what) => self.too_large(self.video_max_bytes, format!("{rel:?} {what}")),
            PathProblem::Refused(what) => FetchError::Path(format!("{rel:?}: {what}")),
        })?;
        self.checked(bytes, || format!("{rel:?}"))
    }

    async fn fetch_url(&self, raw: &str) -> Result<Vec<u8>, FetchError> {
        if self.allow_hosts.is_empty() {
            return Err(FetchError::Guard("URL media is disabled (media.http.allow_hosts is empty)".into()));
        }
        let url = Url::parse(raw).map_err(|e| FetchError::Guard(format!("not a valid URL ({e})")))?;
        // One deadline for every hop and the body, so a chain of slow redirects cannot add up.
        match tokio::time::timeout(self.total_timeout, self.follow(url.clone())).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout(format!(
                "{} not complete within {} ms (media.http.total_timeout_ms)",
                redact(&url),
                self.total_timeout.as_millis()
            ))),
        }
    }

    async fn follow(&self, mut url: Url) -> Result<Vec<u8>, FetchError> {
        let mut redirects = 0;
        let mut came_from: Option<Url> = None;
        loop {
            self.check_url(&url).map_err(|e| match (e, &came_from) {
                (FetchError::Guard(msg), Some(from)) => {
                    FetchError::Guard(format!("{msg} (redirect {redirects} from {})", redact(from)))
                }
                (e, _) => e,
            })?;
            let response = match self.client.get(url.clone()).send().await {
                Ok(response) => response,
                Err(e) if e.is_timeout() && url.scheme() == "https" => return Err(self.https_connect_timeout(&url).await),
                Err(e) => return Err(self.request_error(e, &url)),
            };
            if let Some(peer) = response.remote_addr() {
                // The resolver has vetted names and check_url literals; this catches any path
                // to a connection that bypassed both.
                if let (false, Some(why)) = (self.allow_private, guard::non_public_reason(peer.ip())) {
                    return Err(FetchError::Guard(format!(
                        "{} connected to {}, which is {why}",
                        redact(&url),
                        peer.ip()
                    )));
                }
            }
            let status = response.status();
            if matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
                let location =
                    response.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).ok_or_else(
                        || FetchError::Fetch(format!("HTTP {status} without a usable Location from {}", redact(&url))),
                    )?;
                let next = url
                    .join(location)
                    .map_err(|e| FetchError::Guard(format!("{} redirects to an invalid URL ({e})", redact(&url))))?;
                if redirects >= self.max_redirects {
                    return Err(FetchError::Guard(format!(
                        "too many redirects (limit {}), last from {} to {}",
                        self.max_redirects,
                        redact(&url),
                        redact(&next)
                    )));
                }
                redirects += 1;
                came_from = Some(std::mem::replace(&mut url, next));
                continue;
            }
            if !status.is_success() {
                return Err(FetchError::Fetch(format!("HTTP {status} from {}", redact(&url))));
            }
            return self.read_body(response, &url).await;
        }
    }

    /// Scheme, credentials, host allowlist and, for IP literals, the address itself. IP literals
    /// never reach the resolver, so their address is judged here.
    fn check_url(&self, url: &Url) -> Result<(), FetchError> {
        let shown = redact(url);
        if !self.allow_schemes.iter().any(|s| s == url.scheme()) {
            return Err(FetchError::Guard(format!(
                "{shown}: scheme {:?} is not allowed (allowed: {})",
                url.scheme(),
                self.allow_schemes.join(", ")
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(FetchError::Guard(format!("{shown}: credentials in URLs are not allowed")));
        }
        let Some(host) = url.host() else {
            return Err(FetchError::Guard(format!("{shown}: no host")));
        };
        if !self.allow_hosts.allows(&host) {
            return Err(FetchError::Guard(format!("{shown}: host {host} is not in media.http.allow_hosts")));
        }
        let literal = match host {
            Host::Ipv4(ip) => Some(ip.into()),
            Host::Ipv6(ip) => Some(ip.into()),
            Host::Domain(_) => None,
        };
        if let (Some(ip), false) = (literal, self.allow_private) {
            if let Some(why) = guard::non_public_reason(ip) {
                return Err(FetchError::Guard(format!("{shown}: address {ip} is {why}")));
            }
        }
        Ok(())
    }

    async fn read_body(&self, mut response: reqwest::Response, url: &Url) -> Result<Vec<u8>, FetchError> {
        let declared = response.content_length();
        if let Some(len) = declared {
            if len > self.video_max_bytes as u64 {
                return Err(self.too_large(self.video_max_bytes, format!("{} declares {len} bytes", redact(url))));
            }
        }
        // A declared length is only a promise: reserving all of it up front would let servers
        // that never send their bodies pin memory across many in-flight fetches.
        let mut body = Vec::with_capacity(declared.unwrap_or(0).min(INITIAL_BODY_CAPACITY) as usize);
        while let Some(chunk) = response.chunk().await.map_err(|e| self.request_error(e, url))? {
            // Decided from the first bytes: only a video may run past the media limit.
            let limit = self.limit_for(&body, false);
            if body.len() + chunk.len() > limit {
                return Err(self.too_large(limit, format!("{} sent more than the limit", redact(url))));
            }
            body.extend_from_slice(&chunk);
        }
        self.checked(body, || redact(url))
    }

    /// The connect timeout covers the TCP connection and the TLS handshake alike. Which one
    /// stalled is what an operator needs to know (a server that accepts and never answers TLS,
    /// a proxy in the way, a plain-HTTP port), so one more TCP connection, to the same vetted
    /// addresses, finds out.
    async fn https_connect_timeout(&self, url: &Url) -> FetchError {
        let ms = self.connect_timeout.as_millis();
        let Some(host) = url.host_str() else {
            return FetchError::Timeout(format!("{}: no connection within {ms} ms (media.http.connect_timeout_ms)", redact(url)));
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = url.port_or_known_default().unwrap_or(443);
        let probe = async {
            let addrs = tokio::net::lookup_host((host, port)).await.ok()?;
            for addr in addrs {
                // Never a connection the resolver would have refused.
                if !self.allow_private && guard::non_public_reason(addr.ip()).is_some() {
                    continue;
                }
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    return Some(addr);
                }
            }
            None
        };
        match tokio::time::timeout(self.connect_timeout, probe).await {
            Ok(Some(addr)) => FetchError::Timeout(format!(
                "{}: TCP connected to {addr}, but the TLS handshake did not finish within {ms} ms (media.http.connect_timeout_ms)",
                redact(url)
            )),
            _ => FetchError::Timeout(format!("{}: no TCP connection within {ms} ms (media.http.connect_timeout_ms)", redact(url))),
        }
    }

    fn request_error(&self, err: reqwest::Error, url: &Url) -> FetchError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        while let Some(e) = source {
            if let Some(refused) = e.downcast_ref::<AddressRefused>() {
                return FetchError::Guard(format!("{}: {refused}", redact(url)));
            }
            source = e.source();
        }
        // The client's only timeout is the connect timeout; the total deadline is applied outside.
        if err.is_timeout() {
            return FetchError::Timeout(format!(
                "{}: no connection within {} ms (media.http.connect_timeout_ms)",
                redact(url),
                self.connect_timeout.as_millis()
            ));
        }
        // reqwest's own message embeds the full URL, query string included.
        FetchError::Fetch(format!("{}: {}", redact(url), error_chain(&err.without_url())))
    }
}

/// The event's path as a plain relative path: no root, no prefix, no `..`.
fn relative_path(rel: &str) -> Result<PathBuf, &'static str> {
    if rel.contains('\0') {
        return Err("contains a NUL byte");
    }
    let mut out = PathBuf::new();
    for component in Path::new(rel).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("\"..\" is not allowed"),
            Component::RootDir | Component::Prefix(_) => return Err("absolute paths are not allowed"),
        }
    }
    if out.as_os_str().is_empty() {
        return Err("names no file");
    }
    Ok(out)
}

enum PathProblem {
    TooLarge(String),
    Refused(String),
}

/// Opens `rel` under `root` one component at a time, each opened relative to the directory
/// before it with `O_NOFOLLOW`: a symlink anywhere under the root — there all along, or swapped
/// in for a directory a moment ago — fails the open instead of leading outside (there is no
/// window between a check and the open). The file is opened `O_NONBLOCK`, so a FIFO or a device
/// swapped in cannot block the worker (or its shutdown), and is then checked on the descriptor
/// itself: a regular file, one link (a second hard link could be one made to a file outside the
/// root, which no path check can tell), within the size limit. The root itself may be a symlink.
fn read_beneath(root: &Path, rel: &Path, max: usize) -> Result<Vec<u8>, PathProblem> {
    use rustix::fs::{openat, Mode, OFlags, CWD};
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let refused = |what: String| PathProblem::Refused(what);
    let errno = |what: &str, e: rustix::io::Errno| match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => refused(format!("{what}: it leads through a symlink (or a non-directory), which could point outside the media root")),
        rustix::io::Errno::NOENT => refused("not found".into()),
        e => refused(format!("{what}: {}", io_reason(&std::io::Error::from(e)))),
    };
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut dir = openat(CWD, root, dir_flags, Mode::empty()).map_err(|e| errno("media root is unavailable", e))?;
    let parts: Vec<&std::ffi::OsStr> = rel.iter().collect();
    let Some((last, parents)) = parts.split_last() else { return Err(refused("names no file".into())) };
    for part in parents {
        dir = openat(&dir, *part, dir_flags | OFlags::NOFOLLOW, Mode::empty()).map_err(|e| errno("cannot be resolved", e))?;
    }
    let file_flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = openat(&dir, *last, file_flags, Mode::empty()).map_err(|e| errno("cannot be opened", e))?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(|e| refused(format!("cannot be read ({})", io_reason(&e))))?;
    if !meta.is_file() {
        return Err(refused("not a regular file".into()));
    }
    if meta.nlink() > 1 {
        return Err(refused(format!("has {} hard links; media files must have one (a link could lead outside the root)", meta.nlink())));
    }
    if meta.len() > max as u64 {
        return Err(PathProblem::TooLarge(format!("is {} bytes", meta.len())));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    // One byte past the limit tells a file that grew after the size check.
    file.take(max as u64 + 1).read_to_end(&mut buf).map_err(|e| refused(format!("read failed ({})", io_reason(&e))))?;
    if buf.len() > max {
        return Err(PathProblem::TooLarge("grew past the limit while being read".into()));
    }
    Ok(buf)
}

/// An I/O error's reason without any path (std's messages carry none; kept explicit).
fn io_reason(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(_) => e.to_string(),
        None => e.kind().to_string(),
    }
}

/// The URL as it may appear in logs and verdicts: no credentials, query or fragment.
pub fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = Some(err);
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(relative_path("a/b.jpg").unwrap(), PathBuf::from("a/b.jpg"));
        assert_eq!(relative_path("./a//b.jpg").unwrap(), PathBuf::from("a/b.jpg"));
        assert!(relative_path("../a.jpg").is_err());
        assert!(relative_path("a/../../b.jpg").is_err());
        assert!(relative_path("/etc/passwd").is_err());
        assert!(relative_path("").is_err());
        assert!(relative_path(".").is_err());
        assert!(relative_path("a\0b").is_err());
    }

    /// Only bytes that say video may pass the media limit, up to the video limit.
    #[test]
    fn the_first_bytes_choose_the_limit() {
        let settings: crate::config::Settings = crate::config::Settings::load(None).unwrap();
        let media = MediaSettings { max_bytes: 1000, ..settings.media };
        let fetcher = MediaFetcher::with_video_max_bytes(&media, 5000).unwrap();
        let mut mp4 = vec![0u8; 3000];
        mp4[3] = 0x18;
        mp4[4..12].copy_from_slice(b"ftypisom");
        let b64 = |b: &[u8]| BASE64.encode(b);
        assert_eq!(fetcher.decode_inline(&b64(&mp4)).unwrap().len(), 3000, "a video under video.max_bytes");
        let err = fetcher.decode_inline(&b64(&vec![7u8; 3000])).unwrap_err().to_string();
        assert!(err.contains("1000-byte limit"), "other media under media.max_bytes: {err}");
        let err = fetcher.decode_inline(&b64(&[mp4.clone(), mp4].concat())).unwrap_err().to_string();
        assert!(err.contains("5000-byte limit"), "{err}");
        assert_eq!(fetcher.limit_for(b"\0\0", false), 5000, "too few bytes to tell yet");
        assert_eq!(fetcher.limit_for(&[7u8; 600], false), 1000);
    }

    #[test]
    fn redact_strips_secrets() {
        let url = Url::parse("https://user:pw@media.example/a.jpg?sig=SECRET#frag").unwrap();
        assert_eq!(redact(&url), "https://media.example/a.jpg");
    }
}
