//! Helpers the benches that run `perisai` processes against the local broker share.

use std::path::PathBuf;

/// Ends the bench with a message (exit code 2).
pub fn die(msg: &str) -> ! {
    eprintln!("{} bench: {msg}", env!("CARGO_CRATE_NAME"));
    std::process::exit(2)
}

/// `PERISAI_TEST_BROKERS`, or the broker `scripts/kafka start` runs.
pub fn brokers() -> String {
    std::env::var("PERISAI_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

/// The release `perisai` binary, or `PERISAI_BENCH_BIN`.
pub fn perisai_binary() -> PathBuf {
    std::env::var_os("PERISAI_BENCH_BIN").map_or_else(|| env!("CARGO_BIN_EXE_perisai").into(), Into::into)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// The value after `name` on the command line, or `default`.
pub fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| die(&format!("{name}: cannot parse {v:?}"))))
        .unwrap_or(default)
}

/// A topic or group name no earlier run used.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("bench-{prefix}-{}", nanos % 1_000_000_000)
}
