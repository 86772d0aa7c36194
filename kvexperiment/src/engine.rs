//! Running cells: per model, load it once (behind the memory guard), build each task's samples
//! once, then run every cell's samples through the context/question pipeline with the cell's
//! method, appending one record per sample. A cell marked `done` is skipped and a cell cut short
//! resumes after its last complete record, so `--resume` continues where a run stopped.

use crate::plan::cell_context_bound;
use crate::provenance::sha256_path;
use crate::samples::{apply_stop_rules, build_samples, compress_sample, datasets_for, encode_sample, newline_stop_id, task_spec, EngineTokenizer};
use crate::sink::{resume_records, write_atomic, RecordSink};
use anyhow::{bail, Context, Result};
use kvconfig::{Cell, Experiment, Template, Truncation};
use kvcore::cache::CacheFactory;
use kvcore::generate::{generate, GenerateOptions, GenerationOutput};
use kvcore::registry::Registry;
use kvcore::shared::Prompted;
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
    /// Run every cell alone, one sample at a time, each with its own prefill and decoding (the
    /// reference a shared run is checked against, and the way to measure a method's own time
    /// and memory).
    pub isolated: bool,
    /// Sequences decoded together in a shared run (default [`DEFAULT_BATCH`]).
    pub max_batch: Option<usize>,
    /// After the grid, run each cell's first N samples alone (not interleaved) into
    /// `measure.jsonl`, so the report's time and memory come from a method's own runs.
    pub measure: Option<usize>,
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
    // One writer per run directory: a second run on it refuses, naming the holder.
    let _lock = crate::lock::RunLock::acquire(out)?;
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
    // A resumed run keeps the commits of its earlier sittings (provenance of their records).
    if let Some(prev) = std::fs::read(out.join("run.json")).ok().and_then(|b| serde_json::from_slice::<kvreport::record::RunInfo>(&b).ok()) {
        let commit = info.git_commit.clone();
        info.add_commits(&prev.commits(), &commit);
        info.add_cpus(&prev.cpus);
        info.add_decode_matmul(&prev.decode_matmul);
    }

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
        if let Some(format) = &mc.chat_format {
            lm.chat_template = Some(crate::samples::builtin_chat_template(&lm, format).with_context(|| format!("model `{model_name}`: chat_format"))?);
        }
        info.device = kvcore::device::describe(settings.device);
        info.note_decode_matmul(kvcore::model::decode_matmul_path(settings.device, settings.dtype.kind()));
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
            // The template the task's samples will be read through (decided per cell below, the
            // same for every cell of a task): a generator that sizes to a token budget counts it.
            let sizing_chat = match c.task_config.template.unwrap_or(Template::Auto) {
                Template::Chat => true,
                Template::Plain => false,
                Template::Auto => mc.chat_template && lm.chat_template.is_some(),
            };
            let s = build_samples(&task_spec(c), &EngineTokenizer::new(&lm, sizing_chat), c.task_config.fraction, c.seed)
                .with_context(|| format!("building the samples of task `{}` for model `{model_name}`", c.task))?;
            if s.is_empty() {
                bail!("task `{}` produced no samples", c.task);
            }
            samples.insert(c.task.clone(), s);
        }
        let overall = mp.add(indicatif::ProgressBar::new(model_cells.iter().map(|c| samples[&c.task].len() as u64).sum()));
        overall.set_style(style.clone());
        overall.set_prefix(format!("{model_name} (all cells)"));
        let mut prepared: Vec<Prepared> = Vec::new();
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
            // A finished cell is skipped, unless `--measure N` asks for isolated samples it does
            // not have yet (a finished run measured later, in a process of its own).
            let measure_due = match (opts.measure, opts.isolated) {
                (Some(n), false) => resume_records(&dir.join(kvreport::record::MEASURE_FILE))? < n.min(ss.len()),
                _ => false,
            };
            if dir.join("done").exists() && !measure_due {
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
                // An untruncated method (`truncate = false`) takes the whole prompt.
                let limits =
                    if c.method.truncate { [mc.context_limit, c.task_config.max_input_tokens, Some(max_pos.saturating_sub(max_new))] } else { [None; 3] };
                let input = limits.into_iter().chain([Some(longest_text)]).flatten().min().unwrap_or(max_pos);
                let estimate = kvcore::memory_guard::MemoryEstimate::for_loaded(&lm, input.saturating_add(max_new));
                let what = format!("cell {} ({} / {} / {})", c.id, c.model, c.method.label, c.task);
                kvcore::memory_guard::check(&what, &estimate, kvcore::memory_guard::available(lm.settings.device, memory_limit).as_ref(), opts.guard.force)?;
            }
            let factory = reg.build(&c.method.method, &c.method.params)?;
            let compressor = reg.build_prompt(&c.method.method, &c.method.params)?;
            overall.inc(start as u64);
            let shares_prefill = compressor.is_none() && lm.recurrent().is_none() && factory.shared_prefill();
            prepared.push(Prepared {
                cell: c,
                chat: template == "chat",
                factory,
                compressor,
                shares_prefill,
                dir,
                sink: RecordSink::open(&records)?,
                next: start,
            });
        }
        let newline_stop = newline_stop_id(&lm);
        let ctx = CellContext { exp, mc, max_pos, kv_per_token: lm.kv_bytes_per_token(), zero: opts.zero_measurements, memory_limit, newline_stop };
        // Sample by sample, every cell of a task together (unless --isolated): the cells that can
        // share a prefill share it, the others prefill alone, and all of them decode together.
        let mut tasks: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (j, p) in prepared.iter().enumerate() {
            tasks.entry(p.cell.task.as_str()).or_default().push(j);
        }
        if opts.isolated {
            // Cell by cell, each sample alone: how every cell ran before shared prefill.
            for p in prepared.iter_mut() {
                let ss = &samples[&p.cell.task];
                let prefix = format!("{} {}{}", p.cell.task, p.cell.method.label, p.cell.ratio.map(|r| format!(" {r}x")).unwrap_or_default());
                let bar = add_bar(&mp, &style, ss.len(), p.next, prefix);
                for (i, s) in ss.iter().enumerate().skip(p.next) {
                    let rec = run_alone(&mut lm, &ctx, p, s, i)?;
                    finish_sample(p, &rec, &[&bar, &overall])?;
                    total_done += 1;
                }
                bar.finish_and_clear();
            }
            tasks.clear();
        }
        for (task, members) in &tasks {
            let ss = &samples[*task];
            // One bar per task: its cells' samples, recorded a sample (all cells) at a time.
            let recorded = members.iter().map(|&j| prepared[j].next).sum();
            let bar = add_bar(&mp, &style, members.len() * ss.len(), recorded, format!("{task} ({} cells, shared)", members.len()));
            for (i, s) in ss.iter().enumerate() {
                let due: Vec<usize> = members.iter().copied().filter(|&j| prepared[j].next == i).collect();
                if due.is_empty() {
                    continue;
                }
                let max_batch = opts.max_batch.unwrap_or(DEFAULT_BATCH);
                kvcore::memory::reset_peak_rss();
                // Where a sample's time goes (KVBENCH_LOG=kvexperiment=debug).
                let (mut alone_s, mut shared_s, mut shared_cells) = (0f64, 0f64, 0usize);
                // Every cell's prompt, then all of them decoded together.
                let mut ready: Vec<(usize, Prompted, Compression)> = Vec::new();
                let mut groups: Vec<(PromptKey, Vec<usize>)> = Vec::new();
                let mut compressed = compress_together(&prepared, &due, s)?;
                for &j in &due {
                    let p = &prepared[j];
                    if lm.recurrent().is_some() {
                        // A recurrent state decodes alone.
                        let rec = run_alone(&mut lm, &ctx, p, s, i)?;
                        finish_sample(&mut prepared[j], &rec, &[&bar, &overall])?;
                        total_done += 1;
                        continue;
                    }
                    if !p.shares_prefill {
                        let (cx, q, compression) = cell_prompt(&lm, &ctx, p, s, compressed.remove(&j))?;
                        let gen_opts = ctx.generate_options(p.cell, s)?;
                        let popts = kvcore::pipeline::PipelineOptions { query_aware: p.cell.query_aware };
                        let t = std::time::Instant::now();
                        let prompted = kvcore::shared::prompt_alone(&mut lm, &cx, &q, &gen_opts, popts, p.factory.as_ref()).with_context(|| where_(p.cell))?;
                        alone_s += t.elapsed().as_secs_f64();
                        ready.push((j, prompted, compression));
                        continue;
                    }
                    let (cx, q) = encode_for(&lm, &ctx, p, s)?;
                    let key = (cx, q, p.cell.query_aware);
                    match groups.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, g)) => g.push(j),
                        None => groups.push((key, vec![j])),
                    }
                }
                for ((cx, q, query_aware), group) in groups {
                    let gen_opts = ctx.generate_options(prepared[group[0]].cell, s)?;
                    for part in group.chunks(ctx.members_that_fit(&lm, cx.len() + q.len() + gen_opts.max_new_tokens)) {
                        let factories: Vec<&dyn CacheFactory> = part.iter().map(|&j| prepared[j].factory.as_ref()).collect();
                        let popts = kvcore::pipeline::PipelineOptions { query_aware };
                        let t = std::time::Instant::now();
                        shared_cells += part.len();
                        let prompted = kvcore::shared::prefill_shared(&mut lm, &cx, &q, &gen_opts, popts, &factories)
                            .with_context(|| format!("task {task}, sample {}: the shared prefill of {} cells", s.id, part.len()))?;
                        shared_s += t.elapsed().as_secs_f64();
                        ready.extend(part.iter().zip(prompted).map(|(&j, p)| (j, p, None)));
                    }
                }
                // Decoding, batched across the sample's cells (cells asking for the same number
                // of new tokens decode together).
                let mut by_budget: BTreeMap<usize, Vec<(usize, Prompted, Compression)>> = BTreeMap::new();
                for r in ready {
                    by_budget.entry(ctx.max_new(prepared[r.0].cell, s)).or_default().push(r);
                }
                let decoding = std::time::Instant::now();
                let mut done: Vec<(usize, GenerationOutput, Compression)> = Vec::new();
                for (_, batch) in by_budget {
                    let gen_opts = ctx.generate_options(prepared[batch[0].0].cell, s)?;
                    let (meta, prompted): (Vec<(usize, Compression)>, Vec<Prompted>) = batch.into_iter().map(|(j, p, c)| ((j, c), p)).unzip();
                    let outs = kvcore::shared::decode_batch(&mut lm, prompted, &gen_opts, max_batch)
                        .with_context(|| format!("task {task}, sample {}: decoding {} cells together", s.id, meta.len()))?;
                    done.extend(meta.into_iter().zip(outs).map(|((j, c), g)| (j, g, c)));
                }
                tracing::debug!(
                    "task {task}, sample {}: shared prefill of {shared_cells} cell(s) {shared_s:.2} s, {} prompt(s) alone {alone_s:.2} s, {} sequence(s) decoded in {:.2} s",
                    s.id,
                    done.len() - shared_cells,
                    done.len(),
                    decoding.elapsed().as_secs_f64()
                );
                let peak = kvcore::memory::peak_rss_bytes().unwrap_or(0);
                done.sort_by_key(|d| d.0);
                for (j, g, compression) in done {
                    let mut rec = ctx.record(prepared[j].cell, s, i, &g, compression, peak)?;
                    rec.timing = Some(kvreport::record::TIMING_SHARED.to_string());
                    finish_sample(&mut prepared[j], &rec, &[&bar, &overall])?;
                    total_done += 1;
                }
            }
            bar.finish_and_clear();
        }
        // Isolated measurements: each cell's first N samples alone, one cell after another.
        if let (Some(n), false) = (opts.measure, opts.isolated) {
            for p in prepared.iter_mut() {
                let ss = &samples[&p.cell.task];
                let file = p.dir.join(kvreport::record::MEASURE_FILE);
                let start = resume_records(&file)?;
                let want = n.min(ss.len());
                if start >= want {
                    continue;
                }
                let bar = add_bar(&mp, &style, want, start, format!("{} {} (measuring alone)", p.cell.task, p.cell.method.label));
                let mut sink = RecordSink::open(&file)?;
                for (i, s) in ss.iter().enumerate().take(want).skip(start) {
                    sink.append(&run_alone(&mut lm, &ctx, p, s, i)?)?;
                    bar.inc(1);
                }
                bar.finish_and_clear();
            }
        }
        for p in prepared {
            if p.next >= samples[&p.cell.task].len() {
                write_atomic(&p.dir.join("done"), b"")?;
            }
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

/// A prompt compressor's (tokens before compression, seconds compressing); `None` for a cache
/// method.
type Compression = Option<(usize, f64)>;

/// What makes two cells' prefills the same: context ids, question ids, and whether the question
/// is prefilled with the context.
type PromptKey = (Vec<u32>, Vec<u32>, bool);

/// Sequences decoded together in a shared run when `--batch` is not given.
pub const DEFAULT_BATCH: usize = 16;

/// A cell about to run: its method, where its records go, the next sample it needs.
struct Prepared<'c> {
    cell: &'c Cell,
    chat: bool,
    factory: std::sync::Arc<dyn CacheFactory>,
    compressor: Option<std::sync::Arc<dyn kvcore::prompt::PromptCompressor>>,
    /// Runs in a shared prefill group (its method declares a plain full-attention prefill).
    shares_prefill: bool,
    dir: PathBuf,
    sink: RecordSink,
    next: usize,
}

