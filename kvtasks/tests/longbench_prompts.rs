//! The LongBench task table against the official configuration: the fixtures
//! `dataset2prompt.json`/`dataset2maxlen.json` are verbatim copies of THUDM/LongBench
//! `LongBench/config/` (commit 2e00731), and the rules below are those of `pred.py`/`eval.py`
//! as described in paper-protocol.md §3 and §5.

use std::path::Path;

use kvtasks::longbench::prompts::{fill_template, postprocess_prediction};
use kvtasks::longbench::{build_request, load_subset, subset, truncate_middle, Category, Metric, PromptTokenizer, AVERAGE_15, SUBSETS};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/longbench").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("fixture json")
}

#[test]
fn prompts_and_lengths_are_the_official_ones() {
    let prompts = fixture("dataset2prompt.json");
    let maxlen = fixture("dataset2maxlen.json");
    let prompts = prompts.as_object().expect("object");
    assert_eq!(prompts.len(), 21);
    assert_eq!(SUBSETS.len(), 21);
    // the same subsets, in pred.py's order
    let ours: Vec<&str> = SUBSETS.iter().map(|s| s.name).collect();
    let pred_py_order = [
        "narrativeqa",
        "qasper",
        "multifieldqa_en",
        "multifieldqa_zh",
        "hotpotqa",
        "2wikimqa",
        "musique",
        "dureader",
        "gov_report",
        "qmsum",
        "multi_news",
        "vcsum",
        "trec",
        "triviaqa",
        "samsum",
        "lsht",
        "passage_count",
        "passage_retrieval_en",
        "passage_retrieval_zh",
        "lcc",
        "repobench-p",
    ];
    assert_eq!(ours, pred_py_order);
    let mut official: Vec<&str> = prompts.keys().map(String::as_str).collect();
    official.sort_unstable();
    let mut sorted = ours.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, official);
    for s in SUBSETS.iter() {
        assert_eq!(Some(s.prompt), prompts[s.name].as_str(), "prompt of {}", s.name);
        assert_eq!(Some(s.max_new_tokens as u64), maxlen[s.name].as_u64(), "max_new_tokens of {}", s.name);
    }
}

#[test]
fn metrics_rules_and_categories_follow_eval_py_and_the_paper() {
    let metric_of = |n: &str| subset(n).map(|s| s.metric);
    for n in ["narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique", "triviaqa"] {
        assert_eq!(metric_of(n), Some(Metric::QaF1), "{n}");
    }
    for n in ["gov_report", "qmsum", "multi_news", "samsum"] {
        assert_eq!(metric_of(n), Some(Metric::Rouge), "{n}");
    }
    assert_eq!(metric_of("multifieldqa_zh"), Some(Metric::QaF1Zh));
    assert_eq!(metric_of("dureader"), Some(Metric::RougeZh));
    assert_eq!(metric_of("vcsum"), Some(Metric::RougeZh));
    assert_eq!(metric_of("trec"), Some(Metric::Classification));
    assert_eq!(metric_of("lsht"), Some(Metric::Classification));
    assert_eq!(metric_of("passage_retrieval_en"), Some(Metric::Retrieval));
    assert_eq!(metric_of("passage_retrieval_zh"), Some(Metric::RetrievalZh));
    assert_eq!(metric_of("passage_count"), Some(Metric::Count));
    assert_eq!(metric_of("lcc"), Some(Metric::CodeSim));
    assert_eq!(metric_of("repobench-p"), Some(Metric::CodeSim));

    let names = |f: &dyn Fn(&kvtasks::longbench::Subset) -> bool| -> Vec<&str> { SUBSETS.iter().filter(|s| f(s)).map(|s| s.name).collect() };
    assert_eq!(names(&|s| !s.chat_template), ["trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"]);
    assert_eq!(names(&|s| s.first_line_only), ["trec", "triviaqa", "samsum", "lsht"]);
    assert_eq!(names(&|s| s.stops_at_newline()), ["samsum"]);
    let mut e = names(&|s| s.in_longbench_e);
    e.sort_unstable();
    let mut want = vec![
        "qasper",
        "multifieldqa_en",
        "hotpotqa",
        "2wikimqa",
        "gov_report",
        "multi_news",
        "trec",
        "triviaqa",
        "samsum",
        "passage_count",
        "passage_retrieval_en",
        "lcc",
        "repobench-p",
    ];
    want.sort_unstable();
    assert_eq!(e, want);

    // categories: synthetic is passage_retrieval_en only; passage_count and Chinese sets in none
    for c in Category::ALL {
        for d in c.datasets() {
            assert_eq!(subset(d).and_then(|s| s.category), Some(c), "{d}");
        }
    }
    assert_eq!(Category::Synthetic.datasets(), ["passage_retrieval_en"]);
    assert_eq!(subset("passage_count").and_then(|s| s.category), None);
    assert_eq!(AVERAGE_15.len(), 15);
    assert!(!AVERAGE_15.contains(&"passage_count"));
    let in_categories: usize = Category::ALL.iter().map(|c| c.datasets().len()).sum();
    assert_eq!(in_categories, 15);
}

