//! Stacked line charts as a self-contained SVG (no plotting library, opens in any browser).

use std::fmt::Write as _;

/// One curve.
pub struct Series {
    /// Legend.
    pub name: String,
    /// CSS colour.
    pub colour: &'static str,
    /// (x, y) points; non-finite y values leave a gap.
    pub points: Vec<(f64, f64)>,
}

/// One chart, sharing the x axis with the others.
pub struct Panel {
    /// Title, with the unit.
    pub title: String,
    /// Curves.
    pub series: Vec<Series>,
}

const WIDTH: f64 = 900.0;
const PANEL_HEIGHT: f64 = 200.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const GAP: f64 = 50.0;

/// SVG text of `panels` stacked under `title`, x axis labelled `x_label`.
pub fn svg(title: &str, x_label: &str, panels: &[Panel]) -> String {
    let height = TOP + panels.len() as f64 * (PANEL_HEIGHT + GAP) + 10.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    let (x_min, x_max) = bounds(
        panels
            .iter()
            .flat_map(|p| &p.series)
            .flat_map(|s| s.points.iter().map(|p| p.0)),
    );
    for (i, panel) in panels.iter().enumerate() {
        let top = TOP + i as f64 * (PANEL_HEIGHT + GAP);
        let (_, y_max) = bounds(
            panel
                .series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.1)),
        );
        let y_max = nice_ceiling(y_max);
        let plot_w = WIDTH - LEFT - RIGHT;
        let sx = |x: f64| LEFT + (x - x_min) / (x_max - x_min).max(1e-9) * plot_w;
        let sy = |y: f64| top + PANEL_HEIGHT - y / y_max.max(1e-9) * PANEL_HEIGHT;
        let _ = writeln!(
            out,
            r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL_HEIGHT}" fill="none" stroke="#999"/>"##
        );
        let _ = writeln!(
            out,
            r#"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"#,
            top - 6.0,
            escape(&panel.title)
        );
        for k in 0..=4 {
            let y = y_max * k as f64 / 4.0;
            let _ = writeln!(
                out,
                r##"<line x1="{LEFT}" x2="{}" y1="{py:.1}" y2="{py:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                WIDTH - RIGHT,
                LEFT - 6.0,
                sy(y) + 4.0,
                short(y),
                py = sy(y),
            );
        }
        for k in 0..=6 {
            let x = x_min + (x_max - x_min) * k as f64 / 6.0;
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
                sx(x),
                top + PANEL_HEIGHT + 15.0,
                short(x)
            );
        }
        let mut legend_x = LEFT + 10.0;
        for series in &panel.series {
            let mut d = String::new();
            let mut pen_down = false;
            for &(x, y) in &series.points {
                if !y.is_finite() {
                    pen_down = false;
                    continue;
                }
                let _ = write!(
                    d,
                    "{}{:.1},{:.1} ",
                    if pen_down { "L" } else { "M" },
                    sx(x),
                    sy(y)
                );
                pen_down = true;
            }
            let _ = writeln!(
                out,
                r#"<path d="{d}" fill="none" stroke="{}" stroke-width="1.5"/>"#,
                series.colour
            );
            let _ = writeln!(
                out,
                r#"<text x="{legend_x}" y="{}" fill="{}">{}</text>"#,
                top + 15.0,
                series.colour,
                escape(&series.name)
            );
            legend_x += 12.0 + 7.0 * series.name.len() as f64;
        }
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        height - 4.0,
        escape(x_label)
    );
    out.push_str("</svg>\n");
    out
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        (0.0, 1.0)
    } else {
        (lo.min(0.0), hi)
    }
}

/// 1, 2 or 5 times a power of ten, at or above `v`.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * magnitude)
}

fn short(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_ceilings_are_round() {
        assert_eq!(nice_ceiling(73.0), 100.0);
        assert_eq!(nice_ceiling(12.0), 20.0);
        assert_eq!(nice_ceiling(0.3), 0.5);
        assert_eq!(nice_ceiling(0.0), 1.0);
    }

    #[test]
    fn gaps_break_the_line() {
        let out = svg(
            "t",
            "x",
            &[Panel {
                title: "p".into(),
                series: vec![Series {
                    name: "s".into(),
                    colour: "red",
                    points: vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 2.0), (3.0, 3.0)],
                }],
            }],
        );
        let path = out.lines().find(|l| l.starts_with("<path")).unwrap();
        assert_eq!(path.matches('M').count(), 2, "{path}");
        assert_eq!(path.matches('L').count(), 1, "{path}");
    }
}
