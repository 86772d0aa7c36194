//! Command-line definitions (clap derive): one place where every command, flag and its help text
//! live, so `--help` documents exactly what runs.

use clap::{Args, Parser, Subcommand, ValueEnum};
use kvcore::device::{DType, DeviceSpec};
use std::path::PathBuf;

/// kvbench: what KV-cache compression costs in quality and buys in memory and speed.
#[derive(Parser, Debug)]
#[command(name = "kvbench", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts.
#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// More log output (-v info, -vv debug); KVBENCH_LOG overrides with a tracing filter.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Load an external method plugin (a cdylib built against this kvbench); repeatable.
    #[arg(long = "plugin", global = true, value_name = "PATH")]
    pub plugins: Vec<PathBuf>,
}

/// Where and how a model runs.
#[derive(Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// Device: cpu, cuda, cuda:N or auto (CUDA when present).
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Compute dtype: f32, bf16 or f16 (default: f32 on CPU, bf16 on CUDA).
    #[arg(long)]
    pub dtype: Option<DType>,
    /// KV-cache storage dtype (default: the compute dtype); e.g. bf16 with f32 compute on CPU
    /// gives the paper's 16-bit cache baseline.
    #[arg(long)]
    pub kv_dtype: Option<DType>,
    /// CPU threads for libtorch (default: SLURM_CPUS_PER_TASK, OMP_NUM_THREADS, or libtorch's).
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub guard: GuardArgs,
}

/// The memory guard: before loading a model, kvbench estimates weights + the full KV cache at the
/// requested context (+ activations and a runtime allowance) and refuses when that exceeds the
/// device's free memory.
#[derive(Args, Debug, Clone, Default)]
pub struct GuardArgs {
    /// Run even when the memory guard estimates the model and its full KV cache at the requested
    /// context do not fit in free memory.
    #[arg(long)]
    pub force: bool,
    /// Memory kvbench may use (e.g. 8GiB), besides the device's free memory; the guard refuses
    /// work estimated to need more.
    #[arg(long, value_name = "SIZE", env = "KVBENCH_MEMORY_LIMIT")]
    pub memory_limit: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate text from a prompt and report speed and memory.
    Generate(GenerateArgs),
    /// Fetch, list and create models.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Run the quickstart: fetch the default model and answer a few prompts with speed and memory.
    Quickstart(QuickstartArgs),
    /// Fetch and list the offline text packages tasks are built from.
    #[command(subcommand)]
    Data(DataCommand),
    /// Build a task's samples and evaluate a model on them (full cache).
    #[command(subcommand)]
    Task(TaskCommand),
    /// List the compression methods (built-in and loaded plugins) with their parameters.
    Methods(MethodsArgs),
    /// Run the conformance suite (named trials <method>/<case>/<property>) on built-in methods
    /// or on a plugin's methods (`--plugin lib.so`, through its C interface).
    Conformance(ConformanceArgs),
    /// Score a LongBench predictions file (lines of {"dataset","pred","answers","all_classes"[,"length"]}).
    Score(ScoreArgs),
    /// Perplexity of a text's tail fed through a method's cache after a long prefill.
    Perplexity(PerplexityArgs),
    /// Speed and memory per method and context length, beside this machine's ceilings.
    Bench(BenchArgs),
    /// Check an experiment config (and every file it names) without loading a model.
    Validate(ValidateArgs),
    /// Run an experiment: every cell of its grid, one JSONL record per sample, resumable.
    Run(RunArgs),
    /// Combine the run directories of shards into one.
    Merge(MergeArgs),
    /// Write leaderboards (CSV, Markdown, HTML) and example pages from run directories.
    Report(ReportArgs),
    /// Rewrite a run's results in another tool's layout (`--format kvpress`: NVIDIA kvpress's
    /// evaluation outputs).
    Export(ExportArgs),
    /// Write (and with --submit, sbatch) a Slurm job array running an experiment's shards, plus a
    /// dependent job that merges them and writes the report.
    Slurm(SlurmArgs),
}

