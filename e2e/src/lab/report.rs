//! The lab's summary: one row per experiment with what was expected and what was measured.
//! Pure; `make lab` prints it at the end and exits 0 only when every row is ok.

use std::fmt;

/// One experiment's outcome. `seen` is always a measurement (never a copy of `expected`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub experiment: String,
    pub expected: String,
    pub seen: String,
    pub ok: bool,
}

/// The rows so far, in the order the experiments ran.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub rows: Vec<Row>,
}

impl Summary {
    /// Records a row whose verdict is `seen == expected`.
    pub fn equal(&mut self, experiment: &str, expected: impl fmt::Display, seen: impl fmt::Display) -> bool {
        let (expected, seen) = (expected.to_string(), seen.to_string());
        let ok = expected == seen;
        self.push(experiment, expected, seen, ok)
    }

    /// Records a row with an explicit verdict (e.g. "contains", "at least").
    pub fn check(&mut self, experiment: &str, expected: impl fmt::Display, seen: impl fmt::Display, ok: bool) -> bool {
        self.push(experiment, expected.to_string(), seen.to_string(), ok)
    }

    /// Records an experiment that could not be measured at all (the error is what was seen).
    pub fn failed(&mut self, experiment: &str, expected: impl fmt::Display, error: impl fmt::Display) {
        self.push(experiment, expected.to_string(), format!("error: {error}"), false);
    }

    fn push(&mut self, experiment: &str, expected: String, seen: String, ok: bool) -> bool {
        println!("  {} {experiment}: expected {expected}, seen {seen}", if ok { "ok  " } else { "FAIL" });
        self.rows.push(Row { experiment: experiment.to_string(), expected, seen, ok });
        ok
    }

    pub fn all_ok(&self) -> bool {
        !self.rows.is_empty() && self.rows.iter().all(|r| r.ok)
    }
}

/// Cuts `text` to `width` characters (with an ellipsis) so the table stays readable.
fn cell(text: &str, width: usize) -> String {
    let one_line = text.replace('\n', " ");
    if one_line.chars().count() <= width {
        one_line
    } else {
        let cut: String = one_line.chars().take(width.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 48;
        let width = |pick: fn(&Row) -> &str, title: &str| {
            self.rows.iter().map(|r| pick(r).chars().count().min(MAX)).chain([title.len()]).max().unwrap_or(0)
        };
        let we = width(|r| &r.experiment, "experiment");
        let wx = width(|r| &r.expected, "expected");
        let ws = width(|r| &r.seen, "seen");
        writeln!(f, "{:we$}  {:wx$}  {:ws$}  ok", "experiment", "expected", "seen")?;
        writeln!(f, "{}  {}  {}  --", "-".repeat(we), "-".repeat(wx), "-".repeat(ws))?;
        for r in &self.rows {
            writeln!(
                f,
                "{:we$}  {:wx$}  {:ws$}  {}",
                cell(&r.experiment, MAX),
                cell(&r.expected, MAX),
                cell(&r.seen, MAX),
                if r.ok { "ok" } else { "FAIL" }
            )?;
        }
        let failed = self.rows.iter().filter(|r| !r.ok).count();
        write!(f, "{} experiments, {} failed", self.rows.len(), failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_measurement_and_an_empty_summary_is_not_ok() {
        let mut s = Summary::default();
        assert!(!s.all_ok());
        assert!(s.equal("mtu", 1450, 1450));
        assert!(s.all_ok());
        assert!(!s.equal("route", "via 10.0.1.12 dev eth0", "via 10.244.2.0 dev vxlan.trellis onlink"));
        s.failed("capture", "VXLAN", "tcpdump missing");
        assert!(!s.all_ok());
        let table = s.to_string();
        assert!(table.lines().next().unwrap().starts_with("experiment"));
        assert!(table.contains("FAIL") && table.ends_with("3 experiments, 2 failed"), "{table}");
        assert!(table.contains("error: tcpdump missing"));
    }

    #[test]
    fn long_cells_are_cut() {
        assert_eq!(cell("abcdef", 4), "abc…");
        assert_eq!(cell("a\nb", 10), "a b");
    }
}
