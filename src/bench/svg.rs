//! Inline SVG charts for the HTML report: lines, steps (distribution functions) and labelled
//! points on linear axes with round tick values and a legend. No scripts, no external resources.

use std::fmt::Write as _;

use super::html::escape;

const W: f64 = 680.0;
const H: f64 = 360.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 500.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 300.0;
const COLORS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

/// One named set of points.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Lines,
    /// A step function: horizontal to the next x, then vertical (an empirical CDF).
    Steps,
    /// Points labelled with their series' name (a scatter of models).
    Points,
}

/// What a chart shows.
#[derive(Debug, Clone)]
pub struct Chart<'a> {
    pub id: &'a str,
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub kind: Kind,
    /// Categorical x axis: point x values are indexes into these labels.
    pub x_categories: Option<Vec<String>>,
    /// Start the y axis at zero.
    pub y_from_zero: bool,
}

/// Round ticks covering `min..=max`: (first, last, step).
pub fn ticks(min: f64, max: f64) -> (f64, f64, f64) {
    let (min, max) = if (max - min).abs() < f64::EPSILON * max.abs().max(1.0) {
        let pad = if min == 0.0 { 1.0 } else { min.abs() * 0.1 };
        (min - pad, max + pad)
    } else {
        (min, max)
    };
    let raw = (max - min) / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = magnitude
        * match raw / magnitude {
            n if n < 1.5 => 1.0,
            n if n < 3.0 => 2.0,
            n if n < 7.0 => 5.0,
            _ => 10.0,
        };
    ((min / step).floor() * step, (max / step).ceil() * step, step)
}

/// A tick value with as many decimals as its step needs.
pub fn tick_text(v: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).clamp(0.0, 9.0) as usize;
    let text = format!("{v:.decimals$}");
    // -0 reads oddly.
    if text.trim_start_matches(['-', '0', '.']).is_empty() { "0".into() } else { text }
}

