//! Text from outside — an archive's entry names, a sidecar's fields, a tool's output — made safe
//! to print: control characters escaped and the length capped, so whoever wrote the bucket can
//! neither rewrite the operator's terminal nor fill the journal.

use std::fmt::Write as _;

/// Most characters of one untrusted value that a message shows.
pub const MAX_SHOWN_CHARS: usize = 200;

/// Most bytes of one whole message that reach a terminal, a log line or the journal.
pub const MAX_MESSAGE_BYTES: usize = 16 << 10;

/// Characters that change how the rest of a line is displayed without being control
/// characters themselves: bidirectional overrides and isolates ("Trojan Source").
fn is_reordering(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Whether `c` would be interpreted rather than shown by a terminal.
pub fn is_unprintable(c: char) -> bool {
    c.is_control() || is_reordering(c)
}

fn escape_into(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

/// One untrusted value as a message shows it: every control character escaped (`\n`,
/// `\u{1b}`), and cut to [`MAX_SHOWN_CHARS`] characters with a note of how long it was.
pub fn shown(s: &str) -> String {
    shown_of(s, s.len())
}

/// [`shown`] of `s`, which is the start of a value of `total` bytes.
fn shown_of(s: &str, total: usize) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_SHOWN_CHARS + 32));
    for (i, c) in s.chars().enumerate() {
        if i == MAX_SHOWN_CHARS {
            let _ = write!(out, "…({total} bytes in all)");
            break;
        }
        if is_unprintable(c) {
            escape_into(&mut out, c);
        } else {
            out.push(c);
        }
    }
    out
}

/// [`shown`] for bytes that may not be UTF-8 (invalid sequences become U+FFFD).
pub fn shown_bytes(b: &[u8]) -> String {
    // Enough bytes for the characters shown, whatever their width: never the whole value.
    let cut = &b[..b.len().min(MAX_SHOWN_CHARS * 4 + 4)];
    shown_of(&String::from_utf8_lossy(cut), b.len())
}

/// A whole message (possibly several lines) for a terminal or a log: control characters other
/// than newlines and tabs escaped, and cut to [`MAX_MESSAGE_BYTES`]. The last line of defence
/// for text that reached a message without going through [`shown`].
pub fn message(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_MESSAGE_BYTES + 64));
    for c in s.chars() {
        if out.len() >= MAX_MESSAGE_BYTES {
            let _ = write!(out, "…(message cut: {} bytes in all)", s.len());
            break;
        }
        if c != '\n' && c != '\t' && is_unprintable(c) {
            escape_into(&mut out, c);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_plain_text_kept() {
        assert_eq!(shown("binarycrate/app.py"), "binarycrate/app.py");
        assert_eq!(shown("café/naïve"), "café/naïve");
        assert_eq!(
            shown("x\n\u{1b}[2K\u{1b}[1ABuild000034 is live"),
            "x\\n\\u{1b}[2K\\u{1b}[1ABuild000034 is live"
        );
        assert_eq!(shown("a\u{202e}b\u{7f}\u{9b}"), "a\\u{202e}b\\u{7f}\\u{9b}");
        assert_eq!(shown_bytes(b"bad\xffname\x1b"), "bad\u{fffd}name\\u{1b}");
    }

    #[test]
    fn long_values_are_cut_saying_how_long_they_were() {
        let long = "a".repeat(16 << 20);
        let s = shown(&long);
        assert!(s.len() < MAX_SHOWN_CHARS + 40, "{}", s.len());
        assert!(s.ends_with(&format!("({} bytes in all)", 16 << 20)), "{s}");
        let b = shown_bytes(long.as_bytes());
        assert!(b.len() < MAX_SHOWN_CHARS + 40, "{}", b.len());
        assert!(b.ends_with(&format!("({} bytes in all)", 16 << 20)), "{b}");
    }

    #[test]
    fn messages_keep_their_lines_but_lose_escapes() {
        assert_eq!(
            message("line one\n\tline two\u{1b}[1A"),
            "line one\n\tline two\\u{1b}[1A"
        );
        let huge = message(&"x".repeat(1 << 20));
        assert!(huge.len() < MAX_MESSAGE_BYTES + 64);
        assert!(huge.contains("message cut"));
    }
}
