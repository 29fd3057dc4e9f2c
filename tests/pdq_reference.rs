//! Every row of the reference fixtures (facebook/ThreatExchange `pdq/cpp`, see
//! tests/fixtures/pdq/expected.csv): hash and quality in both conventions, and the 8 dihedral
//! hashes of the full rows, from the decoded fixture images.

use std::collections::HashMap;
use std::path::PathBuf;

use perisai::hash::pdq::{hash, hash_dihedral, Convention, PdqHash};
use perisai::media::decode::{decode, DecodeLimits, Image};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pdq")
}

struct Row {
    file: String,
    convention: Convention,
    hash: PdqHash,
    quality: u8,
    dih: Vec<PdqHash>,
}

fn rows() -> Vec<Row> {
    let mut reader = csv::Reader::from_path(fixtures().join("expected.csv")).expect("expected.csv");
    let mut out = Vec::new();
    for rec in reader.records() {
        let rec = rec.expect("csv record");
        let convention = match &rec[1] {
            "full" => Convention::Full,
            "cli" => Convention::Cli,
            other => panic!("unknown mode {other}"),
        };
        let dih = if rec[4].is_empty() {
            Vec::new()
        } else {
            rec[4].split(';').map(|h| h.parse().expect("dih hash")).collect()
        };
        out.push(Row {
            file: rec[0].to_string(),
            convention,
            hash: rec[2].parse().expect("hash"),
            quality: rec[3].parse().expect("quality"),
            dih,
        });
    }
    out
}

fn load(cache: &mut HashMap<String, Image>, file: &str) -> Image {
    cache
        .entry(file.to_string())
        .or_insert_with(|| {
            let bytes = std::fs::read(fixtures().join("images").join(file)).expect("fixture image");
            decode(&bytes, &DecodeLimits::default()).unwrap_or_else(|e| panic!("{file}: {e}"))
        })
        .clone()
}

#[test]
fn every_fixture_row_matches_the_reference() {
    let rows = rows();
    assert_eq!(rows.len(), 320, "expected.csv rows");
    let mut cache = HashMap::new();
    let mut failures = Vec::new();
    let mut matched = 0;
    for row in &rows {
        let img = load(&mut cache, &row.file);
        let out = hash(&img, row.convention);
        let mut ok = true;
        if out.hash != row.hash || out.quality != row.quality {
            ok = false;
            failures.push(format!(
                "{} {:?}: got {} q{} (distance {}), want {} q{}",
                row.file,
                row.convention,
                out.hash,
                out.quality,
                out.hash.distance(&row.hash),
                row.hash,
                row.quality
            ));
        }
        if row.convention == Convention::Full {
            assert_eq!(row.dih.len(), 8, "{}: dih column", row.file);
            let (dih, quality) = hash_dihedral(&img, Convention::Full);
            if dih.as_slice() != row.dih.as_slice() || quality != row.quality {
                ok = false;
                let bad: Vec<String> = (0..8)
                    .filter(|&i| dih[i] != row.dih[i])
                    .map(|i| format!("#{i} off by {}", dih[i].distance(&row.dih[i])))
                    .collect();
                failures.push(format!("{} dihedral: {} q{} vs q{}", row.file, bad.join(", "), quality, row.quality));
            }
        } else {
            assert!(row.dih.is_empty());
        }
        if ok {
            matched += 1;
        }
    }
    println!("{matched} of {} rows match", rows.len());
    assert!(failures.is_empty(), "{} of {} rows differ:\n{}", rows.len() - matched, rows.len(), failures.join("\n"));
}

#[test]
fn text_form_round_trips_in_the_reference_word_order() {
    for row in rows() {
        let text = row.hash.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<PdqHash>().unwrap(), row.hash);
    }
    assert!("zz".repeat(32).parse::<PdqHash>().is_err());
    assert!("00".parse::<PdqHash>().is_err());
}
