//! `hybridlive latency-test merge`: the reports of several vantage points in one table.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::EXIT_OVER_BUDGET;

/// A report's figure at `pointer` (a JSON pointer), if measured.
fn figure(report: &serde_json::Value, pointer: &str) -> Option<f64> {
    report.pointer(pointer).and_then(serde_json::Value::as_f64)
}

fn cell(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

/// The budgets a report exceeded, by name.
fn exceeded(report: &serde_json::Value) -> Vec<String> {
    report["budgets"]
        .as_array()
        .map(|budgets| {
            budgets
                .iter()
                .filter(|b| b["ok"] == false)
                .filter_map(|b| b["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The columns: title and JSON pointer.
const COLUMNS: [(&str, &str); 5] = [
    ("g2g p50", "/g2g_ms/p50"),
    ("g2g p95", "/g2g_ms/p95"),
    ("first frame", "/first_frame_ms"),
    ("HTTP RTT", "/http_rtt_ms/p50"),
    ("clock ±", "/clock/uncertainty_ms"),
];

/// The table: a row per report, then the worst of each column over all of them.
pub fn table(reports: &[serde_json::Value]) -> String {
    let mut out = format!("{:<20} {:>7}", "vantage (ms)", "frames");
    for (title, _) in COLUMNS {
        out += &format!(" {title:>11}");
    }
    out += "  budgets\n";
    for report in reports {
        let over = exceeded(report);
        out += &format!(
            "{:<20} {:>7}",
            report["vantage"].as_str().unwrap_or("?"),
            report["frames"].as_u64().unwrap_or(0)
        );
        for (_, pointer) in COLUMNS {
            out += &format!(" {:>11}", cell(figure(report, pointer)));
        }
        out += &if over.is_empty() {
            "  ok\n".to_string()
        } else {
            format!("  OVER: {}\n", over.join(", "))
        };
    }
    let over = reports.iter().filter(|r| !exceeded(r).is_empty()).count();
    out += &format!(
        "{:<20} {:>7}",
        "overall (worst)",
        reports
            .iter()
            .map(|r| r["frames"].as_u64().unwrap_or(0))
            .sum::<u64>()
    );
    for (_, pointer) in COLUMNS {
        let worst = reports
            .iter()
            .filter_map(|r| figure(r, pointer))
            .max_by(f64::total_cmp);
        out += &format!(" {:>11}", cell(worst));
    }
    out += &format!("  {over} of {} over budget\n", reports.len());
    out
}

/// Prints the table of the reports in `files`; exit code 2 when one is over budget.
pub fn run(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let reports = crate::remote::read_reports(files)?;
    print!("{}", table(&reports));
    let over = reports.iter().any(|r| !exceeded(r).is_empty());
    Ok(if over {
        ExitCode::from(EXIT_OVER_BUDGET)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_row_per_vantage_and_the_worst_overall() {
        let reports = [
            json!({"kind": "remote", "vantage": "paris", "frames": 90,
                   "g2g_ms": {"p50": 80.0, "p95": 120.0}, "first_frame_ms": 400.0,
                   "http_rtt_ms": {"p50": 12.0}, "clock": {"uncertainty_ms": 6.0},
                   "budgets": [{"name": "g2g_p95_ms", "ok": true}]}),
            json!({"kind": "remote", "vantage": "sydney", "frames": 85,
                   "g2g_ms": null, "first_frame_ms": 900.0,
                   "http_rtt_ms": {"p50": 300.0}, "clock": {"uncertainty_ms": 150.0},
                   "budgets": [{"name": "g2g_p95_ms", "ok": false},
                               {"name": "first_frame_ms", "ok": false}]}),
        ];
        let table = table(&reports);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(
            lines[1].starts_with("paris") && lines[1].ends_with("ok"),
            "{table}"
        );
        assert!(lines[1].contains("120.0"), "{table}");
        assert!(lines[2].starts_with("sydney"), "{table}");
        assert!(
            lines[2].ends_with("OVER: g2g_p95_ms, first_frame_ms"),
            "{table}"
        );
        assert!(lines[3].starts_with("overall (worst)"), "{table}");
        assert!(lines[3].contains(" 175 "), "frames summed: {table}");
        assert!(
            lines[3].contains("900.0") && lines[3].contains("300.0"),
            "{table}"
        );
        assert!(lines[3].ends_with("1 of 2 over budget"), "{table}");
    }
}
