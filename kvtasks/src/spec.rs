//! A task as a grid cell or `kvbench task` names it ([`TaskSpec`]): the task name and the knobs
//! of its generator. [`TaskSpec::build`] makes its samples; [`TaskSpec::sample_count`] says how
//! many that is from the same rules (what `kvbench run --dry-run` prints), without the data.

use crate::longbench::dataset::default_data_dir;
use crate::needle::{kamradt_samples, passkey_samples, Essays, KamradtConfig, PasskeyConfig};
use crate::realtext::{
    code_completion_id, code_completion_samples_where, passage_count_id, passage_count_samples_where, passage_retrieval_id, passage_retrieval_samples_where,
    CodeConfig, CodeRepo, Corpus, CorpusName, PassageConfig,
};
use crate::ruler::{ruler_sample_id, ruler_samples_where, RulerConfig, RulerResources, RulerTask};
use crate::sample::{Sample, TaskError, TextTokenizer};

/// A task and its generator's settings. Defaults are `kvbench task`'s.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskSpec {
    /// `passkey`, `kamradt`, `ruler/<name>`, `retrieval/<corpus>`, `count/<corpus>`, `code`,
    /// `longbench/<subset>` or `longbench_e/<subset>`.
    pub task: String,
    /// Lengths: words for passkey (the ends of an evenly spaced grid), tokens otherwise; empty:
    /// the task's default.
    pub lengths: Vec<usize>,
    /// Passkey: haystack lengths between the ends (default: the number of lengths, at least 2).
    pub steps: Option<usize>,
    pub depths: usize,
    pub trials: usize,
    pub digits: usize,
    /// Samples per length for the generated tasks.
    pub samples: usize,
    pub seed: u64,
    /// Keep the first N samples.
    pub limit: Option<usize>,
}

impl Default for TaskSpec {
    fn default() -> Self {
        TaskSpec { task: String::new(), lengths: Vec::new(), steps: None, depths: 5, trials: 1, digits: 7, samples: 10, seed: 42, limit: None }
    }
}

/// The tasks [`TaskSpec::task`] accepts, for messages.
pub const TASK_NAMES: &str = "passkey, kamradt, ruler/<name>, retrieval/<corpus>, count/<corpus>, code or longbench/<subset>";

impl TaskSpec {
    fn lengths_or(&self, default: &[usize]) -> Vec<usize> {
        if self.lengths.is_empty() {
            default.to_vec()
        } else {
            self.lengths.clone()
        }
    }

    /// Passkey: the haystack lengths of the grid.
    fn passkey_lengths(&self) -> usize {
        let l = self.lengths_or(&[1024, 4096]);
        let (lo, hi) = (l.iter().min().copied().unwrap_or(0), l.iter().max().copied().unwrap_or(0));
        if lo == hi {
            1
        } else {
            self.steps.unwrap_or(l.len().max(2))
        }
    }

    fn corpus(c: &str) -> Result<CorpusName, TaskError> {
        match c {
            "sotu" => Ok(CorpusName::Sotu),
            "moby_dick" => Ok(CorpusName::MobyDick),
            "kjv" => Ok(CorpusName::Kjv),
            other => Err(TaskError::Config { key: "task".into(), detail: format!("unknown corpus `{other}` (expected sotu, moby_dick or kjv)") }),
        }
    }

    /// The samples this task stands for, sized with `tok` (the model's tokenizer).
    pub fn build(&self, tok: &dyn TextTokenizer) -> Result<Vec<Sample>, TaskError> {
        self.build_where(tok, &|_| true)
    }

