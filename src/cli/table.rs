//! Plain-text output of the admin commands: aligned tables and human ages.
//!
//! Only formats strings; it never talks to the server or decides what to show.

/// Rows of cells under a header, printed with every column left-aligned to
/// its widest cell and two spaces between columns.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names (printed upper-case as given).
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Rows without a header line, for `name  value` blocks.
    pub fn bare() -> Table {
        Table {
            header: Vec::new(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells print empty, extra cells are kept and widen the table.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as lines, each ending in a newline; no trailing spaces.
    pub fn render(&self) -> String {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain(std::iter::once(self.header.len()))
            .max()
            .unwrap_or(0);
        let mut widths = vec![0usize; columns];
        let header = (!self.header.is_empty()).then_some(&self.header);
        for line in header.into_iter().chain(&self.rows) {
            for (i, cell) in line.iter().enumerate() {
                widths[i] = widths[i].max(width(cell));
            }
        }
        let mut out = String::new();
        for line in header.into_iter().chain(&self.rows) {
            let mut text = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = line.get(i).map_or("", String::as_str);
                if i > 0 {
                    text.push_str("  ");
                }
                text.push_str(cell);
                text.extend(std::iter::repeat_n(' ', w - width(cell)));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Display width of a cell: characters, as the cells are ids, times and
/// messages (no wide glyphs or escapes).
fn width(cell: &str) -> usize {
    cell.chars().count()
}

/// A duration in seconds as a short human age: `45s`, `3m12s`, `2h05m`, `3d04h`.
pub fn age(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".into();
    }
    // Whole seconds: an age is for reading at a glance.
    let s = seconds as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let mut t = Table::new(&["ID", "STATUS"]);
        t.row(vec!["order-to-cash/o-42".into(), "active".into()]);
        t.row(vec!["p/k".into(), "completed".into()]);
        assert_eq!(
            t.render(),
            "ID                  STATUS\n\
             order-to-cash/o-42  active\n\
             p/k                 completed\n"
        );
    }

    #[test]
    fn short_rows_leave_no_trailing_spaces() {
        let mut t = Table::new(&["A", "B", "C"]);
        t.row(vec!["x".into()]);
        t.row(vec!["→ é".into(), "yy".into(), "z".into()]);
        assert_eq!(t.render(), "A    B   C\nx\n→ é  yy  z\n");
    }

    #[test]
    fn bare_tables_have_no_header_line() {
        let mut t = Table::bare();
        t.row(vec!["status".into(), "active".into()]);
        t.row(vec!["version".into(), "1".into()]);
        assert_eq!(t.render(), "status   active\nversion  1\n");
    }

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(age(0.4), "0s");
        assert_eq!(age(12.5), "12s");
        assert_eq!(age(192.0), "3m12s");
        assert_eq!(age(3600.0 * 2.0 + 300.0), "2h05m");
        assert_eq!(age(86_400.0 * 3.0 + 4.0 * 3600.0), "3d04h");
        assert_eq!(age(-1.0), "-");
        assert_eq!(age(f64::NAN), "-");
    }
}