/// `kvbench validate`.
#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// An experiment file (configs/experiments/...toml).
    pub config: PathBuf,
    /// Load the `plugins` the experiment names to check their methods (plugins are code: they
    /// run with your rights).
    #[arg(long)]
    pub allow_plugins: bool,
}

/// `kvbench run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// An experiment file (configs/experiments/...toml).
    pub experiment: PathBuf,
    /// Output directory (default: runs/<experiment name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Run only shard i of N (0-based, e.g. 0/4): cells are dealt deterministically.
    #[arg(long, value_name = "i/N")]
    pub shard: Option<Shard>,
    /// Continue a run in --out: finished samples are skipped, a half-written record is dropped.
    #[arg(long)]
    pub resume: bool,
    /// Print the cells and an estimate of the tokens they process, then stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Load the `plugins` the experiment names (plugins are code: they run with your rights).
    #[arg(long)]
    pub allow_plugins: bool,
    /// Record 0 for every wall-clock and memory figure, so two runs' files and reports are
    /// byte-comparable (used by the resume and shard tests).
    #[arg(long)]
    pub zero_measurements: bool,
    /// Skip the report at the end.
    #[arg(long)]
    pub no_report: bool,
    /// Run every cell alone, cell by cell, each sample with its own prefill and decoding. By
    /// default the cells of a task run sample by sample: methods whose prefill is plain full
    /// attention share one prefill of each prompt and decode batched (same predictions and
    /// bytes; their records' time and memory are labelled `"timing": "shared"`).
    #[arg(long)]
    pub isolated: bool,
    /// After the grid, run each cell's first N samples alone, one cell after another (their own
    /// prefill and decoding, not interleaved), into cells/<id>/measure.jsonl: the report's time
    /// and memory columns then come from these, and say over how many samples. Ignored with
    /// --isolated (every record is then measured alone). Peak memory is the process's peak
    /// resident set during the sample (weights included); for the cleanest figures measure in a
    /// process of its own once the grid is done: `--resume --measure N` on the finished run.
    #[arg(long, value_name = "N")]
    pub measure: Option<usize>,
    /// Sequences decoded together in a shared run (default 16).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub batch: Option<u64>,
    /// Threads (overrides the experiment's run.threads).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Device (overrides the experiment's run.device): cpu, cuda, cuda:N or auto.
    #[arg(long)]
    pub device: Option<DeviceSpec>,
    #[command(flatten)]
    pub guard: GuardArgs,
}

/// `kvbench merge`.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Run directories of the shards.
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// The merged run directory.
    #[arg(long)]
    pub out: PathBuf,
}

/// `kvbench slurm`.
#[derive(Args, Debug)]
pub struct SlurmArgs {
    /// An experiment file (configs/experiments/...toml).
    pub experiment: PathBuf,
    /// Number of shards, one array task each.
    #[arg(long)]
    pub shards: usize,
    /// Slurm partition (default: the cluster's default partition).
    #[arg(long)]
    pub partition: Option<String>,
    /// GPUs per array task.
    #[arg(long)]
    pub gpus_per_task: Option<u32>,
    /// CPUs per array task (each shard then runs with that many threads).
    #[arg(long)]
    pub cpus_per_task: Option<u32>,
    /// Time limit per array task, in Slurm's format (e.g. 4:00:00 or 1-00:00:00).
    #[arg(long)]
    pub time: Option<String>,
    /// Run at most K array tasks at once (`--array=0-(N-1)%K`).
    #[arg(long, value_name = "K")]
    pub max_parallel: Option<usize>,
    /// Output directory: shard-<i>/ per task, merged/, report/, slurm/ (default: runs/<experiment name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Slurm job name (default: kvbench-<experiment name>).
    #[arg(long)]
    pub job_name: Option<String>,
    /// Pass --allow-plugins to the shard runs (the experiment loads plugins).
    #[arg(long)]
    pub allow_plugins: bool,
    /// Pass --zero-measurements to the shard runs (byte-comparable reports, for tests).
    #[arg(long)]
    pub zero_measurements: bool,
    /// Submit with sbatch (the array, then the merge job depending on it) and print the job ids.
    #[arg(long)]
    pub submit: bool,
}

