//! The LongBench v1 task definitions (`config/dataset2prompt.json`, `dataset2maxlen.json`,
//! `eval.py`'s metric table, the paper's categories) and how a data row becomes a generation
//! request: prompt filling, middle truncation by tokens, the chat-template and stop rules.

use serde::{Deserialize, Serialize};

use super::dataset::LongBenchRecord;
use super::metrics::Metric;

/// The six categories the paper (longctx_bench's tasks summary) averages over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    SingleDocQa,
    MultiDocQa,
    Summarization,
    #[serde(rename = "few_shots")]
    FewShot,
    /// passage_retrieval_en only: passage_count is excluded from every average
    Synthetic,
    Code,
}

impl Category {
    pub const ALL: [Category; 6] =
        [Category::SingleDocQa, Category::MultiDocQa, Category::Summarization, Category::FewShot, Category::Synthetic, Category::Code];

    /// The key used by longctx_bench's `longbench_result_summary.json`.
    pub fn key(self) -> &'static str {
        match self {
            Category::SingleDocQa => "single_doc_qa",
            Category::MultiDocQa => "multi_doc_qa",
            Category::Summarization => "summarization",
            Category::FewShot => "few_shots",
            Category::Synthetic => "synthetic",
            Category::Code => "code",
        }
    }

    /// Member datasets, in the summary script's order.
    pub fn datasets(self) -> &'static [&'static str] {
        match self {
            Category::SingleDocQa => &["narrativeqa", "qasper", "multifieldqa_en"],
            Category::MultiDocQa => &["hotpotqa", "2wikimqa", "musique"],
            Category::Summarization => &["gov_report", "qmsum", "multi_news"],
            Category::FewShot => &["trec", "triviaqa", "samsum"],
            Category::Synthetic => &["passage_retrieval_en"],
            Category::Code => &["lcc", "repobench-p"],
        }
    }
}

/// The 15 datasets of the paper's LongBench average (all English ones but passage_count), in the
/// order longctx_bench's summary script adds them up (the order matters for the last float bit).
pub const AVERAGE_15: [&str; 15] = [
    "narrativeqa",
    "qasper",
    "multifieldqa_en",
    "hotpotqa",
    "2wikimqa",
    "musique",
    "gov_report",
    "qmsum",
    "multi_news",
    "trec",
    "triviaqa",
    "samsum",
    "passage_retrieval_en",
    "lcc",
    "repobench-p",
];

/// The 16 English datasets longctx_bench runs (the 15 above plus passage_count), in its order.
pub const PAPER_DATASETS: [&str; 16] = [
    "narrativeqa",
    "qasper",
    "multifieldqa_en",
    "hotpotqa",
    "2wikimqa",
    "musique",
    "gov_report",
    "qmsum",
    "multi_news",
    "trec",
    "triviaqa",
    "samsum",
    "passage_retrieval_en",
    "passage_count",
    "lcc",
    "repobench-p",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Language {
    English,
    Chinese,
}

/// One LongBench v1 subset and everything the official `pred.py`/`eval.py` do differently for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subset {
    pub name: &'static str,
    /// `dataset2prompt[name]`, with `{context}` and `{input}` placeholders
    pub prompt: &'static str,
    /// `dataset2maxlen[name]`
    pub max_new_tokens: usize,
    pub metric: Metric,
    pub language: Language,
    /// `None` for the Chinese subsets and passage_count (outside every average)
    pub category: Option<Category>,
    /// false for trec, triviaqa, samsum, lsht, lcc, repobench-p ("chat models are better off
    /// without build prompts on these tasks")
    pub chat_template: bool,
    /// trec, triviaqa, samsum, lsht: only the first line of the prediction is scored
    pub first_line_only: bool,
    /// part of LongBench-E (`<name>_e.jsonl`)
    pub in_longbench_e: bool,
}