/// What every cell of a model needs to turn a sample into a record.
struct CellContext<'a> {
    exp: &'a Experiment,
    mc: &'a kvconfig::ModelConfig,
    max_pos: usize,
    kv_per_token: u64,
    zero: bool,
    memory_limit: Option<u64>,
    /// The newline token that ends samsum's answers (the last id of `"\n"` encoded).
    newline_stop: Option<u32>,
}

impl CellContext<'_> {
    fn max_new(&self, c: &Cell, s: &Sample) -> usize {
        c.task_config.max_new_tokens.unwrap_or(s.max_new_tokens)
    }

    fn generate_options(&self, c: &Cell, s: &Sample) -> Result<GenerateOptions> {
        let mut o = GenerateOptions {
            max_new_tokens: self.max_new(c, s),
            prefill_chunk: self.exp.run.prefill_chunk,
            // An untruncated method sizes its budget from the prompt up to what the cut would
            // have left: the paper's ratio × min(length, model max length).
            budget_context_cap: (!c.method.truncate).then(|| self.model_limit(c, s)),
            penalties: self.mc.penalties.as_deref().and_then(kvcore::generate::Penalties::by_name),
            ..Default::default()
        };
        apply_stop_rules(s, self.newline_stop, &mut o)?;
        Ok(o)
    }

    /// The input-token limit of a cell's samples: [`Self::model_limit`], or none for a method
    /// that is never truncated (`truncate = false`, the paper's `truncation_mode: null`).
    fn limit(&self, c: &Cell, s: &Sample) -> usize {
        if c.method.truncate {
            self.model_limit(c, s)
        } else {
            usize::MAX
        }
    }

    /// The model's and task's input-token limit: the configured `context_limit` and
    /// `max_input_tokens`, and the model's positions less the tokens to generate.
    fn model_limit(&self, c: &Cell, s: &Sample) -> usize {
        let max_new = self.max_new(c, s);
        [self.mc.context_limit, c.task_config.max_input_tokens, Some(self.max_pos.saturating_sub(max_new))].into_iter().flatten().min().unwrap_or(self.max_pos)
    }

    /// How many methods' caches fit in memory at once for a prompt of `tokens` (each holds the
    /// full prompt until its `end_prefill`), besides the model and one sequence's activations.
    fn members_that_fit(&self, lm: &kvcore::loader::LoadedModel, tokens: usize) -> usize {
        let Some(avail) = kvcore::memory_guard::available(lm.settings.device, self.memory_limit) else { return usize::MAX };
        let base = kvcore::memory_guard::MemoryEstimate::for_loaded(lm, tokens).total();
        let per_member = (self.kv_per_token * tokens as u64).max(1);
        (avail.bytes.saturating_sub(base) / per_member).max(1) as usize
    }

    /// A sample's record from what generation gave.
    fn record(&self, c: &Cell, s: &Sample, i: usize, g: &GenerationOutput, compression: Compression, peak: u64) -> Result<SampleRecord> {
        // Everything that went through the model before the first generated token.
        let input_tokens = g.prompt_tokens;
        // Full-cache bytes of the uncompressed prompt, for prompt compressors.
        let kv_bytes_full = g.kv_bytes_full + compression.map_or(0, |(orig, _)| self.kv_per_token * orig.saturating_sub(input_tokens) as u64);
        let scores = s.score(&g.text).with_context(|| format!("scoring sample {}", s.id))?;
        let z = self.zero;
        Ok(SampleRecord {
            cell: c.id.clone(),
            sample_id: s.id.clone(),
            index: i,
            prediction: g.text.clone(),
            answers: s.answers.clone(),
            score: primary_score(&scores),
            scores: scores.iter().map(|(k, v)| (k.to_string(), v * 100.0)).collect(),
            input_tokens,
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
            timing: None,
        })
    }
}

