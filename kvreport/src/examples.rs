//! `examples.md` / `examples.html`: what the numbers mean in text. For a few samples per task,
//! the reference answers and every method's prediction side by side, with the first word where
//! each prediction departs from the full cache's, so a reader sees how compression fails.

use std::collections::BTreeMap;

use crate::format::{budget_label, fixed, html_escape, md_escape};
use crate::html::{page, report_header, score_badge_style, Palette};
use crate::leaderboard::{category_rank, Leaderboard, LeaderboardRow};
use crate::load::Cell;
use crate::record::RunInfo;

/// Samples shown per (model, task).
pub const SAMPLES_PER_TASK: usize = 3;

/// Byte ranges of the whitespace-separated words of `s`.
pub fn word_spans(s: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    for (i, c) in s.char_indices() {
        if c.is_whitespace() {
            if let Some(st) = start.take() {
                out.push((st, i));
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(st) = start {
        out.push((st, s.len()));
    }
    out
}

/// Where a prediction first differs, word by word, from the full cache's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    /// 1-based index of the first differing word.
    pub word: usize,
    /// Byte range of that word in the prediction; None when the prediction ended before it.
    pub span: Option<(usize, usize)>,
}

/// None when both texts have the same words (whitespace differences are ignored).
pub fn divergence(full: &str, prediction: &str) -> Option<Divergence> {
    let fw = word_spans(full);
    let pw = word_spans(prediction);
    let n = fw.len().min(pw.len());
    for i in 0..n {
        if full[fw[i].0..fw[i].1] != prediction[pw[i].0..pw[i].1] {
            return Some(Divergence { word: i + 1, span: Some(pw[i]) });
        }
    }
    match pw.len().cmp(&fw.len()) {
        std::cmp::Ordering::Equal => None,
        std::cmp::Ordering::Greater => Some(Divergence { word: n + 1, span: Some(pw[n]) }),
        std::cmp::Ordering::Less => Some(Divergence { word: n + 1, span: None }),
    }
}

/// One method's answer to one sample.
#[derive(Clone, Debug)]
pub struct Entry {
    pub method: String,
    pub method_label: String,
    pub ratio: Option<f64>,
    pub is_full: bool,
    /// None when the method's cell has no record for the sample.
    pub score: Option<f64>,
    pub prediction: Option<String>,
    /// Against the full cache's prediction; None when identical or nothing to compare.
    pub divergence: Option<Divergence>,
}

#[derive(Clone, Debug)]
pub struct ExampleSample {
    pub sample_id: String,
    pub answers: Vec<String>,
    /// Metadata worth showing next to the id (length, depth, ...), as `key=value`.
    pub facts: Vec<String>,
    pub entries: Vec<Entry>,
}

#[derive(Clone, Debug)]
pub struct ExampleGroup {
    pub model: String,
    pub task: String,
    pub category: String,
    /// A full-cache cell exists (divergences are measured against it).
    pub has_full: bool,
    pub samples: Vec<ExampleSample>,
}

const FACT_KEYS: [&str; 9] =
    ["length", "context_length", "words", "background_len_words", "context_length_tokens", "depth", "depth_percent", "dataset", "max_seq_length"];

/// Picks the samples and lines up every method's prediction (see the module doc).
pub fn collect_examples(cells: &[Cell], per_task: usize) -> Vec<ExampleGroup> {
    // (model, category rank, task) -> cells
    type TaskKey = (String, (usize, String), String);
    let mut by_task: BTreeMap<TaskKey, Vec<&Cell>> = BTreeMap::new();
    for c in cells {
        by_task.entry((c.info.model.clone(), category_rank(&c.info.category), c.info.task.clone())).or_default().push(c);
    }
    let mut groups = Vec::new();
    for ((model, (_, category), task), mut cs) in by_task {
        // one cell per (label, ratio): the first by id; then leaderboard row order
        cs.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        let mut chosen: Vec<&Cell> = Vec::new();
        for c in cs {
            if !chosen.iter().any(|x| x.info.method_label == c.info.method_label && x.info.ratio == c.info.ratio) {
                chosen.push(c);
            }
        }
        chosen.sort_by(|a, b| {
            b.info.is_full().cmp(&a.info.is_full()).then_with(|| a.info.method_label.cmp(&b.info.method_label)).then_with(|| {
                match (a.info.ratio, b.info.ratio) {
                    (None, None) => std::cmp::Ordering::Equal,
                    (None, Some(_)) => std::cmp::Ordering::Less,
                    (Some(_), None) => std::cmp::Ordering::Greater,
                    (Some(x), Some(y)) => x.total_cmp(&y),
                }
            })
        });
        let full = chosen.iter().find(|c| c.info.is_full()).copied();
        let reference = full.or_else(|| chosen.iter().find(|c| !c.records.is_empty()).copied());
        let Some(reference) = reference else { continue };
        let mut samples = Vec::new();
        for rec in reference.records.iter().take(per_task) {
            let full_pred = full.and_then(|f| f.records.iter().find(|r| r.sample_id == rec.sample_id)).map(|r| &r.prediction);
            let entries = chosen
                .iter()
                .map(|c| {
                    let r = c.records.iter().find(|r| r.sample_id == rec.sample_id);
                    let divergence = match (r, full_pred, c.info.is_full()) {
                        (Some(r), Some(fp), false) => divergence(fp, &r.prediction),
                        _ => None,
                    };
                    Entry {
                        method: c.info.method.clone(),
                        method_label: c.info.method_label.clone(),
                        ratio: c.info.ratio,
                        is_full: c.info.is_full(),
                        score: r.map(|r| r.score),
                        prediction: r.map(|r| r.prediction.clone()),
                        divergence,
                    }
                })
                .collect();
            let facts = FACT_KEYS.iter().filter_map(|k| rec.metadata.get(*k).map(|v| format!("{k}={}", compact_json(v)))).collect();
            samples.push(ExampleSample { sample_id: rec.sample_id.clone(), answers: rec.answers.clone(), facts, entries });
        }
        groups.push(ExampleGroup { model, task, category, has_full: full.is_some(), samples });
    }
    groups
}

fn compact_json(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Words shown in Markdown before a long prediction is cut (extended to show the divergence).
const MD_WORDS: usize = 120;

/// The prediction as Markdown: escaped, the diverging word in bold, long texts cut with "…".
fn md_prediction(pred: &str, div: Option<&Divergence>) -> String {
    let spans = word_spans(pred);
    let keep = match div.and_then(|d| d.span) {
        Some(_) => MD_WORDS.max(div.map(|d| d.word + 30).unwrap_or(0)),
        None => MD_WORDS,
    };
    let (text, cut) = if spans.len() > keep { (&pred[..spans[keep - 1].1], true) } else { (pred, false) };
    let mut out = match div.and_then(|d| d.span) {
        Some((a, b)) if b <= text.len() => {
            format!("{}**{}**{}", md_escape(&text[..a]), md_escape(&text[a..b]), md_escape(&text[b..]))
        }
        _ => md_escape(text),
    };
    if cut {
        out.push_str(" …");
    }
    if out.trim().is_empty() {
        out = "*(empty)*".into();
    }
    out
}

fn divergence_note(e: &Entry, has_full: bool) -> String {
    if e.is_full {
        return "reference".into();
    }
    if e.prediction.is_none() || !has_full {
        return "–".into();
    }
    match &e.divergence {
        None => "same as full".into(),
        Some(d) if d.span.is_none() => format!("diverges at word {} (ends early)", d.word),
        Some(d) => format!("diverges at word {}", d.word),
    }
}

/// `examples.md`.
pub fn examples_markdown(groups: &[ExampleGroup], experiment: &str) -> String {
    let mut o = format!("# Example predictions: {}\n\n", md_escape(experiment));
    o.push_str(&format!(
        "For each model and task, the first {SAMPLES_PER_TASK} samples of the full-cache cell (or of the first cell \
         when there is none) with every method's prediction. The first word where a prediction departs from the \
         full cache's is in **bold**; line breaks are shown as ⏎ and long predictions are cut (…).\n"
    ));
    if groups.is_empty() {
        o.push_str("\nNo records yet.\n");
    }
    for g in groups {
        o.push_str(&format!("\n## {} · {} ({})\n", md_escape(&g.model), md_escape(&g.task), md_escape(&g.category)));
        if !g.has_full {
            o.push_str("\nNo full-cache cell for this task: predictions are shown without divergence marks.\n");
        }
        for s in &g.samples {
            o.push_str(&format!("\n### Sample {}\n\n", md_escape(&s.sample_id)));
            if !s.facts.is_empty() {
                o.push_str(&format!("{}\n\n", md_escape(&s.facts.join(", "))));
            }
            let answers: Vec<String> = s.answers.iter().map(|a| format!("“{}”", md_escape(a))).collect();
            o.push_str(&format!("Reference answer(s): {}\n\n", if answers.is_empty() { "–".into() } else { answers.join(" · ") }));
            let header: Vec<String> = ["method", "budget", "score", "vs. full", "prediction"].iter().map(|s| s.to_string()).collect();
            let rows: Vec<Vec<String>> = s
                .entries
                .iter()
                .map(|e| {
                    vec![
                        md_escape(&e.method_label),
                        budget_label(e.ratio),
                        e.score.map(|v| fixed(v, 1)).unwrap_or_else(|| "–".into()),
                        divergence_note(e, g.has_full),
                        match &e.prediction {
                            Some(p) => md_prediction(p, e.divergence.as_ref()),
                            None => "*(no record for this sample)*".into(),
                        },
                    ]
                })
                .collect();
            o.push_str(&crate::leaderboard::markdown_table(&header, &rows, &[false, true, true, false, false]));
        }
    }
    o
}

/// The prediction as HTML: escaped, the diverging word in `<mark>`, the text after it dimmed.
fn html_prediction(pred: &str, div: Option<&Divergence>) -> String {
    if pred.is_empty() {
        return "<i>(empty)</i>".into();
    }
    match div {
        Some(Divergence { span: Some((a, b)), .. }) => {
            format!("{}<mark>{}</mark><span class=\"after\">{}</span>", html_escape(&pred[..*a]), html_escape(&pred[*a..*b]), html_escape(&pred[*b..]))
        }
        Some(Divergence { span: None, .. }) => format!("{}<mark>⟂ ends here</mark>", html_escape(pred)),
        None => html_escape(pred),
    }
}

/// `examples.html`.
pub fn examples_html(groups: &[ExampleGroup], runs: &[RunInfo], lb: &Leaderboard) -> String {
    let palette = Palette::new(&lb.rows);
    let row_of = |model: &str, e: &Entry| -> Option<&LeaderboardRow> {
        lb.rows.iter().find(|r| r.model == model && r.method_label == e.method_label && r.ratio == e.ratio)
    };
    let nav = [("index.html", "← Report"), ("#top", "Example predictions")];
    let header = report_header(runs, "kvbench example predictions", &nav);
    let mut b = String::from("<h2 id=\"top\">Example predictions</h2>");
    b.push_str(&format!(
        "<p class=\"lead\">For each model and task, the first {SAMPLES_PER_TASK} samples of the full-cache cell \
         (or of the first cell when there is none), with every method's prediction. The first word where a \
         prediction departs from the full cache's is <mark>highlighted</mark> and the rest dimmed.</p>"
    ));
    if groups.is_empty() {
        b.push_str("<p class=\"note\">No records yet.</p>");
    }
    // table of contents
    if !groups.is_empty() {
        b.push_str("<details open><summary>Tasks</summary><ul>");
        for (i, g) in groups.iter().enumerate() {
            b.push_str(&format!(
                "<li><a href=\"#g{i}\">{} · {}</a> <span class=\"note\">({})</span></li>",
                html_escape(&g.model),
                html_escape(&g.task),
                html_escape(&g.category)
            ));
        }
        b.push_str("</ul></details>");
    }
    for (i, g) in groups.iter().enumerate() {
        b.push_str(&format!(
            "<h3 id=\"g{i}\">{} · <code>{}</code> <span class=\"note\">({})</span></h3>",
            html_escape(&g.model),
            html_escape(&g.task),
            html_escape(&g.category)
        ));
        if !g.has_full {
            b.push_str("<p class=\"note\">No full-cache cell for this task: no divergence marks.</p>");
        }
        for s in &g.samples {
            b.push_str("<div class=\"sample\">");
            b.push_str(&format!("<h4>Sample <code>{}</code>", html_escape(&s.sample_id)));
            if !s.facts.is_empty() {
                b.push_str(&format!(" <span class=\"note\">{}</span>", html_escape(&s.facts.join(" · "))));
            }
            b.push_str("</h4><div class=\"answers\"><span class=\"note\">reference answer(s):</span> ");
            for a in &s.answers {
                b.push_str(&format!("<span class=\"chip\">{}</span>", html_escape(a)));
            }
            b.push_str(
                "</div><div class=\"tablewrap\"><table><thead><tr><th>method</th><th class=\"num\">budget</th>\
                        <th class=\"num\">score</th><th>vs. full</th><th>prediction</th></tr></thead><tbody>",
            );
            for e in &s.entries {
                let color = row_of(&g.model, e).map(|r| palette.color(r)).unwrap_or_else(|| "#888".into());
                let note = divergence_note(e, g.has_full);
                let badge = if e.is_full || note == "–" {
                    format!("<span class=\"note\">{}</span>", html_escape(&note))
                } else if e.divergence.is_none() {
                    format!("<span class=\"badge same\">{}</span>", html_escape(&note))
                } else {
                    format!("<span class=\"badge diff\">{}</span>", html_escape(&note))
                };
                let score = match e.score {
                    Some(v) => {
                        format!("<span class=\"badge\" style=\"{}\">{}</span>", score_badge_style(v), fixed(v, 1))
                    }
                    None => "–".into(),
                };
                let pred = match &e.prediction {
                    Some(p) => format!("<span class=\"predbox\">{}</span>", html_prediction(p, e.divergence.as_ref())),
                    None => "<i>(no record for this sample)</i>".into(),
                };
                b.push_str(&format!(
                    "<tr{}><td><span class=\"dot\" style=\"background:{}\"></span>{}</td><td class=\"num\">{}</td>\
                     <td class=\"num\">{}</td><td>{}</td><td class=\"pred\">{}</td></tr>",
                    if e.is_full { " class=\"full\"" } else { "" },
                    color,
                    html_escape(&e.method_label),
                    html_escape(&budget_label(e.ratio)),
                    score,
                    badge,
                    pred
                ));
            }
            b.push_str("</tbody></table></div></div>");
        }
    }
    b.push_str(&format!("<footer>Generated by kvreport {}.</footer>", env!("CARGO_PKG_VERSION")));
    let experiment = runs.first().map(|r| r.experiment.as_str()).unwrap_or("");
    page(&format!("{experiment} — example predictions"), &header, &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divergence_finds_first_differing_word() {
        assert_eq!(divergence("a b c", "a b c"), None);
        assert_eq!(divergence("a b c", "a  b\nc"), None);
        let d = divergence("The pass key is 1234567.", "The pass key is 7654321.").unwrap();
        assert_eq!(d.word, 5);
        assert_eq!(d.span, Some((16, 24)));
        assert_eq!(divergence("a b c", "a b").unwrap(), Divergence { word: 3, span: None });
        assert_eq!(divergence("a b", "a b c").unwrap(), Divergence { word: 3, span: Some((4, 5)) });
        assert_eq!(divergence("", "x").unwrap().word, 1);
    }

    #[test]
    fn markdown_bolds_the_divergence() {
        let p = "The pass key is 7654321.";
        let d = divergence("The pass key is 1234567.", p);
        assert_eq!(md_prediction(p, d.as_ref()), "The pass key is **7654321.**");
        assert_eq!(html_prediction(p, d.as_ref()), "The pass key is <mark>7654321.</mark><span class=\"after\"></span>");
    }
}
