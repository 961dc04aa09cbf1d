//! What the simulator says: filler words, expected answers cut into tokens, deterministic
//! embeddings, and the small encodings they need.

use super::*;

pub(super) fn word(rng: &mut fastrand::Rng) -> &'static str {
    WORDS[rng.usize(..WORDS.len())]
}

/// Cuts text into word tokens, each carrying the whitespace before it, so that the tokens joined
/// give the text back (minus any trailing whitespace): "a  b\nc" → ["a", "  b", "\nc"].
pub(super) fn word_tokens(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    for c in text.chars() {
        if c.is_whitespace() && in_word {
            tokens.push(std::mem::take(&mut current));
            in_word = false;
        }
        in_word |= !c.is_whitespace();
        current.push(c);
    }
    if in_word {
        tokens.push(current);
    }
    tokens
}

/// Decodes `%XX` escapes (other bytes are kept) and reads the result as UTF-8, replacing invalid
/// sequences.
pub(super) fn percent_decode(raw: &[u8]) -> String {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let pair = (raw[i] == b'%').then(|| Some((hex(*raw.get(i + 1)?)?, hex(*raw.get(i + 2)?)?))).flatten();
        match pair {
            Some((hi, lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            None => {
                out.push(raw[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Scales `d` by (1 + ratio * u) with u uniform in [-1, 1); a zero ratio returns `d` untouched so
/// that timing is exact.
pub(super) fn jitter(d: Duration, ratio: f64, rng: &mut fastrand::Rng) -> Duration {
    if ratio <= 0.0 || d.is_zero() {
        return d;
    }
    d.mul_f64(1.0 + ratio * (rng.f64() * 2.0 - 1.0))
}

/// FNV-1a: a stable 64-bit hash (std's hasher is randomly keyed per process).
pub(super) fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// A unit vector derived from an FNV-1a hash of the text, so equal texts get equal embeddings.
pub(super) fn embed(text: &str) -> [f32; EMBEDDING_DIMS] {
    let mut rng = fastrand::Rng::with_seed(fnv1a(text));
    let mut v = [0f32; EMBEDDING_DIMS];
    v.iter_mut().for_each(|x| *x = rng.f32() * 2.0 - 1.0);
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

pub(super) fn base64_encode(raw: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(raw.len().div_ceil(3) * 4);
    for chunk in raw.chunks(3) {
        let mut b = [0u8; 3];
        b[..chunk.len()].copy_from_slice(chunk);
        let n = u32::from_be_bytes([0, b[0], b[1], b[2]]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
        out.push_str(&"=="[chunk.len() - 1..]);
    }
    out
}
