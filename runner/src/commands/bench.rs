//! `kvbench bench`: prefill speed, time to first token, decode speed, KV bytes and peak memory per
//! method and context length, each speed beside this machine's ceiling (a roofline measured by
//! `--calibrate`), printed as a table and written as CSV and JSON for reports and comparisons.
//!
//! Ceilings: decoding one token must read every weight once plus the KV bytes it attends to, so
//! its floor time is `(weight bytes + KV bytes attended) / memory bandwidth`; prefill must do
//! `2 × (matmul parameters) + 4 × (mean causal span) × (query heads × head dim) × layers` FLOPs per
//! token, so its floor is that over the measured f32 matmul rate. Both ceilings are estimates from
//! two measured rates (a large copy, a large matmul); the figures themselves are measured.

use super::runtime_settings;
use crate::cli::BenchArgs;
use anyhow::{bail, Context, Result};
use kvcore::generate::{generate, GenerateOptions};
use kvcore::loader::LoadedModel;
use kvcore::sources::{kvbench_home, resolve_or_fetch};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tch::{Kind, Tensor};

/// The two rates the ceilings come from, measured on this machine with this thread count.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Calibration {
    /// Bytes/s of a large tensor copy (read + write counted), the decode ceiling's bandwidth.
    pub copy_bytes_per_s: f64,
    /// FLOP/s of a large f32 matmul, the prefill ceiling's rate.
    pub matmul_flops_per_s: f64,
    pub threads: usize,
    pub device: String,
}

fn calibration_path() -> PathBuf {
    kvbench_home().join("calibration.json")
}

/// Measures the copy bandwidth and matmul rate (best of 5 each, after a warm-up).
pub fn calibrate(device: tch::Device, threads: usize) -> Calibration {
    let _g = tch::no_grad_guard();
    let sync = || kvcore::device::synchronize(device);
    // 256 MiB source: far beyond any cache, as decode's weights are.
    let n: i64 = 64 << 20;
    let src = Tensor::ones([n], (Kind::Float, device));
    let mut dst = Tensor::zeros([n], (Kind::Float, device));
    let mut best = f64::INFINITY;
    for i in 0..6 {
        sync();
        let t0 = std::time::Instant::now();
        dst.copy_(&src);
        sync();
        if i > 0 {
            best = best.min(t0.elapsed().as_secs_f64());
        }
    }
    let copy_bytes_per_s = 2.0 * (n as f64) * 4.0 / best;
    let m: i64 = 2048;
    let a = Tensor::randn([m, m], (Kind::Float, device));
    let b = Tensor::randn([m, m], (Kind::Float, device));
    let mut best = f64::INFINITY;
    for i in 0..6 {
        sync();
        let t0 = std::time::Instant::now();
        let c = a.matmul(&b);
        sync();
        if i > 0 {
            best = best.min(t0.elapsed().as_secs_f64());
        }
        drop(c);
    }
    let matmul_flops_per_s = 2.0 * (m as f64).powi(3) / best;
    Calibration { copy_bytes_per_s, matmul_flops_per_s, threads, device: kvcore::device::describe(device) }
}

/// One method to bench: `name` or `name(key=value key=value)`.
#[derive(Clone, Debug, PartialEq)]
pub struct MethodSpec {
    pub label: String,
    pub name: String,
    pub params: toml::Table,
}

/// Splits `full,snapkv(ratio=8),kivi(bits=4 group_size=32)` at the commas outside parentheses.
pub fn parse_methods(s: &str) -> Result<Vec<MethodSpec>> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    let mut parts = Vec::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            bail!("--methods {s:?}: unbalanced ')'");
        }
        if c == ',' && depth == 0 {
            parts.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    if depth != 0 {
        bail!("--methods {s:?}: unbalanced '('");
    }
    parts.push(cur);
    for p in parts {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        let (name, params) = match p.split_once('(') {
            None => (p.to_string(), toml::Table::new()),
            Some((n, rest)) => {
                let inner = rest.strip_suffix(')').with_context(|| format!("--methods: {p:?}: expected name(key=value ...)"))?;
                let settings: Vec<String> = inner.split([' ', ';']).filter(|x| !x.trim().is_empty()).map(str::to_string).collect();
                (n.trim().to_string(), kvcore::registry::parse_settings(&settings)?)
            }
        };
        out.push(MethodSpec { label: p.to_string(), name, params });
    }
    if out.is_empty() {
        bail!("--methods: expected at least one method");
    }
    Ok(out)
}