/// All 21 subsets, in `pred.py`'s order.
pub const SUBSETS: [Subset; 21] = [
    Subset {
        name: "narrativeqa",
        prompt: "You are given a story, which can be either a novel or a movie script, and a question. Answer the question asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: {context}\n\nNow, answer the question based on the story asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
        max_new_tokens: 128,
        metric: Metric::QaF1,
        language: Language::English,
        category: Some(Category::SingleDocQa),
        chat_template: true,
        first_line_only: false,
        in_longbench_e: false,
    },
    Subset {
        name: "qasper",
        prompt: "You are given a scientific article and a question. Answer the question as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the above article as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
        max_new_tokens: 128,
        metric: Metric::QaF1,
        language: Language::English,
        category: Some(Category::SingleDocQa),
        chat_template: true,
        first_line_only: false,
        in_longbench_e: true,
    },
    Subset {
        name: "multifieldqa_en",
        prompt: "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
        max_new_tokens: 64,
        metric: Metric::QaF1,
        language: Language::English,
        category: Some(Category::SingleDocQa),
        chat_template: true,
        first_line_only: false,
        in_longbench_e: true,
    },
    Subset {
        name: "multifieldqa_zh",
        prompt: "阅读以下文字并用中文简短回答：\n\n{context}\n\n现在请基于上面的文章回答下面的问题，只告诉我答案，不要输出任何其他字词。\n\n问题：{input}\n回答：",
        max_new_tokens: 64,
        metric: Metric::QaF1Zh,
        language: Language::Chinese,
        category: None,
        chat_template: true,
        first_line_only: false,
        in_longbench_e: false,
    },
    Subset {
        name: "hotpotqa",
        prompt: "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
        max_new_tokens: 32,
        metric: Metric::QaF1,
        language: Language::English,
        category: Some(Category::MultiDocQa),
        chat_template: true,
        first_line_only: false,
        in_longbench_e: true,
    },
    Subset {
        name: "2wikimqa",
        prompt: "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
        max_new_tokens: 32,
        metric: Metric::QaF1,
        language: Language::English,
        category: Some(Category::MultiDocQa),
        chat_template: true,
        first_line_only: false,
        in_longbench_e: true,
    },
    Subset {
        name: "musique",
        prompt: "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
        max_new_tokens: 32,
        metric: Metric::QaF1,
        language: Language::English,
        category: Some(Category::MultiDocQa),
        chat_template: true,
        first_line_only: false,
        in_longbench_e: false,
    },
    Subset {
        name: "dureader",
        prompt: "请基于给定的文章回答下述问题。\n\n文章：{context}\n\n请基于上述文章回答下面的问题。\n\n问题：{input}\n回答：",
        max_new_tokens: 128,
        metric: Metric::RougeZh,
        language: Language::Chinese,
        category: None,
        chat_template: true,
        first_line_only: false,
        in_longbench_e: false,
    },
    Subset {
        name: "gov_report",
        prompt: "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",
        max_new_tokens: 512,
        metric: Metric::Rouge,
        language: Language::English,
        category: Some(Category::Summarization),
        chat_template: true,
        first_line_only: false,
        in_longbench_e: true,
    },
    Subset {
        name: "qmsum",
        prompt: "You are given a meeting transcript and a query containing a question or instruction. Answer the query in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:",
        max_new_tokens: 512,
        metric: Metric::Rouge,
        language: Language::English,
        category: Some(Category::Summarization),
        chat_template: true,
        first_line_only: false,
        in_longbench_e: false,
    },
    Subset {
        name: "multi_news",
        prompt: "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\nNow, write a one-page summary of all the news.\n\nSummary:",
        max_new_tokens: 512,
        metric: Metric::Rouge,
        language: Language::English,
        category: Some(Category::Summarization),
        chat_template: true,
        first_line_only: false,
        in_longbench_e: true,
    },
    Subset {
        name: "vcsum",
        prompt: "下面有一段会议记录，请你阅读后，写一段总结，总结会议的内容。\n会议记录：\n{context}\n\n会议总结：",
        max_new_tokens: 512,
        metric: Metric::RougeZh,
        language: Language::Chinese,
        category: None,
        chat_template: true,
        first_line_only: false,
        in_longbench_e: false,
    },
    Subset {
        name: "trec",
        prompt: "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}",
        max_new_tokens: 64,
        metric: Metric::Classification,
        language: Language::English,
        category: Some(Category::FewShot),
        chat_template: false,
        first_line_only: true,
        in_longbench_e: true,
    },
    Subset {
        name: "triviaqa",
        prompt: "Answer the question based on the given passage. Only give me the answer and do not output any other words. The following are some examples.\n\n{context}\n\n{input}",
        max_new_tokens: 32,
        metric: Metric::QaF1,
        language: Language::English,
        category: Some(Category::FewShot),
        chat_template: false,
        first_line_only: true,
        in_longbench_e: true,
    },
    Subset {
        name: "samsum",
        prompt: "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}",
        max_new_tokens: 128,
        metric: Metric::Rouge,
        language: Language::English,
        category: Some(Category::FewShot),
        chat_template: false,
        first_line_only: true,
        in_longbench_e: true,
    },
    Subset {
        name: "lsht",
        prompt: "请判断给定新闻的类别，下面是一些例子。\n\n{context}\n{input}",
        max_new_tokens: 64,
        metric: Metric::Classification,
        language: Language::Chinese,
        category: None,
        chat_template: false,
        first_line_only: true,
        in_longbench_e: false,
    },
    Subset {
        name: "passage_count",
        prompt: "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final count of unique paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ",
        max_new_tokens: 32,
        metric: Metric::Count,
        language: Language::English,
        category: None,
        chat_template: true,
        first_line_only: false,
        in_longbench_e: true,
    },
    Subset {
        name: "passage_retrieval_en",
        prompt: "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph that the abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\nThe answer is: ",
        max_new_tokens: 32,
        metric: Metric::Retrieval,
        language: Language::English,
        category: Some(Category::Synthetic),
        chat_template: true,
        first_line_only: false,
        in_longbench_e: true,
    },
    Subset {
        name: "passage_retrieval_zh",
        prompt: "以下是若干段落文字，以及其中一个段落的摘要。请确定给定的摘要出自哪一段。\n\n{context}\n\n下面是一个摘要\n\n{input}\n\n请输入摘要所属段落的编号。答案格式必须是\"段落1\"，\"段落2\"等格式\n\n答案是：",
        max_new_tokens: 32,
        metric: Metric::RetrievalZh,
        language: Language::Chinese,
        category: None,
        chat_template: true,
        first_line_only: false,
        in_longbench_e: false,
    },
    Subset {
        name: "lcc",
        prompt: "Please complete the code given below. \n{context}Next line of code:\n",
        max_new_tokens: 64,
        metric: Metric::CodeSim,
        language: Language::English,
        category: Some(Category::Code),
        chat_template: false,
        first_line_only: false,
        in_longbench_e: true,
    },
    Subset {
        name: "repobench-p",
        prompt: "Please complete the code given below. \n{context}{input}Next line of code:\n",
        max_new_tokens: 64,
        metric: Metric::CodeSim,
        language: Language::English,
        category: Some(Category::Code),
        chat_template: false,
        first_line_only: false,
        in_longbench_e: true,
    },
];