/// A progress bar of `len` steps, `done` of them already, under `mp`.
fn add_bar(mp: &indicatif::MultiProgress, style: &indicatif::ProgressStyle, len: usize, done: usize, prefix: String) -> indicatif::ProgressBar {
    let bar = mp.add(indicatif::ProgressBar::new(len as u64));
    bar.set_style(style.clone());
    bar.set_prefix(prefix);
    bar.set_position(done as u64);
    bar
}

fn where_(c: &Cell) -> String {
    format!("cell {} ({} / {} / {})", c.id, c.model, c.method.label, c.task)
}

/// A sample's context and question token ids as the cell prompts them.
fn encode_for(lm: &kvcore::loader::LoadedModel, ctx: &CellContext<'_>, p: &Prepared<'_>, s: &Sample) -> Result<(Vec<u32>, Vec<u32>)> {
    let truncation = p.cell.task_config.truncation.unwrap_or(Truncation::Middle);
    encode_sample(lm, s, p.chat, ctx.limit(p.cell, s), truncation).with_context(|| where_(p.cell))
}

/// A sample's prompt as a cell runs it: its context and question ids and, for a prompt
/// compressor, the compressed ones with (tokens before compression, seconds compressing).
/// `done` is the compressed sample when it was already made ([`compress_together`]).
fn cell_prompt(
    lm: &kvcore::loader::LoadedModel,
    ctx: &CellContext<'_>,
    p: &Prepared<'_>,
    s: &Sample,
    done: Option<(Sample, f64)>,
) -> Result<(Vec<u32>, Vec<u32>, Compression)> {
    let (cx, q) = encode_for(lm, ctx, p, s)?;
    // A prompt compressor rewrites the sample's text; the full cache is measured on the original.
    Ok(match &p.compressor {
        None => (cx, q, None),
        Some(comp) => {
            let (shorter, seconds) = match done {
                Some(d) => d,
                None => compress_sample(comp.as_ref(), s).with_context(|| where_(p.cell))?,
            };
            let (ccx, cq) = encode_for(lm, ctx, p, &shorter)?;
            (ccx, cq, Some((cx.len() + q.len(), seconds)))
        }
    })
}

