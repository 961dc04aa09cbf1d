//! The report as sections of text and tables, rendered for the terminal (aligned columns),
//! Markdown (`report.md`) and HTML (the tables of `report.html`) from the same cells.

use std::fmt::Write as _;

use super::html::escape;
use super::project::usd;
use super::report::{DistReport, Figures, Report};
use super::verdict::percent;

/// A table: the first `left` columns are left-aligned (names), the rest right-aligned (numbers).
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub left: usize,
}

impl Table {
    fn new(headers: &[&str], left: usize) -> Table {
        Table { headers: headers.iter().map(|h| h.to_string()).collect(), rows: Vec::new(), left }
    }

    pub fn text(&self) -> String {
        let width = |i: usize| {
            let cells = self.rows.iter().filter_map(|r| r.get(i)).chain(self.headers.get(i));
            cells.map(|c| c.chars().count()).max().unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.headers.len()).map(width).collect();
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let w = widths.get(i).copied().unwrap_or(0);
                    if i < self.left { format!("{c:<w$}") } else { format!("{c:>w$}") }
                })
                .collect();
            padded.join("  ").trim_end().to_string()
        };
        let mut out = line(&self.headers);
        for r in &self.rows {
            out.push('\n');
            out.push_str(&line(r));
        }
        out
    }

    pub fn markdown(&self) -> String {
        let row = |cells: &[String]| {
            format!("| {} |", cells.iter().map(|c| c.replace('|', "\\|")).collect::<Vec<_>>().join(" | "))
        };
        let rule: Vec<String> =
            (0..self.headers.len()).map(|i| if i < self.left { "---".into() } else { "---:".into() }).collect();
        let mut out = format!("{}\n{}", row(&self.headers), row(&rule));
        for r in &self.rows {
            out.push('\n');
            out.push_str(&row(r));
        }
        out
    }

    pub fn html(&self) -> String {
        let mut out = String::from("<table><thead><tr>");
        for h in &self.headers {
            let _ = write!(out, "<th>{}</th>", escape(h));
        }
        out.push_str("</tr></thead><tbody>");
        for r in &self.rows {
            out.push_str("<tr>");
            for (i, c) in r.iter().enumerate() {
                let class = if i < self.left { "" } else { " class=\"num\"" };
                let _ = write!(out, "<td{class}>{}</td>", escape(c));
            }
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table>");
        out
    }
}

