//! The latency histogram as a self-contained SVG: one panel per path, each on its own scale
//! (WebRTC is tens of milliseconds, HLS seconds), with p50/p95/p99 marked.

use std::fmt::Write as _;

use crate::stats::Summary;

const WIDTH: f64 = 800.0;
const PANEL: f64 = 240.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 40.0;
const TARGET_BINS: f64 = 40.0;

/// One panel: a name, the values (ms) and their summary.
pub struct Series<'a> {
    /// Shown in the panel's title, e.g. "WebRTC".
    pub name: &'a str,
    /// Glass-to-glass latencies in ms.
    pub values: &'a [f64],
    /// Their summary.
    pub summary: Summary,
}

/// An SVG document with one histogram panel per series.
pub fn histogram_svg(title: &str, series: &[Series]) -> String {
    let height = PANEL * series.len().max(1) as f64 + 30.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="#fff"/><text x="{LEFT}" y="20" font-size="15" font-weight="bold">{}</text>"##,
        escape(title)
    );
    for (i, s) in series.iter().enumerate() {
        panel(&mut svg, 30.0 + i as f64 * PANEL, s);
    }
    svg.push_str("</svg>\n");
    svg
}

fn panel(svg: &mut String, y0: f64, series: &Series) {
    let Summary { min, max, .. } = series.summary;
    let width = nice_step((max - min).max(1.0) / TARGET_BINS);
    let start = (min / width).floor() * width;
    let bins = (((max - start) / width).floor() as usize + 1).max(1);
    let mut counts = vec![0usize; bins];
    for v in series.values.iter().filter(|v| v.is_finite()) {
        let k = (((v - start) / width).floor().max(0.0) as usize).min(bins - 1);
        counts[k] += 1;
    }
    let peak = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, PANEL - TOP - BOTTOM);
    let (base_y, end) = (y0 + TOP + plot_h, start + bins as f64 * width);
    let x_of = |ms: f64| LEFT + (ms - start) / (end - start) * plot_w;
    let s = series.summary;
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="{}" font-weight="bold">{}: {} frames, p50 {} ms, p95 {} ms, p99 {} ms, max {} ms</text>"##,
        y0 + 18.0,
        escape(series.name),
        s.count,
        fmt_ms(s.p50),
        fmt_ms(s.p95),
        fmt_ms(s.p99),
        fmt_ms(s.max)
    );
    for (k, &count) in counts.iter().enumerate() {
        if count == 0 {
            continue;
        }
        let h = count as f64 / peak * plot_h;
        let x = x_of(start + k as f64 * width);
        let _ = writeln!(
            svg,
            r##"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="#4a7fb5"><title>{}–{} ms: {count}</title></rect>"##,
            base_y - h,
            (plot_w / bins as f64 - 1.0).max(0.5),
            fmt_ms(start + k as f64 * width),
            fmt_ms(start + (k + 1) as f64 * width)
        );
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{base_y}" x2="{}" y2="{base_y}" stroke="#333"/><line x1="{LEFT}" y1="{}" x2="{LEFT}" y2="{base_y}" stroke="#333"/>"##,
        LEFT + plot_w,
        y0 + TOP
    );
    // About eight labelled ticks on the x axis, on multiples of the bin width.
    let tick = width * (bins as f64 / 8.0).ceil().max(1.0);
    let mut t = start;
    while t <= end + tick * 1e-9 {
        let x = x_of(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{base_y}" x2="{x:.1}" y2="{}" stroke="#333"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            base_y + 4.0,
            base_y + 17.0,
            fmt_ms(t)
        );
        t += tick;
    }
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="middle">glass-to-glass latency (ms)</text><text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">frames</text><text x="{}" y="{}" text-anchor="end">{}</text>"##,
        LEFT + plot_w / 2.0,
        base_y + 33.0,
        y0 + TOP + plot_h / 2.0,
        y0 + TOP + plot_h / 2.0,
        LEFT - 4.0,
        y0 + TOP + 10.0,
        peak as usize
    );
    for (label, value, colour) in [
        ("p50", s.p50, "#2a9d2a"),
        ("p95", s.p95, "#d98c00"),
        ("p99", s.p99, "#c0392b"),
    ] {
        let x = x_of(value);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{base_y}" stroke="{colour}" stroke-dasharray="4 3"/><text x="{x:.1}" y="{}" fill="{colour}" text-anchor="middle">{label}</text>"##,
            y0 + TOP,
            y0 + TOP - 3.0
        );
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude)
}

fn fmt_ms(ms: f64) -> String {
    if ms.abs() >= 100.0 || ms.fract() == 0.0 {
        format!("{ms:.0}")
    } else {
        format!("{ms:.1}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(1.3), 2.0);
        assert_eq!(nice_step(37.0), 50.0);
        assert_eq!(nice_step(0.03), 0.05);
    }

    #[test]
    fn every_frame_is_in_a_bar() {
        let values: Vec<f64> = (0..200).map(|i| 20.0 + (i % 37) as f64 * 0.7).collect();
        let summary = Summary::of(&values).unwrap();
        let svg = histogram_svg(
            "t",
            &[Series {
                name: "WebRTC <1>",
                values: &values,
                summary,
            }],
        );
        let total: usize = svg
            .split("ms: ")
            .skip(1)
            .map(|rest| rest.split('<').next().unwrap().parse::<usize>().unwrap())
            .sum();
        assert_eq!(total, 200);
        assert!(svg.contains("WebRTC &lt;1&gt;: 200 frames"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
    }
}
