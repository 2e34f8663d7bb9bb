//! The human log format's field writer: untrusted text cannot forge log lines.
//!
//! Values reach the log from clients and operators (a topic config value, a data directory, an
//! admin request path, an error that quotes a request). tracing's default human format writes
//! `%value` fields and the message as they are, so a value holding a newline wrote a forged
//! line of its own. Here every field, the message included, is written with control
//! characters and Unicode line separators escaped (`\n`, `\r`, `\t`, `\u{…}`), so each event is
//! exactly one line. The JSON format quotes strings itself and needs none of this.

use std::fmt;

use tracing::field::Field;
use tracing_subscriber::fmt::format::Writer;

/// Writes one field (`name=value`, or the bare message) with its value escaped.
pub fn write_field(writer: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug) -> fmt::Result {
    let text = format!("{value:?}");
    if field.name() != "message" {
        write!(writer, "{}=", field.name())?;
    }
    write_escaped(writer, &text)
}

/// Writes `text` with every character that could end or rewrite a line escaped.
pub fn write_escaped(out: &mut impl fmt::Write, text: &str) -> fmt::Result {
    for c in text.chars() {
        match c {
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            // Controls include ESC (terminal escape sequences) and the C1 range (NEL).
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                write!(out, "\\u{{{:x}}}", u32::from(c))?;
            }
            c => out.write_char(c)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(text: &str) -> String {
        let mut out = String::new();
        write_escaped(&mut out, text).expect("writing to a String");
        out
    }

    #[test]
    fn line_breaks_and_controls_are_escaped_and_the_rest_kept() {
        assert_eq!(escaped("a\nINFO forged\r\n"), "a\\nINFO forged\\r\\n");
        assert_eq!(escaped("\u{1b}[31mred\t"), "\\u{1b}[31mred\\t");
        assert_eq!(escaped("x\u{85}y\u{2028}z"), "x\\u{85}y\\u{2028}z");
        assert_eq!(
            escaped("plain ünïcode 1.5 \"q\""),
            "plain ünïcode 1.5 \"q\""
        );
    }
}
