//! Running cells: per model, load it once (behind the memory guard), build each task's samples
//! once, then run every cell's samples through the context/question pipeline with the cell's
//! method, appending one record per sample. A cell marked `done` is skipped and a cell cut short
//! resumes after its last complete record, so `--resume` continues where a run stopped.

use crate::plan::cell_context_bound;
use crate::provenance::sha256_path;
use crate::samples::{compress_sample, datasets_for, encode_sample, select_fraction, task_spec, EngineTokenizer};
use crate::sink::{resume_records, write_atomic, RecordSink};
use anyhow::{bail, Context, Result};
use kvconfig::{Cell, Experiment, Template, Truncation};
use kvcore::generate::{generate, GenerateOptions};
use kvcore::registry::Registry;
use kvcore::sources::{kvbench_home, resolve_or_fetch};
use kvreport::record::{CellInfo, SampleRecord};
use kvtasks::sample::Sample;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How a run goes, beyond the experiment file.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Continue the run in `out` (finished samples are skipped).
    pub resume: bool,
    /// `i/N`, recorded in run.json (the cells given are already that shard's).
    pub shard: Option<String>,
    /// Device (`cpu`, `cuda`, `cuda:N`, `auto`), over the experiment's `run.device`.
    pub device: Option<String>,
    /// CPU threads, over the experiment's `run.threads`.
    pub threads: Option<usize>,
    pub guard: crate::runtime::Guard,
    /// Record 0 for every time and memory figure (reproducible records for tests).
    pub zero_measurements: bool,
    /// Skip writing the report at the end.
    pub no_report: bool,
}

/// What a finished run left.
#[derive(Debug)]
pub struct RunSummary {
    pub out: PathBuf,
    /// Samples recorded (this run's and the resumed ones').
    pub samples_recorded: usize,
    /// The report folder and its leaderboard (Markdown), unless `no_report`.
    pub report: Option<(PathBuf, String)>,
}

fn primary_score(scores: &BTreeMap<&'static str, f64>) -> f64 {
    scores.get("exact_match").or_else(|| scores.values().next()).copied().unwrap_or(0.0) * 100.0
}

