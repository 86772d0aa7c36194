//! LongBench subsets as `Sample`s: prompt parts, fields, metadata, scoring through the sample
//! against the metric functions called directly, serde, and errors. The fixture files are written
//! by the tests in the official JSONL format.

use std::path::Path;

use kvtasks::longbench::metrics::{classification_score, code_sim_score, qa_f1_score, rouge_score, Metric};
use kvtasks::longbench::prompts::first_line;
use kvtasks::longbench::{category_of, longbench_samples, split_prompt, subset, DataError, OTHER_CATEGORY, PAPER_DATASETS, SUBSETS};
use kvtasks::sample::{self, Sample, ScoringKind};
use serde_json::{json, Value};

const TREC_CLASSES: [&str; 4] = ["Abbreviation", "Description of something", "Description of a person", "Other location"];

fn write_subset(dir: &Path, file: &str, rows: &[Value]) {
    let mut text = String::new();
    for r in rows {
        text.push_str(&serde_json::to_string(r).expect("json"));
        text.push('\n');
    }
    std::fs::write(dir.join(file), text).expect("write fixture");
}

fn row(subset: &str, id: &str, context: &str, input: &str, answers: &[&str], length: u64, classes: Option<&[&str]>) -> Value {
    json!({
        "input": input,
        "context": context,
        "answers": answers,
        "length": length,
        "dataset": subset,
        "language": "en",
        "all_classes": classes,
        "_id": id,
    })
}

/// narrativeqa (3), trec (2, with all_classes), lcc (2), samsum (2), qasper_e (1).
fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write_subset(
        d,
        "narrativeqa.jsonl",
        &[
            row(
                "narrativeqa",
                "nqa-0",
                "Once upon a time the knight rode to Camelot.\nHe met a dragon.",
                "Where did the knight ride?",
                &["To Camelot", "Camelot"],
                11,
                None,
            ),
            // braces inside the row stay literal (one-pass filling)
            row("narrativeqa", "nqa-1", "A story with {input} and {context} in it.", "What is {context}?", &["a placeholder"], 8, None),
            row("narrativeqa", "nqa-2", "Ünïcödé story — «quotes» 日本語.", "Which language?", &["Japanese"], 4, None),
        ],
    );
    let classes: &[&str] = &TREC_CLASSES;
    write_subset(
        d,
        "trec.jsonl",
        &[
            row(
                "trec",
                "trec-0",
                "Question: What does NASA stand for?\nType: Abbreviation\nQuestion: Who was Lincoln?\nType: Description of a person",
                "Question: What is a cat?\nType:",
                &["Description of something"],
                20,
                Some(classes),
            ),
            row(
                "trec",
                "trec-1",
                "Question: Where is Paris?\nType: Other location",
                "Question: Who is Ada Lovelace?\nType:",
                &["Description of a person"],
                9,
                Some(classes),
            ),
        ],
    );
    write_subset(
        d,
        "lcc.jsonl",
        &[
            row("lcc", "lcc-0", "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n", "", &["    return a - b"], 12, None),
            row("lcc", "lcc-1", "int main() {\n    int x = 0;\n", "", &["    return x;"], 7, None),
        ],
    );
    write_subset(
        d,
        "samsum.jsonl",
        &[
            row(
                "samsum",
                "samsum-0",
                "Dialogue: Ann: hi\nBob: hello\nSummary: Ann and Bob greet each other.",
                "Dialogue: Tom: lunch at noon?\nSue: sure\nSummary: ",
                &["Tom and Sue will have lunch at noon."],
                14,
                None,
            ),
            row("samsum", "samsum-1", "Dialogue: A: x\nSummary: A says x.", "Dialogue: Kim: I lost my keys.\nSummary: ", &["Kim lost her keys."], 6, None),
        ],
    );
    write_subset(
        d,
        "qasper_e.jsonl",
        &[row("qasper", "qasper-e-0", "We evaluate on a synthetic corpus.", "Which dataset?", &["a synthetic corpus"], 3500, None)],
    );
    dir
}

fn records(dir: &Path, file: &str) -> Vec<Value> {
    std::fs::read_to_string(dir.join(file)).expect("read").lines().map(|l| serde_json::from_str(l).expect("json")).collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().expect("array").iter().map(|x| x.as_str().expect("string").to_string()).collect()
}