/// `kvbench report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Run directories (of one experiment, or several to compare).
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Where to write the report (default: <first dir>/report).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Put published numbers beside the run's: `paper` (the paper's LongBench category means).
    #[arg(long, value_name = "WHAT")]
    pub compare: Option<CompareWith>,
    /// Add a speed-and-memory section drawn from `kvbench bench` output (a bench.json or the
    /// directory holding it); repeatable.
    #[arg(long = "bench", value_name = "PATH")]
    pub bench: Vec<PathBuf>,
}

/// Formats `kvbench export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// NVIDIA kvpress's evaluation outputs (`evaluation/evaluate.py`).
    Kvpress,
}

/// `kvbench export`.
///
/// Rewrites a run's results in another tool's layout. With `--format kvpress`, every cell
/// becomes a directory of DIR named the way NVIDIA kvpress's `evaluate.py` names its results,
/// `<dataset>__<data_dir>__<model>__<press>__<compression_ratio>` (e.g.
/// `longbench__qasper__llama-3-8b-instruct__snapkv__0.75`). Each holds `predictions.csv` (one row
/// per sample: references, `predicted_answer`, `compression_ratio`, plus `kvbench_*` columns),
/// `metrics.json` (kvpress's scorer output shape for the dataset, scores 0–100) and `config.yaml`
/// (kvpress's evaluation keys, then kvbench's provenance), so the results sit beside kvpress's
/// result directories and leaderboard entries. An N× budget is written as kvpress's compression
/// ratio 1 − 1/N, the full cache as `no_press` at 0.00, and methods without a budget at their
/// measured memory saving (1 − held/full bytes). RULER tasks of one method and context length
/// share a directory, as in kvpress. Run directories do not store prompts, so `question`,
/// `answer_prefix` and `max_new_tokens` are left empty. Exporting again rewrites the same files.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The run directory (`kvbench run --out`, or a merged one).
    pub run: PathBuf,
    /// The layout to write.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Where to write (one directory per kvpress result).
    #[arg(long)]
    pub out: PathBuf,
    /// Hugging Face id of a kvbench model for kvpress's `model` field and directory names,
    /// `NAME=ORG/ID` (e.g. `qwen2.5-0.5b=Qwen/Qwen2.5-0.5B-Instruct`); repeatable.
    #[arg(long = "model-id", value_name = "NAME=ORG/ID")]
    pub model_ids: Vec<String>,
    /// The run compressed context and question together (its config's `run.query_aware`), which
    /// kvpress records as `query_aware` and puts in the directory names; the run directory does
    /// not record it, so say it here when it was set.
    #[arg(long)]
    pub query_aware: bool,
}

/// `kvbench bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model: a known name, a GGUF file, a Hugging Face model directory, or hf:org/name.
    #[arg(long, default_value = "smollm2-135m")]
    pub model: String,
    /// Methods, comma-separated, each `name` or `name(key=value key=value)`, e.g.
    /// `full,snapkv(ratio=8),kivi(bits=4)`.
    #[arg(long, default_value = "full")]
    pub methods: String,
    /// Context lengths in tokens (a prompt cut from the Paul Graham essays).
    #[arg(long, value_delimiter = ',', default_value = "1024,4096")]
    pub contexts: Vec<usize>,
    /// Tokens generated per run (forced: end-of-sequence does not stop early).
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Measured runs per (method, context); the table shows medians.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Unmeasured runs before the repeats.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Prefill in chunks of this many tokens.
    #[arg(long)]
    pub prefill_chunk: Option<usize>,
    /// Also measure batched decoding at these batch sizes, e.g. 1,16: B sequences of the same
    /// prompt, each with its own cache of the method, decoded together (one forward per step for
    /// the batch); reports decode tokens/s summed over the batch (table "batched decoding",
    /// `batched` in bench.json, bench_batched.csv).
    #[arg(long, value_delimiter = ',', value_name = "B,...")]
    pub batch: Vec<usize>,
    /// With --batch, the serving question: what a memory budget (e.g. 8GiB) buys each method.
    /// A batch of B fits when the weights plus B times one sequence's measured cache bytes (held
    /// at the end of its generation) fit the budget; batch sizes that do not fit are not run.
    /// Reports, per method and context, the largest --batch size that fits and its decode
    /// tokens/s summed over the batch (table "serving", `serving` in bench.json,
    /// bench_serving.csv).
    #[arg(long, value_name = "SIZE", requires = "batch")]
    pub memory_budget: Option<String>,
    /// Measure this machine's copy bandwidth and matmul rate (the ceilings) and save them to
    /// $KVBENCH_HOME/calibration.json; nothing else runs.
    #[arg(long)]
    pub calibrate: bool,
    /// Directory for bench.csv and bench.json (default runs/bench).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Store the transformer's projection matrices (and LM head) in f16 or bf16 while computing
    /// in f32 on the CPU: a decoded token reads half the weight bytes, each weight widened
    /// exactly as the decode kernel reads it. Logits change by the weights' rounding.
    /// Default f32 (weights as computed).
    #[arg(long, value_name = "DTYPE")]
    pub weight_dtype: Option<DType>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// `kvbench perplexity`.
