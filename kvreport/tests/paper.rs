//! compare_paper on a run directory shaped like the paper's Llama-3 results
//! (tests/fixtures/paper_shaped, see its README), and the radar charts of the paper's Figure 1
//! drawn from it.

mod common;

use std::path::PathBuf;

use kvreport::paper::{
    compare_paper, comparisons, model_slug, paper_model, paper_report, paper_results, radar_svg, Comparison, RADAR_PAPER_CLASS, RADAR_RUN_CLASS,
};
use kvreport::svg::{RADAR_CENTER, RADAR_RADIUS};
use kvreport::{load_runs, write_reports, Leaderboard, LeaderboardRow};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/paper_shaped")
}

fn cells(line: &str) -> Vec<String> {
    line.trim().trim_matches('|').split('|').map(|c| c.trim().to_string()).collect()
}

#[test]
fn compare_paper_prints_run_paper_and_difference_side_by_side() {
    let loaded = load_runs(&[fixture()]).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let lb = Leaderboard::build(&loaded.cells);
    let md = compare_paper(&lb.rows);
    assert!(md.starts_with("# Comparison with the paper\n"));
    assert!(md.contains("\n## llama3-8b-instruct (paper: llama3-8b-instruct)\n"));
    assert!(md.contains("9 numbers compared"), "{md}");

    let rows: Vec<Vec<String>> = md.lines().filter(|l| l.starts_with('|')).map(cells).collect();
    assert_eq!(rows[0], ["method", "budget", "paper method", "category", "kvbench", "paper", "Δ", "source"]);
    let body: Vec<Vec<String>> = rows[2..].iter().map(|r| r[..7].to_vec()).collect();
    let expect: Vec<Vec<&str>> = vec![
        vec!["full", "–", "Baseline", "Single-Doc QA", "36.83", "36.83", "+0.00"],
        vec!["full", "–", "Baseline", "Synthetic", "67.00", "67.00", "+0.00"],
        vec!["full", "–", "Baseline", "Code", "54.11", "54.11", "+0.00"],
        vec!["h2o", "4x", "H2O 4x", "Single-Doc QA", "34.97", "34.97", "+0.00"],
        vec!["h2o", "4x", "H2O 4x", "Synthetic", "66.00", "66.00", "+0.00"],
        vec!["h2o", "4x", "H2O 4x", "Code", "50.00", "53.01", "-3.01"],
        vec!["kivi-2bit", "–", "KIVI-2bit", "Single-Doc QA", "36.34", "36.34", "+0.00"],
        vec!["kivi-2bit", "–", "KIVI-2bit", "Synthetic", "67.50", "67.50", "+0.00"],
        vec!["kivi-2bit", "–", "KIVI-2bit", "Code", "48.75", "48.75", "+0.00"],
    ];
    assert_eq!(body, expect);
    // snapkv has no published counterpart
    assert!(!md.contains("| snapkv"));
    // every compared number cites its source section
    assert!(rows[2..].iter().all(|r| r[7].contains("§4.2")));
}

#[test]
fn comparisons_carry_numbers_and_sources() {
    let loaded = load_runs(&[fixture()]).unwrap();
    let lb = Leaderboard::build(&loaded.cells);
    let c = comparisons(&lb.rows, &paper_results().unwrap());
    assert_eq!(c.len(), 9);
    let h2o_code = c.iter().find(|c| c.paper_method == "H2O 4x" && c.category == "Code").unwrap();
    assert!((h2o_code.difference() + 3.01).abs() < 1e-9);
}

#[test]
fn write_reports_writes_the_comparison_when_asked() {
    let out = tempfile::tempdir().unwrap();
    let s = write_reports(&[fixture()], out.path(), true).unwrap();
    assert!(s.files.iter().any(|f| f.ends_with("paper_comparison.md")));
    let text = std::fs::read_to_string(out.path().join("paper_comparison.md")).unwrap();
    assert_eq!(text, compare_paper(&Leaderboard::build(&load_runs(&[fixture()]).unwrap().cells).rows));
    let out2 = tempfile::tempdir().unwrap();
    let s = write_reports(&[fixture()], out2.path(), false).unwrap();
    assert!(!s.files.iter().any(|f| f.ends_with("paper_comparison.md")));
    assert!(!out2.path().join("paper_comparison.md").exists());
}

