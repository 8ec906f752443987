//! Sizes as people write them: `4m`, `64k`, `2GiB` (powers of 1024), and back.

/// Why a text is not a size; both variants carry the text as written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Not a number with an optional k/m/g/t suffix.
    #[error("`{text}` is not a size (examples: 4096, 64k, 1m, 2g)")]
    NotASize { text: String },
    /// More than `u64::MAX` bytes.
    #[error("`{text}` is too large")]
    TooLarge { text: String },
}

/// Parses a size with an optional k/m/g/t suffix (powers of 1024; `b` or `ib` after it are
/// ignored): `4m` = 4194304 bytes. Errors: [`SizeError`].
pub fn parse_size(s: &str) -> std::result::Result<u64, SizeError> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix("ib").or_else(|| t.strip_suffix('b')).unwrap_or(&t);
    let (num, shift) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 10),
        Some('m') => (&t[..t.len() - 1], 20),
        Some('g') => (&t[..t.len() - 1], 30),
        Some('t') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = num.trim().parse().map_err(|_| SizeError::NotASize { text: s.to_string() })?;
    n.checked_mul(1u64 << shift).ok_or_else(|| SizeError::TooLarge { text: s.to_string() })
}

/// `1536` -> `1.5 KiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("lots"), Err(SizeError::NotASize { text: "lots".into() }));
        assert_eq!(parse_size("99999999999t"), Err(SizeError::TooLarge { text: "99999999999t".into() }));
        assert_eq!(human(1536), "1.5 KiB");
    }
}