#[derive(Args, Debug)]
pub struct PerplexityArgs {
    /// KV-cache compression method (see `kvbench methods`).
    #[arg(long, default_value = "full")]
    pub method: String,
    /// A method parameter, `key=value` (TOML value); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Model: a known name, a GGUF file, a Hugging Face model directory, or hf:org/name.
    #[arg(long, default_value = "smollm2-135m")]
    pub model: String,
    /// The text (default: Paul Graham essays from the `pg_essays` data set, fetched on first use).
    #[arg(long)]
    pub text_file: Option<PathBuf>,
    /// Tokens of the text used in all (the first ones).
    #[arg(long, default_value_t = 3072)]
    pub tokens: usize,
    /// Tokens prefilled (and compressed) before scoring; the remaining `tokens - prefill` are scored.
    #[arg(long, default_value_t = 2048)]
    pub prefill: usize,
    /// Scored tokens fed per forward step (1 = token by token, as decoding does).
    #[arg(long, default_value_t = 1)]
    pub step: usize,
    /// Prefill in chunks of this many tokens.
    #[arg(long)]
    pub prefill_chunk: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// `kvbench data ...`.
#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Download, verify (sha256) and cache data sets (default: all of them).
    Fetch {
        /// Data set names (see `kvbench data list`).
        names: Vec<String>,
    },
    /// List the data sets and whether they are cached.
    List,
}

/// `kvbench task ...`.
#[derive(Subcommand, Debug)]
pub enum TaskCommand {
    /// Run a model on a task's samples and score the answers.
    Eval(TaskArgs),
    /// Print a task's samples as JSON lines (the model's tokenizer sizes them).
    Dump(TaskArgs),
}

/// How prompts are wrapped.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateMode {
    /// The paper's passkey without a chat template, every other task with it.
    Auto,
    Chat,
    Plain,
}