/// One (method, context) measurement: medians over the repeats.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    pub model: String,
    pub method: String,
    pub label: String,
    pub context_tokens: usize,
    pub new_tokens: usize,
    pub repeats: usize,
    pub prefill_tokens_per_s: f64,
    pub ttft_seconds: f64,
    pub decode_tokens_per_s: f64,
    pub kv_bytes_held: u64,
    pub kv_bytes_attended: u64,
    pub kv_bytes_full: u64,
    pub peak_rss_bytes: u64,
    /// Estimates from the calibration (see the module docs).
    pub prefill_ceiling_tokens_per_s: f64,
    pub decode_ceiling_tokens_per_s: f64,
    pub prefill_pct_of_ceiling: f64,
    pub decode_pct_of_ceiling: f64,
    pub threads: usize,
    pub device: String,
    pub dtype: String,
    /// How the projection weights are stored (`--weight-dtype`; the compute dtype by default).
    pub weight_dtype: String,
}

/// One (method, context, batch size) measurement of batched decoding: medians over the repeats.
#[derive(Clone, Debug, Serialize)]
pub struct BatchedRow {
    pub model: String,
    pub method: String,
    pub label: String,
    pub context_tokens: usize,
    pub new_tokens: usize,
    pub batch: usize,
    pub repeats: usize,
    /// Decode tokens per second summed over the batch: `batch × (new_tokens − 1)` over the wall
    /// time of decoding (prefill excluded).
    pub decode_tokens_per_s_summed: f64,
    /// The same per sequence (`summed / batch`).
    pub decode_tokens_per_s_per_sequence: f64,
    /// Bytes the batch's caches hold at the end, summed.
    pub kv_bytes_held: u64,
    pub threads: usize,
    pub device: String,
    pub dtype: String,
}

/// What a memory budget buys one method at one context (`--memory-budget`): the largest batch
/// size of `--batch` that fits, and its decode speed.
#[derive(Clone, Debug, Serialize)]
pub struct ServingRow {
    pub model: String,
    pub method: String,
    pub label: String,
    pub context_tokens: usize,
    pub new_tokens: usize,
    pub budget_bytes: u64,
    /// Bytes of the model's weights as held in memory.
    pub weight_bytes: u64,
    /// One sequence's cache bytes at the end of its generation (measured alone).
    pub kv_bytes_per_sequence: u64,
    /// The largest batch size tried that fits (0: not even one sequence fits).
    pub batch: usize,
    /// `weight_bytes + batch × kv_bytes_per_sequence`.
    pub bytes_at_batch: u64,
    /// Decode tokens/s summed over that batch (0 when nothing fits).
    pub decode_tokens_per_s_summed: f64,
    /// The batch sizes tried that did not fit, which were not run.
    pub over_budget: String,
    pub threads: usize,
    pub device: String,
    pub dtype: String,
}

/// Batched decoding of `b` copies of `ids`, each with its own caches of `factory`: the median
/// summed decode tokens/s over `repeats` (after `warmup`), and the bytes held at the end.
fn batched_decode(
    lm: &mut LoadedModel,
    ids: &[u32],
    factory: &dyn kvcore::cache::CacheFactory,
    opts: &GenerateOptions,
    b: usize,
    warmup: usize,
    repeats: usize,
) -> Result<(f64, u64)> {
    let popts = kvcore::pipeline::PipelineOptions::default();
    let mut rates = Vec::new();
    let mut held = 0;
    for round in 0..warmup + repeats {
        let prompted = copies(lm, ids, opts, popts, factory, b)?;
        let t0 = std::time::Instant::now();
        let outs = kvcore::shared::decode_batch(lm, prompted, opts, b)?;
        let wall = t0.elapsed().as_secs_f64();
        let steps: usize = outs.iter().map(|g| g.generated_tokens.saturating_sub(1)).sum();
        held = outs.iter().map(|g| g.kv_bytes_held).sum();
        if round >= warmup && wall > 0.0 {
            rates.push(steps as f64 / wall);
        }
    }
    Ok((median(rates), held))
}

