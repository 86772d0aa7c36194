//! `kvbench validate | run | merge | report` end to end on a tiny random model: a run writes
//! one record per sample and a report; two shards merged give byte-identical reports to one run;
//! a run killed with SIGKILL midway and resumed gives the same report as an uninterrupted run;
//! config errors name file and key; `--dry-run` lists the cells.

mod common;

use common::{config_tree, kvbench, ok, REPORT_FILES};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn report_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    REPORT_FILES.iter().map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(f).display())))).collect()
}

fn records_in(run: &Path) -> usize {
    let Ok(cells) = std::fs::read_dir(run.join("cells")) else { return 0 };
    cells.filter_map(|c| c.ok()).map(|c| std::fs::read_to_string(c.path().join("records.jsonl")).map(|t| t.lines().count()).unwrap_or(0)).sum()
}

#[test]
fn run_shards_merge_and_resume_give_identical_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = config_tree(tmp.path(), &["full", "snapkv", "kivi-small"]);
    let e = exp.to_str().unwrap();
    let out = ok(&["validate", e]);
    assert!(out.contains("ok") && out.contains("4 cell(s)"), "{out}");
    let dry = ok(&["run", e, "--dry-run"]);
    assert!(dry.contains("4 cell(s)") && dry.contains("snapkv") && dry.contains("kivi-2bit"), "{dry}");

    // One uninterrupted run.
    let single = tmp.path().join("single");
    let printed = ok(&["run", e, "--out", single.to_str().unwrap(), "--zero-measurements"]);
    assert!(printed.contains("snapkv") && printed.contains("index.html"), "the run should print the leaderboard and the page:\n{printed}");
    let total = records_in(&single);
    assert_eq!(total, 4 * 9, "4 cells (full, snapkv 2x and 4x, kivi) x 9 passkey samples");
    let line = std::fs::read_dir(single.join("cells")).unwrap().next().unwrap().unwrap().path().join("records.jsonl");
    let first: serde_json::Value = serde_json::from_str(std::fs::read_to_string(line).unwrap().lines().next().unwrap()).unwrap();
    for key in [
        "prediction",
        "score",
        "input_tokens",
        "generated_tokens",
        "prefill_seconds",
        "decode_tokens_per_s",
        "kv_bytes_held",
        "kv_bytes_attended",
        "compression_ratio",
        "peak_memory_bytes",
    ] {
        assert!(first.get(key).is_some(), "record lacks `{key}`: {first}");
    }
    let run_json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(single.join("run.json")).unwrap()).unwrap();
    for key in ["git_commit", "kvbench_version", "config_hash", "model_hashes", "libtorch_version", "device", "cpus", "decode_matmul", "threads"] {
        assert!(run_json.get(key).is_some(), "run.json lacks `{key}`");
    }
    // How decode steps multiplied (their last bits depend on it): the kernel on an f32 CPU run
    // where the CPU has vector FMA, libtorch otherwise.
    let fast = kvcore::decode_matmul::Isa::detect().is_fast() && std::env::var("KVBENCH_DECODE_MATMUL").map_or(true, |v| v != "libtorch");
    assert_eq!(run_json["decode_matmul"], serde_json::json!([if fast { "kernel" } else { "libtorch" }]), "{run_json}");
    // The sitting's CPU: model name and widest vector ISA (libtorch's kernels depend on it).
    let cpus = run_json["cpus"].as_array().expect("cpus is a list");
    assert_eq!(cpus.len(), 1, "one sitting, one CPU: {cpus:?}");
    let cpu = cpus[0].as_str().unwrap();
    #[cfg(target_arch = "x86_64")]
    {
        let isa = if std::arch::is_x86_feature_detected!("avx512f") {
            " (avx512f)"
        } else if std::arch::is_x86_feature_detected!("avx2") {
            " (avx2)"
        } else {
            ""
        };
        assert!(cpu.ends_with(isa) && cpu.len() > isa.len(), "{cpu} should be a model name ending with{isa}");
    }
    #[cfg(target_os = "linux")]
    if let Some(name) =
        std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':'))
    {
        assert!(cpu.starts_with(name.1.trim()), "{cpu} should start with /proc/cpuinfo's {}", name.1.trim());
    }
    let reference = report_bytes(&single.join("report"));

    // A rerun into the same directory without --resume is refused.
    let o = kvbench(&["run", e, "--out", single.to_str().unwrap()]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--resume"));

    // Two shards, merged.
    let (s0, s1, merged) = (tmp.path().join("s0"), tmp.path().join("s1"), tmp.path().join("merged"));
    ok(&["run", e, "--out", s0.to_str().unwrap(), "--shard", "0/2", "--zero-measurements", "--no-report"]);
    ok(&["run", e, "--out", s1.to_str().unwrap(), "--shard", "1/2", "--zero-measurements", "--no-report"]);
    assert_eq!(records_in(&s0) + records_in(&s1), total);
    assert!(records_in(&s0) > 0 && records_in(&s1) > 0, "both shards get cells");
    ok(&["merge", s0.to_str().unwrap(), s1.to_str().unwrap(), "--out", merged.to_str().unwrap()]);
    ok(&["report", merged.to_str().unwrap(), "--out", merged.join("report").to_str().unwrap()]);
    for ((name, a), (_, b)) in reference.iter().zip(report_bytes(&merged.join("report"))) {
        assert!(*a == b, "{name}: the merged shards' report differs from the single run's");
    }

    // SIGKILL midway, then --resume.
    let killed = tmp.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvbench"))
        .args(["run", e, "--out", killed.to_str().unwrap(), "--zero-measurements", "--no-report"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while records_in(&killed) < 1 && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    let at_kill = records_in(&killed);
    assert!(!status.success() && at_kill < total, "the run should be killed midway ({at_kill} of {total} records, {status})");
    ok(&["run", e, "--out", killed.to_str().unwrap(), "--zero-measurements", "--resume"]);
    assert_eq!(records_in(&killed), total);
    for ((name, a), (_, b)) in reference.iter().zip(report_bytes(&killed.join("report"))) {
        assert!(*a == b, "{name}: the resumed run's report differs from the uninterrupted run's");
    }
}

#[test]
fn run_config_errors_name_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = config_tree(tmp.path(), &["full", "snapkv", "kivi-small"]);
    std::fs::write(&exp, "name = \"t\"\nmodels = [\"tiny\"]\ntasks = [\"needle\"]\nmethods = [\"snapkv\", \"nosuch\"]\n[[method]]\nname = \"snapkv\"\nmethod = \"snapkv\"\nparams = { windw = 3 }\n").unwrap();
    let o = kvbench(&["validate", exp.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("t.toml") && err.contains("methods[1]") && err.contains("nosuch"), "{err}");
    std::fs::write(&exp, "name = \"t\"\nmodels = [\"tiny\"]\ntasks = [\"needle\"]\nmethods = [\"snapkv\"]\n[[method]]\nname = \"snapkv\"\nmethod = \"snapkv\"\nparams = { windw = 3 }\n").unwrap();
    let o = kvbench(&["run", exp.to_str().unwrap(), "--dry-run"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("t.toml") && err.contains("snapkv") && err.contains("windw"), "{err}");
}

#[test]
fn every_config_in_the_repository_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("configs/experiments");
    let mut stack = vec![root];
    let mut n = 0;
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "toml") {
                let out = ok(&["validate", p.to_str().unwrap()]);
                assert!(out.contains(": ok:"), "{out}");
                n += 1;
            }
        }
    }
    assert!(n >= 5, "expected the quickstart and the paper's experiments, found {n}");
}

