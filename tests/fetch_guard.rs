//! MediaFetcher against real files and real HTTP servers on 127.0.0.1 that each test starts.
//! The servers count accepted connections, so a refusal can be shown to happen before any
//! connection is made.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use perisai::config::{HttpSettings, MediaSettings};
use perisai::event::MediaRef;
use perisai::media::fetch::{FetchError, MediaFetcher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX: usize = 1000;
const TOTAL_MS: u64 = 600;

fn settings(hosts: &[&str], schemes: &[&str], private: bool) -> MediaSettings {
    MediaSettings {
        max_bytes: MAX,
        path_root: String::new(),
        http: HttpSettings {
            allow_hosts: hosts.iter().map(|s| s.to_string()).collect(),
            allow_schemes: schemes.iter().map(|s| s.to_string()).collect(),
            allow_private_addresses: private,
            connect_timeout_ms: 500,
            total_timeout_ms: TOTAL_MS,
            max_redirects: 3,
        },
    }
}

/// The setting the local tests need to reach the server at all.
fn local() -> MediaSettings {
    settings(&["localhost"], &["http"], true)
}

fn fetcher(s: &MediaSettings) -> MediaFetcher {
    MediaFetcher::new(s).expect("fetcher")
}

async fn fetch_url(s: &MediaSettings, url: &str) -> Result<Vec<u8>, FetchError> {
    fetcher(s).fetch(&MediaRef::Url(url.to_string())).await
}

#[track_caller]
fn assert_kind(result: Result<Vec<u8>, FetchError>, kind: &str) -> FetchError {
    match result {
        Ok(bytes) => panic!("expected a {kind} error, got {} bytes", bytes.len()),
        Err(e) => {
            assert_eq!(e.kind(), kind, "unexpected error: {e}");
            e
        }
    }
}

/// Deterministic, non-trivial body bytes.
fn body(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

enum Reply {
    /// Status, extra headers, body sent with Content-Length.
    Full(u16, Vec<(&'static str, String)>, Vec<u8>),
    Redirect(String),
    /// Body delimited by closing the connection: no Content-Length.
    UntilClose(Vec<u8>),
    Chunked(Vec<u8>),
    /// Reads the request and never answers.
    Stall,
    /// Headers promise `len` bytes, then one byte every `interval`.
    Trickle {
        len: usize,
        interval: Duration,
    },
    /// The inner reply, after a pause.
    Delayed(Duration, Box<Reply>),
}

struct Server {
    port: u16,
    connections: Arc<AtomicUsize>,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://localhost:{}{path}", self.port)
    }
    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve<F>(handler: F) -> Server
where
    F: Fn(&str, u16) -> Reply + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let handler = Arc::new(handler);
    let count = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            count.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            tokio::spawn(async move {
                let _ = answer(stream, port, &*handler).await;
            });
        }
    });
    Server { port, connections }
}

async fn answer<F: Fn(&str, u16) -> Reply>(mut stream: TcpStream, port: u16, handler: &F) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        if stream.read(&mut byte).await? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let status_line = |code: u16| format!("HTTP/1.1 {code} X\r\nConnection: close\r\n");
    let mut reply = handler(&path, port);
    while let Reply::Delayed(pause, inner) = reply {
        tokio::time::sleep(pause).await;
        reply = *inner;
    }
    match reply {
        Reply::Full(code, headers, body) => {
            let mut out = status_line(code);
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            stream.write_all(out.as_bytes()).await?;
            stream.write_all(&body).await?;
        }
        Reply::Redirect(location) => {
            let out = format!("{}Location: {location}\r\nContent-Length: 0\r\n\r\n", status_line(302));
            stream.write_all(out.as_bytes()).await?;
        }
        Reply::UntilClose(body) => {
            stream.write_all(format!("{}\r\n", status_line(200)).as_bytes()).await?;
            for part in body.chunks(256) {
                stream.write_all(part).await?;
            }
        }
        Reply::Chunked(body) => {
            stream.write_all(format!("{}Transfer-Encoding: chunked\r\n\r\n", status_line(200)).as_bytes()).await?;
            for part in body.chunks(256) {
                stream.write_all(format!("{:x}\r\n", part.len()).as_bytes()).await?;
                stream.write_all(part).await?;
                stream.write_all(b"\r\n").await?;
            }
            stream.write_all(b"0\r\n\r\n").await?;
        }
        Reply::Stall => tokio::time::sleep(Duration::from_secs(30)).await,
        Reply::Delayed(..) => unreachable!("unwrapped above"),
        Reply::Trickle { len, interval } => {
            stream.write_all(format!("{}Content-Length: {len}\r\n\r\n", status_line(200)).as_bytes()).await?;
            for i in 0..len {
                stream.write_all(&[i as u8]).await?;
                stream.flush().await?;
                tokio::time::sleep(interval).await;
            }
        }
    }
    stream.shutdown().await
}