/// `b` prompted copies of `ids`: one prefill, then forks of its caches (the same state, without
/// paying `b` prefills), or `b` prefills for a method whose caches do not fork.
fn copies(
    lm: &mut LoadedModel,
    ids: &[u32],
    opts: &GenerateOptions,
    popts: kvcore::pipeline::PipelineOptions,
    factory: &dyn kvcore::cache::CacheFactory,
    b: usize,
) -> Result<Vec<kvcore::shared::Prompted>> {
    let first = kvcore::shared::prompt_alone(lm, ids, &[], opts, popts, factory)?;
    let mut out = Vec::with_capacity(b);
    for _ in 1..b {
        let forks: Option<Vec<_>> = first.caches.iter().map(|c| c.fork()).collect();
        out.push(match forks {
            Some(caches) => kvcore::shared::Prompted { caches, logits: first.logits.copy(), pos: first.pos, t0: std::time::Instant::now() },
            None => kvcore::shared::prompt_alone(lm, ids, &[], opts, popts, factory)?,
        });
    }
    out.insert(0, first);
    Ok(out)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Matmul parameters a prefill token goes through (every layer's projections; not the embedding
/// lookup, and not the LM head, which prefill applies to the last position only).
fn layer_matmul_params(c: &kvcore::config::ModelConfig) -> f64 {
    let h = c.hidden_size as f64;
    let q = (c.num_attention_heads * c.head_dim) as f64;
    let kv = (c.num_key_value_heads * c.head_dim) as f64;
    let per_layer = h * q + 2.0 * h * kv + q * h + 3.0 * h * c.intermediate_size as f64;
    per_layer * c.num_hidden_layers as f64
}

fn prefill_flops_per_token(c: &kvcore::config::ModelConfig, context: usize) -> f64 {
    let attn = 4.0 * (context as f64 / 2.0) * (c.num_attention_heads * c.head_dim) as f64 * c.num_hidden_layers as f64;
    2.0 * layer_matmul_params(c) + attn
}

/// A long prompt of exactly `n` tokens from the Paul Graham essays (fetched on first use).
fn prompt_ids(lm: &LoadedModel, n: usize) -> Result<Vec<u32>> {
    let dir = match kvtasks::data::data_dir("pg_essays") {
        Ok(d) => d,
        Err(_) => {
            eprintln!("fetching data set `pg_essays` (first use)...");
            kvtasks::data::fetch("pg_essays", &kvtasks::data::kvbench_home()?)?
        }
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| dir.display().to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    let mut ids = Vec::new();
    for f in files.iter().cycle().take(files.len() * 8) {
        if ids.len() >= n {
            break;
        }
        let text = std::fs::read_to_string(f).with_context(|| f.display().to_string())?;
        ids.extend(lm.tokenizer.encode(text.as_str(), false).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?.get_ids());
    }
    if ids.len() < n {
        bail!("the essays give only {} tokens, fewer than the {n} asked for", ids.len());
    }
    ids.truncate(n);
    Ok(ids)
}

fn human(b: u64) -> String {
    super::generate::human_bytes(b)
}

pub fn run(a: BenchArgs, plugins: &[PathBuf]) -> Result<()> {
    let (settings, threads) = runtime_settings(&a.runtime)?;
    if a.calibrate {
        let c = calibrate(settings.device, threads);
        let path = calibration_path();
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p)?;
        }
        kvreport::fsio::write_atomic(&path, (serde_json::to_string_pretty(&c)? + "\n").as_bytes())?;
        println!(
            "copy bandwidth {:.2} GB/s, f32 matmul {:.1} GFLOP/s ({}, {} threads); saved to {}",
            c.copy_bytes_per_s / 1e9,
            c.matmul_flops_per_s / 1e9,
            c.device,
            c.threads,
            path.display()
        );
        return Ok(());
    }
    let budget = match &a.memory_budget {
        Some(text) => Some(kvcore::memory_guard::parse_size(text).map_err(|e| anyhow::anyhow!("--memory-budget: {e}"))?),
        None => None,
    };
    let reg = super::methods::registry(plugins)?;
    let methods = parse_methods(&a.methods)?;
    for m in &methods {
        reg.build(&m.name, &m.params).with_context(|| format!("--methods: {}", m.label))?;
    }
    let contexts: Vec<usize> = a.contexts.clone();
    if contexts.is_empty() || contexts.contains(&0) {
        bail!("--contexts: expected positive token counts, e.g. 1024,4096");
    }
    if a.repeats == 0 {
        bail!("--repeats: expected at least 1");
    }
    let cal = match std::fs::read_to_string(calibration_path()).ok().and_then(|t| serde_json::from_str::<Calibration>(&t).ok()) {
        Some(c) if c.threads == threads && c.device == kvcore::device::describe(settings.device) => c,
        _ => {
            eprintln!("calibrating this machine's copy bandwidth and matmul rate (kvbench bench --calibrate saves it)...");
            calibrate(settings.device, threads)
        }
    };
    let files = resolve_or_fetch(&a.model, &kvbench_home())?;
    let longest = contexts.iter().copied().max().unwrap_or(0) + a.new_tokens;
    let mut lm = super::load_guarded(&files, settings, &Default::default(), longest, &a.runtime.guard)?;
    if let Some(w) = a.weight_dtype {
        lm.store_weights_as(w).context("--weight-dtype")?;
    }
    let weight_dtype = a.weight_dtype.unwrap_or(settings.dtype).name().to_string();
    let max_pos = lm.transformer("kvbench bench (it compares cache methods)")?.config.max_position_embeddings;
    for &c in &contexts {
        if c + a.new_tokens > max_pos {
            bail!("--contexts {c}: with --new-tokens {} this needs {} positions, but the model has {max_pos}", a.new_tokens, c + a.new_tokens);
        }
    }
    let longest = *contexts.iter().max().unwrap_or(&0);
    let all_ids = prompt_ids(&lm, longest)?;
    let kv_per_token = lm.kv_bytes_per_token();
    let weight_bytes = lm.weight_bytes() as f64;
    if a.batch.contains(&0) {
        bail!("--batch: expected positive batch sizes, e.g. 1,16");
    }
    if !a.batch.is_empty() && compressors(&reg, &methods) {
        bail!("--batch: batched decoding measures cache methods; a prompt compressor decodes with the full cache (bench `full` instead)");
    }
    let mut rows = Vec::new();
    let mut batched: Vec<BatchedRow> = Vec::new();
    let mut serving: Vec<ServingRow> = Vec::new();
    let (device, dtype) = (kvcore::device::describe(settings.device), settings.dtype.name().to_string());
    let mut batch_sizes = a.batch.clone();
    batch_sizes.sort_unstable();
    batch_sizes.dedup();
    let total = (methods.len() * contexts.len()) as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} (eta {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    for m in &methods {
        let factory = reg.build(&m.name, &m.params)?;
        let compressor = reg.build_prompt(&m.name, &m.params)?;
        for &ctx in &contexts {
            bar.set_prefix(format!("{} @ {ctx}", m.label));
            let mut ids = all_ids[..ctx].to_vec();
            let mut compress_seconds = 0.0;
            if let Some(comp) = &compressor {
                let text = lm.tokenizer.decode(&ids, false).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
                let out = comp.compress(&text)?;
                compress_seconds = out.seconds;
                ids = lm.tokenizer.encode(out.text.as_str(), false).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?.get_ids().to_vec();
            }
            let opts = GenerateOptions {
                max_new_tokens: a.new_tokens,
                min_new_tokens: a.new_tokens,
                prefill_chunk: a.prefill_chunk,
                measure_decode_rss: true,
                ..Default::default()
            };
            for _ in 0..a.warmup {
                generate(&mut lm, &ids, &opts, factory.as_ref())?;
            }
            let (mut pre, mut ttft, mut dec, mut peak) = (Vec::new(), Vec::new(), Vec::new(), 0u64);
            let mut last = None;
            for _ in 0..a.repeats {
                kvcore::memory::reset_peak_rss();
                let g = generate(&mut lm, &ids, &opts, factory.as_ref())?;
                let t = g.prefill_seconds + compress_seconds;
                pre.push(ctx as f64 / t);
                ttft.push(t);
                dec.push(g.decode_tokens_per_s());
                peak = peak.max(g.peak_rss_prefill_bytes.unwrap_or(0).max(g.peak_rss_decode_bytes.unwrap_or(0)));
                last = Some(g);
            }
            let g = last.context("no repeat ran")?;
            let prefill = median(pre);
            let decode = median(dec);
            let prefill_ceiling = cal.matmul_flops_per_s / prefill_flops_per_token(&lm.transformer("kvbench bench")?.config, ids.len());
            let decode_ceiling = cal.copy_bytes_per_s / (weight_bytes + g.kv_bytes_attended as f64);
            rows.push(BenchRow {
                model: a.model.clone(),
                method: m.name.clone(),
                label: m.label.clone(),
                context_tokens: ctx,
                new_tokens: a.new_tokens,
                repeats: a.repeats,
                prefill_tokens_per_s: prefill,
                ttft_seconds: median(ttft),
                decode_tokens_per_s: decode,
                kv_bytes_held: g.kv_bytes_held,
                kv_bytes_attended: g.kv_bytes_attended,
                kv_bytes_full: kv_per_token * (ctx + g.generated_tokens.saturating_sub(1)) as u64,
                peak_rss_bytes: peak,
                prefill_ceiling_tokens_per_s: prefill_ceiling,
                decode_ceiling_tokens_per_s: decode_ceiling,
                prefill_pct_of_ceiling: 100.0 * prefill / prefill_ceiling,
                decode_pct_of_ceiling: 100.0 * decode / decode_ceiling,
                threads,
                device: device.clone(),
                dtype: dtype.clone(),
                weight_dtype: weight_dtype.clone(),
            });
            bar.inc(1);
            let per_sequence = g.kv_bytes_held;
            let weights = lm.weight_bytes();
            let fits = |b: usize| budget.is_none_or(|limit| weights + b as u64 * per_sequence <= limit);
            let mut best: Option<(usize, f64)> = None;
            for &b in &batch_sizes {
                if !fits(b) {
                    continue;
                }
                bar.set_prefix(format!("{} @ {ctx} x{b}", m.label));
                let (summed, held) = batched_decode(&mut lm, &ids, factory.as_ref(), &opts, b, a.warmup, a.repeats)?;
                batched.push(BatchedRow {
                    model: a.model.clone(),
                    method: m.name.clone(),
                    label: m.label.clone(),
                    context_tokens: ctx,
                    new_tokens: a.new_tokens,
                    batch: b,
                    repeats: a.repeats,
                    decode_tokens_per_s_summed: summed,
                    decode_tokens_per_s_per_sequence: summed / b as f64,
                    kv_bytes_held: held,
                    threads,
                    device: device.clone(),
                    dtype: dtype.clone(),
                });
                best = Some((b, summed));
            }
            if let Some(limit) = budget {
                let (b, summed) = best.unwrap_or((0, 0.0));
                let over: Vec<String> = batch_sizes.iter().filter(|&&b| !fits(b)).map(|b| b.to_string()).collect();
                serving.push(ServingRow {
                    model: a.model.clone(),
                    method: m.name.clone(),
                    label: m.label.clone(),
                    context_tokens: ctx,
                    new_tokens: a.new_tokens,
                    budget_bytes: limit,
                    weight_bytes: weights,
                    kv_bytes_per_sequence: per_sequence,
                    batch: b,
                    bytes_at_batch: weights + b as u64 * per_sequence,
                    decode_tokens_per_s_summed: summed,
                    over_budget: over.join(" "),
                    threads,
                    device: device.clone(),
                    dtype: dtype.clone(),
                });
            }
        }
    }
    bar.finish_and_clear();
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from("runs/bench"));
    std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
    write_csv(&out.join("bench.csv"), &rows)?;
    let mut json = serde_json::json!({ "calibration": cal, "rows": rows });
    if !batched.is_empty() {
        write_csv(&out.join("bench_batched.csv"), &batched)?;
        json["batched"] = serde_json::to_value(&batched)?;
    }
    if budget.is_some() {
        write_csv(&out.join("bench_serving.csv"), &serving)?;
        json["serving"] = serde_json::to_value(&serving)?;
    }
    kvreport::fsio::write_atomic(&out.join("bench.json"), (serde_json::to_string_pretty(&json)? + "\n").as_bytes())?;
    if a.json {
        println!("{}", serde_json::to_string(&json)?);
        return Ok(());
    }
    println!(
        "{} on {} ({} threads, {}); ceilings from copy {:.2} GB/s and matmul {:.1} GFLOP/s (estimates); medians of {} after {} warm-up",
        a.model,
        device,
        threads,
        if weight_dtype == dtype { dtype.clone() } else { format!("{dtype}, weights stored in {weight_dtype}") },
        cal.copy_bytes_per_s / 1e9,
        cal.matmul_flops_per_s / 1e9,
        a.repeats,
        a.warmup
    );
    let header = ["method", "context", "prefill tok/s", "% ceil", "TTFT s", "decode tok/s", "% ceil", "KV held", "KV attended", "peak RSS"];
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.label.clone(),
                r.context_tokens.to_string(),
                format!("{:.1}", r.prefill_tokens_per_s),
                format!("{:.0}%", r.prefill_pct_of_ceiling),
                format!("{:.3}", r.ttft_seconds),
                format!("{:.2}", r.decode_tokens_per_s),
                format!("{:.0}%", r.decode_pct_of_ceiling),
                human(r.kv_bytes_held),
                human(r.kv_bytes_attended),
                human(r.peak_rss_bytes),
            ]
        })
        .collect();
    print_table(&header, &table);
    if !batched.is_empty() {
        println!("\nbatched decoding: B sequences of the same prompt, each with its own cache, one forward per step for the batch");
        let header = ["method", "context", "batch", "decode tok/s (sum)", "per sequence", "KV held (sum)"];
        let table: Vec<Vec<String>> = batched
            .iter()
            .map(|r| {
                vec![
                    r.label.clone(),
                    r.context_tokens.to_string(),
                    r.batch.to_string(),
                    format!("{:.1}", r.decode_tokens_per_s_summed),
                    format!("{:.2}", r.decode_tokens_per_s_per_sequence),
                    human(r.kv_bytes_held),
                ]
            })
            .collect();
        print_table(&header, &table);
        println!("written: {}", out.join("bench_batched.csv").display());
    }
    if let Some(limit) = budget {
        println!(
            "\nserving at a {} budget: the largest --batch size whose weights + batch x one sequence's cache bytes fit, and its decode tok/s summed",
            human(limit)
        );
        let header = ["method", "context", "KV per sequence", "largest batch", "bytes at it", "decode tok/s (sum)", "over budget (not run)"];
        let table: Vec<Vec<String>> = serving
            .iter()
            .map(|r| {
                vec![
                    r.label.clone(),
                    r.context_tokens.to_string(),
                    human(r.kv_bytes_per_sequence),
                    if r.batch == 0 { "none fits".into() } else { r.batch.to_string() },
                    human(r.bytes_at_batch),
                    format!("{:.1}", r.decode_tokens_per_s_summed),
                    if r.over_budget.is_empty() { "-".into() } else { r.over_budget.clone() },
                ]
            })
            .collect();
        print_table(&header, &table);
        println!("written: {}", out.join("bench_serving.csv").display());
    }
    println!("written: {} and {}", out.join("bench.csv").display(), out.join("bench.json").display());
    Ok(())
}

/// Rows as CSV (a header from the field names), written atomically.
fn write_csv<T: Serialize>(path: &std::path::Path, rows: &[T]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("csv: {e}"))?;
    kvreport::fsio::write_atomic(path, &bytes)?;
    Ok(())
}

/// Prints a Markdown table, every column but the first right-aligned.
fn print_table(header: &[&str], table: &[Vec<String>]) {
    let right: Vec<bool> = (0..header.len()).map(|i| i >= 1).collect();
    let header: Vec<String> = header.iter().map(|s| s.to_string()).collect();
    print!("{}", kvreport::leaderboard::markdown_table(&header, table, &right));
}

/// Whether any of `methods` is a prompt compressor.
fn compressors(reg: &kvcore::registry::Registry, methods: &[MethodSpec]) -> bool {
    methods.iter().any(|m| reg.get(&m.name).map(|i| i.is_prompt()).unwrap_or(false))
}
