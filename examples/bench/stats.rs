//! Rows of the result table, medians, spreads and percentiles.

use std::fmt::Write as _;

/// How a row's numbers are shown.
#[derive(Clone, Copy, Debug)]
pub enum Unit {
    /// Messages per second, as `151,234`.
    PerSec,
    /// Megabytes (10^6 bytes) per second.
    MBps,
    Nanos,
    Millis,
    Seconds,
    MiB,
    /// Percent of one CPU.
    Cpu,
    /// A plain count, one decimal.
    Count,
}

impl Unit {
    pub fn fmt(self, v: f64) -> String {
        match self {
            Unit::PerSec => thousands(v.round() as u64),
            Unit::MBps => format!("{v:.1}"),
            Unit::Nanos => format!("{v:.0}"),
            Unit::Millis => {
                if v < 10.0 {
                    format!("{v:.2}")
                } else {
                    format!("{v:.1}")
                }
            }
            Unit::Seconds => {
                if v < 10.0 {
                    format!("{v:.2}")
                } else {
                    format!("{v:.1}")
                }
            }
            Unit::MiB => format!("{v:.0}"),
            Unit::Cpu => format!("{v:.0}"),
            Unit::Count => format!("{v:.1}"),
        }
    }
}

/// One line of the table: a metric of devset over the repetitions, and the raw client's when
/// there is one to compare with (the same repetitions, paired).
#[derive(Clone, Debug)]
pub struct Row {
    pub bench: String,
    pub case: String,
    pub metric: String,
    pub unit: Unit,
    pub devset: Vec<f64>,
    pub raw: Option<Vec<f64>>,
    pub note: String,
}

impl Row {
    pub fn new(bench: &str, case: impl Into<String>, metric: &str, unit: Unit) -> Row {
        Row {
            bench: bench.into(),
            case: case.into(),
            metric: metric.into(),
            unit,
            devset: Vec::new(),
            raw: None,
            note: String::new(),
        }
    }
    pub fn values(mut self, v: Vec<f64>) -> Row {
        self.devset = v;
        self
    }
    pub fn raw(mut self, v: Vec<f64>) -> Row {
        self.raw = Some(v);
        self
    }
    pub fn note(mut self, n: impl Into<String>) -> Row {
        self.note = n.into();
        self
    }

    /// devset's median over the raw client's, and the range of the per-repetition ratios.
    pub fn ratio(&self) -> Option<(f64, f64, f64)> {
        let raw = self
            .raw
            .as_ref()
            .filter(|r| !r.is_empty() && !self.devset.is_empty())?;
        let m = median(&self.devset) / median(raw);
        let paired: Vec<f64> = self.devset.iter().zip(raw).map(|(d, r)| d / r).collect();
        let (lo, hi) = min_max(&paired);
        Some((m, lo, hi))
    }

    fn cell(&self, v: &[f64]) -> String {
        if v.is_empty() {
            return "–".into();
        }
        let (lo, hi) = min_max(v);
        if v.len() == 1 {
            self.unit.fmt(v[0])
        } else {
            format!(
                "**{}** ({}–{})",
                self.unit.fmt(median(v)),
                self.unit.fmt(lo),
                self.unit.fmt(hi)
            )
        }
    }
}

/// The rows as one markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| benchmark | case | metric | devset: median (min–max) | raw client: median (min–max) | devset / raw (per-rep range) | reps | notes |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        let raw = r.raw.as_ref().map_or("".into(), |v| r.cell(v));
        let ratio = r.ratio().map_or(String::new(), |(m, lo, hi)| {
            if r.devset.len() > 1 {
                format!("**{m:.2}** ({lo:.2}–{hi:.2})")
            } else {
                format!("{m:.2}")
            }
        });
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {raw} | {ratio} | {} | {} |",
            r.bench,
            r.case,
            r.metric,
            r.cell(&r.devset),
            r.devset.len(),
            r.note
        );
    }
    t
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

pub fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        })
}

/// The `p` quantile (0..=1) of sorted values, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `/proc/loadavg`'s three load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_thousands() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.5), 3.0);
    }
}