/// Serves `/ok` (the 500-byte body), `/hop/N` (redirect chains of N hops ending at `/ok`) and
/// 404 for anything else.
async fn standard_server() -> Server {
    serve(|path, _| {
        if path == "/ok" {
            Reply::Full(200, vec![("Content-Type", "image/jpeg".into())], body(500))
        } else if let Some(n) = path.strip_prefix("/hop/").and_then(|n| n.parse::<usize>().ok()) {
            Reply::Redirect(if n <= 1 { "/ok".into() } else { format!("/hop/{}", n - 1) })
        } else {
            Reply::Full(404, vec![], b"not here".to_vec())
        }
    })
    .await
}

// ---------------------------------------------------------------- inline

fn inline(s: &MediaSettings, data: &str) -> Result<Vec<u8>, FetchError> {
    futures::executor::block_on(fetcher(s).fetch(&MediaRef::Inline(data.to_string())))
}

#[tokio::test]
async fn inline_decodes_with_and_without_padding() {
    let s = local();
    for n in [0usize, 1, 2, 3, 4, 5, MAX] {
        let bytes = body(n);
        let padded = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let bare = padded.trim_end_matches('=').to_string();
        assert_eq!(fetcher(&s).fetch(&MediaRef::Inline(padded)).await.unwrap(), bytes, "padded, {n} bytes");
        assert_eq!(fetcher(&s).fetch(&MediaRef::Inline(bare)).await.unwrap(), bytes, "unpadded, {n} bytes");
    }
}

#[test]
fn inline_refuses_bad_base64() {
    let s = local();
    for bad in ["aGVsbG8@", "aGVs bG8=", "aGVsbG8-", "aGVsbG8_", "a", "aGVsbG8===", "aGVsbG9=x"] {
        let e = assert_kind(inline(&s, bad), "invalid_base64");
        // The message names a position, never the offending characters.
        assert!(!e.to_string().contains('@'), "{e}");
    }
    // Non-zero trailing bits: "aGVsbG9" would decode to "hello" with leftover bits set.
    assert_kind(inline(&s, "aGVsbG9"), "invalid_base64");
}

#[test]
fn inline_refuses_too_large_before_decoding() {
    let s = local();
    let data = base64::engine::general_purpose::STANDARD.encode(body(MAX + 1));
    assert_kind(inline(&s, &data), "too_large");
    // Still refused for size when the characters are garbage: the length alone decides.
    let garbage = "!".repeat((MAX + 3) / 3 * 4 + 4);
    assert_kind(inline(&s, &garbage), "too_large");
}

// ---------------------------------------------------------------- path

struct Root {
    dir: tempfile::TempDir,
    settings: MediaSettings,
}

fn root() -> Root {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/a.jpg"), body(700)).unwrap();
    std::fs::write(dir.path().join("big.jpg"), body(MAX + 1)).unwrap();
    std::fs::write(dir.path().join("exact.jpg"), body(MAX)).unwrap();
    let mut settings = local();
    settings.path_root = dir.path().to_str().unwrap().to_string();
    Root { dir, settings }
}

async fn fetch_path(s: &MediaSettings, p: &str) -> Result<Vec<u8>, FetchError> {
    fetcher(s).fetch(&MediaRef::Path(p.to_string())).await
}

