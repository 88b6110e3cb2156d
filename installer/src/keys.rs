//! minisign public keys as `installer.toml` names them: the `RW…` line of a `.pub` file, or the
//! file itself; parsed into the key and its id (what messages and signatures name).

use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

/// minisign's key id notation: the 8 id bytes as a little-endian number in 16 hex digits.
pub fn key_id_of(keynum: &[u8]) -> String {
    keynum.iter().rev().map(|b| format!("{b:02X}")).collect()
}

/// Parses the base64 line of a minisign public key; returns its key id and the key.
pub fn parse_public_key(line: &str) -> Result<(String, minisign_verify::PublicKey), String> {
    let line = line.trim();
    let bad = || {
        format!(
            "`{}` is not a minisign public key: use the `RW…` line that `builder keygen` printed (the second line of its `.pub` file)",
            line.escape_debug()
        )
    };
    let raw = BASE64.decode(line).map_err(|_| bad())?;
    if raw.len() != 42 || &raw[0..2] != b"Ed" {
        return Err(bad());
    }
    let key = minisign_verify::PublicKey::from_base64(line).map_err(|_| bad())?;
    Ok((key_id_of(&raw[2..10]), key))
}

/// Reads a minisign `.pub` file: an `untrusted comment:` line, then the key.
pub fn read_public_key_file(path: &Path) -> Result<(String, minisign_verify::PublicKey), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the public key file `{}`: {e}", path.display()))?;
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with("untrusted comment:"))
        .unwrap_or_default();
    parse_public_key(line).map_err(|e| format!("`{}`: {e}", path.display()))
}
