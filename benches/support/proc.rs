//! What the benches read about processes from /proc.

use std::process::Command;

/// Clock ticks per second (`getconf CLK_TCK`), the unit of the CPU times in /proc stat files.
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
