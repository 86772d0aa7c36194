//! Linear-time models through the same commands as transformers: `kvbench model init --arch
//! mamba|mamba2|recurrent_gemma|rwkv5|rwkv6`, `kvbench generate` (state bytes where KV bytes are,
//! constant in the prompt length; cache methods refused with a message), and `kvbench run` of an experiment that mixes a transformer and
//! a Mamba model (the Mamba model's cache-method cells are skipped, its full cells recorded with
//! its fixed state size and its prompts cut to the model's context limit, and both appear in the
//! leaderboard); RWKV World models through the World tokenizer.

mod common;

use common::{config_tree, kvbench, ok};
use std::path::Path;

fn generate_json(model: &Path, prompt: &str) -> serde_json::Value {
    let out = ok(&["generate", "--model", model.to_str().unwrap(), "--prompt", prompt, "--max-new-tokens", "6", "--json", "--threads", "1"]);
    serde_json::from_str(out.lines().last().unwrap()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn linear_time_models_generate_with_constant_state_and_refuse_cache_methods() {
    let tmp = tempfile::tempdir().unwrap();
    // The tiny presets' states, computed from their shapes (f32):
    // mamba: 2 layers × d_inner 128 × (conv 4 + SSM 16);
    // mamba2: 2 layers × (conv [160 = 128 + 2·16, 4] + SSM [8 heads, 16, 16]);
    // recurrent_gemma: 2 recurrent layers × (conv [64, 3] + RG-LRU [64]) + 1 attention layer's
    // key and value rings of 32 positions × 1 head × 16 (full once the prompt passes the window).
    for (arch, state) in
        [("mamba", 2 * 128 * (4 + 16) * 4), ("mamba2", 2 * (160 * 4 + 8 * 16 * 16) * 4), ("recurrent_gemma", (2 * (64 * 3 + 64) + 2 * 32 * 16) * 4)]
    {
        let model = tmp.path().join(arch);
        ok(&["model", "init", "--arch", arch, "--preset", "tiny", "--random", "--seed", "4", model.to_str().unwrap()]);
        let shorter = generate_json(&model, &"The cat sat on the mat. ".repeat(10));
        let longer = generate_json(&model, &"The cat sat on the mat and looked around. ".repeat(60));
        assert_eq!(shorter["architecture"], arch);
        assert!(longer["prompt_tokens"].as_u64().unwrap() > 5 * shorter["prompt_tokens"].as_u64().unwrap());
        for v in [&shorter, &longer] {
            for key in ["kv_bytes_held", "kv_bytes_full", "kv_bytes_held_prompt", "kv_bytes_attended"] {
                assert_eq!(v[key].as_u64(), Some(state), "{arch}: {key} must be the fixed state size: {v}");
            }
            assert_eq!(v["generated_tokens"].as_u64(), Some(6));
        }
        let o = kvbench(&["generate", "--model", model.to_str().unwrap(), "--prompt", "hello", "--method", "snapkv", "--threads", "1"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("snapkv") && err.contains("recurrent") && err.contains("`full`"), "{arch}: {err}");
    }
}

#[test]
fn rwkv_world_models_generate_with_the_world_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    for (arch, state) in [("rwkv6", 2 * (64 + 4 * 16 * 16 + 64) * 4), ("rwkv5", 2 * (64 + 4 * 16 * 16 + 64) * 4)] {
        let model = tmp.path().join(arch);
        ok(&["model", "init", "--arch", arch, "--preset", "tiny", "--random", "--seed", "2", model.to_str().unwrap()]);
        assert!(model.join("rwkv_vocab_v20230424.txt").is_file() && !model.join("config.json").exists());
        let short = generate_json(&model, "The cat sat");
        let long = generate_json(&model, &"The cat sat on the mat and looked around. 你好 ".repeat(40));
        assert_eq!(short["architecture"], arch);
        // The World tokenizer: "The", " cat", " sat" are single tokens of its vocabulary.
        assert_eq!(short["prompt_tokens"].as_u64(), Some(3), "{short}");
        assert!(long["prompt_tokens"].as_u64().unwrap() > 300);
        for v in [&short, &long] {
            assert_eq!(v["kv_bytes_held"].as_u64(), Some(state), "{arch}: the fixed state: {v}");
            assert_eq!(v["generated_tokens"].as_u64(), Some(6));
        }
    }
}

#[test]
fn run_mixes_transformer_and_mamba_cells() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = config_tree(tmp.path(), &["full", "snapkv"]);
    let mamba = tmp.path().join("mamba");
    ok(&["model", "init", "--arch", "mamba", "--preset", "tiny", "--random", "--seed", "4", mamba.to_str().unwrap()]);
    let configs = tmp.path().join("configs");
    std::fs::write(configs.join("models/mamba.toml"), format!("source = \"{}\"\nchat_template = false\ncontext_limit = 150\n", mamba.display())).unwrap();
    let text = std::fs::read_to_string(&exp).unwrap().replace("models = [\"tiny\"]", "models = [\"tiny\", \"mamba\"]");
    std::fs::write(&exp, text).unwrap();

    let out = tmp.path().join("run");
    let o = kvbench(&["run", exp.to_str().unwrap(), "--out", out.to_str().unwrap(), "--zero-measurements"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{stderr}");
    assert_eq!(stderr.matches("skipping cell").count(), 2, "mamba's snapkv 2x and 4x cells are skipped, said once each:\n{stderr}");
    assert!(stderr.contains("mamba model with a fixed-size recurrent state"), "{stderr}");

    let mut mamba_records = Vec::new();
    let mut cells = 0;
    for cell in std::fs::read_dir(out.join("cells")).unwrap() {
        let dir = cell.unwrap().path();
        cells += 1;
        let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cell.json")).unwrap()).unwrap();
        if info["model"] == "mamba" {
            assert_eq!(info["method"], "full");
            for line in std::fs::read_to_string(dir.join("records.jsonl")).unwrap().lines() {
                mamba_records.push(serde_json::from_str::<serde_json::Value>(line).unwrap());
            }
        }
    }
    assert_eq!(cells, 4, "tiny: full, snapkv 2x, snapkv 4x; mamba: full");
    assert_eq!(mamba_records.len(), 9, "9 passkey samples");
    let lengths: std::collections::BTreeSet<u64> = mamba_records.iter().map(|r| r["input_tokens"].as_u64().unwrap()).collect();
    assert!(lengths.len() > 1, "samples of several lengths: {lengths:?}");
    // The model config's context_limit (the paper's 1,500 / 3,500 / 7,500 for these models) cuts
    // longer prompts to exactly the limit (their middle goes, as for transformers).
    assert_eq!(lengths.iter().max(), Some(&150), "the longest prompts are cut to the context limit: {lengths:?}");
    for r in &mamba_records {
        assert_eq!(r["kv_bytes_held"].as_u64(), Some(2 * 128 * (4 + 16) * 4), "the state, whatever the input length: {r}");
    }
    assert!(stdout.contains("mamba"), "the leaderboard lists the Mamba model:\n{stdout}");
}

/// The paper's RWKV protocol (issue 24 item 4b): through `kvbench run`, `chat_format = "rwkv"`
/// wraps a chat task's prompts in the hand-written preamble (more input tokens than plain) and
/// `penalties = "rwkv-pipeline"` reaches generation; `kvbench generate --penalties` shows what
/// the penalties do where a model repeats itself (a tiny random transformer says " is" 40 times;
/// the tiny random RWKV never repeats a token in 40, so it cannot show it).
#[test]
fn rwkv_runs_with_the_papers_preamble_and_penalties() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = config_tree(tmp.path(), &["full"]);
    let model = tmp.path().join("rwkv");
    ok(&["model", "init", "--arch", "rwkv5", "--preset", "tiny", "--random", "--seed", "2", model.to_str().unwrap()]);
    let configs = tmp.path().join("configs");
    // The same passkey samples, in the chat template for the variant that has one.
    let task = std::fs::read_to_string(configs.join("tasks/needle.toml")).unwrap();
    std::fs::write(configs.join("tasks/needle-chat.toml"), format!("{task}template = \"chat\"\n")).unwrap();
    let rwkv = format!("source = \"{}\"\n", model.display());
    let variants = [
        ("rwkv-plain", format!("{rwkv}chat_template = false\n"), "needle"),
        ("rwkv-paper", format!("{rwkv}chat_template = true\nchat_format = \"rwkv\"\npenalties = \"rwkv-pipeline\"\n"), "needle-chat"),
    ];
    let mut runs = Vec::new();
    for (name, model_toml, task) in &variants {
        std::fs::write(configs.join(format!("models/{name}.toml")), model_toml).unwrap();
        let text = std::fs::read_to_string(&exp)
            .unwrap()
            .replace("models = [\"tiny\"]", &format!("models = [\"{name}\"]"))
            .replace("tasks = [\"needle\"]", &format!("tasks = [\"{task}\"]"));
        let file = exp.with_file_name(format!("{name}.toml"));
        std::fs::write(&file, text).unwrap();
        let out = tmp.path().join(format!("run-{name}"));
        ok(&["run", file.to_str().unwrap(), "--out", out.to_str().unwrap(), "--zero-measurements", "--no-report"]);
        let cell = std::fs::read_dir(out.join("cells")).unwrap().next().unwrap().unwrap().path();
        let recs: Vec<serde_json::Value> =
            std::fs::read_to_string(cell.join("records.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(recs.len(), 9, "{name}");
        runs.push(recs);
    }
    for (plain, pre) in runs[0].iter().zip(&runs[1]) {
        let (a, b) = (plain["input_tokens"].as_u64().unwrap(), pre["input_tokens"].as_u64().unwrap());
        assert!(b >= a + 30, "the preamble adds its ~40 tokens: {a} plain, {b} with it");
    }
    // The penalties on a model that repeats itself.
    let tiny = tmp.path().join("tiny2");
    ok(&["model", "init", "--arch", "llama", "--preset", "tiny", "--random", "--seed", "2", tiny.to_str().unwrap()]);
    let prompt = "There is a pass key hidden. The grass is green. The sky is blue. What is the pass key? The pass key is";
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["generate", "--model", tiny.to_str().unwrap(), "--prompt", prompt, "--max-new-tokens", "40", "--json", "--threads", "1"];
        args.extend_from_slice(extra);
        let out = ok(&args);
        serde_json::from_str(out.lines().last().unwrap()).unwrap()
    };
    let ids = |v: &serde_json::Value| -> Vec<u64> { v["token_ids"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect() };
    let (plain, penalised) = (ids(&run(&[])), ids(&run(&["--penalties", "rwkv-pipeline"])));
    assert!(plain.iter().all(|&t| t == plain[0]) && plain.len() == 40, "greedy repeats one token: {plain:?}");
    assert!(penalised.iter().filter(|&&t| t == plain[0]).count() < 20, "the penalties break the repetition: {penalised:?}");
}

/// The paper's linear-time passkey runs (issue 24 item 5a) feed the whole haystack: a recurrent
/// model has no position limit, so a model config without `context_limit` (the `*-passkey`
/// variants) cuts nothing. The tiny Mamba takes exactly the prompts the tiny transformer (4,096
/// positions, far above these) takes, and more than the 150 tokens a `context_limit` leaves.
#[test]
fn a_recurrent_model_without_a_context_limit_takes_the_whole_haystack() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = config_tree(tmp.path(), &["full"]);
    let mamba = tmp.path().join("mamba");
    ok(&["model", "init", "--arch", "mamba", "--preset", "tiny", "--random", "--seed", "4", mamba.to_str().unwrap()]);
    let configs = tmp.path().join("configs");
    std::fs::write(configs.join("models/mamba-passkey.toml"), format!("source = \"{}\"\nchat_template = false\n", mamba.display())).unwrap();
    let text = std::fs::read_to_string(&exp).unwrap().replace("models = [\"tiny\"]", "models = [\"tiny\", \"mamba-passkey\"]");
    std::fs::write(&exp, text).unwrap();
    let out = tmp.path().join("run");
    ok(&["run", exp.to_str().unwrap(), "--out", out.to_str().unwrap(), "--zero-measurements", "--no-report"]);
    let mut inputs: std::collections::BTreeMap<String, Vec<(String, u64)>> = Default::default();
    for cell in std::fs::read_dir(out.join("cells")).unwrap() {
        let dir = cell.unwrap().path();
        let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cell.json")).unwrap()).unwrap();
        let mut v: Vec<(String, u64)> = std::fs::read_to_string(dir.join("records.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|r| (r["sample_id"].as_str().unwrap().to_string(), r["input_tokens"].as_u64().unwrap()))
            .collect();
        v.sort();
        inputs.insert(info["model"].as_str().unwrap().to_string(), v);
    }
    assert_eq!(inputs["mamba-passkey"], inputs["tiny"], "the same whole prompts");
    assert!(inputs["mamba-passkey"].iter().map(|x| x.1).max().unwrap() > 150, "{:?}", inputs["mamba-passkey"]);
}
