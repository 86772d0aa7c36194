//! `score_predictions_file`, the API behind `kvbench score FILE.jsonl [-e] [--json]`: per-dataset
//! scores worked out by hand, the categories and the 15-task average, and errors that name the
//! file and line.

use std::path::Path;

use kvtasks::longbench::score::{summarize, DatasetScore};
use kvtasks::longbench::{score_predictions_file, ScoreError, AVERAGE_15};
use serde_json::json;

fn write(dir: &Path, lines: &[serde_json::Value]) -> std::path::PathBuf {
    let path = dir.join("preds.jsonl");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text).expect("write");
    path
}

#[test]
fn scores_a_small_file_by_hand() {
    let dir = tempfile::tempdir().expect("tempdir");
    let classes = json!(["City", "Color", "Individual"]);
    let path = write(
        dir.path(),
        &[
            // trec: first line only -> "City" matches (1.0); second: "Color or City" -> two matches, gt among them (0.5)
            json!({"dataset": "trec", "pred": "\nCity\nColor", "answers": ["City"], "all_classes": classes, "length": 100}),
            json!({"dataset": "passage_count", "pred": "3 or 4", "answers": ["3"], "all_classes": null, "length": 9000}),
            json!({"dataset": "trec", "pred": "Color or City", "answers": ["City"], "all_classes": classes, "length": 5000}),
            // qa_f1: max over answers: "the Eiffel Tower" vs ["tower", "Eiffel Tower"] -> 1.0
            json!({"dataset": "hotpotqa", "pred": "The Eiffel Tower.", "answers": ["tower", "Eiffel Tower"], "all_classes": null, "length": 1}),
            json!({"dataset": "hotpotqa", "pred": "", "answers": ["x"], "all_classes": null, "length": 1}),
        ],
    );
    let report = score_predictions_file(&path, false).expect("score");
    let by = |n: &str| report.datasets.iter().find(|d| d.dataset == n).cloned();
    // official order: hotpotqa before trec before passage_count
    let order: Vec<&str> = report.datasets.iter().map(|d| d.dataset.as_str()).collect();
    assert_eq!(order, ["hotpotqa", "trec", "passage_count"]);
    assert_eq!(by("trec").and_then(|d| d.score), Some(75.0));
    assert_eq!(by("trec").map(|d| (d.samples, d.metric)), Some((2, "classification_score")));
    assert_eq!(by("passage_count").and_then(|d| d.score), Some(50.0));
    assert_eq!(by("hotpotqa").and_then(|d| d.score), Some(50.0));
    // a partial run: no category is complete, so no category score and no 15-task average
    assert!(report.categories.iter().all(|c| c.score.is_none()));
    assert_eq!(report.average_15, None);

    let json = serde_json::to_value(&report).expect("serialize");
    assert_eq!(json["datasets"][1]["score"], json!(75.0));
    assert_eq!(json["categories"][0]["category"], json!("single_doc_qa"));
    let text = report.to_text();
    assert!(text.contains("trec") && text.contains("75.00") && text.contains("average (15 tasks)"), "{text}");

    // -e: buckets by length (<4000, <8000, rest); empty buckets are null
    let e = score_predictions_file(&path, true).expect("score -e");
    let trec = e.datasets.iter().find(|d| d.dataset == "trec").and_then(|d| d.buckets).expect("buckets");
    assert_eq!((trec.short, trec.medium, trec.long), (Some(100.0), Some(50.0), None));
    let json = serde_json::to_value(&e).expect("serialize");
    assert_eq!(json["datasets"][1]["buckets"], json!({"0-4k": 100.0, "4-8k": 50.0, "8k+": null}));
    assert!(e.to_text().contains("8k+"));
}

#[test]
fn categories_and_average_use_the_paper_grouping() {
    // dataset i gets score i+1; passage_count gets 1000 and must not move anything
    let mut datasets: Vec<DatasetScore> = AVERAGE_15
        .iter()
        .enumerate()
        .map(|(i, d)| DatasetScore { dataset: d.to_string(), metric: "x", samples: 1, score: Some(i as f64 + 1.0), buckets: None })
        .collect();
    datasets.push(DatasetScore { dataset: "passage_count".into(), metric: "x", samples: 1, score: Some(1000.0), buckets: None });
    let (cats, avg) = summarize(&datasets);
    let got: Vec<(&str, Option<f64>)> = cats.iter().map(|c| (c.category, c.score)).collect();
    assert_eq!(
        got,
        [
            ("single_doc_qa", Some(2.0)),
            ("multi_doc_qa", Some(5.0)),
            ("summarization", Some(8.0)),
            ("few_shots", Some(11.0)),
            ("synthetic", Some(13.0)),
            ("code", Some(14.5)),
        ]
    );
    assert_eq!(avg, Some(8.0));
}

#[test]
fn bad_lines_name_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("preds.jsonl");
    let cases = [
        ("{\"dataset\": \"trec\", \"pred\": \"x\", \"answers\": [\"City\"], \"all_classes\": [\"City\"]}\nnot json\n", 2, "not valid JSON"),
        ("\n{\"dataset\": \"nope\", \"pred\": \"x\", \"answers\": [], \"all_classes\": null}\n", 2, "unknown LongBench dataset"),
        ("{\"dataset\": \"lcc\", \"pred\": 3, \"answers\": [], \"all_classes\": null}\n", 1, "\"pred\""),
        ("{\"dataset\": \"lcc\", \"pred\": \"x\", \"answers\": \"a\", \"all_classes\": null}\n", 1, "\"answers\""),
        // the official retrieval_score raises on a reference without "Paragraph N"
        ("{\"dataset\": \"passage_retrieval_en\", \"pred\": \"1\", \"answers\": [\"none\"], \"all_classes\": null}\n", 1, "Paragraph"),
        // trec needs all_classes
        ("{\"dataset\": \"trec\", \"pred\": \"x\", \"answers\": [\"City\"], \"all_classes\": null}\n", 1, "all_classes"),
    ];
    for (text, line, needle) in cases {
        std::fs::write(&path, text).expect("write");
        let err = score_predictions_file(&path, false).expect_err(text);
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("{}:{line}:", path.display())), "{msg}");
        assert!(msg.contains(needle), "{msg}");
    }
    std::fs::write(&path, "{\"dataset\": \"lcc\", \"pred\": \"x\", \"answers\": [\"y\"], \"all_classes\": null}\n").expect("write");
    let msg = score_predictions_file(&path, true).expect_err("-e needs length").to_string();
    assert!(msg.contains(":1:") && msg.contains("length"), "{msg}");
    std::fs::write(&path, "\n\n").expect("write");
    assert!(matches!(score_predictions_file(&path, false), Err(ScoreError::Empty { .. })));
    let missing = dir.path().join("absent.jsonl");
    assert!(score_predictions_file(&missing, false).expect_err("missing").to_string().contains("absent.jsonl"));
}