/// A task and how to size it.
#[derive(Args, Debug)]
pub struct TaskArgs {
    /// passkey (the paper's needle; lengths in words), kamradt, ruler/<niah_single_1|...|vt|cwe|fwe>,
    /// retrieval/<sotu|moby_dick|kjv>, count/<sotu|moby_dick|kjv>, code (lengths in tokens).
    pub task: String,
    #[arg(long, default_value = "smollm2-135m")]
    pub model: String,
    /// Lengths (comma-separated): words for passkey (min and max of an evenly spaced grid), tokens otherwise.
    #[arg(long, value_delimiter = ',')]
    pub lengths: Vec<usize>,
    /// passkey: number of evenly spaced lengths between the min and max of --lengths.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Needle depths (evenly spaced from 0 to 1).
    #[arg(long, default_value_t = 5)]
    pub depths: usize,
    /// passkey: trials per (length, depth).
    #[arg(long, default_value_t = 1)]
    pub trials: usize,
    /// passkey: digits of the pass key (7 or 64).
    #[arg(long, default_value_t = 7)]
    pub digits: usize,
    /// Samples per length (RULER and real-text tasks).
    #[arg(long, default_value_t = 10)]
    pub samples: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Keep only the first N samples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Override the task's generation length.
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Prompt wrapping.
    #[arg(long, value_enum, default_value_t = TemplateMode::Auto)]
    pub template: TemplateMode,
    /// Write one JSON line per sample (prediction, scores, timings, KV bytes).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// `kvbench score`.
#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// Predictions file (JSON lines).
    pub file: PathBuf,
    /// LongBench-E: also score by length bucket (0-4k, 4-8k, 8k+); lines need `length`.
    #[arg(short = 'e', long = "longbench-e")]
    pub longbench_e: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `kvbench methods`.
#[derive(Args, Debug)]
pub struct MethodsArgs {
    /// Show one method in full: budget mapping, paper reference, every parameter.
    #[arg(long, value_name = "NAME")]
    pub detail: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `kvbench conformance`.
#[derive(Args, Debug)]
pub struct ConformanceArgs {
    /// Methods to test (registered names; with --plugin, the plugin's methods are registered too).
    /// Without names: every method the plugins add, or with --all every cache method.
    #[arg(value_name = "METHOD")]
    pub methods: Vec<String>,
    /// Every registered cache method (built-in and plugins).
    #[arg(long, conflicts_with = "methods")]
    pub all: bool,
    /// Only trials whose name contains this text (e.g. `/budget`).
    #[arg(long, value_name = "TEXT")]
    pub filter: Option<String>,
    /// List the trials without running them.
    #[arg(long)]
    pub list: bool,
}

/// `kvbench generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// KV-cache compression method (see `kvbench methods`).
    #[arg(long, default_value = "full")]
    pub method: String,
    /// A method parameter, `key=value` (TOML value); repeatable, e.g. --set ratio=4.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// A question asked about the prompt (the context): the context is compressed first, then the
    /// question is appended uncompressed (unless --query-aware). Repeatable: one compressed context,
    /// many questions.
    #[arg(long = "question")]
    pub question: Vec<String>,
    /// Compress context and question together (lets methods see the question).
    #[arg(long, requires = "question")]
    pub query_aware: bool,
    /// Reset the peak-RSS counter after the prompt and report decoding's own peak.
    #[arg(long)]
    pub decode_peak_rss: bool,
    /// Reset the peak-RSS counter after loading the model too, so `peak_rss_prefill_bytes` in
    /// --json is the prefill's own peak (weights, activations and cache), not the load's (implies
    /// --decode-peak-rss; `peak_rss_bytes` still includes the load).
    #[arg(long)]
    pub prefill_peak_rss: bool,
    /// Model: a known name (smollm2-135m, qwen2.5-0.5b; fetched on first use), a GGUF file, a
    /// Hugging Face model directory, or hf:org/name[@revision].
    #[arg(long, default_value = "smollm2-135m")]
    pub model: String,
    /// The prompt text.
    #[arg(long, conflicts_with = "prompt_file", required_unless_present = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// System message (with --chat).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Maximum tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Suppress end-of-sequence until this many tokens are generated.
    #[arg(long, default_value_t = 0)]
    pub min_new_tokens: usize,
    /// Stop when this string appears (repeatable); the text is cut before it.
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Penalise tokens already generated before each greedy choice. `rwkv-pipeline`: the `rwkv`
    /// package's `PIPELINE.generate` defaults (presence 0.2, frequency 0.2, decay 0.996; spaces
    /// and digits count 0), as the paper's RWKV runs decode.
    #[arg(long, value_parser = ["rwkv-pipeline"])]
    pub penalties: Option<String>,
    /// Cut the middle of a prompt that does not fit the model's context (instead of failing).
    #[arg(long)]
    pub truncate: bool,
    /// Prefill the prompt in chunks of this many tokens.
    #[arg(long)]
    pub prefill_chunk: Option<usize>,
    /// Print prefill/decode speed, KV bytes and peak memory after the text.
    #[arg(long)]
    pub stats: bool,
    /// Print one JSON object (text, prompt_tokens, generated_tokens, prefill_seconds,
    /// prefill_tokens_per_s, decode_tokens_per_s, kv_bytes_held, kv_bytes_full, peak_rss_bytes, ...).
    #[arg(long)]
    pub json: bool,
    /// Write the prompt's last-position logits to FILE (.npy or .safetensors).
    #[arg(long)]
    pub dump_logits: Option<PathBuf>,
    /// With --dump-logits: write the logits of every prompt position ([tokens, vocab]).
    #[arg(long, requires = "dump_logits")]
    pub all_positions: bool,
    /// Store the transformer's projection matrices (and LM head) in f16 or bf16 while computing
    /// in f32 on the CPU: a decoded token reads half the weight bytes, each weight widened
    /// exactly as the decode kernel reads it. Logits change by the weights' rounding;
    /// with --json the output adds `weight_logit_error`, the largest difference of the prompt's
    /// last-position logits from f32 weights (one more prefill).
    /// Default f32 (weights as computed).
    #[arg(long, value_name = "DTYPE")]
    pub weight_dtype: Option<DType>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// `kvbench model ...`.
#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Download and verify models into $KVBENCH_HOME/models (known names or hf:org/name[@rev]).
    Fetch {
        /// Models to fetch (default: smollm2-135m).
        names: Vec<String>,
    },
    /// List cached models and the known models that can be fetched.
    List,
    /// Write a random-weight model (Hugging Face layout, real SmolLM2 tokenizer) for tests and
    /// speed benchmarks of big shapes.
    Init(InitArgs),
}

/// `kvbench model init`.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// Architecture: llama, mistral, qwen2, or a linear-time model: mamba (Mamba v1), mamba2,
    /// recurrent_gemma, rwkv5 or rwkv6 (RWKV World, with the World vocabulary from the pinned
    /// rwkv wheel).
    #[arg(long)]
    pub arch: InitArch,
    /// Shape: tiny, smollm2-135m, qwen2.5-0.5b, llama2-7b, llama3-8b, mistral-7b; for mamba:
    /// tiny or mamba-130m; mamba2: tiny or mamba2-130m; recurrent_gemma: tiny or reduced-2b
    /// (recurrentgemma-2b's widths, 6 layers); rwkv5/rwkv6: tiny or 169m.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Fill the weights with seeded random values. This is the only mode (no checkpoint is
    /// converted), and the command refuses to run without it so nobody mistakes the result for
    /// a real model.
    #[arg(long)]
    pub random: bool,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// Weight dtype in the file: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: DType,
    /// Sliding window (mistral only).
    #[arg(long)]
    pub sliding_window: Option<usize>,
    /// Take the tokenizer and chat template from this GGUF (default: the cached SmolLM2, fetched if needed).
    #[arg(long)]
    pub tokenizer_gguf: Option<PathBuf>,
    /// Output directory.
    pub out_dir: PathBuf,
}

/// `kvbench quickstart`.
#[derive(Args, Debug)]
pub struct QuickstartArgs {
    /// Model to run.
    #[arg(long, default_value = "smollm2-135m")]
    pub model: String,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// A shard of a grid, `i/N` (0-based shard `i` of `N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (index, count) = kvconfig::parse_shard(s)?;
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// What `kvbench report --compare` puts beside a run's numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompareWith {
    /// The paper's LongBench category means.
    Paper,
}

/// `kvbench model init --arch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InitArch {
    Llama,
    Mistral,
    Qwen2,
    Mamba,
    Mamba2,
    #[value(name = "recurrent_gemma")]
    RecurrentGemma,
    Rwkv5,
    Rwkv6,
}

impl InitArch {
    /// The name as written on the command line.
    pub fn name(self) -> &'static str {
        match self {
            InitArch::Llama => "llama",
            InitArch::Mistral => "mistral",
            InitArch::Qwen2 => "qwen2",
            InitArch::Mamba => "mamba",
            InitArch::Mamba2 => "mamba2",
            InitArch::RecurrentGemma => "recurrent_gemma",
            InitArch::Rwkv5 => "rwkv5",
            InitArch::Rwkv6 => "rwkv6",
        }
    }
}