#[test]
fn the_ambiguous_llama3_streamingllm_4x_cell_is_marked() {
    let loaded = load_runs(&[fixture()]).unwrap();
    let mut rows = Leaderboard::build(&loaded.cells).rows;
    // The fixture's H2O 4x row, relabelled as StreamingLLM at the same budget and at 2x.
    let h2o = rows.iter().find(|r| r.method == "h2o").unwrap().clone();
    let as_stream = |ratio: f64| {
        let mut r = h2o.clone();
        r.method = "streamingllm".into();
        r.method_label = "streamingllm".into();
        r.ratio = Some(ratio);
        r
    };
    let plain = compare_paper(&rows);
    assert!(!plain.contains('‡'), "nothing ambiguous is compared: {plain}");
    rows.push(as_stream(2.0));
    let two = compare_paper(&rows);
    assert!(!two.contains('‡'), "2x is not ambiguous: {two}");
    rows.push(as_stream(4.0));
    let md = compare_paper(&rows);
    let marked: Vec<Vec<String>> = md.lines().filter(|l| l.starts_with('|') && l.contains('‡')).map(cells).collect();
    assert!(!marked.is_empty());
    assert!(marked.iter().all(|r| r[2] == "StreamLLM 4x"), "{marked:?}");
    assert!(md.contains("\n‡ ambiguous: the paper's source has two Llama-3 StreamingLLM 4x sets"), "{md}");
    assert!(md.contains("35.50"), "the other set's average is given");
}

fn fixture_rows() -> Vec<LeaderboardRow> {
    Leaderboard::build(&load_runs(&[fixture()]).unwrap().cells).rows
}

/// A small well-formedness check: every tag closes in order, one root element, attributes are
/// quoted, and every `&` starts an entity. Returns the root element's name.
fn well_formed(xml: &str) -> Result<String, String> {
    for (i, _) in xml.match_indices('&') {
        let rest = &xml[i..];
        let entity = ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"].iter().any(|e| rest.starts_with(e));
        if !entity {
            return Err(format!("bare & at {i}"));
        }
    }
    let mut stack: Vec<String> = Vec::new();
    let mut root: Option<String> = None;
    let mut rest = xml;
    while let Some(start) = rest.find('<') {
        if stack.is_empty() && root.is_some() {
            return Err("content after the root element".into());
        }
        let end = rest[start..].find('>').ok_or("unclosed tag")? + start;
        let tag = &rest[start + 1..end];
        rest = &rest[end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack.pop().ok_or_else(|| format!("</{name}> closes nothing"))?;
            if open != name.trim() {
                return Err(format!("<{open}> closed by </{name}>"));
            }
            continue;
        }
        let self_closing = tag.ends_with('/');
        let body = tag.trim_end_matches('/');
        let name: String = body.chars().take_while(|c| !c.is_whitespace()).collect();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':') {
            return Err(format!("bad tag name in <{tag}>"));
        }
        // attributes: name="value" pairs
        let mut attrs = body[name.len()..].trim();
        while !attrs.is_empty() {
            let eq = attrs.find("=\"").ok_or_else(|| format!("unquoted attribute in <{tag}>"))?;
            if attrs[..eq].contains(char::is_whitespace) || attrs[..eq].contains('"') {
                return Err(format!("bad attribute name in <{tag}>"));
            }
            let close = attrs[eq + 2..].find('"').ok_or_else(|| format!("unterminated attribute in <{tag}>"))? + eq + 2;
            attrs = attrs[close + 1..].trim_start();
        }
        if stack.is_empty() {
            root = Some(name.clone());
        }
        if !self_closing {
            stack.push(name);
        }
    }
    if !stack.is_empty() {
        return Err(format!("unclosed elements {stack:?}"));
    }
    if !rest.trim().is_empty() {
        return Err("text after the root element".into());
    }
    root.ok_or_else(|| "no element".into())
}

fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let i = tag.find(&key)? + key.len();
    Some(&tag[i..i + tag[i..].find('"')?])
}