/// The subset called `name` (`"repobench-p"`, `"2wikimqa"`, ...).
pub fn subset(name: &str) -> Option<&'static Subset> {
    SUBSETS.iter().find(|s| s.name == name)
}

impl Subset {
    /// Only samsum stops on a newline (`eos_token_id=[eos, id of "\n"]`) and must generate at
    /// least one token (`min_length=context_length+1`), which keeps it from answering nothing.
    pub fn stops_at_newline(&self) -> bool {
        self.name == "samsum"
    }

    /// `dataset2prompt[name].format(**row)`: one pass, so braces inside the row stay literal.
    pub fn format_prompt(&self, context: &str, input: &str) -> String {
        fill_template(self.prompt, context, input)
    }
}

/// Replace `{context}` and `{input}` in one left-to-right pass (as `str.format` does).
pub fn fill_template(template: &str, context: &str, input: &str) -> String {
    let mut out = String::with_capacity(template.len() + context.len() + input.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(rest.get(..open).unwrap_or(""));
        let tail = rest.get(open..).unwrap_or("");
        if let Some(after) = tail.strip_prefix("{context}") {
            out.push_str(context);
            rest = after;
        } else if let Some(after) = tail.strip_prefix("{input}") {
            out.push_str(input);
            rest = after;
        } else {
            out.push('{');
            rest = tail.get(1..).unwrap_or("");
        }
    }
    out.push_str(rest);
    out
}