    /// The samples of [`TaskSpec::build`] whose id `keep` accepts, in the same order and equal to
    /// them. Generators whose samples each draw from their own seeded stream (RULER, passage
    /// retrieval and count, code completion) skip the others without building them, which is
    /// most of the cost of a small `fraction` of a task sized with a real tokenizer; the rest
    /// build every sample and filter.
    pub fn build_where(&self, tok: &dyn TextTokenizer, keep: &dyn Fn(&str) -> bool) -> Result<Vec<Sample>, TaskError> {
        // Within `limit` (the first samples by the same rules) and accepted by `keep`: with a
        // limit, a generator that skips samples is told which ids are within it.
        let ids = if self.limit.is_some() { self.sample_ids()? } else { None };
        let within: Option<std::collections::BTreeSet<&str>> = ids.as_ref().map(|ids| ids.iter().map(String::as_str).collect());
        let keep = |id: &str| within.as_ref().is_none_or(|w| w.contains(id)) && keep(id);
        let keep: &dyn Fn(&str) -> bool = &keep;
        let name = self.task.as_str();
        let mut samples = Vec::new();
        if name == "passkey" {
            let lengths = self.lengths_or(&[1024, 4096]);
            let (lo, hi) = (*lengths.iter().min().unwrap_or(&0), *lengths.iter().max().unwrap_or(&0));
            let cfg = PasskeyConfig {
                background_len_min: lo,
                background_len_max: hi,
                n_background_lens: self.passkey_lengths(),
                n_depths: self.depths,
                iterations: self.trials,
                key_digits: self.digits,
                seed: self.seed,
                ..PasskeyConfig::default()
            };
            samples = passkey_samples(&Essays::from_cache()?, &cfg)?;
        } else if name == "kamradt" {
            let d = self.depths;
            let cfg = KamradtConfig {
                context_lengths: self.lengths_or(&[1024, 2048]),
                // The original's `np.round(np.linspace(0, 100, n)).astype(int)`: whole percents.
                depth_percents: if d == 1 { vec![50.0] } else { crate::needle::linspace_rounded(0.0, 100.0, d).into_iter().map(|v| v as f64).collect() },
                ..KamradtConfig::default()
            };
            samples = kamradt_samples(&Essays::from_cache()?, tok, &cfg)?;
        } else if let Some(r) = name.strip_prefix("ruler/") {
            let task = RulerTask::from_name(r).ok_or_else(|| TaskError::Config { key: "task".into(), detail: format!("unknown RULER task `{r}`") })?;
            let res = RulerResources::from_cache()?;
            for len in self.lengths_or(&[2048]) {
                let cfg = RulerConfig { max_seq_length: len, num_samples: self.samples, seed: self.seed };
                samples.extend(ruler_samples_where(task, &cfg, &res, tok, keep)?);
            }
        } else if let Some(c) = name.strip_prefix("retrieval/").or_else(|| name.strip_prefix("count/")) {
            let corpus = Self::corpus(c)?;
            let loaded = Corpus::from_cache(corpus)?;
            for len in self.lengths_or(&[2048]) {
                let cfg = PassageConfig { corpus, target_tokens: len, passage_tokens: 150, num_samples: self.samples, seed: self.seed };
                samples.extend(if name.starts_with("retrieval/") {
                    passage_retrieval_samples_where(&loaded, &cfg, tok, keep)?
                } else {
                    passage_count_samples_where(&loaded, &cfg, tok, keep)?
                });
            }
        } else if name == "code" {
            let repo = CodeRepo::from_cache()?;
            for len in self.lengths_or(&[2048]) {
                samples.extend(code_completion_samples_where(
                    &repo,
                    &CodeConfig { target_tokens: len, num_samples: self.samples, seed: self.seed },
                    tok,
                    keep,
                )?);
            }
        } else if let Some(sub) = name.strip_prefix("longbench/").or_else(|| name.strip_prefix("longbench_e/")) {
            // Official LongBench records (`kvbench data fetch longbench`), prompts and metrics.
            let e = name.starts_with("longbench_e/");
            samples = crate::longbench::longbench_samples(&default_data_dir(), sub, e, self.limit)?;
        } else {
            return Err(TaskError::Config { key: "task".into(), detail: format!("unknown task `{name}` (expected {TASK_NAMES})") });
        }
        if ids.is_none() {
            if let Some(n) = self.limit {
                samples.truncate(n);
            }
        }
        samples.retain(|s| keep(&s.id));
        Ok(samples)
    }

    /// The ids of [`TaskSpec::build`]'s samples, in order, without building them, for the
    /// generators that can skip samples ([`TaskSpec::build_where`]); `None` for the others.
    pub fn sample_ids(&self) -> Result<Option<Vec<String>>, TaskError> {
        let name = self.task.as_str();
        let lengths = self.lengths_or(&[2048]);
        let per_length = |id: &dyn Fn(usize, usize) -> String| -> Vec<String> {
            lengths.iter().flat_map(|&len| (0..self.samples).map(move |i| (len, i))).map(|(len, i)| id(len, i)).collect()
        };
        let mut ids = if let Some(r) = name.strip_prefix("ruler/") {
            let task = RulerTask::from_name(r).ok_or_else(|| TaskError::Config { key: "task".into(), detail: format!("unknown RULER task `{r}`") })?;
            per_length(&|len, i| ruler_sample_id(task, len, i))
        } else if let Some(c) = name.strip_prefix("retrieval/") {
            let corpus = Self::corpus(c)?;
            per_length(&|len, i| passage_retrieval_id(corpus, len, i))
        } else if let Some(c) = name.strip_prefix("count/") {
            let corpus = Self::corpus(c)?;
            per_length(&|len, i| passage_count_id(corpus, len, i))
        } else if name == "code" {
            let package = CodeRepo::from_cache()?.package;
            per_length(&|len, i| code_completion_id(&package, len, i))
        } else {
            return Ok(None);
        };
        if let Some(n) = self.limit {
            ids.truncate(n);
        }
        Ok(Some(ids))
    }

    /// How many samples [`TaskSpec::build`] makes, by the same rules, or `None` when it cannot be
    /// told without the data (a LongBench subset has as many records as its file: counted when
    /// fetched, else LongBench's published count for the paper's 16 datasets).
    pub fn sample_count(&self) -> Option<usize> {
        let name = self.task.as_str();
        let n = if name == "passkey" {
            self.passkey_lengths() * self.depths * self.trials
        } else if name == "kamradt" {
            self.depths * self.lengths_or(&[1024, 2048]).len()
        } else if name.starts_with("ruler/") || name.starts_with("retrieval/") || name.starts_with("count/") || name == "code" {
            self.samples * self.lengths_or(&[2048]).len()
        } else if let Some(sub) = name.strip_prefix("longbench/").or_else(|| name.strip_prefix("longbench_e/")) {
            // Every record of the subset's file (the published count when it is not fetched).
            crate::longbench::dataset::record_count(&default_data_dir(), sub, name.starts_with("longbench_e/"))?
        } else {
            return None;
        };
        Some(self.limit.map_or(n, |l| l.min(n)))
    }
}
