//! `kvbench validate | run | merge | report`: experiments from TOML configs. `run` expands the grid
//! into cells (model × method × budget × task, each with a stable id), runs every sample through
//! the context/question pipeline, and appends one JSONL record per sample (fsync'd), so a killed
//! run loses at most the sample in flight and `--resume` picks up where it stopped. The file
//! layout is `kvreport::record`'s; `merge` and `report` are `kvreport`'s.

use super::runtime_settings;
use super::task::build_samples;
use crate::cli::{MergeArgs, ReportArgs, RunArgs, RuntimeArgs, TaskArgs, TemplateMode, ValidateArgs};
use anyhow::{bail, Context, Result};
use kvconfig::{Cell, Experiment, Template, Truncation};
use kvcore::generate::{generate, GenerateOptions};
use kvcore::loader::LoadedModel;
use kvcore::registry::Registry;
use kvcore::sources::{kvbench_home, resolve_or_fetch};
use kvformats::chat::ChatMessage;
use kvreport::record::{CellInfo, RunInfo, SampleRecord};
use kvtasks::sample::Sample;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Loads an experiment and checks every method's parameters against the registry; one message
/// per problem.
fn load_checked(path: &Path, plugins: &[PathBuf], allow_plugins: bool) -> Result<(Experiment, Registry, Vec<Cell>)> {
    let exp = kvconfig::load_experiment(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut all_plugins = plugins.to_vec();
    if !exp.plugins.is_empty() {
        if !allow_plugins {
            bail!(
                "{}: plugins: the experiment loads plugins ({}); plugins are code that runs with your rights, so pass --allow-plugins to load them",
                path.display(),
                exp.plugins.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            );
        }
        all_plugins.extend(exp.plugins.iter().cloned());
    }
    let reg = super::methods::registry(&all_plugins)?;
    let mut problems = Vec::new();
    for (i, m) in exp.methods.iter().enumerate() {
        if let Err(e) = reg.get(&m.method) {
            problems.push(format!("{}: methods[{i}] ({}): {e}", path.display(), m.label));
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    let takes_ratio = |name: &str| reg.get(name).map(|m| m.params.iter().any(|(p, _, _)| p == "ratio")).unwrap_or(false);
    let plugin_hash = |name: &str| reg.get(name).ok().and_then(|m| m.plugin_sha256.clone());
    let cells = kvconfig::cells_with_plugins(&exp, &takes_ratio, &plugin_hash);
    let mut seen = std::collections::BTreeSet::new();
    for c in &cells {
        let key = (c.method.label.clone(), c.ratio.map(|r| r.to_string()));
        if !seen.insert(key) {
            continue;
        }
        if let Err(e) = reg.build(&c.method.method, &c.method.params) {
            problems.push(format!("{}: method `{}`{}: {e}", path.display(), c.method.label, c.ratio.map(|r| format!(" at ratio {r}")).unwrap_or_default()));
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok((exp, reg, cells))
}

pub fn validate(a: ValidateArgs, plugins: &[PathBuf]) -> Result<()> {
    let (exp, _reg, cells) = load_checked(&a.config, plugins, a.allow_plugins)?;
    println!(
        "{}: ok: experiment `{}`, {} model(s), {} method preset(s), {} task(s), {} cell(s)",
        a.config.display(),
        exp.name,
        exp.models.len(),
        exp.methods.len(),
        exp.tasks.len(),
        cells.len()
    );
    Ok(())
}

/// Writes `bytes` to `path` atomically (kvreport's temp file, fsync, rename), creating the
/// directory first.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    kvreport::fsio::write_atomic(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Complete records already in `file`; a half-written last line (a crash mid-write) is cut off.
fn resume_records(file: &Path) -> Result<usize> {
    let Ok(bytes) = std::fs::read(file) else { return Ok(0) };
    let mut good = 0usize;
    let mut n = 0usize;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        if !line.ends_with(b"\n") || serde_json::from_slice::<SampleRecord>(line).is_err() {
            break;
        }
        good += line.len();
        n += 1;
    }
    if good < bytes.len() {
        tracing::warn!("{}: dropping {} bytes of a half-written record", file.display(), bytes.len() - good);
        let f = std::fs::OpenOptions::new().write(true).open(file).with_context(|| format!("opening {}", file.display()))?;
        f.set_len(good as u64)?;
        f.sync_all()?;
    }
    Ok(n)
}

fn git_commit() -> String {
    let exe = std::env::current_exe().ok();
    let root = exe.as_ref().and_then(|e| e.ancestors().find(|a| a.join(".git").exists()).map(Path::to_path_buf));
    let Some(root) = root else { return "unknown".into() };
    let head = std::process::Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let Some(head) = head else { return "unknown".into() };
    // Uncommitted changes to tracked files make the commit alone an incomplete description.
    let dirty = std::process::Command::new("git").arg("-C").arg(&root).args(["diff", "--quiet", "HEAD", "--"]).status().is_ok_and(|s| s.code() == Some(1));
    if dirty { format!("{head}+dirty") } else { head }
}

fn sha256_path(p: &Path) -> String {
    if p.is_file() {
        return kvformats::home::sha256_file(p).unwrap_or_else(|_| "unreadable".into());
    }
    // A directory: hash of the sorted (name, file hash) list of its files.
    let mut entries: Vec<PathBuf> = std::fs::read_dir(p).map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect()).unwrap_or_default();
    entries.sort();
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    for e in entries {
        let line = format!("{} {}\n", e.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), kvformats::home::sha256_file(&e).unwrap_or_default());
        sha2::Digest::update(&mut h, line.as_bytes());
    }
    hex::encode(sha2::Digest::finalize(h))
}

/// Task arguments as `kvbench task` would take them, from a task config.
fn task_args(cell: &Cell, model: &str) -> TaskArgs {
    let t = &cell.task_config;
    TaskArgs {
        task: t.task.clone(),
        model: model.to_string(),
        lengths: t.lengths.clone(),
        steps: t.steps,
        depths: t.depths.unwrap_or(5),
        trials: t.trials.unwrap_or(1),
        digits: t.digits.unwrap_or(7),
        samples: t.samples.unwrap_or(10),
        seed: cell.seed,
        limit: t.limit,
        max_new_tokens: t.max_new_tokens,
        template: TemplateMode::Auto,
        out: None,
        runtime: RuntimeArgs { device: "cpu".into(), dtype: None, kv_dtype: None, threads: None, guard: Default::default() },
    }
}

/// The offline data sets a task is built from (fetched on first use, sha256-checked).
fn datasets_for(task: &str) -> Vec<&'static str> {
    if task == "passkey" || task == "kamradt" {
        vec!["pg_essays"]
    } else if task.starts_with("ruler/") {
        vec!["pg_essays", "wonderwords"]
    } else if task == "code" {
        vec!["gguf_py"]
    } else if let Some(c) = task.strip_prefix("retrieval/").or_else(|| task.strip_prefix("count/")) {
        match c {
            "sotu" => vec!["sotu"],
            "moby_dick" => vec!["moby_dick"],
            "kjv" => vec!["kjv"],
            _ => vec![],
        }
    } else {
        vec![]
    }
}

/// How many of `n` samples a `fraction` keeps (at least one).
fn fraction_keep(n: usize, fraction: f64) -> usize {
    ((n as f64 * fraction).ceil() as usize).clamp(1, n.max(1))
}

/// A deterministic subset: the `fraction` of samples whose seeded hash of their id is smallest,
/// in their original order.
fn select_fraction(samples: Vec<Sample>, fraction: f64, seed: u64) -> Vec<Sample> {
    let keep = fraction_keep(samples.len(), fraction);
    let mut keyed: Vec<(String, usize)> = samples.iter().enumerate().map(|(i, s)| (hex::encode(<sha2::Sha256 as sha2::Digest>::digest(format!("{seed}:{}", s.id).as_bytes())), i)).collect();
    keyed.sort();
    let mut chosen: Vec<usize> = keyed.into_iter().take(keep).map(|(_, i)| i).collect();
    chosen.sort_unstable();
    let mut out = Vec::new();
    let mut it = samples.into_iter().enumerate();
    for c in chosen {
        for (i, s) in it.by_ref() {
            if i == c {
                out.push(s);
                break;
            }
        }
    }
    out
}

/// Context and question token ids of a sample (question empty when it has none), truncated in
/// the middle of the context to `limit` input tokens.
fn encode_sample(lm: &LoadedModel, s: &Sample, chat: bool, limit: usize, truncation: Truncation) -> Result<(Vec<u32>, Vec<u32>)> {
    let mut text = if chat {
        let tpl = lm.chat_template.as_ref().context("this model has no chat template")?;
        tpl.render(&[ChatMessage { role: "user".into(), content: s.prompt() }], true)?
    } else {
        s.prompt()
    };
    if let Some(p) = &s.answer_prefix {
        text.push_str(p);
    }
    let cut = if s.question.trim().is_empty() { None } else { text.rfind(s.question.as_str()) };
    let tok = |t: &str, special: bool| -> Result<Vec<u32>> { Ok(lm.tokenizer.encode(t, special).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?.get_ids().to_vec()) };
    let (mut ctx, q) = match cut {
        Some(c) => (tok(&text[..c], !chat)?, tok(&text[c..], false)?),
        None => (tok(&text, !chat)?, vec![]),
    };
    if ctx.len() + q.len() > limit {
        if truncation == Truncation::Error {
            bail!("sample {} has {} input tokens, over the limit of {limit} (truncation = \"error\")", s.id, ctx.len() + q.len());
        }
        let room = limit.checked_sub(q.len()).filter(|&r| r >= 2).with_context(|| format!("sample {}: the question alone ({} tokens) does not fit {limit}", s.id, q.len()))?;
        let head = room / 2;
        let tail = room - head;
        let mut cutv = ctx[..head].to_vec();
        cutv.extend_from_slice(&ctx[ctx.len() - tail..]);
        ctx = cutv;
    }
    Ok((ctx, q))
}

/// The sample a prompt compressor leaves, and the seconds it took: the whole input for the
/// passkey task (as the paper runs LLMLingua-2 there), else only the context (LongBench's
/// `context` field; instruction and question stay intact).
fn compress_sample(comp: &dyn kvcore::prompt::PromptCompressor, s: &Sample) -> Result<(Sample, f64)> {
    let mut out = s.clone();
    let c = if s.scoring == kvtasks::sample::ScoringKind::Passkey {
        let c = comp.compress(&s.prompt())?;
        out.prefix_instruction = None;
        out.question = String::new();
        out.context = c.text.clone();
        c
    } else {
        let c = comp.compress(&s.context)?;
        out.context = c.text.clone();
        c
    };
    Ok((out, c.seconds))
}

/// An upper bound on the context (input + generated tokens) a cell asks for, known before the
/// model loads, for the memory guard: the configured limits, else twice the task's longest
/// configured length (passkey lengths are words, about 1.3 tokens each, plus the template), else
/// unbounded (the guard clamps to the model's context).
fn cell_context_bound(c: &Cell) -> usize {
    let t = &c.task_config;
    let configured = t.lengths.iter().max().map(|&l| l.saturating_mul(2));
    let input = [c.model_config.context_limit, t.max_input_tokens, configured].into_iter().flatten().min().unwrap_or(usize::MAX);
    input.saturating_add(t.max_new_tokens.unwrap_or(128))
}

fn primary_score(scores: &BTreeMap<&'static str, f64>) -> f64 {
    scores.get("exact_match").or_else(|| scores.values().next()).copied().unwrap_or(0.0) * 100.0
}

pub fn run(a: RunArgs, plugins: &[PathBuf]) -> Result<()> {
    let (exp, reg, cells) = load_checked(&a.experiment, plugins, a.allow_plugins)?;
    let cells = match &a.shard {
        Some(s) => {
            let (i, n) = kvconfig::parse_shard(s).map_err(anyhow::Error::msg)?;
            kvconfig::shard(cells, i, n)
        }
        None => cells,
    };
    // Without --out: runs/<name>, or the next free runs/<name>-N when that holds a finished
    // run and --resume is not given (so the README command can be run twice).
    let out = match &a.out {
        Some(o) => o.clone(),
        None => {
            let base = PathBuf::from("runs").join(&exp.name);
            if a.resume || !base.join("run.json").exists() {
                base
            } else {
                (2..).map(|n| PathBuf::from("runs").join(format!("{}-{n}", exp.name))).find(|p| !p.join("run.json").exists()).unwrap_or(base)
            }
        }
    };
    if a.dry_run {
        println!("experiment `{}`: {} cell(s){}", exp.name, cells.len(), a.shard.as_deref().map(|s| format!(" in shard {s}")).unwrap_or_default());
        // Per model: samples and input tokens over its cells (the sizes a sitting or a cluster
        // allocation is planned from).
        let mut per_model: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for c in &cells {
            let t = &c.task_config;
            let per = if t.lengths.is_empty() { 2048 } else { t.lengths.iter().sum::<usize>() };
            let n = match t.task.as_str() {
                "passkey" => t.depths.unwrap_or(5) * t.steps.unwrap_or(t.lengths.len().max(2)) * t.trials.unwrap_or(1),
                "kamradt" => t.depths.unwrap_or(5) * t.lengths.len().max(1),
                _ => t.samples.unwrap_or(10) * t.lengths.len().max(1),
            };
            let n = t.limit.map_or(n, |l| l.min(n));
            let n = t.fraction.map_or(n, |f| fraction_keep(n, f));
            // Mean configured length per sample (passkey lengths are words: about 1.3 tokens each).
            let mean = per / t.lengths.len().max(1);
            let cell_tokens = n * if t.task == "passkey" { mean * 13 / 10 } else { mean };
            let m = per_model.entry(c.model.as_str()).or_default();
            m.0 += n;
            m.1 += cell_tokens;
            println!(
                "  {}  {:<14} {:<22} {:<6} {:<24} ~{} samples",
                c.id,
                c.model,
                c.method.label,
                c.ratio.map(|r| format!("{r}x")).unwrap_or_else(|| "-".into()),
                c.task,
                n
            );
        }
        if per_model.len() > 1 {
            for (model, (n, t)) in &per_model {
                println!("  {model}: ~{n} samples, ~{t} input tokens");
            }
        }
        let tokens: usize = per_model.values().map(|(_, t)| t).sum();
        println!("estimated input: ~{tokens} tokens in all (an estimate from the configured lengths and sample counts)");
        return Ok(());
    }
    if out.join("run.json").exists() && !a.resume {
        bail!("{} already holds a run; pass --resume to continue it, or choose another --out", out.display());
    }
    std::fs::create_dir_all(out.join("cells")).with_context(|| format!("creating {}", out.display()))?;
    // Temp files of atomic writes a killed run left behind (readers skip them; this tidies up).
    kvreport::fsio::remove_stale_temps(&out).with_context(|| format!("cleaning {}", out.display()))?;

    let threads_arg = a.threads.or(exp.run.threads);
    // The user's memory cap for the guard, parsed once (a bad size fails before any work).
    let memory_limit = kvcore::memory_guard::limit_from(a.guard.memory_limit.as_deref())?;
    let device = a.device.clone().or_else(|| exp.run.device.clone()).unwrap_or_else(|| "auto".into());
    let mut by_model: BTreeMap<String, Vec<Cell>> = BTreeMap::new();
    for c in cells {
        by_model.entry(c.model.clone()).or_default().push(c);
    }
    let mut info = RunInfo {
        experiment: exp.name.clone(),
        config_hash: exp.hash(),
        kvbench_version: env!("CARGO_PKG_VERSION").to_string(),
        git_commit: git_commit(),
        libtorch_version: kvcore::plugin_ffi::Handshake::host().libtorch_version,
        device: String::new(),
        threads: 0,
        shard: a.shard.clone().unwrap_or_else(|| "0/1".into()),
        model_hashes: BTreeMap::new(),
        data_hashes: BTreeMap::new(),
        plugins: reg.plugins().into_iter().map(|(path, sha256, methods)| kvreport::record::PluginInfo { path, sha256, methods }).collect(),
    };
    for d in kvtasks::data::known_datasets() {
        if kvtasks::data::data_dir(d.name).is_ok() {
            // The pinned sha256 of each package the data set is built from (verified at fetch).
            let pins: Vec<String> = d.artifacts.iter().map(|a| format!("{}=={}:{}", a.package, a.version, a.sha256)).collect();
            info.data_hashes.insert(d.name.to_string(), pins.join(" "));
        }
    }

    let mp = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template("{prefix:>28} [{bar:30}] {pos}/{len} {msg} (eta {eta})").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()).progress_chars("=> ");
    let mut total_done = 0usize;
    for (model_name, model_cells) in &by_model {
        let mc = &model_cells[0].model_config;
        let rt = RuntimeArgs { device: device.clone(), dtype: mc.dtype.clone(), kv_dtype: mc.kv_dtype.clone(), threads: threads_arg, guard: a.guard.clone() };
        let (settings, threads) = runtime_settings(&rt)?;
        let files = resolve_or_fetch(&mc.source, &kvbench_home()).with_context(|| format!("model `{model_name}` (source {})", mc.source))?;
        let overrides = kvcore::loader::ConfigOverrides {
            rope_theta: mc.rope_theta,
            rope_theta_factor: mc.rope_theta_factor,
            rope_linear_factor: mc.rope_linear_factor,
            max_position_embeddings: mc.max_position_embeddings,
        };
        // The memory guard: the largest context any of this model's cells asks for.
        let longest = model_cells.iter().map(cell_context_bound).max().unwrap_or(usize::MAX);
        let mut lm = super::load_guarded(&files, settings, &overrides, longest, &a.guard).with_context(|| format!("model `{model_name}`"))?;
        info.device = kvcore::device::describe(settings.device);
        info.threads = threads;
        info.model_hashes.insert(model_name.clone(), sha256_path(files.path()));
        write_atomic(&out.join("run.json"), serde_json::to_string_pretty(&info)?.as_bytes())?;
        let max_pos = lm.max_context().unwrap_or(usize::MAX);
        // A linear-time model has no KV cache: only the full run and text-level prompt
        // compressors apply to it; its cells with cache methods are skipped, said once each.
        let model_cells: Vec<&Cell> = match lm.recurrent() {
            None => model_cells.iter().collect(),
            Some(r) => {
                let mut kept = Vec::new();
                for c in model_cells {
                    let is_prompt = reg.get(&c.method.method).map(|m| m.is_prompt()).unwrap_or(false);
                    if c.method.method == "full" || is_prompt {
                        kept.push(c);
                    } else {
                        eprintln!(
                            "skipping cell {} ({} / {} / {}): `{model_name}` is a {} model with a fixed-size recurrent state, and method `{}` compresses a KV cache",
                            c.id, c.model, c.method.label, c.task, r.family(), c.method.method
                        );
                    }
                }
                kept
            }
        };

        // Samples per task, built once per model (the tokenizer sizes them).
        let mut samples: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
        for c in &model_cells {
            if samples.contains_key(&c.task) {
                continue;
            }
            for d in datasets_for(&c.task_config.task) {
                if kvtasks::data::data_dir(d).is_err() {
                    eprintln!("fetching data set `{d}` (first use)...");
                    kvtasks::data::fetch(d, &kvtasks::data::kvbench_home()?).with_context(|| format!("fetching data set `{d}` for task `{}`", c.task))?;
                }
            }
            let mut s = build_samples(&task_args(c, model_name), &lm).with_context(|| format!("building the samples of task `{}`", c.task))?;
            if let Some(f) = c.task_config.fraction {
                s = select_fraction(s, f, c.seed);
            }
            if s.is_empty() {
                bail!("task `{}` produced no samples", c.task);
            }
            samples.insert(c.task.clone(), s);
        }
        let overall = mp.add(indicatif::ProgressBar::new(model_cells.iter().map(|c| samples[&c.task].len() as u64).sum()));
        overall.set_style(style.clone());
        overall.set_prefix(format!("{model_name} (all cells)"));
        for c in model_cells {
            let ss = &samples[&c.task];
            let dir = out.join("cells").join(&c.id);
            let chat_ok = mc.chat_template && lm.chat_template.is_some();
            let template = match c.task_config.template.unwrap_or(Template::Auto) {
                Template::Chat => "chat",
                Template::Plain => "plain",
                Template::Auto => {
                    let sample_wants_chat = ss[0].metadata.get("chat_template").and_then(|v| v.as_bool()).unwrap_or(true);
                    if chat_ok && sample_wants_chat && ss[0].scoring != kvtasks::sample::ScoringKind::Passkey {
                        "chat"
                    } else {
                        "plain"
                    }
                }
            };
            let cell_info = CellInfo {
                id: c.id.clone(),
                model: c.model.clone(),
                method: c.method.method.clone(),
                method_label: c.method.label.clone(),
                method_params: serde_json::to_value(&c.method.params)?,
                ratio: c.ratio,
                task: c.task.clone(),
                category: c.task_config.category(),
                samples: ss.len(),
                seed: c.seed,
                template: template.into(),
                plugin_sha256: c.plugin_sha256.clone(),
            };
            let cell_json = serde_json::to_string_pretty(&cell_info)? + "\n";
            if dir.join("done").exists() {
                overall.inc(ss.len() as u64);
                total_done += ss.len();
                continue;
            }
            kvreport::fsio::remove_stale_temps(&dir).with_context(|| format!("cleaning {}", dir.display()))?;
            write_atomic(&dir.join("cell.json"), cell_json.as_bytes())?;
            let records = dir.join("records.jsonl");
            let start = resume_records(&records)?;
            // The memory guard, per cell: the full KV cache and activations at the longest input
            // this cell can give (its samples' text in bytes bounds their tokens) with the model
            // already loaded.
            {
                let max_new = ss.iter().map(|s| c.task_config.max_new_tokens.unwrap_or(s.max_new_tokens)).max().unwrap_or(0);
                let longest_text = ss.iter().map(|s| s.prompt().len() + s.answer_prefix.as_ref().map_or(0, String::len) + 64).max().unwrap_or(0);
                let input = [mc.context_limit, c.task_config.max_input_tokens, Some(max_pos.saturating_sub(max_new)), Some(longest_text)].into_iter().flatten().min().unwrap_or(max_pos);
                let estimate = kvcore::memory_guard::MemoryEstimate::for_loaded(&lm, input.saturating_add(max_new));
                let what = format!("cell {} ({} / {} / {})", c.id, c.model, c.method.label, c.task);
                kvcore::memory_guard::check(&what, &estimate, kvcore::memory_guard::available(lm.settings.device, memory_limit).as_ref(), a.guard.force)?;
            }
            let factory = reg.build(&c.method.method, &c.method.params)?;
            let compressor = reg.build_prompt(&c.method.method, &c.method.params)?;
            let kv_per_token = lm.kv_bytes_per_token();
            let bar = mp.add(indicatif::ProgressBar::new(ss.len() as u64));
            bar.set_style(style.clone());
            bar.set_prefix(format!("{} {}{}", c.task, c.method.label, c.ratio.map(|r| format!(" {r}x")).unwrap_or_default()));
            bar.set_position(start as u64);
            overall.inc(start as u64);
            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&records).with_context(|| format!("opening {}", records.display()))?;
            for (i, s) in ss.iter().enumerate().skip(start) {
                let max_new = c.task_config.max_new_tokens.unwrap_or(s.max_new_tokens);
                let limit = [mc.context_limit, c.task_config.max_input_tokens, Some(max_pos.saturating_sub(max_new))].into_iter().flatten().min().unwrap_or(max_pos);
                let truncation = c.task_config.truncation.unwrap_or(Truncation::Middle);
                let where_ = || format!("cell {} ({} / {} / {})", c.id, c.model, c.method.label, c.task);
                let (ctx, q) = encode_sample(&lm, s, template == "chat", limit, truncation).with_context(where_)?;
                // A prompt compressor rewrites the sample's text; the full cache is measured on the original.
                let (ctx, q, compression) = match &compressor {
                    None => (ctx, q, None),
                    Some(comp) => {
                        let (shorter, seconds) = compress_sample(comp.as_ref(), s).with_context(where_)?;
                        let (cctx, cq) = encode_sample(&lm, &shorter, template == "chat", limit, truncation).with_context(where_)?;
                        (cctx, cq, Some((ctx.len() + q.len(), seconds)))
                    }
                };
                let opts = GenerateOptions { max_new_tokens: max_new, prefill_chunk: exp.run.prefill_chunk, ..Default::default() };
                kvcore::memory::reset_peak_rss();
                let g = if q.is_empty() {
                    generate(&mut lm, &ctx, &opts, factory.as_ref())?
                } else {
                    let popts = kvcore::pipeline::PipelineOptions { query_aware: c.query_aware };
                    kvcore::pipeline::answer(&mut lm, &ctx, std::slice::from_ref(&q), &opts, popts, factory.as_ref())?.remove(0)
                };
                let peak = kvcore::memory::peak_rss_bytes().unwrap_or(0);
                // Full-cache bytes of the uncompressed prompt, for prompt compressors.
                let kv_bytes_full = g.kv_bytes_full + compression.map_or(0, |(orig, _)| kv_per_token * orig.saturating_sub(ctx.len() + q.len()) as u64);
                let scores = s.score(&g.text).map_err(|e| anyhow::anyhow!("scoring sample {}: {e}", s.id))?;
                let z = a.zero_measurements;
                let rec = SampleRecord {
                    cell: c.id.clone(),
                    sample_id: s.id.clone(),
                    index: i,
                    prediction: g.text.clone(),
                    answers: s.answers.clone(),
                    score: primary_score(&scores),
                    scores: scores.iter().map(|(k, v)| (k.to_string(), v * 100.0)).collect(),
                    input_tokens: ctx.len() + q.len(),
                    generated_tokens: g.generated_tokens,
                    prefill_seconds: if z { 0.0 } else { g.prefill_seconds + compression.map_or(0.0, |(_, secs)| secs) },
                    decode_tokens_per_s: if z { 0.0 } else { g.decode_tokens_per_s() },
                    kv_bytes_held: g.kv_bytes_held,
                    kv_bytes_attended: g.kv_bytes_attended,
                    kv_bytes_full,
                    compression_ratio: if g.kv_bytes_held > 0 { kv_bytes_full as f64 / g.kv_bytes_held as f64 } else { 0.0 },
                    peak_memory_bytes: if z { 0 } else { peak },
                    metadata: s.metadata.clone(),
                    original_input_tokens: compression.map(|(orig, _)| orig),
                    prompt_compression_seconds: compression.map(|(_, secs)| if z { 0.0 } else { secs }),
                };
                let mut line = serde_json::to_string(&rec)?;
                line.push('\n');
                file.write_all(line.as_bytes()).with_context(|| format!("writing {}", records.display()))?;
                file.sync_data().with_context(|| format!("syncing {}", records.display()))?;
                bar.inc(1);
                overall.inc(1);
                total_done += 1;
            }
            write_atomic(&dir.join("done"), b"")?;
            bar.finish_and_clear();
        }
        overall.finish_and_clear();
    }
    eprintln!("{} sample(s) recorded in {}", total_done, out.display());
    if !a.no_report {
        let report_dir = out.join("report");
        let summary = kvreport::write_reports(std::slice::from_ref(&out), &report_dir, false).map_err(|e| anyhow::anyhow!("writing the report: {e}"))?;
        println!("{}", summary.leaderboard_markdown);
        println!("HTML report: {}", report_dir.join("index.html").display());
    }
    Ok(())
}

pub fn merge(a: MergeArgs) -> Result<()> {
    kvreport::merge::merge(&a.dirs, &a.out).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("merged {} run director{} into {}", a.dirs.len(), if a.dirs.len() == 1 { "y" } else { "ies" }, a.out.display());
    Ok(())
}

pub fn report(a: ReportArgs) -> Result<()> {
    let compare = match a.compare.as_deref() {
        None => false,
        Some("paper") => true,
        Some(other) => bail!("--compare {other}: expected `paper`"),
    };
    let out = a.out.clone().unwrap_or_else(|| a.dirs[0].join("report"));
    let summary = kvreport::write_reports_with_bench(&a.dirs, &out, compare, &a.bench).map_err(|e| anyhow::anyhow!("{e}"))?;
    for w in &summary.warnings {
        eprintln!("warning: {w}");
    }
    println!("{}", summary.leaderboard_markdown);
    if compare {
        let p = out.join("paper_comparison.md");
        println!("{}", std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?);
    }
    println!("HTML report: {}", out.join("index.html").display());
    Ok(())
}
