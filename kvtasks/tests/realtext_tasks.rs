//! Real-text tasks: corpora parse, passage retrieval has exactly one right paragraph, passage count
//! equals the distinct paragraphs of the context, code completion's answer is the real next line,
//! every prompt fits its target, and generation is deterministic.

use std::collections::BTreeSet;

use kvtasks::realtext::{self, CodeConfig, CodeRepo, Corpus, CorpusName, PassageConfig};
use kvtasks::sample::{self, ByteTokenizer, ScoringKind, TextTokenizer};

fn corpus(n: CorpusName) -> Corpus {
    Corpus::from_cache(n).unwrap_or_else(|e| panic!("{e}"))
}

fn split_paragraphs(context: &str) -> Vec<String> {
    context.split("\n\n").enumerate().map(|(i, p)| p.strip_prefix(&format!("Paragraph {}: ", i + 1)).expect("numbered paragraph").to_string()).collect()
}

#[test]
fn corpora_load_with_expected_sizes() {
    assert_eq!(corpus(CorpusName::Sotu).docs.len(), 233);
    let moby = corpus(CorpusName::MobyDick);
    assert_eq!(moby.docs.len(), 135, "the package's chapter_N.json files");
    assert!(moby.docs[0].title.starts_with("CHAPTER 1. Loomings"));
    let kjv = corpus(CorpusName::Kjv);
    assert_eq!(kjv.docs.len(), 1189, "KJV has 1189 chapters");
    assert_eq!(kjv.docs[0].title, "Genesis 1");
    assert!(kjv.docs[0].text.starts_with("In the beginning God created the heaven and the earth. And the earth"));
    assert_eq!(kjv.docs[1188].title, "Revelation 22");
}

#[test]
fn passage_retrieval_has_one_right_paragraph() {
    let tok = ByteTokenizer;
    for name in [CorpusName::Sotu, CorpusName::MobyDick, CorpusName::Kjv] {
        let c = corpus(name);
        for target in [6000usize, 20_000] {
            let cfg = PassageConfig { corpus: name, target_tokens: target, passage_tokens: 600, num_samples: 4, seed: 11 };
            let s = realtext::passage_retrieval_samples(&c, &cfg, &tok).unwrap();
            for x in &s {
                assert!(tok.count(&x.prompt()) <= target, "{}", x.id);
                assert!(tok.count(&x.prompt()) as f64 >= 0.6 * target as f64, "{}", x.id);
                let ps = split_paragraphs(&x.context);
                assert!(ps.len() >= 2);
                let quote = x.question.split("\n\n").nth(2).unwrap();
                let holders: Vec<usize> = ps.iter().enumerate().filter(|(_, p)| p.contains(quote)).map(|(i, _)| i + 1).collect();
                assert_eq!(holders.len(), 1, "{}", x.id);
                assert_eq!(x.answers, vec![format!("Paragraph {}", holders[0])]);
                assert_eq!(x.scoring, ScoringKind::LongbenchRetrieval);
                assert!(x.prefix_instruction.as_deref().unwrap().contains(&format!("Here are {} paragraphs", ps.len())));
            }
            let again = realtext::passage_retrieval_samples(&c, &cfg, &tok).unwrap();
            assert_eq!(sample::to_jsonl(&s).unwrap(), sample::to_jsonl(&again).unwrap());
        }
    }
}

#[test]
fn passage_count_answer_is_the_number_of_distinct_paragraphs() {
    let tok = ByteTokenizer;
    let c = corpus(CorpusName::MobyDick);
    let cfg = PassageConfig { corpus: CorpusName::MobyDick, target_tokens: 16_000, passage_tokens: 500, num_samples: 8, seed: 2 };
    let s = realtext::passage_count_samples(&c, &cfg, &tok).unwrap();
    let mut saw_duplicates = false;
    for x in &s {
        assert!(tok.count(&x.prompt()) <= 16_000);
        let ps = split_paragraphs(&x.context);
        let distinct = ps.iter().collect::<BTreeSet<_>>().len();
        assert_eq!(x.answers, vec![distinct.to_string()]);
        saw_duplicates |= distinct < ps.len();
        assert_eq!(x.scoring, ScoringKind::LongbenchCount);
    }
    assert!(saw_duplicates, "some samples must contain duplicates");
    assert_eq!(sample::to_jsonl(&s).unwrap(), sample::to_jsonl(&realtext::passage_count_samples(&c, &cfg, &tok).unwrap()).unwrap());
}

#[test]
fn code_completion_answer_is_the_real_next_line() {
    let tok = ByteTokenizer;
    let repo = CodeRepo::from_cache().unwrap_or_else(|e| panic!("{e}"));
    assert!(repo.files.iter().any(|(p, _)| p == "gguf/gguf_reader.py"));
    for target in [3000usize, 30_000] {
        let cfg = CodeConfig { target_tokens: target, num_samples: 6, seed: 9 };
        let s = realtext::code_completion_samples(&repo, &cfg, &tok).unwrap();
        for x in &s {
            let n = tok.count(&x.prompt());
            assert!(n <= target && n as f64 >= 0.8 * target as f64, "{}: {n}", x.id);
            let file = x.metadata["file"].as_str().unwrap();
            let line = x.metadata["line_index"].as_u64().unwrap() as usize;
            let text = &repo.files.iter().find(|(p, _)| p == file).unwrap().1;
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(x.answers[0], lines[line].trim());
            // The context ends with exactly the lines before the answer.
            assert!(x.context.ends_with(&format!("{}\n", lines[line - 1])), "{}", x.id);
            assert_eq!(x.question, "Next line of code:\n");
            assert_eq!(x.scoring, ScoringKind::LongbenchCodeSim);
        }
        assert_eq!(sample::to_jsonl(&s).unwrap(), sample::to_jsonl(&realtext::code_completion_samples(&repo, &cfg, &tok).unwrap()).unwrap());
    }
}

#[test]
fn scoring_dispatch_uses_longbench_metrics() {
    let tok = ByteTokenizer;
    let c = corpus(CorpusName::Kjv);
    let cfg = PassageConfig { corpus: CorpusName::Kjv, target_tokens: 8000, passage_tokens: 400, num_samples: 1, seed: 4 };
    let x = &realtext::passage_retrieval_samples(&c, &cfg, &tok).unwrap()[0];
    let right = sample::score(x.scoring, &x.answers[0], &x.answers).unwrap();
    assert_eq!(right["retrieval_score"], 1.0);
    let wrong = sample::score(x.scoring, "Paragraph 999", &x.answers).unwrap();
    assert_eq!(wrong["retrieval_score"], 0.0);
    let count = sample::score(ScoringKind::LongbenchCount, "There are 7 unique paragraphs", &["7".to_string()]).unwrap();
    assert_eq!(count["count_score"], 1.0);
    let code = sample::score(ScoringKind::LongbenchCodeSim, "# comment\nreturn x + 1\n", &["return x + 1".to_string()]).unwrap();
    assert_eq!(code["code_sim_score"], 1.0);
    let pk = sample::score(ScoringKind::Passkey, "The pass key is 1234567.", &["1234567".to_string()]).unwrap();
    assert_eq!((pk["exact_match"], pk["partial_match"]), (1.0, 1.0));
}