/// Runs `cells` of `exp` into the run directory `out`.
pub fn run_cells(exp: &Experiment, reg: &Registry, cells: Vec<Cell>, out: &Path, opts: &RunOptions) -> Result<RunSummary> {
    if out.join("run.json").exists() && !opts.resume {
        bail!("{} already holds a run; pass --resume to continue it, or choose another --out", out.display());
    }
    std::fs::create_dir_all(out.join("cells")).with_context(|| format!("creating {}", out.display()))?;
    // Temp files of atomic writes a killed run left behind (readers skip them; this tidies up).
    kvreport::fsio::remove_stale_temps(out).with_context(|| format!("cleaning {}", out.display()))?;

    let threads_arg = opts.threads.or(exp.run.threads);
    // The user's memory cap for the guard, parsed once (a bad size fails before any work).
    let memory_limit = kvcore::memory_guard::limit_from(opts.guard.memory_limit.as_deref())?;
    let device = opts.device.clone().or_else(|| exp.run.device.clone()).unwrap_or_else(|| "auto".into());
    let mut by_model: BTreeMap<String, Vec<Cell>> = BTreeMap::new();
    for c in cells {
        by_model.entry(c.model.clone()).or_default().push(c);
    }
    let mut info = crate::provenance::run_info(exp, reg, opts.shard.as_deref());

    let mp = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template("{prefix:>28} [{bar:30}] {pos}/{len} {msg} (eta {eta})")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
    let mut total_done = 0usize;
    for (model_name, model_cells) in &by_model {
        let mc = &model_cells[0].model_config;
        let (settings, threads) = crate::runtime::resolve(&device, mc.dtype.as_deref(), mc.kv_dtype.as_deref(), threads_arg)?;
        let files = resolve_or_fetch(&mc.source, &kvbench_home()).with_context(|| format!("model `{model_name}` (source {})", mc.source))?;
        let overrides = kvcore::loader::ConfigOverrides {
            rope_theta: mc.rope_theta,
            rope_theta_factor: mc.rope_theta_factor,
            rope_linear_factor: mc.rope_linear_factor,
            max_position_embeddings: mc.max_position_embeddings,
        };
        // The memory guard: the largest context any of this model's cells asks for.
        let longest = model_cells.iter().map(cell_context_bound).max().unwrap_or(usize::MAX);
        let mut lm = crate::runtime::load_guarded(&files, settings, &overrides, longest, &opts.guard).with_context(|| format!("model `{model_name}`"))?;
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
            let mut s = task_spec(c)
                .build(&EngineTokenizer(&lm.tokenizer))
                .with_context(|| format!("building the samples of task `{}` for model `{model_name}`", c.task))?;
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
                let input = [mc.context_limit, c.task_config.max_input_tokens, Some(max_pos.saturating_sub(max_new)), Some(longest_text)]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(max_pos);
                let estimate = kvcore::memory_guard::MemoryEstimate::for_loaded(&lm, input.saturating_add(max_new));
                let what = format!("cell {} ({} / {} / {})", c.id, c.model, c.method.label, c.task);
                kvcore::memory_guard::check(&what, &estimate, kvcore::memory_guard::available(lm.settings.device, memory_limit).as_ref(), opts.guard.force)?;
            }
            let factory = reg.build(&c.method.method, &c.method.params)?;
            let compressor = reg.build_prompt(&c.method.method, &c.method.params)?;
            let kv_per_token = lm.kv_bytes_per_token();
            let bar = mp.add(indicatif::ProgressBar::new(ss.len() as u64));
            bar.set_style(style.clone());
            bar.set_prefix(format!("{} {}{}", c.task, c.method.label, c.ratio.map(|r| format!(" {r}x")).unwrap_or_default()));
            bar.set_position(start as u64);
            overall.inc(start as u64);
            let mut sink = RecordSink::open(&records)?;
            for (i, s) in ss.iter().enumerate().skip(start) {
                let max_new = c.task_config.max_new_tokens.unwrap_or(s.max_new_tokens);
                let limit =
                    [mc.context_limit, c.task_config.max_input_tokens, Some(max_pos.saturating_sub(max_new))].into_iter().flatten().min().unwrap_or(max_pos);
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
                let gen_opts = GenerateOptions { max_new_tokens: max_new, prefill_chunk: exp.run.prefill_chunk, ..Default::default() };
                kvcore::memory::reset_peak_rss();
                let g = if q.is_empty() {
                    generate(&mut lm, &ctx, &gen_opts, factory.as_ref())?
                } else {
                    let popts = kvcore::pipeline::PipelineOptions { query_aware: c.query_aware };
                    kvcore::pipeline::answer(&mut lm, &ctx, std::slice::from_ref(&q), &gen_opts, popts, factory.as_ref())?.remove(0)
                };
                let peak = kvcore::memory::peak_rss_bytes().unwrap_or(0);
                // Full-cache bytes of the uncompressed prompt, for prompt compressors.
                let kv_bytes_full = g.kv_bytes_full + compression.map_or(0, |(orig, _)| kv_per_token * orig.saturating_sub(ctx.len() + q.len()) as u64);
                let scores = s.score(&g.text).with_context(|| format!("scoring sample {}", s.id))?;
                let z = opts.zero_measurements;
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
                sink.append(&rec)?;
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
    let report = if opts.no_report {
        None
    } else {
        let report_dir = out.join("report");
        let summary = kvreport::write_reports(&[out.to_path_buf()], &report_dir, false).context("writing the report")?;
        Some((report_dir, summary.leaderboard_markdown))
    };
    Ok(RunSummary { out: out.to_path_buf(), samples_recorded: total_done, report })
}
