//! A replay's report: as text for the terminal, as one self-contained HTML page (inline CSS and
//! SVG charts drawn by plotters; no script, no external URL), and as the demo's short table.

use std::fmt::Write as _;

use plotters::prelude::*;

use super::{CurvePoint, Group, GroupKey, LabelQuality, Quality, Report, Target};
use crate::config::Bands;
use crate::event::Action;

/// Score histogram bins over 0..1.
const BINS: usize = 50;
const CHART_SIZE: (u32, u32) = (640, 300);
/// Curve points drawn at most (every labelled score is a point; more add nothing visible).
const CURVE_POINTS: usize = 400;
const CURRENT_COLOUR: RGBColor = RGBColor(31, 119, 180);
const PROPOSED_COLOUR: RGBColor = RGBColor(214, 39, 40);
const TARGET_COLOUR: RGBColor = RGBColor(44, 160, 44);
const BAR_COLOUR: RGBColor = RGBColor(150, 150, 150);

#[derive(Debug, thiserror::Error)]
#[error("drawing the {chart} chart of {group}: {message}")]
pub struct ChartError {
    chart: &'static str,
    group: String,
    message: String,
}

fn ratio(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * part as f64 / whole as f64)
    }
}

fn fraction(value: Option<f64>, part: u64, whole: u64) -> String {
    value.map_or_else(|| "n/a".into(), |v| format!("{v:.2} ({part}/{whole})"))
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn arrow(from: Action, to: Action) -> String {
    format!("{} → {}", from.as_str(), to.as_str())
}

/// The header: what was compared, what was read and what was left out.
fn summary_lines(report: &Report) -> Vec<String> {
    let input = &report.input;
    let mut lines = vec![
        format!("proposed policy {:?} against the current configuration's {:?}", report.proposed_version, report.current_version),
        format!(
            "verdicts: {} — {} read, {} replayed; skipped: {} retroactive, {} superseded by a later verdict of the same upload, {} of other tenants, {} malformed",
            input.source, input.read, input.replayed, input.retro_skipped, input.duplicates, input.other_tenants, input.problems.count,
        ),
    ];
    match (&report.model, input.model_mismatch) {
        (None, _) => {}
        (Some(model), 0) => lines.push(format!("model: the proposed bands are calibrated for model {model}; every scored verdict is its")),
        (Some(model), n) => lines.push(format!(
            "model: the proposed bands are calibrated for model {model}; {} scored by another model {} left out of the tables (listed at the end)",
            plural(n, "verdict", "verdicts"),
            if n == 1 { "is" } else { "are" },
        )),
    }
    match &report.labels {
        Some(labels) => lines.push(format!(
            "labels: {} — {} read, {} joined to replayed verdicts, {} malformed",
            labels.source, labels.read, labels.joined, labels.problems.count
        )),
        None => lines.push("labels: none (--reviews FILE, or kafka.reviews_topic when reading the verdict topic)".into()),
    }
    lines
}

fn bands_line(group: &Group) -> String {
    let (c, p) = (group.current, group.proposed);
    format!("bands: review {} → {}, block {} → {} (current configuration → proposed)", c.review, p.review, c.block, p.block)
}

/// (band, threshold, hits): each band at the recorded thresholds (the band each verdict was
/// given) and at the proposed one.
fn quality_rows(labels: &LabelQuality, proposed: Bands) -> [(&'static str, String, Quality); 4] {
    [
        ("review", "recorded band".into(), labels.review_recorded),
        ("review", format!("proposed ≥ {}", proposed.review), labels.review_proposed),
        ("block", "recorded band".into(), labels.block_recorded),
        ("block", format!("proposed ≥ {}", proposed.block), labels.block_proposed),
    ]
}

fn target_line(report: &Report, labels: &LabelQuality) -> Option<String> {
    let wanted = report.target_precision?;
    Some(match labels.target? {
        Target::At(CurvePoint { threshold, quality }) => format!(
            "target precision {wanted}: lowest threshold {threshold}: precision {}, recall {}, support {} labelled verdicts at or above it",
            fraction(quality.precision(), quality.tp, quality.tp + quality.fp),
            fraction(quality.recall(), quality.tp, quality.tp + quality.missed),
            quality.tp + quality.fp,
        ),
        Target::NotReachable => {
            format!("target precision {wanted}: not reachable on {} labelled verdicts", labels.labelled)
        }
    })
}

fn mismatch_lines(report: &Report) -> Vec<String> {
    let mut lines = Vec::new();
    for (key, group) in &report.groups {
        for (model, count) in &group.mismatched {
            lines.push(format!("{key}: {} scored by model {model}", plural(*count, "verdict", "verdicts")));
        }
    }
    lines
}

/// The report for a terminal.
pub fn text(report: &Report) -> String {
    let out = text_lines(report);
    // Empty sample and label columns leave trailing blanks.
    out.lines().map(|l| format!("{}\n", l.trim_end())).collect()
}

fn text_lines(report: &Report) -> String {
    let mut out = String::new();
    for line in summary_lines(report) {
        let _ = writeln!(out, "{line}");
    }
    for (key, group) in &report.groups {
        if group.verdicts == 0 {
            continue;
        }
        let _ = writeln!(
            out,
            "\n== {key}: {} ({} scored, {} no score)",
            plural(group.verdicts, "verdict", "verdicts"),
            group.verdicts - group.no_score,
            group.no_score
        );
        let _ = writeln!(out, "{}", bands_line(group));
        let _ = writeln!(out, "  {:<18} {:>8} {:>7} {:>9}  samples", "before → after", "count", "rate", "no score");
        for ((from, to), t) in &group.transitions {
            let _ = writeln!(
                out,
                "  {:<18} {:>8} {:>7} {:>9}  {}",
                arrow(*from, *to),
                t.count,
                ratio(t.count, group.verdicts),
                t.no_score,
                t.samples.join(" ")
            );
        }
        let _ = writeln!(out, "  changed: {} of {} ({})", group.changed(), group.verdicts, ratio(group.changed(), group.verdicts));
        if !group.review_per_day.is_empty() {
            let _ = writeln!(out, "  {:<18} {:>8} {:>7} {:>9}", "reviews per day", "before", "after", "change");
            for (day, r) in &group.review_per_day {
                let change = r.after as i64 - r.before as i64;
                let _ = writeln!(out, "  {:<18} {:>8} {:>7} {:>+9}", day, r.before, r.after, change);
            }
        }
        if let Some(labels) = &group.labels {
            let _ = writeln!(
                out,
                "  labels: {} labelled with a score ({} violating); {} labelled without a score, not measured",
                labels.labelled, labels.violating, labels.unscored
            );
            let _ = writeln!(out, "  {:<8} {:<18} {:<18} {:<18}", "band", "threshold", "precision", "recall");
            for (band, threshold, q) in quality_rows(labels, group.proposed) {
                let _ = writeln!(
                    out,
                    "  {:<8} {:<18} {:<18} {:<18}",
                    band,
                    threshold,
                    fraction(q.precision(), q.tp, q.tp + q.fp),
                    fraction(q.recall(), q.tp, q.tp + q.missed)
                );
            }
            if let Some(line) = target_line(report, labels) {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    let mismatches = mismatch_lines(report);
    if !mismatches.is_empty() {
        let _ = writeln!(out, "\nmodel mismatch: not in the tables above (the bands are calibrated for model {})", report.model.as_deref().unwrap_or("?"));
        for line in mismatches {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// One line per tenant/surface: verdicts, how many change, and how. For the demo.
pub fn compact(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<26} {:>8} {:>8}  transitions", "tenant / surface", "verdicts", "changed");
    for (key, group) in report.groups.iter().filter(|(_, g)| g.verdicts > 0) {
        let moves: Vec<String> = group
            .transitions
            .iter()
            .filter(|((from, to), _)| from != to)
            .map(|((from, to), t)| format!("{} {} ({})", arrow(*from, *to), t.count, t.samples.join(" ")))
            .collect();
        let moves = if moves.is_empty() { "none".to_string() } else { moves.join(", ") };
        let _ = writeln!(out, "{:<26} {:>8} {:>8}  {moves}", key.to_string(), group.verdicts, group.changed());
    }
    out
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
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

const STYLE: &str = "\
body{font-family:sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}\
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-top:2px solid #999;padding-top:.6em}\
table{border-collapse:collapse;margin:.6em 0 1.2em}\
th,td{border:1px solid #ccc;padding:.2em .7em;text-align:right}\
th:first-child,td:first-child{text-align:left}\
tr.changed td{background:#fff3e0}\
td.samples{font-family:monospace;text-align:left}\
.note{color:#555}\
figure{margin:.5em 0 1em}figcaption{color:#555;font-size:.9em}\
svg{display:block;border:1px solid #ddd;background:#fff}";

/// The report as one self-contained page: inline CSS and SVG, no script, no external URL.
pub fn html(report: &Report) -> Result<String, ChartError> {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Policy replay: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>Policy replay: {}</h1>\n<ul>\n",
        escape(&report.proposed_version),
        escape(&report.proposed_version)
    );
    for line in summary_lines(report) {
        let _ = writeln!(out, "<li>{}</li>", escape(&line));
    }
    out.push_str("</ul>\n");
    for (key, group) in report.groups.iter().filter(|(_, g)| g.verdicts > 0) {
        let title = escape(&key.to_string());
        let _ = writeln!(
            out,
            "<section>\n<h2>{title}</h2>\n<p>{} ({} scored, {} no score). {}</p>",
            plural(group.verdicts, "verdict", "verdicts"),
            group.verdicts - group.no_score,
            group.no_score,
            escape(&bands_line(group))
        );
        transitions_table(&mut out, group);
        let chart = histogram_svg(group).map_err(|message| ChartError { chart: "score histogram", group: key.to_string(), message })?;
        let _ = writeln!(
            out,
            "<figure>{}<figcaption>Classifier scores of {title} ({} scored verdicts) with the current (blue, dashed) and proposed (red) thresholds.</figcaption></figure>",
            tag_svg(&chart, "histogram"),
            group.scores.len()
        );
        reviews_table(&mut out, group);
        if let Some(labels) = &group.labels {
            labels_section(&mut out, report, key, group, labels)?;
        }
        out.push_str("</section>\n");
    }
    let mismatches = mismatch_lines(report);
    if !mismatches.is_empty() {
        let _ = writeln!(
            out,
            "<h2>Model mismatch</h2>\n<p class=\"note\">Not in the tables above: the bands are calibrated for model {}.</p>\n<ul>",
            escape(report.model.as_deref().unwrap_or("?"))
        );
        for line in mismatches {
            let _ = writeln!(out, "<li>{}</li>", escape(&line));
        }
        out.push_str("</ul>\n");
    }
    out.push_str("</body>\n</html>\n");
    Ok(out)
}

fn transitions_table(out: &mut String, group: &Group) {
    out.push_str("<table class=\"transitions\">\n<tr><th>before → after</th><th>count</th><th>rate</th><th>no score</th><th>samples</th></tr>\n");
    for ((from, to), t) in &group.transitions {
        let _ = writeln!(
            out,
            "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"samples\">{}</td></tr>",
            if from != to { " class=\"changed\"" } else { "" },
            arrow(*from, *to),
            t.count,
            ratio(t.count, group.verdicts),
            t.no_score,
            escape(&t.samples.join(" "))
        );
    }
    out.push_str("</table>\n");
}

fn reviews_table(out: &mut String, group: &Group) {
    if group.review_per_day.is_empty() {
        return;
    }
    out.push_str("<table class=\"reviews\">\n<tr><th>reviews per day</th><th>before</th><th>after</th><th>change</th></tr>\n");
    for (day, r) in &group.review_per_day {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:+}</td></tr>",
            escape(day),
            r.before,
            r.after,
            r.after as i64 - r.before as i64
        );
    }
    out.push_str("</table>\n");
}

fn labels_section(out: &mut String, report: &Report, key: &GroupKey, group: &Group, labels: &LabelQuality) -> Result<(), ChartError> {
    let _ = writeln!(
        out,
        "<p>Labels: {} labelled with a score ({} violating); {} labelled without a score, not measured.</p>",
        labels.labelled, labels.violating, labels.unscored
    );
    out.push_str("<table class=\"quality\">\n<tr><th>band</th><th>threshold</th><th>precision</th><th>recall</th></tr>\n");
    for (band, threshold, q) in quality_rows(labels, group.proposed) {
        let _ = writeln!(
            out,
            "<tr><td>{band}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&threshold),
            fraction(q.precision(), q.tp, q.tp + q.fp),
            fraction(q.recall(), q.tp, q.tp + q.missed)
        );
    }
    out.push_str("</table>\n");
    if let Some(line) = target_line(report, labels) {
        let _ = writeln!(out, "<p>{}</p>", escape(&line));
    }
    if !labels.curve.is_empty() {
        let target = match labels.target {
            Some(Target::At(point)) => Some(point.threshold),
            _ => None,
        };
        let chart = curve_svg(&labels.curve, group.proposed, target)
            .map_err(|message| ChartError { chart: "precision/recall", group: key.to_string(), message })?;
        let _ = writeln!(
            out,
            "<figure>{}<figcaption>Precision and recall of flagging every labelled verdict scored at or above a threshold, with the proposed thresholds (red){}.</figcaption></figure>",
            tag_svg(&chart, "pr-curve"),
            if target.is_some() { " and the target precision's threshold (green)" } else { "" }
        );
    }
    Ok(())
}

/// The chart as inline SVG with a class; without the namespace attribute, which an HTML parser
/// does not need, so the page names no URL at all.
fn tag_svg(svg: &str, class: &str) -> String {
    svg.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1).replacen("<svg ", &format!("<svg class=\"{class}\" "), 1)
}

/// Bar heights of the scores over [`BINS`] equal bins of 0..1 (1.0 in the last).
fn bins(scores: &[f32]) -> Vec<u64> {
    let mut counts = vec![0u64; BINS];
    for &score in scores {
        let bin = ((score.clamp(0.0, 1.0) * BINS as f32) as usize).min(BINS - 1);
        counts[bin] += 1;
    }
    counts
}

type Drawn = Result<(), String>;

/// A vertical line from the bottom to the top of a chart.
/// A series' entry in a chart's legend: a short line in its style.
fn legend_line(style: ShapeStyle) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style)
}

fn vertical(x: f32, top: f64) -> Vec<(f64, f64)> {
    vec![(f64::from(x), 0.0), (f64::from(x), top)]
}

fn histogram_svg(group: &Group) -> Result<String, String> {
    let counts = bins(&group.scores);
    let top = (counts.iter().copied().max().unwrap_or(0).max(1) as f64 * 1.1).ceil();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, CHART_SIZE).into_drawing_area();
        let drawn: Drawn = (|| {
            root.fill(&WHITE).map_err(|e| e.to_string())?;
            let mut chart = ChartBuilder::on(&root)
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(48)
                .build_cartesian_2d(0f64..1f64, 0f64..top)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("classifier score")
                .y_desc("verdicts")
                .disable_x_mesh()
                // Counts: whole numbers only, however low the tallest bar.
                .y_labels((top as usize).clamp(2, 10))
                .y_label_formatter(&|v| format!("{v:.0}"))
                .draw()
                .map_err(|e| e.to_string())?;
            let width = 1.0 / BINS as f64;
            chart
                .draw_series(counts.iter().enumerate().filter(|(_, &c)| c > 0).map(|(i, &c)| {
                    let x0 = i as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width, c as f64)], BAR_COLOUR.filled())
                }))
                .map_err(|e| e.to_string())?;
            let lines = [
                ("current review", group.current.review, CURRENT_COLOUR, true),
                ("current block", group.current.block, CURRENT_COLOUR, true),
                ("proposed review", group.proposed.review, PROPOSED_COLOUR, false),
                ("proposed block", group.proposed.block, PROPOSED_COLOUR, false),
            ];
            for (name, x, colour, dashed) in lines {
                let style = colour.stroke_width(2);
                let label = format!("{name} {x}");
                if dashed {
                    chart
                        .draw_series(DashedLineSeries::new(vertical(x, top), 6, 4, style))
                        .map_err(|e| e.to_string())?
                        .label(label)
                        .legend(legend_line(style));
                } else {
                    chart
                        .draw_series(LineSeries::new(vertical(x, top), style))
                        .map_err(|e| e.to_string())?
                        .label(label)
                        .legend(legend_line(style));
                }
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperMiddle)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
            root.present().map_err(|e| e.to_string())
        })();
        drawn?;
    }
    Ok(svg)
}