#[tokio::test]
async fn path_reads_files_under_the_root() {
    let r = root();
    assert_eq!(fetch_path(&r.settings, "sub/a.jpg").await.unwrap(), body(700));
    assert_eq!(fetch_path(&r.settings, "./sub//a.jpg").await.unwrap(), body(700));
    assert_eq!(fetch_path(&r.settings, "exact.jpg").await.unwrap(), body(MAX));
    // No symlink is followed under the root, even one that stays inside: whether it does can
    // change between a check and the open, and a walk with O_NOFOLLOW leaves no such window.
    std::os::unix::fs::symlink(r.dir.path().join("sub/a.jpg"), r.dir.path().join("link.jpg")).unwrap();
    let e = assert_kind(fetch_path(&r.settings, "link.jpg").await, "path");
    assert!(e.to_string().contains("symlink"), "{e}");
}

#[tokio::test]
async fn path_refuses_escapes() {
    let r = root();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.jpg"), body(10)).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.jpg"), r.dir.path().join("escape.jpg")).unwrap();
    std::os::unix::fs::symlink(outside.path(), r.dir.path().join("escdir")).unwrap();
    let outside_rel = format!("../{}/secret.jpg", outside.path().file_name().unwrap().to_str().unwrap());
    let absolute = outside.path().join("secret.jpg").to_str().unwrap().to_string();
    for p in ["../big.jpg", "sub/../../x", &outside_rel, "/etc/passwd", &absolute, "escape.jpg", "escdir/secret.jpg"] {
        let e = assert_kind(fetch_path(&r.settings, p).await, "path");
        assert!(!e.to_string().contains(outside.path().to_str().unwrap()) || p == absolute, "leaks the target: {e}");
    }
}

#[tokio::test]
async fn path_refuses_missing_non_files_and_too_large() {
    let r = root();
    assert_kind(fetch_path(&r.settings, "nope.jpg").await, "path");
    assert_kind(fetch_path(&r.settings, "sub/a.jpg/x").await, "path");
    assert_kind(fetch_path(&r.settings, "sub").await, "path");
    assert_kind(fetch_path(&r.settings, "").await, "path");
    assert_kind(fetch_path(&r.settings, "big.jpg").await, "too_large");
    // A FIFO would block a reader forever; it must be refused without being opened.
    let fifo = r.dir.path().join("pipe");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo runs");
    assert!(made.success());
    let result =
        tokio::time::timeout(Duration::from_secs(5), fetch_path(&r.settings, "pipe")).await.expect("did not block");
    assert_kind(result, "path");
}

#[tokio::test]
async fn path_disabled_without_root() {
    let e = assert_kind(fetch_path(&local(), "a.jpg").await, "path");
    assert!(e.to_string().contains("disabled"), "{e}");
}

// ---------------------------------------------------------------- URL: allowed

#[tokio::test]
async fn allowed_host_is_fetched() {
    let server = standard_server().await;
    assert_eq!(fetch_url(&local(), &server.url("/ok")).await.unwrap(), body(500));
    // Upper case and a trailing dot on the allowlist entry.
    let s = settings(&["LOCALHOST."], &["http"], true);
    assert_eq!(fetch_url(&s, &server.url("/ok")).await.unwrap(), body(500));
}

#[tokio::test]
async fn redirects_within_the_limit_are_followed() {
    let server = standard_server().await;
    assert_eq!(fetch_url(&local(), &server.url("/hop/3")).await.unwrap(), body(500));
}

#[tokio::test]
async fn bodies_without_length_up_to_the_limit_are_read() {
    let server = serve(|path, _| match path {
        "/close" => Reply::UntilClose(body(MAX)),
        _ => Reply::Chunked(body(MAX)),
    })
    .await;
    assert_eq!(fetch_url(&local(), &server.url("/close")).await.unwrap(), body(MAX));
    assert_eq!(fetch_url(&local(), &server.url("/chunked")).await.unwrap(), body(MAX));
}

// ---------------------------------------------------------------- URL: guards

#[tokio::test]
async fn loopback_refused_by_default_before_connecting() {
    let server = standard_server().await;
    let url = server.url("/ok");
    // Same URL, same allowlist: only the address check differs.
    let e = assert_kind(fetch_url(&settings(&["localhost"], &["http"], false), &url).await, "guard");
    assert!(e.to_string().contains("loopback"), "{e}");
    assert_eq!(server.connections(), 0, "a refused address must never be connected to");
}