#[test]
fn filling_is_one_pass_like_str_format() {
    let s = subset("repobench-p").expect("subset");
    let p = s.format_prompt("ctx {input} {x}", "INPUT {context}");
    assert_eq!(p, "Please complete the code given below. \nctx {input} {x}INPUT {context}Next line of code:\n");
    assert_eq!(fill_template("{a}{context}{", "C", "I"), "{a}C{");
}

/// Characters as tokens after a BOS id 0 that `decode` skips (as skip_special_tokens does).
struct CharTokenizer;

impl PromptTokenizer for CharTokenizer {
    fn encode(&self, text: &str) -> Vec<u32> {
        std::iter::once(0).chain(text.chars().map(|c| c as u32)).collect()
    }
    fn decode(&self, ids: &[u32]) -> String {
        ids.iter().filter(|&&i| i != 0).filter_map(|&i| char::from_u32(i)).collect()
    }
}

#[test]
fn middle_truncation_by_tokens() {
    let tok = CharTokenizer;
    // 1 BOS + 10 chars = 11 tokens
    assert_eq!(truncate_middle("abcdefghij", &tok, 11), "abcdefghij");
    // max 6: half 3 -> [BOS a b] + [h i j]
    assert_eq!(truncate_middle("abcdefghij", &tok, 6), "abhij");
    // odd max 7: half still 3
    assert_eq!(truncate_middle("abcdefghij", &tok, 7), "abhij");
    // half 0: Python's ids[-0:] keeps everything on the right
    assert_eq!(truncate_middle("abcdefghij", &tok, 1), "abcdefghij");
}

#[test]
fn requests_carry_the_generation_rules() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/longbench/data");
    let trec = load_subset(&dir, "trec", false).expect("fixture");
    let samsum = subset("samsum").expect("samsum");
    let trec_subset = subset("trec").expect("trec");
    let r = build_request(trec_subset, &trec[1], &CharTokenizer, None);
    assert_eq!(
        r.prompt,
        "Please determine the type of the question below. Here are some examples of questions.\n\n\
         Question: Name a {context} city.\nType: City\nWhich city hosts the {input} festival?"
    );
    assert!(!r.apply_chat_template);
    assert_eq!((r.max_new_tokens, r.min_new_tokens, r.stop_at_newline), (64, 0, false));
    assert_eq!(r.all_classes.as_deref().map(<[String]>::len), Some(3));
    let s = build_request(samsum, &trec[0], &CharTokenizer, Some(40));
    assert!(s.stop_at_newline && s.min_new_tokens == 1 && !s.apply_chat_template);
    assert_eq!(s.prompt.chars().count(), 39, "20 + 20 tokens kept, one of them the BOS");
    let qasper = build_request(subset("qasper").expect("qasper"), &trec[0], &CharTokenizer, None);
    assert!(qasper.apply_chat_template);
    assert_eq!(qasper.max_new_tokens, 128);

    assert_eq!(postprocess_prediction(trec_subset, "\n\nCity\nIndividual"), "City");
    assert_eq!(postprocess_prediction(subset("qasper").expect("qasper"), "\na\nb"), "\na\nb");
}
