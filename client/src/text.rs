//! Plain-text tables, as the command-line client, `reservoir up` and the
//! load tester print them.

/// `rows` as a table: each column as wide as its widest cell (in
/// characters), columns two spaces apart, every line starting with
/// `indent`, trailing spaces trimmed.
pub fn table(rows: &[Vec<String>], indent: &str) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(indent);
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let rows = [vec!["A".to_string(), "BB".into()], vec!["CCC".into(), "D".into()]];
        assert_eq!(table(&rows, "  "), "  A    BB\n  CCC  D\n");
        assert_eq!(table(&rows, ""), "A    BB\nCCC  D\n");
        let wide = [vec!["é".to_string(), "x".into()], vec!["ab".into(), "y".into()]];
        assert_eq!(table(&wide, ""), "é   x\nab  y\n");
    }
}