#[tokio::test]
async fn ip_literals_refused() {
    let server = standard_server().await;
    let p = server.port;
    let literals = [
        format!("http://127.0.0.1:{p}/ok"),
        format!("http://2130706433:{p}/ok"),
        format!("http://0x7f.1:{p}/ok"),
        format!("http://0x7f000001:{p}/ok"),
        format!("http://017700000001:{p}/ok"),
        format!("http://127.1:{p}/ok"),
        format!("http://[::ffff:127.0.0.1]:{p}/ok"),
        format!("http://[::ffff:7f00:1]:{p}/ok"),
        format!("http://[::1]:{p}/ok"),
        "http://10.0.0.1/ok".to_string(),
        "http://192.168.1.1/ok".to_string(),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://[fe80::1]/ok".to_string(),
        "http://100.64.0.1/ok".to_string(),
        "http://0.0.0.0/ok".to_string(),
    ];
    // Not allowlisted: refused by name even with the address check off.
    for url in &literals {
        let e = assert_kind(fetch_url(&local(), url).await, "guard");
        assert!(e.to_string().contains("allow_hosts"), "{url}: {e}");
    }
    // Allowlisted but not public: refused by address.
    let listed = [
        "127.0.0.1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "10.0.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "[fe80::1]",
        "100.64.0.1",
        "0.0.0.0",
    ];
    let s = settings(&listed, &["http"], false);
    for url in &literals {
        let e = assert_kind(fetch_url(&s, url).await, "guard");
        assert!(e.to_string().contains("address"), "{url}: {e}");
    }
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn non_allowlisted_hosts_refused() {
    let server = standard_server().await;
    let p = server.port;
    let s = settings(&["localhost", "*.media.test"], &["http"], true);
    for url in [
        format!("http://evil.test:{p}/ok"),
        format!("http://localhost.evil.test:{p}/ok"),
        format!("http://media.test:{p}/ok"),
        format!("http://xmedia.test:{p}/ok"),
        format!("http://media.test.evil:{p}/ok"),
    ] {
        let e = assert_kind(fetch_url(&s, &url).await, "guard");
        assert!(e.to_string().contains("allow_hosts"), "{url}: {e}");
    }
    assert_kind(fetch_url(&settings(&[], &["http"], true), &server.url("/ok")).await, "guard");
    assert_kind(fetch_url(&local(), "not a url").await, "guard");
    assert_kind(fetch_url(&local(), &format!("http://user:pw@localhost:{p}/ok")).await, "guard");
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn scheme_refused() {
    let server = standard_server().await;
    // Default schemes: https only.
    let e = assert_kind(fetch_url(&settings(&["localhost"], &["https"], true), &server.url("/ok")).await, "guard");
    assert!(e.to_string().contains("scheme"), "{e}");
    for url in ["ftp://localhost/ok", "file:///etc/passwd", "gopher://localhost/"] {
        assert_kind(fetch_url(&local(), url).await, "guard");
    }
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn redirects_are_checked_on_every_hop() {
    let target = standard_server().await;
    let tp = target.port;
    let server = serve(move |path, port| {
        Reply::Redirect(match path {
            "/to-other-host" => format!("http://other.test:{tp}/ok"),
            "/to-private-literal" => "http://10.0.0.1/ok".to_string(),
            "/to-metadata" => "http://169.254.169.254/latest/meta-data/".to_string(),
            "/to-loopback-literal" => format!("http://127.0.0.1:{tp}/ok"),
            "/to-https" => format!("https://localhost:{port}/ok"),
            _ => format!("http://localhost:{port}/loop"),
        })
    })
    .await;
    for (path, needle) in [
        ("/to-other-host", "allow_hosts"),
        ("/to-private-literal", "allow_hosts"),
        ("/to-metadata", "allow_hosts"),
        ("/to-loopback-literal", "allow_hosts"),
        ("/to-https", "scheme"),
        ("/loop", "too many redirects"),
    ] {
        let e = assert_kind(fetch_url(&local(), &server.url(path)).await, "guard");
        assert!(e.to_string().contains(needle), "{path}: {e}");
        if path != "/loop" {
            let from = format!("redirect 1 from {}", server.url(path));
            assert!(e.to_string().contains(&from), "{path}: {e}");
        }
    }
    // One request per refused chain, and 1 + max_redirects for the loop.
    assert_eq!(server.connections(), 5 + 4);
    assert_eq!(target.connections(), 0, "no refused hop was connected to");
}

#[tokio::test]
async fn redirect_to_allowlisted_literal_is_followed() {
    // The hop check lets through what it should: an allowlisted literal, private addresses on.
    let target = standard_server().await;
    let tp = target.port;
    let server = serve(move |_, _| Reply::Redirect(format!("http://127.0.0.1:{tp}/ok"))).await;
    let s = settings(&["localhost", "127.0.0.1"], &["http"], true);
    assert_eq!(fetch_url(&s, &server.url("/")).await.unwrap(), body(500));
    assert_eq!(target.connections(), 1);
}

// ---------------------------------------------------------------- URL: time and size

#[tokio::test]
async fn stalled_headers_time_out() {
    let server = serve(|_, _| Reply::Stall).await;
    let start = Instant::now();
    assert_kind(fetch_url(&local(), &server.url("/slow")).await, "timeout");
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(TOTAL_MS - 50) && took < Duration::from_millis(TOTAL_MS + 1000), "{took:?}");
}

#[tokio::test]
async fn trickling_body_times_out() {
    let server = serve(|_, _| Reply::Trickle { len: 500, interval: Duration::from_millis(20) }).await;
    let start = Instant::now();
    assert_kind(fetch_url(&local(), &server.url("/trickle")).await, "timeout");
    assert!(start.elapsed() < Duration::from_millis(TOTAL_MS + 1000), "{:?}", start.elapsed());
}

#[tokio::test]
async fn slow_redirect_chain_shares_one_deadline() {
    // Each hop answers in 40% of the deadline: no single hop is slow, the chain is.
    let server = serve(|path, port| {
        let n: usize = path.trim_start_matches('/').parse().unwrap_or(0);
        let next = Reply::Redirect(format!("http://localhost:{port}/{}", n + 1));
        Reply::Delayed(Duration::from_millis(TOTAL_MS * 2 / 5), Box::new(next))
    })
    .await;
    let mut s = local();
    s.http.max_redirects = 10;
    let start = Instant::now();
    assert_kind(fetch_url(&s, &server.url("/0")).await, "timeout");
    assert!(start.elapsed() < Duration::from_millis(TOTAL_MS + 1000), "{:?}", start.elapsed());
}

#[tokio::test]
async fn oversized_responses_refused() {
    let server = serve(|path, _| match path {
        "/declared" => Reply::Full(200, vec![], body(MAX + 1)),
        // Refused from the header alone: waiting for this body would run into the deadline.
        "/declared-slow" => Reply::Trickle { len: MAX + 1, interval: Duration::from_secs(1) },
        "/close" => Reply::UntilClose(body(50 * MAX)),
        _ => Reply::Chunked(body(MAX + 1)),
    })
    .await;
    for path in ["/declared", "/declared-slow", "/close", "/chunked"] {
        let e = assert_kind(fetch_url(&local(), &server.url(path)).await, "too_large");
        assert!(e.to_string().contains(&MAX.to_string()), "{e}");
    }
}

#[tokio::test]
async fn http_errors_and_refused_connections_are_fetch_errors() {
    let server = standard_server().await;
    let e = assert_kind(fetch_url(&local(), &server.url("/missing?token=SECRET#frag")).await, "fetch");
    assert!(e.to_string().contains("404"), "{e}");
    assert!(!e.to_string().contains("SECRET"), "query string leaked: {e}");
    // A port nobody listens on.
    let closed: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let e =
        assert_kind(fetch_url(&local(), &format!("http://localhost:{}/x?sig=SECRET", closed.port())).await, "fetch");
    assert!(!e.to_string().contains("SECRET"), "query string leaked: {e}");
}

#[tokio::test]
async fn connect_timeout_fires_before_the_deadline() {
    // A listener that never accepts, with its accept queue filled: the kernel then drops
    // further SYNs, so the next connect hangs until the client gives up.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(("127.0.0.1", port))).await
        {
            fillers.push(s);
        }
    }
    let mut s = local();
    s.http.connect_timeout_ms = 200;
    s.http.total_timeout_ms = 5000;
    let start = Instant::now();
    let e = assert_kind(fetch_url(&s, &format!("http://localhost:{port}/ok")).await, "timeout");
    assert!(e.to_string().contains("connect_timeout_ms"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    drop(listener);
}