/// The committed offline-v1 leaderboard grid is the one issue 21 asks for: SmolLM2 has every
/// method family, the kvpress frontier included, at 2x/4x/8x/16x where a budget applies; Qwen2.5
/// the paper's families at 2x/8x; both the same 7 tasks of 24 samples (contexts up to 4K).
#[test]
fn the_offline_v1_grid_covers_every_method_and_ratio() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("configs/experiments/offline-v1");
    let paper = ["full", "kivi-2bit", "kivi-4bit", "flexgen-4bit", "streamingllm", "h2o", "infllm", "selective-context"];
    let more = ["int8", "snapkv", "pyramidkv", "tova", "knorm", "adakv", "keydiff", "expected-attention", "chunkkv", "think", "kvzip", "quest"];
    for (model, cells, rows, ratios) in [
        ("smollm2-135m", "455 cell(s)", [&paper[..], &more[..]].concat(), &["2x", "4x", "8x", "16x"][..]),
        ("qwen2.5-0.5b", "84 cell(s)", paper.to_vec(), &["2x", "8x"][..]),
    ] {
        let file = root.join(format!("{model}.toml"));
        let dry = ok(&["run", file.to_str().unwrap(), "--dry-run"]);
        // SmolLM2: 5 unbudgeted methods + 15 budgeted x 4 ratios = 65 rows; Qwen2.5: 4 + 4 x 2 = 12; x 7 tasks.
        assert!(dry.contains(cells), "{model}: expected {cells}\n{dry}");
        for label in &rows {
            assert!(dry.contains(&format!(" {label} ")), "{model}: no `{label}` cell:\n{dry}");
        }
        if model == "qwen2.5-0.5b" {
            for label in more {
                assert!(!dry.contains(&format!(" {label} ")), "{model}: `{label}` is not one of the paper's families");
            }
        }
        let evicting = if model == "smollm2-135m" { " snapkv " } else { " h2o " };
        for ratio in ratios {
            assert_eq!(dry.lines().filter(|l| l.contains(evicting) && l.contains(&format!(" {ratio} "))).count(), 7, "{model}:{evicting}{ratio} on each task");
        }
        let per_task: Vec<&str> = dry.lines().filter(|l| l.contains(" full ")).collect();
        assert_eq!(per_task.len(), 7, "{model}: seven tasks");
        assert!(per_task.iter().all(|l| l.ends_with("~24 samples")), "{model}: 24 samples per task:\n{}", per_task.join("\n"));
    }
    // The grid before the resize stays: it defines the probe grid grid throughput is measured on.
    let probe = root.join("probe-grid-smollm2-135m.toml");
    let dry = ok(&["run", probe.to_str().unwrap(), "--dry-run"]);
    assert!(dry.contains("350 cell(s)"), "{dry}");
}

