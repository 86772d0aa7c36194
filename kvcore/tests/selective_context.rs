//! The Selective-Context prompt compressor: units tile the text, selection respects the token
//! budget and prefers informative words, the chunked self-information equals the unchunked one
//! and the perplexity code's, and on 10 real essays the compressed prompt has the requested share
//! of tokens within ±5%.

mod common;

use kvcore::cache::FullCacheFactory;
use kvcore::device::{DType, RuntimeSettings};
use kvcore::loader::load;
use kvcore::registry::Registry;
use kvcore::sources::ModelFiles;
use kvplugins::selective_context::{select_units, split_units};

#[test]
fn units_tile_the_text() {
    for text in ["", "one", "  lead and trail  ", "a\n\nb\tc  d\n", "naïve café — “quoted” ", "\n\n"] {
        let units = split_units(text);
        let joined: String = units.iter().map(|u| &text[u.start..u.end]).collect();
        assert_eq!(joined, text, "units of {text:?}");
        for w in units.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
    }
    assert_eq!(split_units("a b  c").len(), 3);
}

#[test]
fn selection_fills_the_budget_by_information() {
    // Information 1, 10, 2, 12, 0.5 (ranking 3, 1, 2, 0, 4); token counts 1, 2, 1, 3, 1.
    let info = [1.0, 10.0, 2.0, 12.0, 0.5];
    let tokens = [1, 2, 1, 3, 1];
    let force = [false; 5];
    assert_eq!(select_units(&info, &tokens, &force, 3), vec![false, false, false, true, false]);
    assert_eq!(select_units(&info, &tokens, &force, 5), vec![false, true, false, true, false]);
    // Unit 3 (3 tokens) does not fit in 2: the next most informative units that fit are taken.
    assert_eq!(select_units(&info, &tokens, &force, 2), vec![false, true, false, false, false]);
    assert_eq!(select_units(&info, &tokens, &force, 4), vec![false, false, true, true, false]);
    // Forced units count against the budget.
    assert_eq!(select_units(&info, &tokens, &[true, false, false, false, true], 4), vec![true, true, false, false, true]);
    assert_eq!(select_units(&info, &tokens, &force, 100), vec![true; 5]);
}

fn smollm2() -> kvcore::loader::LoadedModel {
    let settings = RuntimeSettings::resolve(kvcore::device::DeviceSpec::Cpu, Some(DType::F32), None).unwrap();
    load(&ModelFiles::Gguf(common::smollm2_gguf()), settings).unwrap()
}

#[test]
fn surprisal_is_independent_of_chunking_and_matches_perplexity() {
    let mut lm = smollm2();
    let text = "The quick brown fox jumps over the lazy dog. Then it ran into the forest, where nobody saw it again for seven years.";
    let ids = lm.tokenizer.encode(text, false).unwrap().get_ids().to_vec();
    let whole = kvcore::generate::token_surprisal(&mut lm, &ids, 4096).unwrap();
    let chunked = kvcore::generate::token_surprisal(&mut lm, &ids, 5).unwrap();
    assert_eq!(whole.len(), ids.len() - 1);
    let worst = whole.iter().zip(&chunked).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-3, "chunked surprisal differs by {worst}");
    let ppl = kvcore::generate::perplexity(&mut lm, &FullCacheFactory, &ids, 1, 1, None).unwrap();
    let mean = whole.iter().map(|&v| f64::from(v)).sum::<f64>() / whole.len() as f64;
    assert!((mean - ppl.nll).abs() < 1e-3, "mean surprisal {mean} vs perplexity nll {}", ppl.nll);
}

#[test]
fn compressed_prompts_reach_the_requested_rate_on_ten_essays() {
    let home = kvcore::sources::kvbench_home();
    let dir = home.join("data/pg_essays");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/test.sh fetches the data sets)", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "need 10 essays in {}", dir.display());
    let reg = Registry::builtin().unwrap();
    let gguf = common::smollm2_gguf();
    let mut lm = smollm2();
    for (i, f) in files.iter().take(10).enumerate() {
        let ratio = [2, 4, 6, 8][i % 4];
        let full = std::fs::read_to_string(f).unwrap();
        // 1,500 to 6,000 characters, cut at a char boundary.
        let mut n = (1500 + 500 * i).min(full.len());
        while !full.is_char_boundary(n) {
            n -= 1;
        }
        let text = &full[..n];
        let mut params = toml::Table::new();
        params.insert("ratio".into(), toml::Value::Integer(ratio));
        params.insert("scorer".into(), toml::Value::String(gguf.display().to_string()));
        let c = reg.build_prompt("selective-context", &params).unwrap().expect("a prompt compressor");
        let out = c.compress(text).unwrap();
        let original = lm.tokenizer.encode(text, false).unwrap().get_ids().len();
        let kept = lm.tokenizer.encode(out.text.as_str(), false).unwrap().get_ids().len();
        assert_eq!(out.original_tokens, original);
        assert_eq!(out.compressed_tokens, kept);
        let target = original as f64 / ratio as f64;
        let off = (kept as f64 / target - 1.0).abs();
        eprintln!("{}: {original} -> {kept} tokens (target {target:.1}, off by {:.2}%)", f.display(), off * 100.0);
        assert!(off <= 0.05, "{}: ratio {ratio}: kept {kept} of {original} tokens, target {target:.1} (off by {:.1}%)", f.display(), off * 100.0);
        // Kept words appear in their original order.
        let mut rest = text;
        for w in out.text.split_whitespace() {
            let at = rest.find(w).unwrap_or_else(|| panic!("kept word {w:?} not found in order"));
            rest = &rest[at + w.len()..];
        }
        let _ = &mut lm;
    }
}

#[test]
fn a_planted_passkey_survives_four_fold_compression() {
    let essay = std::fs::read_to_string(kvcore::sources::kvbench_home().join("data/pg_essays/addiction.txt")).unwrap();
    let body: String = essay.chars().take(3000).collect();
    let mid = body.char_indices().nth(1500).map(|(i, _)| i).unwrap();
    let text = format!("{} The pass key is 73914. Remember it. 73914 is the pass key. {}", &body[..mid], &body[mid..]);
    let mut params = toml::Table::new();
    params.insert("ratio".into(), toml::Value::Integer(4));
    params.insert("scorer".into(), toml::Value::String(common::smollm2_gguf().display().to_string()));
    let c = Registry::builtin().unwrap().build_prompt("selective-context", &params).unwrap().unwrap();
    let out = c.compress(&text).unwrap();
    assert!(out.text.contains("73914"), "the pass key was dropped: {}", out.text);
    assert!(out.ratio() > 3.6, "ratio {}", out.ratio());
}
