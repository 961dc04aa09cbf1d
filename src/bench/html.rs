//! `report.html`: one self-contained page (inline CSS and SVG, a content security policy that
//! forbids every fetch) with the report's tables and five charts: TTFT distributions, accuracy
//! against cost and against latency, and throughput and TTFT p95 against concurrency.

use std::fmt::Write as _;

use rust_decimal::prelude::ToPrimitive;

use super::report::Report;
use super::svg::{self, Chart, Kind, Series};
use super::table;

/// HTML-escapes text for element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#222;max-width:1500px}\
h1{font-size:22px}h2{font-size:17px;margin-top:28px}\
table{border-collapse:collapse;margin:8px 0}th,td{padding:3px 9px;border-bottom:1px solid #ddd;white-space:nowrap}\
th{text-align:left;background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}\
.charts{display:flex;flex-wrap:wrap;gap:16px}.chart{border:1px solid #ddd;background:#fff;max-width:100%;height:auto}\
.chart text{font:12px system-ui,sans-serif;fill:#333}.chart .title{font-size:14px;font-weight:600;text-anchor:middle}\
.chart .ytick{text-anchor:end}.chart .xtick,.chart .xlabel,.chart .ylabel,.chart .nodata{text-anchor:middle}\
.chart .grid{stroke:#eee}.chart .axis{stroke:#888}.rec{font-size:16px;padding:10px;background:#eef6ee;border-left:4px solid #3a3}\
.rec.none{background:#fbeeee;border-color:#c33}";

/// Counts the charts the browser laid out, and turns any script error into a visible marker, so
/// that a headless browser's DOM dump says whether the page rendered.
const SCRIPT: &str = "window.addEventListener('error',function(e){var p=document.createElement('p');\
p.id='report'+'-error';p.textContent='script error: '+e.message;document.body.appendChild(p);});\
window.addEventListener('load',function(){var n=0;document.querySelectorAll('svg.chart').forEach(function(s){\
var b=s.getBoundingClientRect();if(b.width>0&&b.height>0&&s.querySelector('g.plot'))n++;});\
document.documentElement.setAttribute('data-charts-rendered',String(n));});";

/// The whole page.
pub fn page(r: &Report) -> String {
    let mut out = String::from("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">",
    );
    let _ = write!(
        out,
        "<title>{}</title><style>{STYLE}</style><script>{SCRIPT}</script></head><body>",
        escape(&table::title(r))
    );
    let _ = write!(out, "<h1>{}</h1>", escape(&table::title(r)));
    let class = if r.recommendation.model.is_some() { "rec" } else { "rec none" };
    let _ = write!(out, "<p class=\"{class}\">Recommendation: {}</p>", escape(&r.recommendation.text));
    // Untitled sections (what ran, and how) go above the charts, titled ones below.
    let (head, body): (Vec<_>, Vec<_>) = table::sections(r).into_iter().partition(|s| s.title.is_empty());
    for l in head.iter().flat_map(|s| &s.lines) {
        let _ = write!(out, "<p>{}</p>", escape(l));
    }
    out.push_str("<h2>Charts</h2><div class=\"charts\">");
    for chart in charts(r) {
        out.push_str(&chart);
    }
    out.push_str("</div>");
    for s in body {
        let _ = write!(out, "<h2>{}</h2>", escape(&s.title));
        for l in &s.lines {
            let _ = write!(out, "<p>{}</p>", escape(l.trim_start()));
        }
        if let Some(t) = &s.table {
            out.push_str(&t.html());
        }
        for l in &s.after {
            let _ = write!(out, "<p>{}</p>", escape(l));
        }
    }
    let _ = writeln!(out, "<p><small>{} · {}</small></p></body></html>", escape(&r.tool), escape(&r.generated_at));
    out
}

/// The five charts, each an `<svg class="chart">`.
pub fn charts(r: &Report) -> Vec<String> {
    let mut ecdf = Vec::new();
    for m in &r.models {
        for run in &m.runs {
            let mut v = run.ttft_ms_samples.clone();
            v.sort_by(f64::total_cmp);
            let n = v.len() as f64;
            let mut points: Vec<(f64, f64)> = v.first().map(|x| (*x, 0.0)).into_iter().collect();
            points.extend(v.iter().enumerate().map(|(i, x)| (*x, (i + 1) as f64 / n * 100.0)));
            ecdf.push(Series { name: format!("{} c={}", m.name, run.concurrency), points });
        }
    }
    let per_model = |x: &dyn Fn(&super::report::ModelReport) -> Option<f64>| -> Vec<Series> {
        let point = |m: &super::report::ModelReport| Some((x(m)?, m.overall.accuracy? * 100.0));
        r.models.iter().map(|m| Series { name: m.name.clone(), points: point(m).into_iter().collect() }).collect()
    };
    let cost = per_model(&|m| m.overall.cost_per_request_usd.and_then(|d| d.to_f64()));
    let latency = per_model(&|m| m.overall.e2e_ms.p50);
    let levels: Vec<String> = r.load.concurrency.iter().map(|c| c.to_string()).collect();
    let by_level = |y: &dyn Fn(&super::report::RunReport) -> Option<f64>| -> Vec<Series> {
        let index = |c: usize| r.load.concurrency.iter().position(|x| *x == c).map(|i| i as f64);
        let points = |m: &super::report::ModelReport| {
            m.runs.iter().filter_map(|run| Some((index(run.concurrency)?, y(run)?))).collect()
        };
        r.models.iter().map(|m| Series { name: m.name.clone(), points: points(m) }).collect()
    };
    let throughput = by_level(&|run| Some(run.figures.output_tokens_per_second));
    let ttft_p95 = by_level(&|run| run.figures.ttft_ms.p95);
    let chart = |id, title, x_label, y_label, kind, categories: Option<Vec<String>>, y_from_zero| Chart {
        id,
        title,
        x_label,
        y_label,
        kind,
        x_categories: categories,
        y_from_zero,
    };
    vec![
        svg::render(
            &chart(
                "ttft-cdf",
                "TTFT distribution",
                "time to first token (ms)",
                "% of requests ≤ x",
                Kind::Steps,
                None,
                true,
            ),
            &ecdf,
        ),
        svg::render(
            &chart(
                "accuracy-cost",
                "Accuracy vs cost",
                "cost per request (USD)",
                "accuracy (%)",
                Kind::Points,
                None,
                true,
            ),
            &cost,
        ),
        svg::render(
            &chart(
                "accuracy-latency",
                "Accuracy vs latency",
                "end-to-end p50 (ms)",
                "accuracy (%)",
                Kind::Points,
                None,
                true,
            ),
            &latency,
        ),
        svg::render(
            &chart(
                "throughput",
                "Throughput vs concurrency",
                "concurrency",
                "output tokens/s",
                Kind::Lines,
                Some(levels.clone()),
                true,
            ),
            &throughput,
        ),
        svg::render(
            &chart(
                "ttft-p95",
                "TTFT p95 vs concurrency",
                "concurrency",
                "TTFT p95 (ms)",
                Kind::Lines,
                Some(levels),
                true,
            ),
            &ttft_p95,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(escape(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }
}