/// The tokenizer the truncation needs: `encode` as `tokenizer(prompt).input_ids` (special tokens
/// such as BOS included, as the official code counts them) and `decode` with
/// `skip_special_tokens=True`.
pub trait PromptTokenizer {
    fn encode(&self, text: &str) -> Vec<u32>;
    fn decode(&self, ids: &[u32]) -> String;
}

/// `pred.py`'s middle truncation: if the prompt has more than `max_input_tokens` tokens, keep
/// the first and last `max_input_tokens / 2` (integer half) and decode each half separately.
/// It runs on the raw prompt, before any chat template. As in Python, a half of 0 keeps the
/// whole prompt on the right (`ids[-0:]` is everything).
pub fn truncate_middle(prompt: &str, tokenizer: &dyn PromptTokenizer, max_input_tokens: usize) -> String {
    let ids = tokenizer.encode(prompt);
    if ids.len() <= max_input_tokens {
        return prompt.to_string();
    }
    let half = max_input_tokens / 2;
    let head = ids.get(..half).unwrap_or(&[]);
    let tail = if half == 0 { &ids[..] } else { ids.get(ids.len() - half..).unwrap_or(&[]) };
    let mut out = tokenizer.decode(head);
    out.push_str(&tokenizer.decode(tail));
    out
}

/// What the engine needs to run one LongBench sample the official way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GenerationRequest {
    pub dataset: String,
    pub id: String,
    /// the filled, middle-truncated prompt, before any chat template
    pub prompt: String,
    /// wrap `prompt` in the model's chat template (false for the six few-shot/code subsets)
    pub apply_chat_template: bool,
    pub max_new_tokens: usize,
    /// the smallest number of new tokens before EOS/stop may end generation (samsum: 1)
    pub min_new_tokens: usize,
    /// stop at the token the tokenizer gives for "\n" (`encode("\n")[-1]`), samsum only
    pub stop_at_newline: bool,
    pub answers: Vec<String>,
    pub all_classes: Option<Vec<String>>,
    pub length: u64,
}

/// Turn a data row into a request: fill the prompt, truncate it in the middle to
/// `max_input_tokens` (the model's `model2maxlen`, e.g. 7500 for Llama-3-8B-Instruct; `None`
/// disables truncation as longctx_bench does for InfLLM/StreamingLLM/LLMLingua-2).
pub fn build_request(subset: &Subset, record: &LongBenchRecord, tokenizer: &dyn PromptTokenizer, max_input_tokens: Option<usize>) -> GenerationRequest {
    let mut prompt = subset.format_prompt(&record.context, &record.input);
    if let Some(max) = max_input_tokens {
        prompt = truncate_middle(&prompt, tokenizer, max);
    }
    GenerationRequest {
        dataset: subset.name.to_string(),
        id: record.id.clone(),
        prompt,
        apply_chat_template: subset.chat_template,
        max_new_tokens: subset.max_new_tokens,
        min_new_tokens: usize::from(subset.stops_at_newline()),
        stop_at_newline: subset.stops_at_newline(),
        answers: record.answers.clone(),
        all_classes: record.all_classes.clone(),
        length: record.length,
    }
}

/// `prediction.lstrip('\n').split('\n')[0]` for the first-line subsets; the prediction itself
/// otherwise. Applied at scoring time, as `eval.py` does.
pub fn postprocess_prediction<'a>(subset: &Subset, prediction: &'a str) -> &'a str {
    if subset.first_line_only {
        first_line(prediction)
    } else {
        prediction
    }
}

/// `prediction.lstrip('\n').split('\n')[0]`: `eval.py`'s cut for trec, triviaqa, samsum, lsht.
pub fn first_line(prediction: &str) -> &str {
    prediction.trim_start_matches('\n').split('\n').next().unwrap_or("")
}