#[test]
fn samples_follow_the_records_and_official_prompts() {
    let dir = fixture();
    for (name, file, n) in [("narrativeqa", "narrativeqa.jsonl", 3usize), ("trec", "trec.jsonl", 2), ("lcc", "lcc.jsonl", 2), ("samsum", "samsum.jsonl", 2)] {
        let s = subset(name).expect("subset");
        let rows = records(dir.path(), file);
        let samples = longbench_samples(dir.path(), name, false, None).expect("samples");
        assert_eq!(samples.len(), n, "{name}");
        for (x, r) in samples.iter().zip(&rows) {
            let ctx = r["context"].as_str().expect("context");
            let input = r["input"].as_str().expect("input");
            assert_eq!(x.prompt(), s.format_prompt(ctx, input), "{name} {}", x.id);
            assert_eq!(x.context, ctx, "the context part is the record's context");
            let prefix = s.prompt.split("{context}").next().expect("prefix");
            assert_eq!(x.prefix_instruction.as_deref(), Some(prefix));
            assert!(x.question.contains(input));
            assert_eq!(x.id, r["_id"].as_str().expect("id"));
            assert_eq!(x.task, format!("longbench/{name}"));
            assert_eq!(x.answers, strings(&r["answers"]));
            assert_eq!(x.max_new_tokens, s.max_new_tokens);
            assert_eq!(x.answer_prefix, None);
            assert_eq!(x.scoring, ScoringKind::Longbench { metric: s.metric, first_line_only: s.first_line_only });
            let m = &x.metadata;
            assert_eq!(m["subset"], json!(name));
            assert_eq!(m["category"], json!(category_of(name)));
            assert_eq!(m["language"], json!("en"));
            assert_eq!(m["length"], r["length"]);
            assert_eq!(m["chat_template"], json!(s.chat_template));
            assert_eq!(m["stop_at_newline"], json!(name == "samsum"));
            assert_eq!(m["longbench_e"], json!(false));
            assert_eq!(m.get("all_classes"), r["all_classes"].as_array().map(|_| &r["all_classes"]));
        }
    }
    // concrete values
    let nqa = longbench_samples(dir.path(), "narrativeqa", false, None).expect("nqa");
    assert_eq!(
        nqa[1].question,
        "\n\nNow, answer the question based on the story asconcisely as you can, using a single \
         phrase if possible. Do not provide any explanation.\n\nQuestion: What is {context}?\n\nAnswer:"
    );
    assert_eq!(nqa[1].context, "A story with {input} and {context} in it.");
    assert_eq!(nqa[0].max_new_tokens, 128);
    assert_eq!(nqa[0].metadata["category"], json!("single_doc_qa"));
    assert_eq!(nqa[0].metadata["chat_template"], json!(true));
    let trec = longbench_samples(dir.path(), "trec", false, None).expect("trec");
    assert_eq!(trec[0].question, "\nQuestion: What is a cat?\nType:");
    assert_eq!(trec[0].max_new_tokens, 64);
    assert_eq!(trec[0].metadata["category"], json!("few_shots"));
    assert_eq!(trec[0].metadata["chat_template"], json!(false));
    assert_eq!(trec[1].all_classes(), Some(TREC_CLASSES.iter().map(|c| c.to_string()).collect()));
    let lcc = longbench_samples(dir.path(), "lcc", false, None).expect("lcc");
    assert_eq!(lcc[0].question, "Next line of code:\n");
    assert_eq!(lcc[0].prefix_instruction.as_deref(), Some("Please complete the code given below. \n"));
    assert_eq!(lcc[0].metadata["category"], json!("code"));
    assert_eq!(lcc[0].all_classes(), None);
    assert!(!lcc[0].metadata.contains_key("all_classes"));
    let samsum = longbench_samples(dir.path(), "samsum", false, None).expect("samsum");
    assert_eq!(samsum[0].max_new_tokens, 128);
    assert_eq!(samsum[0].metadata["stop_at_newline"], json!(true));
}

#[test]
fn limit_and_longbench_e() {
    let dir = fixture();
    let two = longbench_samples(dir.path(), "narrativeqa", false, Some(2)).expect("limit");
    assert_eq!(two.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["nqa-0", "nqa-1"]);
    assert!(longbench_samples(dir.path(), "narrativeqa", false, Some(0)).expect("zero").is_empty());
    assert_eq!(longbench_samples(dir.path(), "lcc", false, Some(10)).expect("big").len(), 2);
    let e = longbench_samples(dir.path(), "qasper", true, None).expect("qasper_e");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].task, "longbench_e/qasper");
    assert_eq!(e[0].metadata["longbench_e"], json!(true));
    assert_eq!(e[0].metadata["length"], json!(3500));
    let err = longbench_samples(dir.path(), "narrativeqa", true, None).expect_err("not in E");
    assert!(matches!(err, DataError::NotInLongBenchE { .. }), "{err}");
}