#[test]
fn dry_run_of_a_paper_longbench_grid_shows_each_subsets_record_count() {
    // Counted from the fetched files, or LongBench's published counts where the data is not
    // fetched (this machine cannot reach the hub): the same numbers either way.
    let grid = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("configs/experiments/paper/longbench-llama-3-8b-instruct.toml");
    let dry = ok(&["run", grid.to_str().unwrap(), "--dry-run"]);
    for (subset, n) in [("narrativeqa", 200), ("multifieldqa_en", 150), ("passage_count", 200), ("lcc", 500), ("repobench-p", 500)] {
        let lines: Vec<&str> = dry.lines().filter(|l| l.contains(" full ") && l.contains(&format!("longbench-{subset} "))).collect();
        assert_eq!(lines.len(), 1, "{subset}: one full-cache cell\n{dry}");
        assert!(lines[0].ends_with(&format!(" ~{n} samples")), "{subset}: {n} records expected: {}", lines[0]);
    }
    assert!(!dry.contains("? samples"), "every LongBench cell has a count:\n{dry}");
    // The prompt each method sees: cut at Llama-3's 7,500 tokens, except the three methods the
    // paper never truncates (issue 24 item 2).
    for line in dry.lines().filter(|l| l.contains(" longbench-")) {
        let uncut = [" streamingllm ", " infllm ", " llmlingua2 "].iter().any(|m| line.contains(m));
        assert!(line.contains(if uncut { " uncut " } else { " <=7500 tok " }), "{line}");
    }
    // Their prompt lengths depend on the documents: no token estimate is made up for them.
    assert!(dry.contains("whose sample count or prompt lengths only the data can tell"), "{dry}");
}

