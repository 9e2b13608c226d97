//! Figures from the project's benchmarks, for the report `scripts/bench` writes.
//!
//! A benchmark prints whatever a human wants to read and, for each headline figure, calls
//! [`record`]. When the environment variable [`SUMMARY_ENV`] names a file, the figure is
//! appended to it as one JSON object per line:
//!
//! ```json
//! {"benchmark":"stamp cost","case":"latencystamp mode=sei","value":1332.0,"unit":"ns/buffer",
//!  "baseline":"identity","baseline_value":646.0,"ratio":2.06,"better":"lower"}
//! ```
//!
//! Without the variable, [`record`] does nothing, so benchmarks run the same by hand.

#![warn(missing_docs)]

use std::io::Write as _;

/// Environment variable naming the JSON-lines file figures are appended to.
pub const SUMMARY_ENV: &str = "HYBRIDLIVE_BENCH_SUMMARY";

/// Which direction of a figure is an improvement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Times, costs, latencies.
    Lower,
    /// Throughput, viewers, utilisation.
    Higher,
}

/// One headline figure of a benchmark, optionally against the baseline measured in the same run.
#[derive(Debug, Clone)]
pub struct Figure<'a> {
    /// The benchmark, e.g. "stamp cost".
    pub benchmark: &'a str,
    /// The case within it, e.g. "latencystamp mode=sei, 100 kB access unit".
    pub case: &'a str,
    /// The measured value.
    pub value: f64,
    /// Its unit, e.g. "ns/buffer", "ms", "s".
    pub unit: &'a str,
    /// The baseline's name and its value in the same unit, measured in the same run.
    pub baseline: Option<(&'a str, f64)>,
    /// Which direction is better.
    pub better: Better,
}

/// Appends `figure` to the summary file named by [`SUMMARY_ENV`], if any. Errors writing it are
/// reported on stderr and otherwise ignored: a benchmark's own output stays the primary record.
pub fn record(figure: &Figure<'_>) {
    let Some(path) = std::env::var_os(SUMMARY_ENV) else {
        return;
    };
    let mut line = serde_json::json!({
        "benchmark": figure.benchmark,
        "case": figure.case,
        "value": figure.value,
        "unit": figure.unit,
        "better": match figure.better {
            Better::Lower => "lower",
            Better::Higher => "higher",
        },
    });
    if let Some((name, value)) = figure.baseline {
        line["baseline"] = name.into();
        line["baseline_value"] = value.into();
        if value != 0.0 {
            line["ratio"] = (figure.value / value).into();
        }
    }
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = written {
        eprintln!("could not append to {}: {e}", path.to_string_lossy());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_become_json_lines_with_the_ratio() {
        let path = std::env::temp_dir().join(format!("bench-summary-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        // SAFETY: this crate's only test that touches the environment.
        unsafe { std::env::set_var(SUMMARY_ENV, &path) };
        record(&Figure {
            benchmark: "b",
            case: "c",
            value: 3.0,
            unit: "ms",
            baseline: Some(("base", 2.0)),
            better: Better::Lower,
        });
        record(&Figure {
            benchmark: "b",
            case: "alone",
            value: 1.0,
            unit: "ms",
            baseline: None,
            better: Better::Higher,
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["ratio"], 1.5);
        assert_eq!(lines[0]["baseline"], "base");
        assert_eq!(lines[1]["better"], "higher");
        assert!(lines[1].get("ratio").is_none());
        let _ = std::fs::remove_file(&path);
    }
}