/// A titled part of the report: lines, an optional table, lines after it.
#[derive(Debug, Clone, Default)]
pub struct Section {
    pub title: String,
    pub lines: Vec<String>,
    pub table: Option<Table>,
    pub after: Vec<String>,
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

fn ms(d: &DistReport) -> [String; 3] {
    [opt(d.p50, 0), opt(d.p95, 0), opt(d.p99, 0)]
}

/// The title line of every rendering.
pub fn title(r: &Report) -> String {
    let p = &r.prompt_set;
    format!("tollgate bench: {} ({} prompts, {} scored)", p.name, p.prompts, p.scored)
}

/// Every section of the report, in order.
pub fn sections(r: &Report) -> Vec<Section> {
    let proxy = r.mode.kind == "through_proxy";
    let runs = || r.models.iter().flat_map(|m| m.runs.iter().map(move |run| (m, run)));
    let stop = match (r.load.requests_per_run, r.load.duration_s) {
        (Some(n), _) => format!("{n} requests per run"),
        (None, Some(s)) => format!("{s}s per run"),
        _ => String::new(),
    };
    let levels: Vec<String> = r.load.concurrency.iter().map(|c| c.to_string()).collect();
    let target = match &r.mode.proxy_url {
        Some(url) => format!("through the proxy at {url}"),
        None => "directly against the backends".to_string(),
    };
    let mut out = vec![Section {
        title: String::new(),
        lines: vec![format!(
            "{} models × concurrency {} · {stop} · {target} · config {}",
            r.models.len(),
            levels.join(", "),
            r.config
        )],
        ..Section::default()
    }];

    let mut headers =
        vec!["model", "conc", "reqs", "err%", "ttft p50", "p95", "p99", "tpot p50", "tok/s p50", "e2e p50", "e2e p95"];
    headers.extend(["req/s", "out tok/s", "peak"]);
    if proxy {
        headers.extend(["ttft mean", "proxy ttft mean"]);
    }
    let mut perf = Table::new(&headers, 1);
    for (m, run) in runs() {
        let f = &run.figures;
        let [t50, t95, t99] = ms(&f.ttft_ms);
        let mut row = vec![m.name.clone(), run.concurrency.to_string(), f.requests.to_string()];
        row.extend([format!("{:.1}", f.error_ratio * 100.0), t50, t95, t99, opt(f.tpot_ms.p50, 1)]);
        row.extend([opt(f.output_tokens_per_second_per_request.p50, 1), opt(f.e2e_ms.p50, 0), opt(f.e2e_ms.p95, 0)]);
        row.extend([format!("{:.2}", f.requests_per_second), format!("{:.1}", f.output_tokens_per_second)]);
        row.push(run.peak_in_flight.to_string());
        if proxy {
            row.extend([opt(f.ttft_ms.mean, 0), opt(run.proxy_ttft_ms_mean, 0)]);
        }
        perf.rows.push(row);
    }
    out.push(Section {
        title: "Latency and throughput".into(),
        lines: vec![
            "Client side; times in ms, tok/s = per-request decode speed, peak = most requests in flight.".into(),
        ],
        table: Some(perf),
        ..Section::default()
    });

    let headers = ["model", "conc", "tokens in", "tokens out", "$/request", "$/1K tokens", "accuracy"];
    let mut cost = Table::new(&headers, 1);
    cost.headers.extend(["correct/$", "correct/s", "SLA"].map(String::from));
    for (m, run) in runs() {
        let f = &run.figures;
        let sla = if run.meets_sla { if run.sla.is_empty() { "no objectives" } else { "pass" } } else { "FAIL" };
        cost.rows.push(cost_row(&m.name, &run.concurrency.to_string(), f, sla));
    }
    out.push(Section {
        title: "Cost and quality".into(),
        lines: vec!["$ from the config's prices × measured usage; accuracy = scored answers that pass (failed requests count as wrong).".into()],
        table: Some(cost),
        ..Section::default()
    });

    let mut sla = Section { title: "SLA".into(), ..Section::default() };
    for m in &r.models {
        let o = &m.objectives;
        let mut objectives = Vec::new();
        if let Some(t) = o.ttft_p95_ms {
            objectives.push(format!("ttft_p95 ≤ {t:.0} ms"));
        }
        if let Some(t) = o.min_output_tokens_per_second {
            objectives.push(format!("median decode ≥ {t} tok/s"));
        }
        if let Some(t) = o.max_error_ratio {
            objectives.push(format!("errors ≤ {}", percent(t)));
        }
        let objectives = if objectives.is_empty() { "no objectives".to_string() } else { objectives.join(", ") };
        let verdict = if m.meets_sla { "meets the SLA at every level" } else { "MISSES the SLA" };
        sla.lines.push(format!("{}: {objectives}: {verdict}", m.name));
        for run in m.runs.iter().filter(|run| !run.meets_sla) {
            let mut why: Vec<String> = run.sla.iter().filter(|c| !c.pass).map(|c| c.text.clone()).collect();
            if run.figures.ok == 0 {
                why.push("every request failed".into());
            }
            sla.lines.push(format!("  concurrency {}: {}", run.concurrency, why.join(", ")));
        }
    }
    out.push(sla);

    let t = &r.traffic;
    let assumed = if t.assumed { " (assumed: set --traffic or --requests-per-day)" } else { "" };
    let mut budget = Section {
        title: "Budget".into(),
        lines: vec![format!(
            "At {} = {} requests a day{assumed}; a month is {} days, a year {}.",
            t.text, t.requests_per_day, t.days_per_month, t.days_per_year
        )],
        ..Section::default()
    };
    let mut projection = Table::new(&["model", "$/request", "per day", "per month", "per year"], 1);
    for p in &r.projections {
        let cells = [p.cost_per_request_usd, p.per_day_usd, p.per_month_usd, p.per_year_usd].map(usd);
        projection.rows.push(std::iter::once(p.model.clone()).chain(cells).collect());
    }
    if projection.rows.is_empty() {
        budget
            .lines
            .push("No model has a known cost per request (no price in the config, or no successful request).".into());
    } else {
        budget.table = Some(projection);
    }
    budget.after = r.savings.iter().map(|s| capitalize(&s.text) + ".").collect();
    out.push(budget);

    let mut rec =
        Section { title: "Recommendation".into(), lines: vec![r.recommendation.text.clone()], ..Section::default() };
    if r.recommendation.model.is_some() {
        rec.lines.extend(r.recommendation.excluded.iter().map(|e| format!("  not {}: {}", e.model, e.reason)));
    }
    out.push(rec);

    let mut wrong = Section { title: "Wrong answers (first per prompt, 3 per model)".into(), ..Section::default() };
    for m in &r.models {
        for w in m.wrong_answers.iter().take(3) {
            wrong.lines.push(format!("{} on `{}`: {:?}", m.name, w.prompt, w.answer));
        }
    }
    if !wrong.lines.is_empty() {
        out.push(wrong);
    }

    let mut errors = Section { title: "Errors".into(), ..Section::default() };
    for m in &r.models {
        for e in &m.overall.errors_by_kind {
            errors.lines.push(format!("{}: {} × {}", m.name, e.count, e.message));
        }
    }
    if !errors.lines.is_empty() {
        out.push(errors);
    }
    if !r.notes.is_empty() {
        out.push(Section {
            title: "Notes".into(),
            lines: r.notes.iter().map(|n| format!("- {n}")).collect(),
            ..Section::default()
        });
    }
    out
}

fn cost_row(model: &str, conc: &str, f: &Figures, sla: &str) -> Vec<String> {
    let money = |d: Option<rust_decimal::Decimal>| d.map_or("-".into(), usd);
    vec![
        model.to_string(),
        conc.to_string(),
        f.input_tokens.to_string(),
        f.output_tokens.to_string(),
        money(f.cost_per_request_usd),
        money(f.cost_per_1k_tokens_usd),
        f.accuracy.map_or("-".into(), |a| format!("{} ({}/{})", percent(a), f.passed, f.scored)),
        opt(f.correct_per_usd, 1),
        opt(f.correct_per_second, 2),
        sla.to_string(),
    ]
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map_or_else(String::new, |f| f.to_uppercase().collect::<String>() + c.as_str())
}

/// The terminal rendering.
pub fn terminal(r: &Report) -> String {
    let mut out = title(r);
    for s in sections(r) {
        out.push('\n');
        if !s.title.is_empty() {
            let _ = write!(out, "\n{}\n", s.title);
        }
        for l in &s.lines {
            let _ = writeln!(out, "{l}");
        }
        if let Some(t) = &s.table {
            let _ = writeln!(out, "{}", t.text());
        }
        for l in &s.after {
            let _ = writeln!(out, "{l}");
        }
        while out.ends_with("\n\n") {
            out.pop();
        }
        if out.ends_with('\n') {
            out.pop();
        }
    }
    out.push('\n');
    out
}

/// The Markdown rendering (`report.md`).
pub fn markdown(r: &Report) -> String {
    let mut out = format!("# {}\n", title(r));
    for s in sections(r) {
        if !s.title.is_empty() {
            let _ = write!(out, "\n## {}\n", s.title);
        }
        out.push('\n');
        for l in &s.lines {
            // Two trailing spaces keep the lines apart in Markdown.
            let _ = writeln!(out, "{}  ", l.trim_start());
        }
        if let Some(t) = &s.table {
            let _ = writeln!(out, "\n{}", t.markdown());
        }
        if !s.after.is_empty() {
            out.push('\n');
        }
        for l in &s.after {
            let _ = writeln!(out, "{l}  ");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_render_three_ways() {
        let mut t = Table::new(&["model", "cost"], 1);
        t.rows.push(vec!["a|b".into(), "$1.00".into()]);
        t.rows.push(vec!["long-name".into(), "$0.5".into()]);
        assert_eq!(t.text(), "model       cost\na|b        $1.00\nlong-name   $0.5");
        assert_eq!(t.markdown(), "| model | cost |\n| --- | ---: |\n| a\\|b | $1.00 |\n| long-name | $0.5 |");
        assert!(t.html().contains("<td>a|b</td><td class=\"num\">$1.00</td>"));
        assert_eq!(capitalize("choosing x"), "Choosing x");
    }
}