#[test]
fn dry_run_sums_samples_and_tokens_per_model() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = config_tree(tmp.path(), &["full"]);
    let model = std::fs::read_to_string(tmp.path().join("configs/models/tiny.toml")).unwrap();
    std::fs::write(tmp.path().join("configs/models/tiny2.toml"), model).unwrap();
    let text = std::fs::read_to_string(&exp).unwrap().replace("models = [\"tiny\"]", "models = [\"tiny\", \"tiny2\"]");
    std::fs::write(&exp, text).unwrap();
    let dry = ok(&["run", exp.to_str().unwrap(), "--dry-run"]);
    // One cell per model: the needle task's 3 lengths x 3 depths.
    assert!(dry.contains("2 cell(s)") && dry.contains("  tiny: ~9 samples") && dry.contains("  tiny2: ~9 samples"), "{dry}");
    // A task's `fraction` keeps ceil(9 x 0.5) = 5 of them, as the run does.
    let task = tmp.path().join("configs/tasks/needle.toml");
    let text = std::fs::read_to_string(&task).unwrap() + "fraction = 0.5\n";
    std::fs::write(&task, text).unwrap();
    let dry = ok(&["run", exp.to_str().unwrap(), "--dry-run"]);
    assert!(dry.contains("  tiny: ~5 samples") && dry.lines().any(|l| l.contains("needle") && l.ends_with(" ~5 samples")), "{dry}");
}

#[test]
fn report_compare_paper_prints_the_side_by_side_table() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("kvreport/tests/fixtures/paper_shaped");
    let tmp = tempfile::tempdir().unwrap();
    let out = ok(&["report", fixture.to_str().unwrap(), "--out", tmp.path().to_str().unwrap(), "--compare", "paper"]);
    // The fixture reproduces the paper's numbers except h2o 4x on code (50.00 vs 53.01).
    assert!(out.contains("paper") && out.contains("53.01") && out.contains("-3.01"), "side-by-side table expected:\n{out}");
    assert!(tmp.path().join("paper_comparison.md").is_file());
    let o = kvbench(&["report", fixture.to_str().unwrap(), "--out", tmp.path().to_str().unwrap(), "--compare", "blog"]);
    // Refused by the command line parser, naming the bad value and the accepted one.
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("'blog'") && err.contains("possible values: paper"), "{err}");
}

#[test]
fn export_writes_kvpress_result_directories() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("kvreport/tests/fixtures/paper_shaped");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("kvpress");
    let printed = ok(&[
        "export",
        fixture.to_str().unwrap(),
        "--format",
        "kvpress",
        "--out",
        out.to_str().unwrap(),
        "--model-id",
        "llama3-8b-instruct=meta-llama/Meta-Llama-3-8B-Instruct",
    ]);
    assert!(printed.contains("exported 12 cell(s), 24 record(s) into 12 kvpress result directories"), "{printed}");
    // kvpress's naming: dataset, data_dir, model with / as --, press, compression ratio 1 - 1/N.
    let dir = out.join("longbench__lcc__meta-llama--Meta-Llama-3-8B-Instruct__snapkv__0.75");
    for f in ["predictions.csv", "metrics.json", "config.yaml"] {
        assert!(dir.join(f).is_file(), "{} missing", dir.join(f).display());
    }
    assert!(out.join("longbench__lcc__meta-llama--Meta-Llama-3-8B-Instruct__no_press__0.00").is_dir(), "the full cache is kvpress's no_press");
    let o = kvbench(&["export", fixture.to_str().unwrap(), "--format", "kvpress", "--out", out.to_str().unwrap(), "--model-id", "llama3"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("NAME=ORG/ID"), "{err}");
}