/// The `<polygon>` elements of a class, whole (start tag, title, end tag).
fn polygons<'a>(svg: &'a str, class: &str) -> Vec<&'a str> {
    let start = format!("<polygon class=\"{class}\"");
    svg.match_indices(&start).map(|(i, _)| &svg[i..i + svg[i..].find("</polygon>").unwrap() + "</polygon>".len()]).collect()
}

fn points(polygon: &str) -> Vec<(f64, f64)> {
    attr(polygon, "points")
        .unwrap()
        .split(' ')
        .map(|p| {
            let (x, y) = p.split_once(',').unwrap();
            (x.parse().unwrap(), y.parse().unwrap())
        })
        .collect()
}

/// The point of `value` on axis `axis` of `n` (clockwise from the top) on a 0–`max` scale, by hand.
fn expected_vertex(axis: usize, n: usize, value: f64, max: f64) -> (f64, f64) {
    let degrees = -90.0 + 360.0 * axis as f64 / n as f64;
    let r = RADAR_RADIUS * value / max;
    (RADAR_CENTER.0 + r * degrees.to_radians().cos(), RADAR_CENTER.1 + r * degrees.to_radians().sin())
}

fn assert_near(got: (f64, f64), want: (f64, f64)) {
    let d = ((got.0 - want.0).powi(2) + (got.1 - want.1).powi(2)).sqrt();
    assert!(d <= 0.01, "vertex {got:?}, expected {want:?} ({d} px off)");
}

#[test]
fn write_reports_draws_the_papers_radar_for_the_llama3_fixture() {
    let out = tempfile::tempdir().unwrap();
    let s = write_reports(&[fixture()], out.path(), true).unwrap();
    let name = "paper_radar_llama3-8b-instruct.svg";
    let path = out.path().join(name);
    let listed: Vec<String> = s.files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(&listed[listed.len() - 2..], ["paper_comparison.md", name], "{listed:?}");
    let svg = std::fs::read_to_string(&path).unwrap();
    assert_eq!(well_formed(&svg), Ok("svg".to_string()));

    // one solid polygon per run method × budget with a counterpart, one dashed per counterpart
    let run = polygons(&svg, RADAR_RUN_CLASS);
    let paper = polygons(&svg, RADAR_PAPER_CLASS);
    let titles = |ps: &[&str]| -> Vec<String> { ps.iter().map(|p| p[p.find("<title>").unwrap() + 7..p.find("</title>").unwrap()].to_string()).collect() };
    assert_eq!(titles(&run), ["full (kvbench)", "h2o 4x (kvbench)", "kivi-2bit (kvbench)"]);
    assert_eq!(titles(&paper), ["Baseline (paper)", "H2O 4x (paper)", "KIVI-2bit (paper)"]);
    assert!(run.iter().all(|p| attr(p, "stroke-dasharray").is_none()));
    assert!(paper.iter().all(|p| attr(p, "stroke-dasharray").is_some()));
    for (r, p) in run.iter().zip(&paper) {
        assert_eq!(attr(r, "stroke"), attr(p, "stroke"), "a method and its counterpart share a colour");
    }
    let mut colours: Vec<&str> = run.iter().map(|p| attr(p, "stroke").unwrap()).collect();
    colours.dedup();
    assert_eq!(colours.len(), 3);
    assert!(!svg.contains("snapkv"), "snapkv has no published counterpart");

    // the fixture covers three categories: three axes, three vertices per polygon
    for axis in ["Single-Doc QA", "Synthetic", "Code"] {
        assert!(svg.contains(&format!(">{axis}</text>")), "{axis} axis");
    }
    assert!(!svg.contains(">Multi-Doc QA<") && !svg.contains(">Few-shot<"));
    assert!(run.iter().chain(&paper).all(|p| points(p).len() == 3));
    // the largest plotted value is 67.5 (KIVI-2bit synthetic): rings every 20 up to 80
    assert_eq!(svg.matches("<circle class=\"c-grid\"").count(), 4);
    for v in ["20", "40", "60", "80"] {
        assert!(svg.contains(&format!(">{v}</text>")), "ring {v}");
    }
    // full's Single-Doc QA (36.83) straight up; h2o 4x's Code (50.00) at 150° clockwise from
    // the x axis, 0.625 of the radius out; the paper's H2O 4x Code (53.01) beside it
    assert_near(points(run[0])[0], (RADAR_CENTER.0, RADAR_CENTER.1 - RADAR_RADIUS * 36.83 / 80.0));
    assert_near(points(run[1])[2], (RADAR_CENTER.0 - 118.75 * 3f64.sqrt() / 2.0, RADAR_CENTER.1 + 118.75 / 2.0));
    assert_near(points(paper[1])[2], expected_vertex(2, 3, 53.01, 80.0));
    assert!(svg.contains("llama3-8b-instruct: LongBench by category"), "the title names the model");

    // embedded under its model's section, with what the lines mean
    let md = std::fs::read_to_string(out.path().join("paper_comparison.md")).unwrap();
    let section = &md[md.find("\n## llama3-8b-instruct").unwrap()..];
    assert!(section.contains(&format!("\n![radar]({name})\n")), "{md}");
    assert!(section.contains("Solid lines are kvbench's") && section.contains("dashed lines in the same colour the paper's"), "{md}");
    assert_eq!(md, compare_paper(&fixture_rows()));

    // deterministic
    let again = tempfile::tempdir().unwrap();
    write_reports(&[fixture()], again.path(), true).unwrap();
    assert_eq!(std::fs::read(again.path().join(name)).unwrap(), svg.as_bytes());
}

