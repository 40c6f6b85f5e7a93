//! Plain-text tables: numeric columns right-aligned, everything else left-aligned;
//! and [`escape`], which every table cell and every other printed piece of
//! operator- or client-supplied text goes through.

use std::{
    borrow::Cow,
    fmt::{self, Write as _},
    io::{self, Write as _},
};

/// Prints `rows` under `header` (see [`Table`]).
pub fn print(header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let mut table = Table::new(header);
    for row in rows {
        for column in 0..header.len() {
            table.cell(row.get(column).map_or("", String::as_str));
        }
    }
    table.print()
}

/// A table filled cell by cell, row after row, into one buffer (a list of a million
/// entries is not five million strings), then printed with each column as wide as
/// its widest cell in characters. Cells are [`escape`]d.
pub struct Table<'h> {
    header: &'h [&'h str],
    /// The escaped cells back to back.
    text: String,
    /// Where each cell ends in `text`, and its width.
    cells: Vec<(usize, usize)>,
    widths: Vec<usize>,
    numeric: Vec<bool>,
    scratch: String,
}

impl<'h> Table<'h> {
    pub fn new(header: &'h [&'h str]) -> Self {
        Self {
            header,
            text: String::new(),
            cells: Vec::new(),
            widths: header.iter().map(|h| h.chars().count()).collect(),
            numeric: vec![true; header.len()],
            scratch: String::new(),
        }
    }

    /// Appends the next cell; a row ends after as many cells as the header has.
    pub fn cell(&mut self, value: impl fmt::Display) {
        self.scratch.clear();
        let _ = write!(self.scratch, "{value}");
        let cell = escape(&self.scratch);
        let width = cell.chars().count();
        let column = self.cells.len() % self.header.len().max(1);
        if let Some(widest) = self.widths.get_mut(column) {
            *widest = (*widest).max(width);
        }
        if let Some(numeric) = self.numeric.get_mut(column) {
            *numeric &= cell == "-" || cell.bytes().all(|b| b.is_ascii_digit());
        }
        self.text.push_str(&cell);
        self.cells.push((self.text.len(), width));
    }

    /// Writes the table to stdout, through one buffer.
    pub fn print(&self) -> io::Result<()> {
        let mut out = io::BufWriter::with_capacity(64 << 10, io::stdout().lock());
        self.write_to(&mut out)?;
        out.flush()
    }

    fn write_to(&self, out: &mut impl io::Write) -> io::Result<()> {
        let mut line = String::new();
        let header = self.header.iter().map(|h| (*h, h.chars().count()));
        self.write_row(out, &mut line, header)?;
        let mut start = 0;
        let cells = self.cells.iter().map(|&(end, width)| {
            let cell = &self.text[start..end];
            start = end;
            (cell, width)
        });
        let columns = self.header.len().max(1);
        let mut cells = cells.peekable();
        while cells.peek().is_some() {
            self.write_row(out, &mut line, cells.by_ref().take(columns))?;
        }
        Ok(())
    }

    fn write_row<'c>(
        &self,
        out: &mut impl io::Write,
        line: &mut String,
        cells: impl Iterator<Item = (&'c str, usize)>,
    ) -> io::Result<()> {
        line.clear();
        for (column, (cell, width)) in cells.enumerate() {
            if column > 0 {
                line.push_str("  ");
            }
            let pad = self.widths[column].saturating_sub(width);
            if self.numeric[column] {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        writeln!(out, "{}", line.trim_end())
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
    use super::{Table, escape, escape_lines};

    #[test]
    fn columns_line_up_by_characters_and_numbers_align_right() {
        let mut table = Table::new(&["entry", "hits", "reason"]);
        for cell in [
            "198.18.0.1",
            "7",
            "café",
            "2001:db8::/32",
            "-",
            "a\u{1b}[2Jb",
        ] {
            table.cell(cell);
        }
        let mut out = Vec::new();
        table.write_to(&mut out).expect("writes to memory");
        assert_eq!(
            String::from_utf8(out).expect("UTF-8"),
            "entry          hits  reason\n\
             198.18.0.1        7  café\n\
             2001:db8::/32     -  a\\x1b[2Jb\n"
        );
    }

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
