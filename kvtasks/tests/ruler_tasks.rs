//! RULER-style suite: every task fits its token budget and fills most of it, the answers are really
//! recoverable from the context (needle values present, chains resolvable, word frequencies right),
//! the templates are RULER's, scoring is string_match_all/part, and generation is deterministic.

use std::collections::BTreeMap;

use kvtasks::ruler::{self, RulerConfig, RulerResources, RulerTask, RULER_TASKS};
use kvtasks::sample::{self, ByteTokenizer, ScoringKind, TextTokenizer};

fn res() -> RulerResources {
    RulerResources::from_cache().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_task_fits_and_fills_the_budget_and_is_deterministic() {
    let r = res();
    let tok = ByteTokenizer;
    for max in [8192usize, 24_000] {
        let cfg = RulerConfig { max_seq_length: max, num_samples: 3, seed: 7 };
        for task in RULER_TASKS {
            let s = ruler::ruler_samples(task, &cfg, &r, &tok).unwrap_or_else(|e| panic!("{}: {e}", task.name()));
            assert_eq!(s.len(), 3);
            for x in &s {
                let full = format!("{}{}", x.prompt(), x.answer_prefix.as_deref().unwrap());
                let n = tok.count(&full) + task.tokens_to_generate();
                assert!(n <= max, "{}: {n} > {max}", x.id);
                assert!(n as f64 >= 0.8 * max as f64, "{}: only {n} of {max}", x.id);
                assert_eq!(x.scoring, ScoringKind::RulerMatchAll);
                assert!(!x.answers.is_empty());
                // A perfect answer scores 1, an empty one 0.
                assert_eq!(sample::string_match_all(&x.answers.join(", "), &x.answers), 1.0);
                assert_eq!(sample::string_match_all("", &x.answers), 0.0);
            }
            let again = ruler::ruler_samples(task, &cfg, &r, &tok).unwrap();
            assert_eq!(sample::to_jsonl(&s).unwrap(), sample::to_jsonl(&again).unwrap(), "{}", task.name());
            // Samples differ from each other.
            assert_ne!(s[0].context, s[1].context);
        }
    }
}

#[test]
fn niah_answers_are_in_the_context_with_rulers_templates() {
    let r = res();
    let cfg = RulerConfig { max_seq_length: 8192, num_samples: 4, seed: 1 };
    for task in RULER_TASKS.iter().copied().filter(|t| t.niah_spec().is_some()) {
        let spec = task.niah_spec().unwrap();
        for x in ruler::ruler_samples(task, &cfg, &r, &ByteTokenizer).unwrap() {
            assert_eq!(x.answers.len(), spec.num_v * spec.num_q, "{}", x.id);
            for a in &x.answers {
                assert_eq!(x.context.matches(&format!("is: {a}.")).count(), 1, "{}: {a}", x.id);
            }
            let p = x.prefix_instruction.as_deref().unwrap();
            if spec.num_v * spec.num_q == 1 {
                assert!(p.starts_with("A special magic "), "{p}");
                assert!(x.question.starts_with("\nWhat is the special magic "), "{}", x.question);
                assert!(x.answer_prefix.as_deref().unwrap().ends_with("mentioned in the provided text is"));
            } else {
                assert!(p.starts_with("Some special magic "), "{p}");
                assert!(x.question.starts_with("\nWhat are all the special magic "));
            }
            if spec.haystack == ruler::Haystack::Noise {
                assert!(x.context.contains(ruler::NOISE));
            }
            if spec.value == ruler::NeedleType::Uuids {
                let a = &x.answers[0];
                assert_eq!(a.len(), 36);
                assert_eq!(&a[14..15], "4", "version 4 uuid: {a}");
            }
        }
    }
}

#[test]
fn variable_tracking_chain_resolves_to_the_answer() {
    let r = res();
    let cfg = RulerConfig { max_seq_length: 8192, num_samples: 3, seed: 3 };
    for x in ruler::ruler_samples(RulerTask::Vt, &cfg, &r, &ByteTokenizer).unwrap() {
        // Resolve the chain from the context alone.
        let mut assign: BTreeMap<String, String> = BTreeMap::new();
        for line in x.context.lines() {
            if let Some(rest) = line.strip_prefix("VAR ") {
                let (lhs, rhs) = rest.split_once(" = ").unwrap();
                assign.insert(lhs.trim().into(), rhs.trim().into());
            }
        }
        let value = x.question.split("value ").nth(1).unwrap().split(' ').next().unwrap().to_string();
        let resolve = |v: &str| {
            let mut cur = v.to_string();
            while let Some(next) = assign.get(&cur) {
                cur = next.strip_prefix("VAR ").unwrap_or(next).to_string();
            }
            cur
        };
        let found: Vec<String> = assign.keys().filter(|k| resolve(k) == value).cloned().collect();
        let mut want = x.answers.clone();
        want.sort();
        assert_eq!(found, want);
        assert_eq!(x.answers.len(), 5);
        assert!(x.prefix_instruction.as_deref().unwrap().contains("they are: "), "ICL example present");
    }
}

#[test]
fn word_extraction_answers_are_the_most_frequent_words() {
    let r = res();
    for max in [2048usize, 8192] {
        let cfg = RulerConfig { max_seq_length: max, num_samples: 2, seed: 5 };
        for x in ruler::ruler_samples(RulerTask::Cwe, &cfg, &r, &ByteTokenizer).unwrap() {
            let mut freq: BTreeMap<&str, usize> = BTreeMap::new();
            let toks: Vec<&str> = x.context.split(' ').collect();
            for pair in toks.chunks(2) {
                *freq.entry(pair[1]).or_default() += 1;
            }
            let expect = if max >= 4096 { 30 } else { 6 };
            assert_eq!(x.answers.len(), 10);
            for a in &x.answers {
                assert_eq!(freq[a.as_str()], expect, "{a}");
            }
            assert!(freq.iter().filter(|(w, _)| !x.answers.contains(&w.to_string())).all(|(_, &c)| c < expect));
        }
        for x in ruler::ruler_samples(RulerTask::Fwe, &cfg, &r, &ByteTokenizer).unwrap() {
            let mut freq: BTreeMap<&str, usize> = BTreeMap::new();
            for w in x.context.split(' ') {
                *freq.entry(w).or_default() += 1;
            }
            freq.remove("...");
            let mut ranked: Vec<(&str, usize)> = freq.into_iter().collect();
            ranked.sort_by_key(|r| std::cmp::Reverse(r.1));
            let top: Vec<String> = ranked[..3].iter().map(|(w, _)| w.to_string()).collect();
            assert_eq!(top, x.answers);
            assert!(ranked[2].1 > ranked[3].1, "top-3 are strictly more frequent");
        }
    }
}

#[test]
fn too_small_budget_is_an_error_not_a_panic() {
    let r = res();
    let cfg = RulerConfig { max_seq_length: 200, num_samples: 1, seed: 1 };
    assert!(ruler::ruler_samples(RulerTask::NiahSingle2, &cfg, &r, &ByteTokenizer).is_err());
}

#[test]
fn ruler_string_match_semantics() {
    let refs = vec!["Alpha-Beta".to_string(), "1234567".to_string()];
    assert_eq!(sample::string_match_all(" alpha-beta and 1234567\n", &refs), 1.0);
    assert_eq!(sample::string_match_all("ALPHA-BETA", &refs), 0.5);
    assert_eq!(sample::string_match_part("ALPHA-BETA", &refs), 1.0);
    assert_eq!(sample::string_match_part("nothing", &refs), 0.0);
    assert_eq!(RulerTask::from_name("niah_multikey_3"), Some(RulerTask::NiahMultikey3));
    assert_eq!(ByteTokenizer.decode(&ByteTokenizer.encode("héllo")), "héllo");
}

/// A ChatML template (SmolLM2's and Qwen2.5's turn markers, no system prompt).
fn chatml() -> kvformats::chat::ChatTemplate {
    let src = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    kvformats::chat::ChatTemplate::new(src, None, None).unwrap()
}

/// Byte tokens of the input as rendered through a chat template (what the engine's tokenizer does
/// with the model's template).
struct TemplatedBytes(kvformats::chat::ChatTemplate);

impl TextTokenizer for TemplatedBytes {
    fn encode(&self, text: &str) -> Vec<u32> {
        ByteTokenizer.encode(text)
    }
    fn decode(&self, ids: &[u32]) -> String {
        ByteTokenizer.decode(ids)
    }
    fn count_input(&self, s: &sample::Sample) -> usize {
        s.input_text(Some(&self.0)).unwrap().len()
    }
}

#[test]
fn cwe_example_answer_is_an_assistant_turn_under_a_chat_template() {
    let r = res();
    let tpl = chatml();
    // Byte tokens: 2,048 takes RULER's short example (20 words), 16,384 its long one (40 words,
    // which alone needs more than 4,096 bytes).
    for max in [2048usize, 16384] {
        let cfg = RulerConfig { max_seq_length: max, num_samples: 2, seed: 5 };
        for x in ruler::ruler_samples(RulerTask::Cwe, &cfg, &r, &TemplatedBytes(chatml())).unwrap() {
            assert_eq!(x.examples.len(), 1, "{}", x.id);
            let ex = &x.examples[0];
            let head = "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that appear most often.\n";
            assert!(ex.user.starts_with(head) && ex.user.ends_with("\nQuestion: What are the 10 most common words in the above list?"), "{}", ex.user);
            assert!(ex.assistant.starts_with(" Answer: The top 10 words that appear most often in the list are: 1. "), "{}", ex.assistant);
            assert!(ex.assistant.contains(" 10. "), "ten numbered answers: {}", ex.assistant);
            // Under the template: the example as a user turn, its answer as the assistant's turn,
            // then the task as the next user turn, and the reply opened with the answer prefix.
            let rendered = x.input_text(Some(&tpl)).unwrap();
            let want = format!(
                "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n{}<|im_end|>\n<|im_start|>user\n{head}{}{}<|im_end|>\n<|im_start|>assistant\n{}",
                ex.user,
                ex.assistant,
                x.context,
                x.question,
                x.answer_prefix.as_deref().unwrap()
            );
            assert_eq!(rendered, want);
            // Without a template the example is inline, as RULER's base template has it.
            assert_eq!(x.prompt(), format!("{}{}\n{head}{}{}", ex.user, ex.assistant, x.context, x.question));
            // Sized with the template inside the budget.
            let n = rendered.len() + RulerTask::Cwe.tokens_to_generate();
            assert!(n <= max && n as f64 >= 0.8 * max as f64, "{}: {n} of {max}", x.id);
            assert_eq!(x.metadata["input_tokens"], serde_json::json!(rendered.len()));
        }
    }
}

#[test]
fn haystacks_are_sized_with_the_chat_template_inside_the_budget() {
    let r = res();
    let cfg = RulerConfig { max_seq_length: 2048, num_samples: 2, seed: 9 };
    for task in [RulerTask::from_name("niah_single_1").unwrap(), RulerTask::from_name("niah_multikey_1").unwrap(), RulerTask::Vt] {
        let plain = ruler::ruler_samples(task, &cfg, &r, &ByteTokenizer).unwrap();
        let chat = ruler::ruler_samples(task, &cfg, &r, &TemplatedBytes(chatml())).unwrap();
        for (p, c) in plain.iter().zip(&chat) {
            let rendered = c.input_text(Some(&chatml())).unwrap().len();
            assert!(rendered + task.tokens_to_generate() <= cfg.max_seq_length, "{}: {rendered}", c.id);
            // The template's tokens come out of the haystack.
            let units = |s: &sample::Sample| s.metadata["haystack_units"].as_u64().unwrap();
            assert!(units(c) < units(p), "{}: {} vs {} units", c.id, units(c), units(p));
            assert!(p.examples.is_empty() && c.examples.is_empty());
        }
    }
}

#[test]
fn variable_tracking_example_is_followed_by_a_blank_line_as_in_ruler() {
    let r = res();
    let cfg = RulerConfig { max_seq_length: 4096, num_samples: 2, seed: 2 };
    for x in ruler::ruler_samples(RulerTask::Vt, &cfg, &r, &ByteTokenizer).unwrap() {
        let p = x.prefix_instruction.as_deref().unwrap();
        let at = p.rfind("\n\nMemorize and track the chain(s)").expect("a blank line before the task");
        // What precedes the blank line is the example's answer: five variable names.
        let answer = p[..at].rsplit("they are: ").next().unwrap();
        assert_eq!(answer.split_whitespace().count(), 5, "{answer:?}");
        assert!(p.starts_with("Memorize and track"), "the example comes first: {p:.40}");
    }
}
