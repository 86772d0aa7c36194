//! Building part of a task: `TaskSpec::build_where` gives exactly the samples of a full build that
//! its filter accepts (same order, same bytes), `sample_ids` names a full build's samples without
//! building them, and the samples left out cost no tokenizer work (what makes a one-sample probe of
//! a generated task cheap).

use std::cell::Cell;

use kvtasks::sample::{self, ByteTokenizer, Sample, TextTokenizer};
use kvtasks::spec::TaskSpec;

/// The byte tokenizer, counting the characters it is asked to tokenize.
#[derive(Default)]
struct Metered {
    chars: Cell<usize>,
}

impl TextTokenizer for Metered {
    fn encode(&self, text: &str) -> Vec<u32> {
        self.chars.set(self.chars.get() + text.len());
        ByteTokenizer.encode(text)
    }
    fn decode(&self, ids: &[u32]) -> String {
        ByteTokenizer.decode(ids)
    }
}

fn spec(task: &str, lengths: Vec<usize>, samples: usize, limit: Option<usize>) -> TaskSpec {
    TaskSpec { task: task.into(), lengths, samples, seed: 5, limit, ..TaskSpec::default() }
}

fn jsonl(s: &[Sample]) -> String {
    sample::to_jsonl(s).unwrap()
}

#[test]
fn build_where_equals_the_full_build_filtered_and_skips_the_rest() {
    let specs = [
        spec("ruler/niah_single_2", vec![2048], 6, None),
        spec("ruler/vt", vec![2048, 4096], 4, None),
        spec("ruler/cwe", vec![8192], 5, Some(4)),
        spec("retrieval/sotu", vec![2048], 5, None),
        spec("count/kjv", vec![3000], 4, None),
        spec("code", vec![2048], 6, None),
    ];
    for sp in &specs {
        let full_tok = Metered::default();
        let all = sp.build(&full_tok).unwrap_or_else(|e| panic!("{}: {e}", sp.task));
        let ids = sp.sample_ids().unwrap().unwrap_or_else(|| panic!("{}: ids known beforehand", sp.task));
        assert_eq!(ids, all.iter().map(|s| s.id.clone()).collect::<Vec<_>>(), "{}: sample_ids names the full build", sp.task);
        // Every other sample, and one sample alone (the last, so that sample 0 is not kept).
        let last = ids.last().unwrap().clone();
        for keep in [Box::new(|i: usize, _: &str| i % 2 == 1) as Box<dyn Fn(usize, &str) -> bool>, Box::new(move |_, id: &str| id == last)] {
            let wanted: Vec<&str> = ids.iter().enumerate().filter(|(i, id)| keep(*i, id)).map(|(_, id)| id.as_str()).collect();
            let tok = Metered::default();
            let part = sp.build_where(&tok, &|id| wanted.contains(&id)).unwrap();
            let expected: Vec<Sample> = all.iter().filter(|s| wanted.contains(&s.id.as_str())).cloned().collect();
            assert_eq!(jsonl(&part), jsonl(&expected), "{}: the kept samples are the full build's", sp.task);
            assert!(
                tok.chars.get() < full_tok.chars.get(),
                "{}: building {} of {} samples tokenized {} chars, the full build {}",
                sp.task,
                part.len(),
                all.len(),
                tok.chars.get(),
                full_tok.chars.get()
            );
        }
    }
}

#[test]
fn tasks_without_ids_beforehand_build_and_filter() {
    let sp = TaskSpec { task: "passkey".into(), lengths: vec![200, 400], depths: 3, trials: 2, ..TaskSpec::default() };
    assert!(sp.sample_ids().unwrap().is_none());
    let all = sp.build(&ByteTokenizer).unwrap();
    let want = all[3].id.clone();
    let part = sp.build_where(&ByteTokenizer, &|id| id == want).unwrap();
    assert_eq!(jsonl(&part), jsonl(&all[3..4]));
}