/// `Sample::score` against the metric called directly, with the first-line cut where it applies.
#[test]
fn scoring_matches_the_metrics() {
    let dir = fixture();
    let max_over = |answers: &[String], f: &dyn Fn(&str) -> f64| answers.iter().map(|a| f(a)).fold(0.0f64, f64::max);

    // narrativeqa: qa_f1, no cut (the second line counts)
    let nqa = longbench_samples(dir.path(), "narrativeqa", false, None).expect("nqa");
    for pred in ["Camelot", "He rode to Camelot\nand then home", "", "the dragon"] {
        let got = nqa[0].score(pred).expect("score");
        let want = max_over(&nqa[0].answers, &|a| qa_f1_score(pred, a));
        assert_eq!(got.len(), 1);
        assert_eq!(got["qa_f1_score"], want, "{pred:?}");
        assert_eq!(sample::score(nqa[0].scoring, pred, &nqa[0].answers).expect("no classes needed"), got);
    }
    assert_eq!(nqa[0].score("Camelot").expect("s")["qa_f1_score"], 1.0);

    // trec: classification with all_classes, first line only
    let trec = longbench_samples(dir.path(), "trec", false, None).expect("trec");
    let classes: Vec<String> = TREC_CLASSES.iter().map(|c| c.to_string()).collect();
    for pred in [
        "Description of something",
        "\n\nDescription of something\nAbbreviation",
        "Abbreviation\nDescription of something",
        "Description of something, Abbreviation",
        "Description of a person",
        "nothing",
    ] {
        for x in &trec {
            let got = x.score(pred).expect("score");
            let want = max_over(&x.answers, &|a| classification_score(first_line(pred), a, &classes));
            assert_eq!(got["classification_score"], want, "{} {pred:?}", x.id);
        }
    }
    assert_eq!(trec[0].score("\n\nDescription of something\nAbbreviation").expect("s")["classification_score"], 1.0);
    assert_eq!(trec[0].score("Abbreviation\nDescription of something").expect("s")["classification_score"], 0.0);
    assert_eq!(trec[0].score("Description of something, Abbreviation").expect("s")["classification_score"], 0.5);
    // without all_classes the classification metric refuses, as the official code would crash
    assert!(sample::score(trec[0].scoring, "Abbreviation", &trec[0].answers).is_err());
    assert_eq!(
        sample::score_with_classes(trec[0].scoring, "Abbreviation", &trec[0].answers, Some(&classes)).expect("with classes"),
        trec[0].score("Abbreviation").expect("s")
    );

    // lcc: code_sim, no first-line cut (code_sim has its own first-code-line rule)
    let lcc = longbench_samples(dir.path(), "lcc", false, None).expect("lcc");
    for pred in ["    return a - b\n", "# subtract\n    return a - b", "```python\nreturn a-b\n```", ""] {
        let got = lcc[0].score(pred).expect("score");
        let want = max_over(&lcc[0].answers, &|a| code_sim_score(pred, a));
        assert_eq!(got["code_sim_score"], want, "{pred:?}");
    }
    assert_eq!(lcc[0].score("# c\n    return a - b").expect("s")["code_sim_score"], 1.0);

    // samsum: rouge-L, first line only
    let samsum = longbench_samples(dir.path(), "samsum", false, None).expect("samsum");
    for pred in
        ["Tom and Sue will have lunch at noon.", "\nTom and Sue will have lunch.\nDialogue: more text that would change the score", "Kim lost her keys.", ""]
    {
        for x in &samsum {
            let got = x.score(pred).expect("score");
            let want = max_over(&x.answers, &|a| rouge_score(first_line(pred), a));
            assert_eq!(got["rouge_score"], want, "{} {pred:?}", x.id);
            assert!((0.0..=1.0).contains(&got["rouge_score"]));
        }
    }
    let two_lines = "Tom and Sue will have lunch at noon.\nUnrelated words here entirely";
    assert_eq!(samsum[0].score(two_lines).expect("s")["rouge_score"], samsum[0].score("Tom and Sue will have lunch at noon.").expect("s")["rouge_score"]);
}

