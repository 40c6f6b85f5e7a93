//! Plain-text tables: numeric columns right-aligned, everything else left-aligned;
//! and [`escape`], which every table cell and every other printed piece of
//! operator- or client-supplied text goes through.

use std::{borrow::Cow, fmt::Write as _};

/// Prints `rows` under `header`, each column as wide as its widest cell. Cells
/// are [`escape`]d.
pub fn print(header: &[&str], rows: &[Vec<String>]) {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| escape(cell).into_owned()).collect())
        .collect();
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    let mut numeric = vec![true; columns];
    for row in &rows {
        for (column, cell) in row.iter().enumerate().take(columns) {
            widths[column] = widths[column].max(cell.len());
            numeric[column] &= cell == "-" || cell.chars().all(|c| c.is_ascii_digit());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let text: Vec<String> = cells
            .enumerate()
            .map(|(column, cell)| {
                let width = widths[column];
                if numeric[column] {
                    format!("{cell:>width$}")
                } else {
                    format!("{cell:<width$}")
                }
            })
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(&mut header.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
}

/// `text` safe to print on a terminal: control characters (C0, DEL, C1) and the
/// invisible formatting characters that reorder or hide text (bidirectional
/// overrides and isolates, zero-width marks) are shown as escapes (`\x1b`, `\n`,
/// `\u{202e}`), and a backslash as `\\`, so the output cannot move the cursor,
/// recolour the screen or pass one text off as another. A reason, a token id or a
/// request's route comes from whoever typed or sent it.
pub fn escape(text: &str) -> Cow<'_, str> {
    escape_with(text, false)
}

/// [`escape`], keeping line breaks: for messages of several lines (an error that
/// lists every problem of a config file) that quote what someone typed.
pub fn escape_lines(text: &str) -> Cow<'_, str> {
    escape_with(text, true)
}

fn escape_with(text: &str, keep_newlines: bool) -> Cow<'_, str> {
    let needs = |c: char| needs_escape(c) && !(keep_newlines && c == '\n');
    if !text.chars().any(needs) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if !needs(c) => escaped.push(c),
            '\\' => escaped.push_str("\\\\"),
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            c if u32::from(c) < 0x80 => {
                let _ = write!(escaped, "\\x{:02x}", u32::from(c));
            }
            c => {
                let _ = write!(escaped, "\\u{{{:x}}}", u32::from(c));
            }
        }
    }
    Cow::Owned(escaped)
}

fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::{escape, escape_lines};

    #[test]
    fn terminal_controls_are_shown_not_obeyed() {
        assert_eq!(escape("scanner"), "scanner");
        assert_eq!(
            escape("\u{1b}[2J\u{1b}]0;pwned\u{7}ok\r\n"),
            "\\x1b[2J\\x1b]0;pwned\\x07ok\\r\\n"
        );
        assert_eq!(escape("a\u{9b}31mb\u{7f}"), "a\\u{9b}31mb\\x7f");
        assert_eq!(escape("evil\u{202e}gnp.exe"), "evil\\u{202e}gnp.exe");
        assert_eq!(
            escape("C:\\x1b"),
            "C:\\\\x1b",
            "a literal backslash is not an escape"
        );
        assert_eq!(escape("café ☕"), "café ☕");
        assert_eq!(escape_lines("a\n\u{1b}b"), "a\n\\x1bb");
    }
}