/// One sample of one cell, alone: its own prefill (or prompt compression), its own decoding.
fn run_alone(lm: &mut kvcore::loader::LoadedModel, ctx: &CellContext<'_>, p: &Prepared<'_>, s: &Sample, i: usize) -> Result<SampleRecord> {
    let c = p.cell;
    let (cx, q, compression) = cell_prompt(lm, ctx, p, s, None)?;
    let gen_opts = ctx.generate_options(c, s)?;
    // The peak is measured from the resident set at the start of the sample: hand back what the
    // allocator keeps from earlier work first (a grid run before the measurements leaves
    // gigabytes of freed heap resident, which would otherwise sit under every method's peak).
    kvcore::memory::release_free_memory();
    kvcore::memory::reset_peak_rss();
    let g = if q.is_empty() {
        generate(lm, &cx, &gen_opts, p.factory.as_ref())?
    } else {
        let popts = kvcore::pipeline::PipelineOptions { query_aware: c.query_aware };
        kvcore::pipeline::answer(lm, &cx, std::slice::from_ref(&q), &gen_opts, popts, p.factory.as_ref())?.remove(0)
    };
    let peak = kvcore::memory::peak_rss_bytes().unwrap_or(0);
    ctx.record(c, s, i, &g, compression, peak)
}

