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

/// The index of the first byte at or after `i` that a JSON string must escape, or the length:
/// eight bytes at a time while none needs one.
fn next_special(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() {
        if let Some(w) = word(bytes, i) {
            let special = below(w, 0x20) | equal(w, b'"') | equal(w, b'\\');
            if special == 0 {
                i += 8;
                continue;
            }
            // Each mask's lowest bit is exact, so their union's is.
            return i + first(special);
        }
        if matches!(bytes[i], 0x00..=0x1f | b'"' | b'\\') {
            return i;
        }
        i += 1;
    }
    bytes.len()
}

/// How a JSON string writes `b`, a byte [`next_special`] stopped at (as serde_json does).
fn escaped(b: u8, buf: &mut [u8; 6]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match b {
        b'"' => b"\\\"",
        b'\\' => b"\\\\",
        b'\n' => b"\\n",
        b'\r' => b"\\r",
        b'\t' => b"\\t",
        0x08 => b"\\b",
        0x0c => b"\\f",
        _ => {
            *buf = [
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ];
            buf
        }
    }
}

/// Writes `s` as a JSON string, as serde_json writes it, in one pass straight into the buffer
/// (serde_json goes byte by byte, through `io::Write`).
pub fn string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut buf = [0; 6];
    let mut start = 0;
    loop {
        let i = next_special(bytes, start);
        out.extend_from_slice(&bytes[start..i]);
        let Some(&b) = bytes.get(i) else { break };
        out.extend_from_slice(escaped(b, &mut buf));
        start = i + 1;
    }
    out.push(b'"');
}

/// Writes `s` escaped as the inside of a JSON string (no quotes), to a `fmt::Write`: for text
/// written piece by piece, such as a value's `Display`.
pub fn escaped_str(out: &mut (impl std::fmt::Write + ?Sized), s: &str) -> std::fmt::Result {
    let bytes = s.as_bytes();
    let mut buf = [0; 6];
    let mut start = 0;
    loop {
        // `i` is at an ASCII byte or the end, so both slices are on character boundaries.
        let i = next_special(bytes, start);
        out.write_str(&s[start..i])?;
        let Some(&b) = bytes.get(i) else {
            return Ok(());
        };
        let escape = escaped(b, &mut buf);
        out.write_str(std::str::from_utf8(escape).unwrap_or_default())?;
        start = i + 1;
    }
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
            // The same inside, written to a fmt::Write.
            let mut inside = String::new();
            escaped_str(&mut inside, s).unwrap();
            assert_eq!(format!("\"{inside}\"").as_bytes(), out, "{s:?}");
        }
        let mut out = Vec::new();
        string_map(&mut out, [("a", "1"), ("b\"", "2")]);
        assert_eq!(out, br#"{"a":"1","b\"":"2"}"#);
    }
}
