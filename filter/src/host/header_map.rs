//! The proxy-wasm ABI's header-map encoding: the pair count, then each pair's
//! key and value lengths, then each key and value NUL-terminated; all u32 LE.
//!
//! Decoding is ours rather than the SDK's because the SDK unwraps UTF-8, and
//! proxies pass obs-text bytes (0x80-0xff) through in header values: one such
//! header would trap the VM. Here odd bytes become U+FFFD and a short buffer
//! ends the list; nothing panics.

/// Encodes `pairs` for the ABI.
pub fn encode(pairs: &[(&str, &str)]) -> Vec<u8> {
    let len32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let mut out = Vec::with_capacity(4 + pairs.iter().map(|(k, v)| 10 + k.len() + v.len()).sum::<usize>());
    out.extend_from_slice(&len32(pairs.len()));
    for (k, v) in pairs {
        out.extend_from_slice(&len32(k.len()));
        out.extend_from_slice(&len32(v.len()));
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Decodes an ABI header map, lossily: invalid UTF-8 becomes U+FFFD, and
/// pairs past the end of a truncated buffer are dropped.
pub fn decode(bytes: &[u8]) -> Vec<(String, String)> {
    let u32_at = |at: usize| -> Option<usize> {
        let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(b)).ok()
    };
    let Some(count) = u32_at(0) else {
        return Vec::new();
    };
    let Some(mut p) = count.checked_mul(8).and_then(|n| n.checked_add(4)) else {
        return Vec::new();
    };
    let mut take = |len: usize| -> Option<String> {
        let s = String::from_utf8_lossy(bytes.get(p..p.checked_add(len)?)?).into_owned();
        p = p.checked_add(len)?.checked_add(1)?;
        Some(s)
    };
    let mut pairs = Vec::new();
    for n in 0..count {
        let at = 4 + n * 8;
        let pair = (|| Some((take(u32_at(at)?)?, take(u32_at(at + 4)?)?)))();
        match pair {
            Some(pair) => pairs.push(pair),
            None => break,
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let pairs = [(":status", "200"), ("cache-control", "max-age=60"), ("x-empty", "")];
        let decoded = decode(&encode(&pairs));
        let expected: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(decoded, expected);
        assert!(decode(&encode(&[])).is_empty());
        assert!(decode(&[]).is_empty());
    }

    #[test]
    fn odd_bytes_become_replacement_characters() {
        let mut raw = encode(&[("x-odd", "ab")]);
        let at = raw.len() - 3; // the value's first byte
        raw[at] = 0xff;
        assert_eq!(decode(&raw), vec![("x-odd".to_string(), "\u{fffd}b".to_string())]);
    }

    #[test]
    fn truncated_or_lying_buffers_do_not_panic() {
        let raw = encode(&[("a", "1"), ("b", "2")]);
        for end in 0..raw.len() {
            let pairs = decode(&raw[..end]);
            assert!(pairs.len() <= 2);
        }
        // A count far beyond the buffer.
        let mut lying = raw.clone();
        lying[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&lying).len() <= 2);
    }
}
