//! LongBench v1 as the paper ran it: the official data files, prompts, generation lengths,
//! truncation and chat-template rules, and metrics with `THUDM/LongBench`'s exact semantics
//! (checked pair by pair against the official Python packages by
//! `scripts/reference/longbench_metrics_reference.py`), plus the paper's categories and average.

pub mod dataset;
pub mod difflib;
pub mod metrics;
pub mod prompts;
pub mod pytext;
pub mod rouge;
pub mod samples;
pub mod score;

mod pyunicode;

pub use dataset::{default_data_dir, fetch_longbench, fetch_longbench_from, load_subset, DataError, FetchSummary, LongBenchRecord};
pub use metrics::{Metric, MetricError};
pub use prompts::{build_request, subset, truncate_middle, Category, GenerationRequest, PromptTokenizer, Subset, AVERAGE_15, PAPER_DATASETS, SUBSETS};
pub use samples::{category_of, longbench_context_id, longbench_samples, sample_from_record, split_prompt, task_name, PromptParts, OTHER_CATEGORY};
pub use score::{score_predictions_file, ScoreError, ScoreReport};
