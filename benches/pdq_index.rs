//! PDQ index figures: inserts/s, lookup latency at threshold 31 (single thread), removes/s,
//! resident memory, and a brute-force scan over the same hashes for comparison.
//!
//! `cargo bench --bench pdq_index` runs 1M and 10M entries, each in its own process so that
//! the memory figures are the index's. Entries are uniformly random 256-bit hashes (seeded), plus
//! 10 planted neighbours at random distances 1..=31 around each of 500 of the 1000 queries.

use std::time::Instant;

use perisai::bank::pdq_index::PdqIndex;
use perisai::hash::pdq::PdqHash;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const QUERIES: usize = 1000;
const PLANTED_QUERIES: usize = 500;
const PLANTS_PER_QUERY: usize = 10;
const THRESHOLD: u32 = 31;

fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn random_hash(rng: &mut StdRng) -> PdqHash {
    PdqHash(rng.gen())
}

fn near(rng: &mut StdRng, h: &PdqHash, d: u32) -> PdqHash {
    let mut b = h.0;
    let mut flipped = 0;
    while flipped < d {
        let k = rng.gen_range(0..256usize);
        let mask = 1u8 << (k % 8);
        if (b[k / 8] ^ h.0[k / 8]) & mask == 0 {
            b[k / 8] ^= mask;
            flipped += 1;
        }
    }
    PdqHash(b)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Every (position, distance) within the threshold, by a linear scan; with the POPCNT
/// instruction where the CPU has it, as the index uses it (a fair baseline).
fn brute_force(all: &[[u64; 4]], w: &[u64; 4]) -> Vec<(u32, u32)> {
    #[inline(always)]
    fn scan(all: &[[u64; 4]], w: &[u64; 4]) -> Vec<(u32, u32)> {
        let mut ids = Vec::new();
        for (i, h) in all.iter().enumerate() {
            let d = (h[0] ^ w[0]).count_ones() + (h[1] ^ w[1]).count_ones() + (h[2] ^ w[2]).count_ones() + (h[3] ^ w[3]).count_ones();
            if d <= THRESHOLD {
                ids.push((i as u32, d));
            }
        }
        ids
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "popcnt")]
    unsafe fn scan_popcnt(all: &[[u64; 4]], w: &[u64; 4]) -> Vec<(u32, u32)> {
        scan(all, w)
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("popcnt") {
        // SAFETY: the CPU has POPCNT.
        return unsafe { scan_popcnt(all, w) };
    }
    scan(all, w)
}

fn run(n: usize) {
    let mut rng = StdRng::seed_from_u64(0x5eed_0000 + n as u64);
    let queries: Vec<PdqHash> = (0..QUERIES).map(|_| random_hash(&mut rng)).collect();
    let random_count = n - PLANTED_QUERIES * PLANTS_PER_QUERY;
    let rss_before = status_kb("VmRSS:");

    let mut index = PdqIndex::new();
    let t = Instant::now();
    let mut id = 0u32;
    for _ in 0..random_count {
        index.insert(id, random_hash(&mut rng));
        id += 1;
    }
    for q in &queries[..PLANTED_QUERIES] {
        for _ in 0..PLANTS_PER_QUERY {
            let d = rng.gen_range(1..=THRESHOLD);
            index.insert(id, near(&mut rng, q, d));
            id += 1;
        }
    }
    let build = t.elapsed().as_secs_f64();
    let rss_after = status_kb("VmRSS:");
    let hwm = status_kb("VmHWM:");

    // Lookups, single thread, one at a time.
    let mut lat = Vec::with_capacity(QUERIES * 3);
    let mut found = 0usize;
    for _ in 0..3 {
        for q in &queries {
            let t = Instant::now();
            let r = index.query(q, THRESHOLD);
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            found += r.len();
        }
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mean = lat.iter().sum::<f64>() / lat.len() as f64;

    // Brute force over the same hashes: regenerate them into a flat array.
    let mut rng2 = StdRng::seed_from_u64(0x5eed_0000 + n as u64);
    let _: Vec<PdqHash> = (0..QUERIES).map(|_| random_hash(&mut rng2)).collect();
    let mut all: Vec<[u64; 4]> = (0..random_count).map(|_| random_hash(&mut rng2).words()).collect();
    for q in &queries[..PLANTED_QUERIES] {
        for _ in 0..PLANTS_PER_QUERY {
            let d = rng2.gen_range(1..=THRESHOLD);
            all.push(near(&mut rng2, q, d).words());
        }
    }
    let brute_queries = 20;
    let t = Instant::now();
    for (qi, q) in queries[..brute_queries].iter().enumerate() {
        let ids = brute_force(&all, &q.words());
        let mut got = index.query(q, THRESHOLD);
        got.sort_unstable();
        assert_eq!(got, ids, "index disagrees with brute force on query {qi}");
    }
    let brute_ms = t.elapsed().as_secs_f64() * 1e3 / brute_queries as f64;
    drop(all);

    // Removes, then the same number of inserts into the large index.
    let ops = 100_000u32;
    let t = Instant::now();
    for k in 0..ops {
        assert!(index.remove(k * 7 % id));
    }
    let removes = ops as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for k in 0..ops {
        index.insert(k * 7 % id, random_hash(&mut rng));
    }
    let inserts_live = ops as f64 / t.elapsed().as_secs_f64();

    println!(
        "entries {n}: build {build:.1} s ({:.0} inserts/s); inserts into full index {inserts_live:.0}/s; removes {removes:.0}/s",
        n as f64 / build
    );
    println!(
        "  memory: VmRSS +{:.0} MB for the index (VmRSS {:.0} MB, VmHWM {:.0} MB after build), heap estimate {:.0} MB",
        (rss_after - rss_before) as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        hwm as f64 / 1024.0,
        index.heap_bytes() as f64 / 1e6 / 1.048576
    );
    println!(
        "  query r={THRESHOLD}: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms, mean {mean:.3} ms ({} matches over {} queries)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat[lat.len() - 1],
        found,
        lat.len()
    );
    println!("  brute-force scan: {brute_ms:.2} ms/query, {:.0}x the index's mean", brute_ms / mean);
}

fn main() {
    let size = std::env::args().find_map(|a| a.strip_prefix("--size=").and_then(|v| v.parse::<usize>().ok()));
    match size {
        Some(n) => run(n),
        None => {
            let exe = std::env::current_exe().expect("current exe");
            for n in [1_000_000usize, 10_000_000] {
                let status = std::process::Command::new(&exe).arg(format!("--size={n}")).status().expect("spawn");
                assert!(status.success(), "run with {n} entries failed");
            }
        }
    }
}
