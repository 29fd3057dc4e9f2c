//! Hash text: validating a hash for its signal and decoding hex, the one set of rules for bank
//! files, imports, topic records, withdrawals and retro (kept apart from the loaders, which all
//! use it, so that no two `bank` modules import each other).

use super::video::VideoEntry;
use super::{ParsedHash, Signal};
use crate::hash::pdq::PdqHash;

/// Validates a hash for its signal and returns it as lowercase hex; a vPDQ signal string as its
/// canonical form (see `video::canonical_signal_string`). Errors describe the problem, never the
/// value.
pub fn normalize_hash(signal: Signal, text: &str) -> Result<String, String> {
    if signal == Signal::Vpdq && text.trim_start().starts_with('[') {
        return VideoEntry::parse(text).map(|video| super::video::canonical_signal_string(&video.frames));
    }
    parse_hash(signal, text).map(|h| h.to_hex())
}

/// Validates a hash for its signal (hex in either case). Errors describe the problem, never
/// the value.
pub fn parse_hash(signal: Signal, text: &str) -> Result<ParsedHash, String> {
    let text = text.trim().as_bytes();
    let bad = || {
        let len = if signal == Signal::Md5 { 32 } else { 64 };
        format!("{} hash must be {len} hex characters", signal.as_str())
    };
    Ok(match signal {
        // A signal string (files, imports) or its digest (record keys, withdrawals).
        Signal::Vpdq if text.first() == Some(&b'[') => {
            ParsedHash::Vpdq(VideoEntry::parse(std::str::from_utf8(text).map_err(|_| bad())?)?.digest)
        }
        Signal::Vpdq => ParsedHash::Vpdq(decode_hex(text).ok_or_else(|| "vpdq hash must be a signal string or its 64-hex digest".to_string())?),
        Signal::Md5 => ParsedHash::Md5(decode_hex(text).ok_or_else(bad)?),
        Signal::Sha256 => ParsedHash::Sha256(decode_hex(text).ok_or_else(bad)?),
        Signal::Pdq => {
            let h = PdqHash(decode_hex(text).ok_or_else(bad)?);
            // An all-zero PDQ hash is what tiny or degenerate images give; banking it would match noise.
            if h.is_zero() {
                return Err("pdq hash is all zeros (degenerate image), refused".into());
            }
            ParsedHash::Pdq(h)
        }
    })
}

/// Hex (either case) of exactly `2 * N` characters. Start-up decodes millions of these: a table
/// lookup per character, since branching on random digits mispredicts half the time.
pub(crate) fn decode_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    const INVALID: u8 = 0xff;
    const TABLE: [u8; 256] = {
        let mut t = [INVALID; 256];
        let mut c = 0;
        while c < 256 {
            t[c] = match c as u8 {
                b @ b'0'..=b'9' => b - b'0',
                b @ b'a'..=b'f' => b - b'a' + 10,
                b @ b'A'..=b'F' => b - b'A' + 10,
                _ => INVALID,
            };
            c += 1;
        }
        t
    };
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    let mut invalid = 0u8;
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let (high, low) = (TABLE[pair[0] as usize], TABLE[pair[1] as usize]);
        invalid |= (high | low) & 0xf0;
        *o = high << 4 | (low & 0x0f);
    }
    (invalid == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_decoding_agrees_with_the_hex_crate_on_every_character() {
        for c in 0..=255u8 {
            let text = [b'a', c, b'F', b'0'];
            assert_eq!(decode_hex::<2>(&text), hex::decode(text).ok().map(|v| [v[0], v[1]]), "character {c}");
        }
        assert_eq!(decode_hex::<2>(b"abc"), None);
        assert_eq!(decode_hex::<2>(b"abcdef"), None);
    }
}