#[test]
fn serde_round_trip_and_stable_form() {
    let dir = fixture();
    let trec = longbench_samples(dir.path(), "trec", false, None).expect("trec");
    let line = sample::to_jsonl(&trec).expect("jsonl");
    let back: Vec<Sample> = line.lines().map(|l| serde_json::from_str(l).expect("parse")).collect();
    assert_eq!(back, trec);
    assert_eq!(back[0].score("Description of something").expect("s"), trec[0].score("Description of something").expect("s"));
    let v: Value = serde_json::from_str(line.lines().next().expect("line")).expect("json");
    assert_eq!(v["scoring"], json!({"longbench": {"metric": "classification", "first_line_only": true}}));
    let kind: ScoringKind = serde_json::from_value(json!({"longbench": {"metric": "code_sim", "first_line_only": false}})).expect("kind");
    assert_eq!(kind, ScoringKind::Longbench { metric: Metric::CodeSim, first_line_only: false });
    // the existing kinds keep their names
    assert_eq!(serde_json::to_value(ScoringKind::Passkey).expect("v"), json!("passkey"));
    assert_eq!(serde_json::to_value(ScoringKind::LongbenchCodeSim).expect("v"), json!("longbench_code_sim"));
}

#[test]
fn categories_and_kinds_of_every_subset() {
    let expect = [
        ("narrativeqa", "single_doc_qa"),
        ("qasper", "single_doc_qa"),
        ("multifieldqa_en", "single_doc_qa"),
        ("hotpotqa", "multi_doc_qa"),
        ("2wikimqa", "multi_doc_qa"),
        ("musique", "multi_doc_qa"),
        ("gov_report", "summarization"),
        ("qmsum", "summarization"),
        ("multi_news", "summarization"),
        ("trec", "few_shots"),
        ("triviaqa", "few_shots"),
        ("samsum", "few_shots"),
        ("passage_retrieval_en", "synthetic"),
        ("passage_count", OTHER_CATEGORY),
        ("lcc", "code"),
        ("repobench-p", "code"),
    ];
    assert_eq!(expect.map(|(n, _)| n), PAPER_DATASETS);
    for (name, cat) in expect {
        assert_eq!(category_of(name), cat, "{name}");
    }
    for zh in ["multifieldqa_zh", "dureader", "vcsum", "lsht", "passage_retrieval_zh"] {
        assert_eq!(category_of(zh), OTHER_CATEGORY);
    }
    assert_eq!(category_of("no_such_subset"), OTHER_CATEGORY);
    let first_line: Vec<&str> =
        SUBSETS.iter().filter(|s| matches!(ScoringKind::longbench(s), ScoringKind::Longbench { first_line_only: true, .. })).map(|s| s.name).collect();
    assert_eq!(first_line, ["trec", "triviaqa", "samsum", "lsht"]);
    // every official template splits cleanly at its single {context}
    for s in &SUBSETS {
        let p = split_prompt(s.prompt, "CTX", "IN");
        assert_eq!(p.context, "CTX", "{}", s.name);
        assert!(!p.prefix_instruction.is_empty(), "{}", s.name);
        let whole = format!("{}{}{}", p.prefix_instruction, p.context, p.question);
        assert_eq!(whole, s.format_prompt("CTX", "IN"), "{}", s.name);
    }
}

#[test]
fn templates_without_a_clean_split_keep_the_whole_prompt_in_context() {
    let p = split_prompt("Q: {input}\nDoc: {context}\nA:", "the doc", "why?");
    assert_eq!(p.prefix_instruction, "");
    assert_eq!(p.context, "Q: why?\nDoc: the doc\nA:");
    assert_eq!(p.question, "");
    let p = split_prompt("{context} and again {context}", "c", "i");
    assert_eq!((p.prefix_instruction.as_str(), p.context.as_str()), ("", "c and again c"));
    let p = split_prompt("no placeholder {x}", "c", "i");
    assert_eq!(p.context, "no placeholder {x}");
    // a stray brace before {context} stays in the prefix
    let p = split_prompt("a {b} {context}-{input}", "c", "i");
    assert_eq!(p.prefix_instruction, "a {b} ");
    assert_eq!(p.question, "-i");
}

#[test]
fn errors_are_clear() {
    let dir = fixture();
    let err = longbench_samples(dir.path(), "no_such_subset", false, None).expect_err("unknown");
    assert!(matches!(err, DataError::UnknownSubset { .. }));
    assert!(err.to_string().contains("no_such_subset"), "{err}");

    let err = longbench_samples(dir.path(), "hotpotqa", false, None).expect_err("missing");
    let path = dir.path().join("hotpotqa.jsonl");
    match &err {
        DataError::Missing { path: p } => assert_eq!(p, &path),
        other => panic!("expected Missing, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("kvbench data fetch longbench"), "{msg}");

    std::fs::write(dir.path().join("musique.jsonl"), "{\"input\": 1}\n").expect("write");
    let err = longbench_samples(dir.path(), "musique", false, None).expect_err("bad");
    assert!(matches!(err, DataError::BadRecord { line: 1, .. }), "{err}");
}