#[test]
fn a_run_without_a_paper_counterpart_writes_no_radar() {
    let run = tempfile::tempdir().unwrap();
    common::write_fixture(run.path());
    let out = tempfile::tempdir().unwrap();
    let s = write_reports(&[run.path().to_path_buf()], out.path(), true).unwrap();
    assert!(s.files.iter().any(|f| f.ends_with("paper_comparison.md")));
    assert!(!s.files.iter().any(|f| f.to_string_lossy().contains("paper_radar")), "{:?}", s.files);
    let written: Vec<String> = std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!written.iter().any(|f| f.starts_with("paper_radar")), "{written:?}");
    let md = std::fs::read_to_string(out.path().join("paper_comparison.md")).unwrap();
    assert!(md.contains("No (model, method, budget, category) of this run has a published counterpart"));
    assert!(!md.contains("![radar]"));

    // only snapkv (no counterpart), or counterparts with fewer than three categories: no radar
    let rows = fixture_rows();
    let snapkv: Vec<LeaderboardRow> = rows.iter().filter(|r| r.method == "snapkv").cloned().collect();
    assert!(paper_report(&snapkv).radars.is_empty());
    let two_categories: Vec<LeaderboardRow> = rows
        .iter()
        .cloned()
        .map(|mut r| {
            r.categories.retain(|c, _| !c.contains("code"));
            r
        })
        .collect();
    let report = paper_report(&two_categories);
    assert!(report.markdown.contains("numbers compared"), "the table remains");
    assert!(report.radars.is_empty() && !report.markdown.contains("![radar]"), "{}", report.markdown);
}

#[test]
fn two_models_with_one_slug_get_two_radar_files() {
    let mut rows = fixture_rows();
    let renamed: Vec<LeaderboardRow> = rows
        .iter()
        .cloned()
        .map(|mut r| {
            r.model = "Llama3-8B-Instruct".into();
            r
        })
        .collect();
    rows.extend(renamed);
    let report = paper_report(&rows);
    let names: Vec<&str> = report.radars.iter().map(|r| r.file_name.as_str()).collect();
    assert_eq!(names, ["paper_radar_llama3-8b-instruct.svg", "paper_radar_llama3-8b-instruct-2.svg"]);
    let second = &report.markdown[report.markdown.find("\n## Llama3-8B-Instruct").unwrap()..];
    assert!(second.contains("![radar](paper_radar_llama3-8b-instruct-2.svg)"));
    assert_eq!(model_slug("meta-llama/Meta-Llama-3-8B-Instruct"), "meta-llama-meta-llama-3-8b-instruct");
    assert_eq!(model_slug("Mistral-7B-Instruct-v0.2"), "mistral-7b-instruct-v0-2");
    assert_eq!(model_slug("__"), "model");
}