fn curve_svg(curve: &[CurvePoint], proposed: Bands, target: Option<f32>) -> Result<String, String> {
    let step = curve.len().div_ceil(CURVE_POINTS).max(1);
    let points: Vec<&CurvePoint> = curve.iter().step_by(step).collect();
    let series = |value: fn(&Quality) -> Option<f64>| -> Vec<(f64, f64)> {
        points.iter().filter_map(|p| value(&p.quality).map(|v| (f64::from(p.threshold), v))).collect()
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, CHART_SIZE).into_drawing_area();
        let drawn: Drawn = (|| {
            root.fill(&WHITE).map_err(|e| e.to_string())?;
            let mut chart = ChartBuilder::on(&root)
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(48)
                .build_cartesian_2d(0f64..1f64, 0f64..1.05f64)
                .map_err(|e| e.to_string())?;
            chart.configure_mesh().x_desc("threshold (flag score ≥ it)").y_desc("labelled verdicts").draw().map_err(|e| e.to_string())?;
            let precision = BLACK.stroke_width(2);
            chart
                .draw_series(LineSeries::new(series(Quality::precision), precision))
                .map_err(|e| e.to_string())?
                .label("precision")
                .legend(legend_line(precision));
            let recall = RGBColor(148, 103, 189).stroke_width(2);
            chart
                .draw_series(LineSeries::new(series(Quality::recall), recall))
                .map_err(|e| e.to_string())?
                .label("recall")
                .legend(legend_line(recall));
            let mut lines = vec![("proposed review", proposed.review, PROPOSED_COLOUR), ("proposed block", proposed.block, PROPOSED_COLOUR)];
            lines.extend(target.map(|t| ("target precision", t, TARGET_COLOUR)));
            for (name, x, colour) in lines {
                let style = colour.stroke_width(1);
                chart
                    .draw_series(LineSeries::new(vertical(x, 1.05), style))
                    .map_err(|e| e.to_string())?
                    .label(format!("{name} {x}"))
                    .legend(legend_line(style));
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
            root.present().map_err(|e| e.to_string())
        })();
        drawn?;
    }
    Ok(svg)
}
