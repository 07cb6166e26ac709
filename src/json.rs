//! Writing JSON text by hand where serde's machinery costs more than the text: the review's
//! answer and its patch are written straight into one buffer.

/// Word-at-a-time tests over eight bytes (SWAR): whether any byte is below `n` (for `n` up to
/// 0x80), or equal to `b`.
const LOW: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte below `n`; the lowest set bit is exact (higher ones may be set by
/// a borrow from a byte below).
fn below(word: u64, n: u8) -> u64 {
    word.wrapping_sub(LOW * u64::from(n)) & !word & HIGH
}

fn equal(word: u64, b: u8) -> u64 {
    below(word ^ (LOW * u64::from(b)), 1)
}

/// How many bytes from the start of the word come before the first one `mask` marks.
fn first(mask: u64) -> usize {
    (mask.trailing_zeros() / 8) as usize
}

fn word(bytes: &[u8], at: usize) -> Option<u64> {
    let chunk: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(chunk))
}

/// Writes `s` as a JSON string, as serde_json writes it, in one pass straight into the buffer:
/// eight bytes at a time while none needs an escape (serde_json goes byte by byte, through
/// `io::Write`).
pub fn string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(w) = word(bytes, i) {
            let special = below(w, 0x20) | equal(w, b'"') | equal(w, b'\\');
            if special == 0 {
                i += 8;
                continue;
            }
            i += first(special);
        }
        let b = bytes[i];
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => &[],
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            let hex = [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]];
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', hex[0], hex[1]]);
        } else {
            out.extend_from_slice(escape);
        }
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Whether `bytes` (UTF-8) hold a control character: C0, DEL, or C1 (U+0080..U+009F, encoded
/// 0xC2 0x80..0x9F). Eight bytes at a time where none can be one.
pub fn has_control(bytes: &[u8]) -> bool {
    let mut i = 0;
    while i < bytes.len() {
        if let Some(w) = word(bytes, i) {
            let candidate = below(w, 0x20) | equal(w, 0x7f) | equal(w, 0xc2);
            if candidate == 0 {
                i += 8;
                continue;
            }
            i += first(candidate);
        }
        let b = bytes[i];
        if b < 0x20
            || b == 0x7f
            || (b == 0xc2 && bytes.get(i + 1).is_some_and(|n| (0x80..=0x9f).contains(n)))
        {
            return true;
        }
        i += 1;
    }
    false
}

/// Writes `pairs` as a JSON object of strings: `{"a":"b",...}`.
pub fn string_map<'a>(out: &mut Vec<u8>, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) {
    out.push(b'{');
    for (i, (key, value)) in pairs.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, key);
        out.push(b':');
        string(out, value);
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_found_wherever_they_are() {
        assert!(!has_control(
            "plain text that is longer than eight bytes é ü".as_bytes()
        ));
        for control in ["\n", "\u{0}", "\u{7f}", "\u{85}", "\u{9f}"] {
            for at in 0..20 {
                let text = format!("{}{control}{}", "a".repeat(at), "b".repeat(20 - at));
                assert!(has_control(text.as_bytes()), "{text:?}");
            }
        }
        // 0xC2 starts other characters too (U+00A0..U+00BF).
        assert!(!has_control("\u{a0}\u{bf}".as_bytes()));
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        for at in 0..20 {
            let padded = format!("{}\"{}", "x".repeat(at), "y".repeat(20 - at));
            let mut out = Vec::new();
            string(&mut out, &padded);
            assert_eq!(out, serde_json::to_vec(&padded).unwrap(), "{padded:?}");
        }
        for s in [
            "plain",
            "a \"quote\" and \\",
            "tab\tnew\nline\r\u{1}\u{1f}\u{7f}\u{8}\u{c}",
            "é ü \u{2028}",
            "",
        ] {
            let mut out = Vec::new();
            string(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
        let mut out = Vec::new();
        string_map(&mut out, [("a", "1"), ("b\"", "2")]);
        assert_eq!(out, br#"{"a":"1","b\"":"2"}"#);
    }
}