fn comparison(model: &str, row: &str, budget: &str, method: &str, category: &str, kvbench: f64, paper: f64) -> Comparison {
    Comparison {
        model: model.into(),
        row: row.into(),
        budget: budget.into(),
        paper_method: method.into(),
        category: category.into(),
        kvbench,
        paper,
        source: "§4.2".into(),
    }
}

#[test]
fn radar_vertex_of_50_on_a_0_to_100_scale_and_escaped_text() {
    let m = "llama3 <8b> & \"co\"";
    let comps = vec![
        comparison(m, "h2o", "4x", "H2O 4x", "Single-Doc QA", 30.0, 96.0),
        comparison(m, "h2o", "4x", "H2O 4x", "Multi-Doc QA", 50.0, 60.0),
        comparison(m, "h2o", "4x", "H2O 4x", "Summarization", 20.0, 25.0),
        comparison(m, "h2o", "4x", "H2O 4x", "qasper", 99.0, 99.0),
        // two categories only: left out
        comparison(m, "kivi-2bit", "–", "KIVI-2bit", "Single-Doc QA", 10.0, 10.0),
        comparison(m, "kivi-2bit", "–", "KIVI-2bit", "Code", 10.0, 10.0),
        // another model: not in this chart
        comparison("other", "h2o", "4x", "H2O 4x", "Single-Doc QA", 10.0, 10.0),
    ];
    // the checker itself rejects what is not well-formed
    for bad in ["<svg><g></svg>", "<svg a=b/>", "<svg>a & b</svg>", "<svg/><svg/>", "<svg>"] {
        assert!(well_formed(bad).is_err(), "{bad}");
    }
    let svg = radar_svg(m, &comps).unwrap();
    assert_eq!(well_formed(&svg), Ok("svg".to_string()));
    let run = polygons(&svg, RADAR_RUN_CLASS);
    let paper = polygons(&svg, RADAR_PAPER_CLASS);
    assert_eq!((run.len(), paper.len()), (1, 1));
    // three axes (qasper is a dataset, not a category); the largest value, 96, makes the scale 0–100
    assert_eq!(svg.matches("<line class=\"c-axis\"").count(), 3);
    assert!(svg.contains(">100</text>") && !svg.contains(">120</text>"));
    // 50 on the second of three axes: half the radius out, 30° below the x axis
    let want = (RADAR_CENTER.0 + 0.5 * RADAR_RADIUS * 3f64.sqrt() / 2.0, RADAR_CENTER.1 + 0.5 * RADAR_RADIUS / 2.0);
    assert_near(points(run[0])[1], want);
    assert_near(points(run[0])[1], expected_vertex(1, 3, 50.0, 100.0));
    assert_near(points(paper[0])[0], (RADAR_CENTER.0, RADAR_CENTER.1 - 0.96 * RADAR_RADIUS));
    assert!(svg.contains("llama3 &lt;8b&gt; &amp; &quot;co&quot;: LongBench by category"));
    assert!(!svg.contains("<8b>"));
    // nothing with three categories: no chart
    assert_eq!(radar_svg(m, &comps[4..]), None);
    assert_eq!(radar_svg("absent", &comps), None);
}

#[test]
fn the_31500_token_rope_ablation_is_not_compared_with_the_7500_token_numbers() {
    // The paper's LongBench numbers for Llama-3 are at 7,500 tokens; its rope ×32 passkey model
    // is the same paper model (the passkey tables), but the 31,500-token LongBench ablation
    // (configs/models/llama-3-8b-instruct-rope32x-31500.toml) has no published table.
    assert_eq!(paper_model("llama-3-8b-instruct"), Some("llama3-8b-instruct"));
    assert_eq!(paper_model("llama-3-8b-instruct-rope32x"), Some("llama3-8b-instruct"));
    assert_eq!(paper_model("llama-3-8b-instruct-rope32x-31500"), None);
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/models/llama-3-8b-instruct-rope32x-31500.toml");
    let text = std::fs::read_to_string(&model).unwrap();
    assert!(text.contains("context_limit = 31500") && text.contains("rope_theta_factor = 32.0"), "{}", model.display());
}