#[test]
fn a_prompt_compressor_runs_with_the_full_cache_on_the_shorter_prompt() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = config_tree(tmp.path(), &["full", "snapkv", "kivi-small"]);
    let model = tmp.path().join("tiny");
    // The scorer is the tiny model itself, so the test needs no real model.
    let text = format!(
        "name = \"pc\"\nmodels = [\"tiny\"]\ntasks = [\"needle\"]\nmethods = [\"sc\"]\nratios = [4]\n[[method]]\nname = \"sc\"\nmethod = \"selective-context\"\n[method.params]\nscorer = \"{}\"\n[run]\nthreads = 1\ndevice = \"cpu\"\n",
        model.display()
    );
    let pc = exp.with_file_name("pc.toml");
    std::fs::write(&pc, text).unwrap();
    let out = tmp.path().join("pc-run");
    ok(&["run", pc.to_str().unwrap(), "--out", out.to_str().unwrap(), "--no-report"]);
    let cells: Vec<_> = std::fs::read_dir(out.join("cells")).unwrap().map(|c| c.unwrap().path()).collect();
    assert_eq!(cells.len(), 1);
    let records = std::fs::read_to_string(cells[0].join("records.jsonl")).unwrap();
    let mut n = 0;
    for line in records.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let input = r["input_tokens"].as_u64().unwrap();
        let original = r["original_input_tokens"].as_u64().expect("original_input_tokens recorded");
        // The whole passkey input is compressed to about a quarter (the tiny model shares SmolLM2's tokenizer).
        assert!(input * 3 < original, "{input} of {original} tokens kept");
        // Full-cache bytes are those of the original prompt: the difference is (original - input) tokens.
        let (full, held) = (r["kv_bytes_full"].as_u64().unwrap(), r["kv_bytes_held"].as_u64().unwrap());
        let per_token = (full - held) / (original - input);
        assert_eq!((full - held) % (original - input), 0);
        assert_eq!(held % per_token, 0);
        let held_tokens = held / per_token;
        let generated = r["generated_tokens"].as_u64().unwrap();
        assert!(held_tokens >= input && held_tokens <= input + generated, "{held_tokens} tokens held for {input} + {generated}");
        let ratio = r["compression_ratio"].as_f64().unwrap();
        assert!((ratio - full as f64 / held as f64).abs() < 1e-9 && ratio > 1.0, "measured ratio {ratio}");
        assert_eq!(r["kv_bytes_held"], r["kv_bytes_attended"]);
        assert!(r["prompt_compression_seconds"].as_f64().unwrap() > 0.0);
        n += 1;
    }
    assert_eq!(n, 9); // 3 steps × 3 depths
}

/// Every record of a run, cell by cell, as JSON values without the `timing` label (which says
/// how time and memory were measured and is the one field a shared run adds).
fn records_by_cell(run: &Path) -> Vec<(String, Vec<serde_json::Value>)> {
    let mut cells: Vec<_> = std::fs::read_dir(run.join("cells")).unwrap().map(|c| c.unwrap().path()).collect();
    cells.sort();
    cells
        .iter()
        .map(|c| {
            let recs = std::fs::read_to_string(c.join("records.jsonl"))
                .unwrap()
                .lines()
                .map(|l| {
                    let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                    v.as_object_mut().unwrap().remove("timing");
                    v
                })
                .collect();
            (c.file_name().unwrap().to_string_lossy().into_owned(), recs)
        })
        .collect()
}