/// The sample compressed once for each group of `due` cells whose prompt compressors score the
/// same way (equal [`kvcore::prompt::PromptCompressor::scoring_key`], e.g. Selective-Context at
/// several budgets): one scoring pass, one selection per rate. By cell index.
fn compress_together(prepared: &[Prepared<'_>], due: &[usize], s: &Sample) -> Result<BTreeMap<usize, (Sample, f64)>> {
    let mut by_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for &j in due {
        if let Some(key) = prepared[j].compressor.as_ref().and_then(|c| c.scoring_key()) {
            by_key.entry(key).or_default().push(j);
        }
    }
    let mut out = BTreeMap::new();
    for js in by_key.into_values().filter(|js| js.len() > 1) {
        let comp = |j: usize| prepared[j].compressor.as_ref().expect("grouped by their compressor's key");
        let rates: Vec<f64> = js.iter().map(|&j| comp(j).rate()).collect();
        let samples = crate::samples::compress_sample_rates(comp(js[0]).as_ref(), s, &rates).with_context(|| where_(prepared[js[0]].cell))?;
        out.extend(js.into_iter().zip(samples));
    }
    Ok(out)
}

/// Appends a cell's record of its next sample.
fn finish_sample(p: &mut Prepared<'_>, rec: &SampleRecord, bars: &[&indicatif::ProgressBar]) -> Result<()> {
    p.sink.append(rec)?;
    p.next += 1;
    for b in bars {
        b.inc(1);
    }
    Ok(())
}
