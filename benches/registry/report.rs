//! The table the harness prints: each figure for Portcullis, the reference
//! it is compared with, their ratio, and the target the ratio must meet.

use std::fmt::Write;

/// Whether more or less is better for a figure.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

#[derive(Clone)]
pub struct Row {
    /// e.g. "blob push, single request"
    pub figure: String,
    /// e.g. "MB/s", "req/s", "ms", "MiB", "s"
    pub unit: &'static str,
    pub value: f64,
    /// The reference's name and figure, e.g. ("distribution", 410.0).
    pub reference: Option<(String, f64)>,
    pub better: Better,
    /// The ratio the figure must reach against the reference (value /
    /// reference when higher is better, reference / value when lower is),
    /// or for a figure without reference, the bound itself.
    pub target: Option<f64>,
    /// What bounds the figure, said in the closing note and the README.
    pub note: &'static str,
    /// The ratio measured pair by pair (the median of alternating runs'
    /// ratios), which stands for the ratio of the two medians shown.
    pub paired: Option<f64>,
}

impl Row {
    pub fn new(figure: impl Into<String>, unit: &'static str, value: f64, better: Better) -> Self {
        Row {
            figure: figure.into(),
            unit,
            value,
            reference: None,
            better,
            target: None,
            note: "",
            paired: None,
        }
    }

    pub fn against(mut self, name: impl Into<String>, value: f64) -> Self {
        self.reference = Some((name.into(), value));
        self
    }

    pub fn target(mut self, target: f64) -> Self {
        self.target = Some(target);
        self
    }

    pub fn paired_ratio(mut self, ratio: f64) -> Self {
        self.paired = Some(ratio);
        self
    }

    pub fn note(mut self, note: &'static str) -> Self {
        self.note = note;
        self
    }

    /// How many times better than the reference (>1 is better).
    pub fn ratio(&self) -> Option<f64> {
        let (_, reference) = self.reference.as_ref()?;
        if self.paired.is_some() {
            return self.paired;
        }
        if *reference == 0.0 || self.value == 0.0 {
            return None;
        }
        Some(match self.better {
            Better::Higher => self.value / reference,
            Better::Lower => reference / self.value,
        })
    }

    /// Whether the target is met (`None` when there is no target).
    pub fn met(&self) -> Option<bool> {
        let target = self.target?;
        Some(match (self.ratio(), self.better) {
            (Some(ratio), _) => ratio >= target,
            (None, Better::Higher) => self.value >= target,
            (None, Better::Lower) => self.value <= target,
        })
    }
}

fn number(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A Markdown table (pasted as is into the README's Performance section).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str("| figure | Portcullis | reference | ratio | target | met |\n");
    out.push_str("| --- | ---: | ---: | ---: | ---: | :---: |\n");
    for row in rows {
        let reference = match &row.reference {
            Some((name, v)) => format!("{} {} ({name})", number(*v), row.unit),
            None => "–".to_owned(),
        };
        let ratio = row.ratio().map_or("–".to_owned(), |r| format!("{r:.2}×"));
        let target = match (row.target, &row.reference) {
            (Some(t), Some(_)) => format!("≥ {t:.2}×"),
            (Some(t), None) if row.better == Better::Lower => {
                format!("≤ {} {}", number(t), row.unit)
            }
            (Some(t), None) => format!("≥ {} {}", number(t), row.unit),
            (None, _) => "–".to_owned(),
        };
        let met = match row.met() {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        let _ = writeln!(
            out,
            "| {} | {} {} | {reference} | {ratio} | {target} | {met} |",
            row.figure,
            number(row.value),
            row.unit
        );
    }
    out
}

/// What bounds each figure, one line each, for figures that say.
pub fn notes(rows: &[Row]) -> String {
    let mut out = String::new();
    for row in rows.iter().filter(|r| !r.note.is_empty()) {
        let _ = writeln!(out, "- {}: {}", row.figure, row.note);
    }
    out
}