/// Every method that declares a shared prefill (and three that keep their own prefill but
/// decode batched with the rest: chunked StreamingLLM, FlexGen, and Selective-Context, whose two
/// budgets share one scoring pass), run shared and `--isolated`: the
/// same cell ids and, field by field, the same records (predictions, scores, token counts,
/// bytes, ratios); only the shared run's records carry `"timing": "shared"`. Context-only and
/// query-aware prefill, in one piece and in chunks.
#[test]
fn shared_and_isolated_runs_give_identical_records() {
    let tmp = tempfile::tempdir().unwrap();
    let methods = [
        "full",
        "kivi-small",
        "int8",
        "snapkv",
        "pyramidkv",
        "h2o",
        "tova",
        "knorm",
        "keydiff",
        "chunkkv",
        "adakv",
        "quest",
        "random",
        "streamingllm",
        "flexgen-small",
        "selective-context",
    ];
    let exp = config_tree(tmp.path(), &methods);
    // FlexGen's groups sized for the tiny model's 16-wide heads.
    std::fs::write(
        tmp.path().join("configs/methods/flexgen-small.toml"),
        "method = \"flexgen\"\nlabel = \"flexgen-4bit\"\n[params]\nbits = 4\ngroup_size = 8\n",
    )
    .unwrap();
    let base = std::fs::read_to_string(&exp).unwrap();
    for (name, run_extra) in [("context-only", ""), ("query-aware-chunked", "query_aware = true\nprefill_chunk = 48\n")] {
        let file = exp.with_file_name(format!("{name}.toml"));
        std::fs::write(&file, base.replace("name = \"t\"", &format!("name = \"{name}\"")).replace("[run]\n", &format!("[run]\n{run_extra}"))).unwrap();
        let e = file.to_str().unwrap();
        let dry = ok(&["run", e, "--dry-run"]);
        assert!(dry.contains("shared prefill: 23 of 28 cell(s)"), "the dry run counts the cells that share prefills:\n{dry}");
        let (shared, isolated) = (tmp.path().join(format!("{name}-shared")), tmp.path().join(format!("{name}-isolated")));
        ok(&["run", e, "--out", shared.to_str().unwrap(), "--zero-measurements", "--no-report", "--batch", "5", "--measure", "2"]);
        ok(&["run", e, "--out", isolated.to_str().unwrap(), "--zero-measurements", "--no-report", "--isolated"]);
        let (a, b) = (records_by_cell(&shared), records_by_cell(&isolated));
        assert_eq!(a.iter().map(|(c, _)| c).collect::<Vec<_>>(), b.iter().map(|(c, _)| c).collect::<Vec<_>>(), "{name}: cell ids");
        for ((cell, ra), (_, rb)) in a.iter().zip(&b) {
            assert_eq!(ra.len(), 9, "{name}: cell {cell} records");
            for (x, y) in ra.iter().zip(rb) {
                assert_eq!(x, y, "{name}: cell {cell}: the shared run's record differs from the isolated run's");
            }
        }
        // Which records say they were shared.
        let mut labelled = std::collections::BTreeMap::new();
        for c in std::fs::read_dir(shared.join("cells")).unwrap() {
            let c = c.unwrap().path();
            let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(c.join("cell.json")).unwrap()).unwrap();
            let text = std::fs::read_to_string(c.join("records.jsonl")).unwrap();
            let shared_lines = text.lines().filter(|l| l.contains("\"timing\":\"shared\"")).count();
            labelled.insert(info["method"].as_str().unwrap().to_string(), shared_lines);
        }
        // Every cell decodes batched with the others (those with their own prefill too), so
        // every record's time and memory are the group's.
        assert_eq!(labelled.len(), methods.len(), "{name}: one method per cell kind");
        for (m, n) in &labelled {
            assert_eq!(*n, 9, "{name}: {m}: {n} of 9 records labelled shared");
        }
        // --measure 2: each cell's first two samples alone, byte for byte the isolated run's
        // records, and the report takes time and memory from them (no ‡).
        for c in std::fs::read_dir(shared.join("cells")).unwrap() {
            let c = c.unwrap().path();
            let measured = std::fs::read_to_string(c.join("measure.jsonl")).unwrap();
            let alone = std::fs::read_to_string(isolated.join("cells").join(c.file_name().unwrap()).join("records.jsonl")).unwrap();
            let first_two: Vec<&str> = alone.lines().take(2).collect();
            assert_eq!(measured.lines().collect::<Vec<_>>(), first_two, "{name}: {}: measure.jsonl", c.display());
        }
        // A finished run measured later, in a process of its own (`--resume --measure N`): its
        // done cells are measured, giving the same measure.jsonl, and nothing else is rerun.
        if name == "context-only" {
            let later = tmp.path().join("measured-later");
            copy_dir(&shared, &later);
            let cells: Vec<_> = std::fs::read_dir(later.join("cells")).unwrap().map(|c| c.unwrap().path()).collect();
            let records_before: Vec<String> = cells.iter().map(|c| std::fs::read_to_string(c.join("records.jsonl")).unwrap()).collect();
            for c in &cells {
                assert!(c.join("done").exists());
                std::fs::remove_file(c.join("measure.jsonl")).unwrap();
            }
            ok(&["run", e, "--out", later.to_str().unwrap(), "--zero-measurements", "--no-report", "--resume", "--measure", "2"]);
            for (c, before) in cells.iter().zip(&records_before) {
                let again = std::fs::read_to_string(c.join("measure.jsonl")).unwrap();
                let first = std::fs::read_to_string(shared.join("cells").join(c.file_name().unwrap()).join("measure.jsonl")).unwrap();
                assert_eq!(again, first, "{}: measured later in its own process", c.display());
                assert_eq!(&std::fs::read_to_string(c.join("records.jsonl")).unwrap(), before, "{}: records untouched", c.display());
            }
        }
        ok(&["report", shared.to_str().unwrap(), "--out", shared.join("report").to_str().unwrap()]);
        let md = std::fs::read_to_string(shared.join("report/leaderboard.md")).unwrap();
        assert!(md.contains("are over 2 sample(s) per row run alone") && !md.contains('‡'), "{name}: leaderboard.md:\n{md}");
        let isolated_text: String =
            std::fs::read_dir(isolated.join("cells")).unwrap().map(|c| std::fs::read_to_string(c.unwrap().path().join("records.jsonl")).unwrap()).collect();
        assert!(!isolated_text.contains("\"timing\""), "{name}: isolated records carry no timing label");
    }
}