/// Renders the chart as an `<svg class="chart">` element.
pub fn render(chart: &Chart<'_>, series: &[Series]) -> String {
    let all: Vec<(f64, f64)> =
        series.iter().flat_map(|s| s.points.iter().copied()).filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg class="chart" id="{}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{}">"#,
        escape(chart.id),
        escape(chart.title)
    );
    let _ = write!(out, r#"<title>{}</title>"#, escape(chart.title));
    let _ = write!(out, r#"<text x="{}" y="22" class="title">{}</text>"#, W / 2.0, escape(chart.title));
    let (x_min, x_max) = match &chart.x_categories {
        Some(c) => (-0.5, c.len().max(1) as f64 - 0.5),
        None => bounds(all.iter().map(|p| p.0)),
    };
    // Labelled points keep clear of the frame: a scatter's x axis starts at zero and ends a
    // tenth past the largest value.
    let (x_min, x_max) = match chart.kind {
        Kind::Points => (x_min.min(0.0), x_max + (x_max - x_min.min(0.0)).abs() * 0.1),
        _ => (x_min, x_max),
    };
    let (y_lo, y_hi) = bounds(all.iter().map(|p| p.1));
    let y_lo = if chart.y_from_zero { y_lo.min(0.0) } else { y_lo };
    let (x0, x1, xs) = match &chart.x_categories {
        Some(_) => (x_min, x_max, 1.0),
        None => ticks(x_min, x_max),
    };
    let (y0, y1, ys) = ticks(y_lo, y_hi);
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * (RIGHT - LEFT);
    let py = |y: f64| BOTTOM - (y - y0) / (y1 - y0) * (BOTTOM - TOP);

    out.push_str(r#"<g class="axes">"#);
    let mut y = y0;
    while y <= y1 + ys / 2.0 {
        let _ = write!(out, r#"<line x1="{LEFT}" x2="{RIGHT}" y1="{0:.1}" y2="{0:.1}" class="grid"/>"#, py(y));
        let _ =
            write!(out, r#"<text x="{}" y="{:.1}" class="ytick">{}</text>"#, LEFT - 6.0, py(y) + 4.0, tick_text(y, ys));
        y += ys;
    }
    match &chart.x_categories {
        Some(labels) => {
            for (i, label) in labels.iter().enumerate() {
                let _ = write!(
                    out,
                    r#"<text x="{:.1}" y="{}" class="xtick">{}</text>"#,
                    px(i as f64),
                    BOTTOM + 18.0,
                    escape(label)
                );
            }
        }
        None => {
            let mut x = x0;
            while x <= x1 + xs / 2.0 {
                let _ = write!(
                    out,
                    r#"<text x="{:.1}" y="{}" class="xtick">{}</text>"#,
                    px(x),
                    BOTTOM + 18.0,
                    tick_text(x, xs)
                );
                x += xs;
            }
        }
    }
    let _ = write!(out, r#"<line x1="{LEFT}" x2="{RIGHT}" y1="{BOTTOM}" y2="{BOTTOM}" class="axis"/>"#);
    let _ = write!(out, r#"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{BOTTOM}" class="axis"/>"#);
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" class="xlabel">{}</text>"#,
        (LEFT + RIGHT) / 2.0,
        BOTTOM + 42.0,
        escape(chart.x_label)
    );
    let mid = (TOP + BOTTOM) / 2.0;
    let _ = write!(
        out,
        r#"<text x="16" y="{mid}" class="ylabel" transform="rotate(-90 16 {mid})">{}</text>"#,
        escape(chart.y_label)
    );
    out.push_str("</g>");

    out.push_str(r#"<g class="plot">"#);
    if all.is_empty() {
        let _ = write!(out, r#"<text x="{}" y="{mid}" class="nodata">no data</text>"#, (LEFT + RIGHT) / 2.0);
    }
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|(x, y)| (px(x), py(y)))
            .collect();
        if chart.kind != Kind::Points && pts.len() > 1 {
            let mut d = String::new();
            for (j, (x, y)) in pts.iter().enumerate() {
                match (j, chart.kind) {
                    (0, _) => {
                        let _ = write!(d, "M{x:.1} {y:.1}");
                    }
                    (_, Kind::Steps) => {
                        let _ = write!(d, " H{x:.1} V{y:.1}");
                    }
                    _ => {
                        let _ = write!(d, " L{x:.1} {y:.1}");
                    }
                }
            }
            let _ = write!(out, r#"<path d="{d}" fill="none" stroke="{color}" stroke-width="2"/>"#);
        }
        if chart.kind != Kind::Steps {
            for ((x, y), (vx, vy)) in pts.iter().zip(s.points.iter().filter(|(x, y)| x.is_finite() && y.is_finite())) {
                let tip = format!("{}: {} , {}", s.name, short(*vx), short(*vy));
                let _ = write!(
                    out,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="5" fill="{color}"><title>{}</title></circle>"#,
                    escape(&tip)
                );
                if chart.kind == Kind::Points {
                    let _ = write!(
                        out,
                        r#"<text x="{:.1}" y="{:.1}" class="point">{}</text>"#,
                        x + 8.0,
                        y - 8.0,
                        escape(&s.name)
                    );
                }
            }
        }
        let ly = TOP + 14.0 + 20.0 * i as f64;
        let _ = write!(out, r#"<rect x="{}" y="{}" width="14" height="4" fill="{color}"/>"#, RIGHT + 20.0, ly - 4.0);
        let _ = write!(out, r#"<text x="{}" y="{ly}" class="legend">{}</text>"#, RIGHT + 40.0, escape(&s.name));
    }
    out.push_str("</g></svg>");
    out
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values
        .fold(None, |acc: Option<(f64, f64)>, v| Some(acc.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v)))))
        .unwrap_or((0.0, 1.0))
}

fn short(v: f64) -> String {
    if v != 0.0 && v.abs() < 0.01 { format!("{v:.3e}") } else { format!("{v:.2}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_ticks() {
        assert_eq!(ticks(0.0, 97.0), (0.0, 100.0, 20.0));
        assert_eq!(ticks(120.0, 830.0), (100.0, 900.0, 100.0));
        let (lo, hi, step) = ticks(0.000_12, 0.000_9);
        assert!((step - 0.0002).abs() < 1e-12 && lo <= 0.000_12 && hi >= 0.000_9, "{lo} {hi} {step}");
        // A single value still gets a range.
        let (lo, hi, _) = ticks(5.0, 5.0);
        assert!(lo < 5.0 && hi > 5.0);
        assert_eq!(tick_text(0.0004, 0.0002), "0.0004");
        assert_eq!(tick_text(400.0, 200.0), "400");
        assert_eq!(tick_text(-0.0, 0.5), "0");
    }

    #[test]
    fn charts_are_svg_with_a_plot() {
        let chart = Chart {
            id: "c",
            title: "A <b> chart",
            x_label: "x",
            y_label: "y",
            kind: Kind::Lines,
            x_categories: Some(vec!["1".into(), "10".into()]),
            y_from_zero: true,
        };
        let s = vec![Series { name: "m&n".into(), points: vec![(0.0, 10.0), (1.0, 30.0)] }];
        let svg = render(&chart, &s);
        assert!(svg.starts_with(r#"<svg class="chart" id="c""#) && svg.ends_with("</svg>"));
        assert!(svg.contains("A &lt;b&gt; chart") && svg.contains("m&amp;n") && svg.contains("<path d=\"M"));
        assert!(render(&chart, &[]).contains("no data"));
        let steps = render(&Chart { kind: Kind::Steps, x_categories: None, ..chart }, &s);
        assert!(steps.contains(" H") && !steps.contains("<circle"));
    }
}
