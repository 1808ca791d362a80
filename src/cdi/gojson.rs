//! JSON strings as Go's `encoding/json` writes them, for the texts CDI's
//! controller reads back (the termination message, the image server's
//! `/info`).
//!
//! Std only: `cdi-containerimage-server` compiles this file into its own
//! small binary (`#[path]`), which must not link the library.

/// A JSON string literal as Go's `encoding/json` writes it: besides the
/// mandatory escapes it escapes `<`, `>`, `&`, U+2028 and U+2029, and uses the
/// short forms `\b \f \n \r \t`.
pub(crate) fn go_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_escaping() {
        assert_eq!(
            go_json_string("a\"b\\c\nd<e>&\u{1}\u{2028}\t"),
            r#""a\"b\\c\nd\u003ce\u003e\u0026\u0001\u2028\t""#
        );
        // The output parses back to the same text.
        let s = "x<y> & \"z\"\n\u{7f}é";
        let parsed: String = serde_json::from_str(&go_json_string(s)).expect("valid json");
        assert_eq!(parsed, s);
    }
}