/// Copies a directory tree (a run directory) file by file.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// The paper never truncates InfLLM, StreamingLLM and LLMLingua-2 (`truncation_mode: null`), and
/// sizes their budgets from `min(length, model max length)`: with `truncate = false` and
/// re-indexed positions, those cells take prompts past the model's positions (here a tiny model
/// told it has 64), whole, while the full cache is cut to 64 - 40 new tokens, and their budgets
/// stay those of the 24 tokens the cut would have left.
#[test]
fn untruncated_methods_take_prompts_past_the_models_positions() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = config_tree(tmp.path(), &["full"]);
    let configs = exp.parent().unwrap().parent().unwrap();
    let tiny = std::fs::read_to_string(configs.join("models/tiny.toml")).unwrap();
    std::fs::write(configs.join("models/short.toml"), format!("{tiny}max_position_embeddings = 64\n")).unwrap();
    let text = "name = \"u\"\nmodels = [\"short\"]\ntasks = [\"needle\"]\nmethods = [\"full\", \"stream\", \"inf\"]\nratios = [2]\n\
                [[method]]\nname = \"stream\"\nmethod = \"streamingllm\"\ntruncate = false\n[method.params]\npositions = \"reindexed\"\nsinks = 2\n\
                [[method]]\nname = \"inf\"\nmethod = \"infllm\"\ntruncate = false\n[method.params]\npositions = \"reindexed\"\nmin_local = 8\nblock_size = 4\n\
                [run]\nthreads = 1\ndevice = \"cpu\"\n";
    let file = exp.with_file_name("u.toml");
    std::fs::write(&file, text).unwrap();
    let out = tmp.path().join("u-run");
    ok(&["run", file.to_str().unwrap(), "--out", out.to_str().unwrap(), "--zero-measurements", "--no-report"]);
    let mut inputs: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for (cell, recs) in records_by_cell(&out) {
        let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("cells").join(&cell).join("cell.json")).unwrap()).unwrap();
        let label = info["method_label"].as_str().or(info["label"].as_str()).unwrap_or_else(|| info["method"].as_str().unwrap()).to_string();
        assert_eq!(recs.len(), 9, "{label}");
        for r in &recs {
            let (input, generated) = (r["input_tokens"].as_u64().unwrap(), r["generated_tokens"].as_u64().unwrap());
            assert_eq!(generated, 40, "{label}: {r}");
            // Full-cache bytes count every token but the last generated one.
            let per_token = r["kv_bytes_full"].as_u64().unwrap() / (input + generated - 1);
            match info["method"].as_str().unwrap() {
                "full" => assert!(input <= 24, "full is cut to 64 - 40 tokens: {input}"),
                "streamingllm" => {
                    assert!(input > 64, "streamingllm takes the whole prompt: {input} tokens");
                    // Budget floor(24 / 2) = 12 (+1 while decoding), not half the prompt.
                    let held = r["kv_bytes_held"].as_u64().unwrap();
                    assert!(held <= 13 * per_token, "streamingllm holds {} tokens' bytes", held as f64 / per_token as f64);
                }
                "infllm" => {
                    assert!(input > 64, "infllm takes the whole prompt: {input} tokens");
                    // Budget 12: no init tokens, no retrieved blocks, a 12-token window (+ the
                    // remainder not yet in a block and the step's own tokens).
                    let attended = r["kv_bytes_attended"].as_u64().unwrap();
                    assert!(attended <= 17 * per_token, "infllm attends {} tokens' bytes", attended as f64 / per_token as f64);
                }
                m => panic!("unexpected method {m}"),
            }
            inputs.entry(info["method"].as_str().unwrap().to_string()).or_default().push(input);
        }
    }
    assert_eq!(inputs["streamingllm"], inputs["infllm"], "both take the same whole prompts");
}
