//! Files a user hands payctl: read whole (or standard input for `-`),
//! with a UTF-8 byte-order mark stripped, as editors on Windows write one.

use std::io::Read as _;
use std::path::Path;

use anyhow::Context as _;

/// The UTF-8 byte-order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Reads a file's bytes, or all of standard input when `path` is `-`.
pub fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut bytes)
            .context("reading standard input")?;
        return Ok(bytes);
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// `bytes` without a leading UTF-8 byte-order mark.
pub fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(BOM).unwrap_or(bytes)
}

/// `bytes` as UTF-8 text without a leading byte-order mark; `name` says
/// which input is not UTF-8.
pub fn text<'a>(bytes: &'a [u8], name: &Path) -> anyhow::Result<&'a str> {
    std::str::from_utf8(strip_bom(bytes))
        .with_context(|| format!("reading {}: not UTF-8", display(name)))
}

/// How error messages name an input: `standard input` for `-`.
pub fn display(path: &Path) -> String {
    if path == Path::new("-") {
        "standard input".into()
    } else {
        path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_one_byte_order_mark() {
        assert_eq!(strip_bom(b"\xEF\xBB\xBFfrom"), b"from");
        assert_eq!(strip_bom(b"from"), b"from");
        assert_eq!(strip_bom(b"\xEF\xBB"), b"\xEF\xBB");
        assert_eq!(text(b"\xEF\xBB\xBF{}", Path::new("-")).unwrap(), "{}");
        let err = text(b"\xff", Path::new("-")).unwrap_err();
        assert!(format!("{err:#}").contains("standard input: not UTF-8"));
    }
}
