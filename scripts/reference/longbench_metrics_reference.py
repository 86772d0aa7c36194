#!/usr/bin/env python3
"""Reference scores for kvbench's LongBench v1 metrics, computed the official way.

The metric functions below are re-typed from THUDM/LongBench `LongBench/metrics.py` and the
aggregation from `LongBench/eval.py` (scorer, scorer_e) and longctx_bench's
`visualization/longbench_results_summary/long_bench_tasks_summary.py` (categories, 15-task
average). They call the official packages (`rouge==1.0.1`, `fuzzywuzzy` on difflib, `jieba`), so
what they return is what the official evaluation returns.

Usage (python from KVBENCH_PYTHON, default <workspace>/.venv/bin/python):
  longbench_metrics_reference.py cases OUT.json          deterministic pairs + reference scores
  longbench_metrics_reference.py unicode-tables OUT.rs   Python's str predicates as Rust tables

Call depth matters: rouge 1.0.1 reconstructs the LCS recursively and a RecursionError becomes a
score of 0. The per-pair and per-dataset scores are therefore computed from a function called at
module level, exactly as in `python eval.py` (module -> scorer -> metric).
"""
import json
import random
import re
import string
import sys
from collections import Counter

import warnings

warnings.filterwarnings("ignore", message="Using slow pure-python SequenceMatcher")

try:
    import difflib

    import jieba
    import numpy as np
    from fuzzywuzzy import fuzz
    from rouge import Rouge
except ImportError as err:  # the Rust test turns this into a failure with this message
    sys.stderr.write(
        f"missing reference package: {err}. Install: pip install rouge==1.0.1 fuzzywuzzy==0.18.0 jieba==0.42.1 numpy\n"
    )
    sys.exit(3)

jieba.setLogLevel(60)

# ----------------------------------------------------------------------------------------------
# Official metric semantics (LongBench/metrics.py), re-typed.
# ----------------------------------------------------------------------------------------------


def normalize_answer(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def normalize_zh_answer(s):
    cn_punctuation = "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
    all_punctuation = set(string.punctuation + cn_punctuation)
    text = "".join(ch for ch in s.lower() if ch not in all_punctuation)
    return "".join(text.split())


def count_score(prediction, ground_truth, **kwargs):
    numbers = re.findall(r"\d+", prediction)
    right_num = 0
    for number in numbers:
        if str(number) == str(ground_truth):
            right_num += 1
    return float(0.0 if len(numbers) == 0 else right_num / len(numbers))


def retrieval_score(prediction, ground_truth, **kwargs):
    ground_truth_id = re.findall(r"Paragraph (\d+)", ground_truth)[0]
    numbers = re.findall(r"\d+", prediction)
    right_num = 0
    for number in numbers:
        if str(number) == str(ground_truth_id):
            right_num += 1
    return float(0.0 if len(numbers) == 0 else right_num / len(numbers))


def retrieval_zh_score(prediction, ground_truth, **kwargs):
    ground_truth_id = re.findall(r"段落(\d+)", ground_truth)[0]
    numbers = re.findall(r"\d+", prediction)
    right_num = 0
    for number in numbers:
        if str(number) == str(ground_truth_id):
            right_num += 1
    return float(0.0 if len(numbers) == 0 else right_num / len(numbers))


def code_sim_score(prediction, ground_truth, **kwargs):
    all_lines = prediction.lstrip("\n").split("\n")
    prediction = ""
    for line in all_lines:
        if ("`" not in line) and ("#" not in line) and ("//" not in line):
            prediction = line
            break
    return fuzz.ratio(prediction, ground_truth) / 100


def classification_score(prediction, ground_truth, **kwargs):
    em_match_list = []
    all_classes = kwargs["all_classes"]
    for class_name in all_classes:
        if class_name in prediction:
            em_match_list.append(class_name)
    for match_term in em_match_list:  # mutates while iterating, as the official code does
        if match_term in ground_truth and match_term != ground_truth:
            em_match_list.remove(match_term)
    if ground_truth in em_match_list:
        return 1.0 / len(em_match_list)
    return 0.0


def rouge_score(prediction, ground_truth, **kwargs):
    rouge = Rouge()
    try:
        scores = rouge.get_scores([prediction], [ground_truth], avg=True)
    except:  # noqa: E722  (the official code swallows everything, RecursionError included)
        return 0.0
    return scores["rouge-l"]["f"]


def rouge_zh_score(prediction, ground_truth, **kwargs):
    prediction = " ".join(list(jieba.cut(prediction, cut_all=False)))
    ground_truth = " ".join(list(jieba.cut(ground_truth, cut_all=False)))
    return rouge_score(prediction, ground_truth)


def f1_score(prediction, ground_truth, **kwargs):
    common = Counter(prediction) & Counter(ground_truth)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction)
    recall = 1.0 * num_same / len(ground_truth)
    return (2 * precision * recall) / (precision + recall)


def qa_f1_score(prediction, ground_truth, **kwargs):
    return f1_score(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def qa_f1_zh_score(prediction, ground_truth, **kwargs):
    p = [normalize_zh_answer(t) for t in jieba.cut(prediction, cut_all=False)]
    g = [normalize_zh_answer(t) for t in jieba.cut(ground_truth, cut_all=False)]
    return f1_score([t for t in p if len(t) > 0], [t for t in g if len(t) > 0])


METRICS = {
    "qa_f1_score": qa_f1_score,
    "qa_f1_zh_score": qa_f1_zh_score,
    "rouge_score": rouge_score,
    "rouge_zh_score": rouge_zh_score,
    "classification_score": classification_score,
    "retrieval_score": retrieval_score,
    "retrieval_zh_score": retrieval_zh_score,
    "count_score": count_score,
    "code_sim_score": code_sim_score,
}

DATASET2METRIC = {
    "narrativeqa": qa_f1_score, "qasper": qa_f1_score, "multifieldqa_en": qa_f1_score,
    "multifieldqa_zh": qa_f1_zh_score, "hotpotqa": qa_f1_score, "2wikimqa": qa_f1_score,
    "musique": qa_f1_score, "dureader": rouge_zh_score, "gov_report": rouge_score,
    "qmsum": rouge_score, "multi_news": rouge_score, "vcsum": rouge_zh_score,
    "trec": classification_score, "triviaqa": qa_f1_score, "samsum": rouge_score,
    "lsht": classification_score, "passage_retrieval_en": retrieval_score,
    "passage_count": count_score, "passage_retrieval_zh": retrieval_zh_score,
    "lcc": code_sim_score, "repobench-p": code_sim_score,
}

# ----------------------------------------------------------------------------------------------
# Official aggregation (LongBench/eval.py and longctx_bench's tasks summary), re-typed.
# ----------------------------------------------------------------------------------------------


def scorer(dataset, predictions, answers, all_classes):
    total_score = 0.0
    for prediction, ground_truths in zip(predictions, answers):
        score = 0.0
        if dataset in ["trec", "triviaqa", "samsum", "lsht"]:
            prediction = prediction.lstrip("\n").split("\n")[0]
        for ground_truth in ground_truths:
            score = max(score, DATASET2METRIC[dataset](prediction, ground_truth, all_classes=all_classes))
        total_score += score
    return round(100 * total_score / len(predictions), 2)


def scorer_e(dataset, predictions, answers, lengths, all_classes):
    scores = {"0-4k": [], "4-8k": [], "8k+": []}
    for prediction, ground_truths, length in zip(predictions, answers, lengths):
        score = 0.0
        if dataset in ["trec", "triviaqa", "samsum", "lsht"]:
            prediction = prediction.lstrip("\n").split("\n")[0]
        for ground_truth in ground_truths:
            score = max(score, DATASET2METRIC[dataset](prediction, ground_truth, all_classes=all_classes))
        if length < 4000:
            scores["0-4k"].append(score)
        elif length < 8000:
            scores["4-8k"].append(score)
        else:
            scores["8k+"].append(score)
    out = {}
    for key in scores.keys():
        if scores[key]:
            out[key] = float(round(100 * np.mean(scores[key]), 2))
        else:
            out[key] = None  # np.mean([]) is nan in the official code
    return out


def pair_score(metric, prediction, ground_truth, all_classes):
    """One metric call at the same stack depth as eval.py's scorer (module -> scorer -> metric)."""
    try:
        return metric(prediction, ground_truth, all_classes=all_classes), None
    except Exception as e:  # retrieval on a reference without "Paragraph N": the official code crashes
        return None, type(e).__name__


SUMMARY_DATASETS = ["narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique",
                    "gov_report", "qmsum", "multi_news", "trec", "triviaqa", "samsum",
                    "passage_retrieval_en", "lcc", "repobench-p", "passage_count"]
TASK_DATASETS = {
    "single_doc_qa": ["narrativeqa", "qasper", "multifieldqa_en"],
    "multi_doc_qa": ["hotpotqa", "2wikimqa", "musique"],
    "summarization": ["gov_report", "qmsum", "multi_news"],
    "few_shots": ["trec", "triviaqa", "samsum"],
    "synthetic": ["passage_retrieval_en"],
    "code": ["lcc", "repobench-p"],
}


def summary(ind):
    tasks = {}
    for task, datasets in TASK_DATASETS.items():
        tasks[task] = 0
        for d in datasets:
            tasks[task] += ind[d]
        tasks[task] = float(np.round(tasks[task] / len(datasets), decimals=2))
    avg = 0
    for d in SUMMARY_DATASETS:
        if d != "passage_count":
            avg += ind[d]
    return tasks, float(np.round(avg / (len(SUMMARY_DATASETS) - 1), decimals=2))


# ----------------------------------------------------------------------------------------------
# Deterministic case generator.
# ----------------------------------------------------------------------------------------------

EN_WORDS = ("the a an The A AN THE cat dog sat on mat quickly report budget city river Paris "
            "London 1984 42 3.14 don't it's well-known state-of-the-art e.g. U.S. mr. smith "
            "answer question model yes no unanswerable Einstein relativity theory 2019 $100 "
            "50% co-operate naïve café résumé Zürich über über-cool a_b _a a² the½ an① "
            "theory's the's an-the thé ŉ İstanbul ΣΟΦΟΣ ὈΔΥΣΣΕΎΣ straße ǅemal").split()
ZH_SENTENCES = [
    "北京是中国的首都", "我们在会议上讨论了明年的预算问题", "小明硕士毕业于中国科学院计算所",
    "后在日本京都大学深造", "他来到了网易杭研大厦", "今天天气很好，我们去公园散步吧",
    "这个模型的长文本理解能力有待提高", "会议决定下周三再次讨论项目进度", "李白是唐代著名诗人",
    "长江是中国最长的河流", "人工智能正在改变世界", "请判断给定新闻的类别",
    "本文提出了一种新的压缩方法", "2023年经济增长5.2%", "iPhone15在中国发布",
    "深度学习与自然语言处理", "他说：“我们明天见！”", "《红楼梦》是四大名著之一",
]
ZH_PUNCT = list("，。！？、；：“”（）《》…—～·") + ["", "", " ", "\n"]
UNICODE_BITS = ["\u00a0", "\u3000", "\x1c", "\x1f", "\x85", "\u2028", "\u200b", "a\u0301", "e\u0308",
                "١٢٣", "１２", "²³", "Ⅻ", "🙂", "👍🏽", "ﬁ", "ß", "ǅ", "Σ", "ς", "İ", "ǰ", "\t", "\r\n",
                "٣", "۴", "०१", "…", "—", "–", "’", "“", "”", "\u0300the", "the\u0300", "Ⓐ",
                "anⒶ", "aॊ", "the\u200d", "ǅa", "Ⅻthe"]
CODE_LINES = [
    "def foo(x):", "    return x + 1", "# a comment", "// another comment", "```python", "```",
    "int main() {", "    printf(\"%d\\n\", x);", "}", "public static void main(String[] args) {",
    "self.assertEqual(result, expected)", "for i in range(10):", "    total += values[i]  # accumulate",
    "x = a // b", "const url = `https://${host}/api`;", "if (a && b) { return; }", "return None",
    "import numpy as np", "from typing import List", "    def __init__(self, config):",
    "        super().__init__()", "print('hello world')", "let v: Vec<u32> = Vec::new();",
    "#include <stdio.h>", "    }", "", "    ", "\t\treturn self.layers[idx](hidden_states)",
]
TREC_CLASSES = ["Abbreviation", "Expression abbreviated", "Animal", "Organ of body", "Color",
                "Invention, book and other creative piece", "Currency name", "Disease and medicine",
                "Event", "Food", "Musical instrument", "Language", "Letter like a-z", "Other entity",
                "Plant", "Product", "Religion", "Sport", "Element and substance", "Symbols and sign",
                "Techniques and method", "Equivalent term", "Vehicle", "Word with a special property",
                "Definition of something", "Description of something", "Manner of an action",
                "Reason", "Group or organization of persons", "Individual", "Title of a person",
                "Description of a person", "City", "Country", "Mountain", "Other location", "State",
                "Postcode or other code", "Number of something", "Date", "Distance, linear measure",
                "Price", "Order, rank", "Other number", "Lasting time of somethin", "Percent, fraction",
                "Speed", "Temperature", "Size, area and volume", "Weight"]
# classes nested in one another: consecutive removals exercise the skip-after-remove quirk
NESTED_CLASSES = ["ab", "a", "b", "abc", "bc", "c", "军事", "军事、国防", "x", "abcd"]
LSHT_CLASSES = ["农业、农村", "军事", "文化、休闲娱乐", "体育", "财经、财政、金融", "教育", "环境、气象",
                "科技", "国际", "政治", "医药、卫生", "交通", "法律、司法", "灾难、事故", "经济", "工业",
                "社会", "能源", "旅游", "军事、国防"]


def en_text(rng, n_words, dots=True):
    out = []
    for _ in range(n_words):
        w = rng.choice(EN_WORDS)
        r = rng.random()
        if r < 0.08:
            w = w.upper()
        elif r < 0.14:
            w = w.capitalize()
        if rng.random() < 0.15:
            w += rng.choice([",", ";", ":", "!", "?", "'", '"', ")", "]", "-", "...", "—"])
        if dots and rng.random() < 0.1:
            w += rng.choice([".", ". ", " .", ".."])
        out.append(w)
    sep = [" "] * 12 + ["  ", "\n", "\t", "\u00a0", " \n "]
    s = ""
    for i, w in enumerate(out):
        s += (rng.choice(sep) if i else "") + w
    return s


# common characters in random order: unknown words, so jieba's HMM path does the work
ZH_CHARS = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处理府研质"


def zh_text(rng, n_sent):
    s = ""
    for _ in range(n_sent):
        if rng.random() < 0.3:
            s += "".join(rng.choice(ZH_CHARS) for _ in range(rng.randint(2, 30))) + rng.choice(ZH_PUNCT)
            continue
        s += rng.choice(ZH_SENTENCES) + rng.choice(ZH_PUNCT)
        if rng.random() < 0.15:
            s += rng.choice(EN_WORDS) + rng.choice(["", " ", "."])
    return s


def unicode_text(rng):
    parts = []
    for _ in range(rng.randint(1, 10)):
        parts.append(rng.choice(UNICODE_BITS + EN_WORDS[:20] + ["a", "an", "the", ".", " "]))
    return rng.choice(["", " ", "\n"]).join(parts)


def code_text(rng):
    lines = [rng.choice(CODE_LINES) for _ in range(rng.randint(1, 6))]
    return rng.choice(["", "\n", "\n\n", " "]) + "\n".join(lines)


def special_text(rng):
    return rng.choice(["", " ", "  \n", ".", "...", ". . .", "!?", "?!.,;", "'\"", "a", "an", "the",
                       "The a an", "\n\n", "-", "—", "。", "，。！", "\x1c", "\u3000", "0", "00",
                       "_", "__init__", "a.b.c", " . ", "\t.\t"])


def mutate(rng, s):
    """A perturbed copy of s, so that references and predictions overlap partly."""
    words = s.split(" ")
    op = rng.randrange(6)
    if op == 0 and len(words) > 1:
        del words[rng.randrange(len(words))]
    elif op == 1 and len(words) > 1:
        i, j = rng.randrange(len(words)), rng.randrange(len(words))
        words[i], words[j] = words[j], words[i]
    elif op == 2:
        words.insert(rng.randrange(len(words) + 1), rng.choice(EN_WORDS))
    elif op == 3:
        return s.upper() if rng.random() < 0.5 else s.lower()
    elif op == 4:
        return s + rng.choice([".", "!", " etc.", "\nsecond line", "。"])
    else:
        chars = list(s)
        if chars:
            k = rng.randrange(len(chars))
            chars[k] = rng.choice(["x", " ", ".", "的", "\n", ""])
        return "".join(chars)
    return " ".join(words)


def any_text(rng, lang="en"):
    r = rng.random()
    if r < 0.12:
        return special_text(rng)
    if r < 0.22:
        return unicode_text(rng)
    if lang == "zh" or r < 0.32:
        return zh_text(rng, rng.randint(1, 4)) if lang == "zh" or rng.random() < 0.7 else en_text(rng, rng.randint(1, 12))
    if r < 0.42:
        return code_text(rng)
    return en_text(rng, rng.randint(1, 40))


def pair(rng, lang="en"):
    a = any_text(rng, lang)
    r = rng.random()
    if r < 0.1:
        b = a
    elif r < 0.55:
        b = mutate(rng, a)
        for _ in range(rng.randint(0, 3)):
            b = mutate(rng, b)
    else:
        b = any_text(rng, lang)
    return (a, b) if rng.random() < 0.5 else (b, a)


def long_nodot(rng, k, distinct=False):
    if distinct:
        return " ".join("w%d" % i for i in range(k))
    return " ".join(rng.choice(EN_WORDS).replace(".", "") for _ in range(k))


def metric_cases(rng):
    cases = {m: [] for m in METRICS}
    # qa_f1 / qa_f1_zh / rouge / rouge_zh: generic pairs
    for m, lang in [("qa_f1_score", "en"), ("qa_f1_zh_score", "zh"), ("rouge_score", "en"), ("rouge_zh_score", "zh")]:
        for _ in range(330):
            p, g = pair(rng, lang if rng.random() < 0.8 else "en")
            cases[m].append((p, g, None))
    # rouge recursion edge: identical distinct-word sentences around the recursion limit
    for k in (985, 989, 990, 991, 992, 995, 1200):
        t = long_nodot(rng, k, distinct=True)
        cases["rouge_score"].append((t, t, None))
        cases["rouge_zh_score"].append((t, t, None))
    for _ in range(8):
        a = long_nodot(rng, rng.randint(300, 700))
        b = long_nodot(rng, rng.randint(300, 700))
        cases["rouge_score"].append((a, b, None))
        cases["rouge_zh_score"].append((zh_text(rng, rng.randint(20, 60)), zh_text(rng, rng.randint(20, 60)), None))
    # classification: trec and lsht class lists, predictions mentioning one or several classes
    for _ in range(330):
        r = rng.random()
        classes = TREC_CLASSES if r < 0.55 else LSHT_CLASSES if r < 0.8 else NESTED_CLASSES
        if rng.random() < 0.1:
            classes = classes + [rng.choice(classes)]  # duplicates exercise list.remove
        gt = rng.choice(classes)
        picks = [rng.choice(classes) for _ in range(rng.randint(0, 3))]
        if rng.random() < 0.5:
            picks.append(gt)
        rng.shuffle(picks)
        glue = rng.choice([" ", ", ", "\n", " and ", ""])
        p = rng.choice(["", "Type: ", "类别："]) + glue.join(picks)
        if rng.random() < 0.2:
            p = mutate(rng, p)
        cases["classification_score"].append((p, gt, classes))
    # retrieval / retrieval_zh / count: numbers in many forms
    for m, word in [("retrieval_score", "Paragraph "), ("retrieval_zh_score", "段落")]:
        for _ in range(330):
            gid = str(rng.randint(0, 31))
            gt = rng.choice(["", "see ", "Paragraph x, "]) + word + gid + rng.choice(["", ".", " and Paragraph 7"])
            if rng.random() < 0.05:
                gt = word + rng.choice(["٣", "１２", "0" + gid])
            nums = [rng.choice([gid, str(rng.randint(0, 40)), "0" + gid, "١٢", "２"]) for _ in range(rng.randint(0, 4))]
            p = rng.choice(["", "The answer is ", "段落", "Paragraph "]) + rng.choice([", ", " ", "and", ""]).join(nums)
            if rng.random() < 0.2:
                p = any_text(rng)
            cases[m].append((p, gt, None))
        cases[m].append(("Paragraph 3", "no id here", None))  # the official code raises IndexError
    for _ in range(330):
        gt = str(rng.randint(1, 40))
        nums = [rng.choice([gt, str(rng.randint(1, 40)), "0" + gt, "٣"]) for _ in range(rng.randint(0, 4))]
        p = rng.choice(["", "There are ", "The final answer is: "]) + rng.choice([", ", " ", "x"]).join(nums)
        if rng.random() < 0.15:
            p = any_text(rng)
        cases["count_score"].append((p, gt, None))
    # code_sim: code predictions against a reference line, short and >= 200 chars (autojunk)
    for i in range(340):
        gt = rng.choice(CODE_LINES).strip() or "return x"
        r = rng.random()
        if r < 0.3:
            p = code_text(rng)
        elif r < 0.5:
            p = rng.choice(["", "\n", "# c\n", "```\n"]) + mutate(rng, gt)
        elif r < 0.6:
            p = gt
        elif r < 0.8:
            n = rng.randint(150, 400)
            body = "".join(rng.choice("ab  ()=x_1;") for _ in range(n))
            gt = "".join(rng.choice("ab  ()=y_1;") for _ in range(rng.randint(150, 400)))
            p = body
        else:
            p = any_text(rng)
        cases["code_sim_score"].append((p, gt, None))
    return cases


ALL_DATASETS = list(DATASET2METRIC.keys())


def dataset_samples(rng, name, n):
    metric = DATASET2METRIC[name]
    zh = name in ("multifieldqa_zh", "dureader", "vcsum", "lsht", "passage_retrieval_zh")
    lang = "zh" if zh else "en"
    classes = TREC_CLASSES if name == "trec" else LSHT_CLASSES if name == "lsht" else None
    samples = []
    for _ in range(n):
        if metric in (classification_score,):
            answers = [rng.choice(classes)]
            pred = rng.choice(["", "\n", "\n\n"]) + rng.choice(classes + [answers[0]] * 3) + rng.choice(["", "\n" + rng.choice(classes), " or " + rng.choice(classes)])
        elif metric in (retrieval_score, retrieval_zh_score):
            word = "Paragraph " if metric is retrieval_score else "段落"
            gid = str(rng.randint(1, 30))
            answers = [word + gid]
            pred = rng.choice(["", word]) + rng.choice([gid, gid, str(rng.randint(1, 30)), gid + " and " + str(rng.randint(1, 30))])
        elif metric is count_score:
            answers = [str(rng.randint(1, 30))]
            pred = rng.choice([answers[0], str(rng.randint(1, 30)), "There are " + answers[0] + " or 3", ""])
        elif metric is code_sim_score:
            answers = [rng.choice(CODE_LINES).strip() or "pass"]
            pred = rng.choice([code_text(rng), "\n" + mutate(rng, answers[0]), answers[0] + "\n" + code_text(rng)])
        else:
            answers = [any_text(rng, lang) for _ in range(rng.randint(1, 3))]
            base = rng.choice(answers)
            pred = mutate(rng, base) if rng.random() < 0.6 else any_text(rng, lang)
            if rng.random() < 0.3:
                pred = rng.choice(["", "\n", "\n\n"]) + pred + "\n" + any_text(rng, lang)
        length = rng.choice([rng.randint(0, 3999), rng.randint(4000, 7999), rng.randint(8000, 20000), 4000, 8000, 3999])
        samples.append({"pred": pred, "answers": answers, "all_classes": classes, "length": length})
    return samples


def unicode_tables(out_path):
    def ranges(pred):
        r, start = [], None
        for c in range(sys.maxunicode + 1):
            ok = pred(chr(c))
            if ok and start is None:
                start = c
            if not ok and start is not None:
                r.append((start, c - 1))
                start = None
        if start is not None:
            r.append((start, sys.maxunicode))
        return r

    import unicodedata

    def emit(name, doc, rs):
        body = "".join(f"    (0x{a:X}, 0x{b:X}),\n" for a, b in rs)
        return f"/// {doc}\npub(crate) const {name}: &[(u32, u32)] = &[\n{body}];\n\n"

    lower, multi = [], []
    for c in range(sys.maxunicode + 1):
        if 0xD800 <= c <= 0xDFFF:
            continue
        low = chr(c).lower()
        if len(low) == 1 and ord(low) != c:
            lower.append((c, ord(low)))
        elif len(low) > 1:
            multi.append((c, low))
    if multi != [(0x130, "i\u0307")]:
        sys.exit(f"unexpected multi-character lowercase mappings: {multi}")
    lower_body = "".join(f"    (0x{a:X}, 0x{b:X}),\n" for a, b in lower)

    text = (
        "//! Python's `str` character predicates as sorted code-point ranges, so Rust reproduces\n"
        "//! `str.lower()`, `str.split()`, `re`'s `\\b` and `\\d` exactly (Python's `\\w` and `str.isspace` differ from Rust's).\n"
        f"//! Generated by scripts/reference/longbench_metrics_reference.py unicode-tables (Unicode {unicodedata.unidata_version}).\n\n"
        "// @generated: do not edit by hand.\n\n"
        + emit("WORD", "`c.isalnum() or c == '_'`: a word character for `re`'s `\\b` on str patterns.", ranges(lambda c: c.isalnum() or c == "_"))
        + emit("SPACE", "`c.isspace()`: what `str.split()` splits on.", ranges(lambda c: c.isspace()))
        + emit("DECIMAL", "`c.isdecimal()`: what `re`'s `\\d` matches on str patterns.", ranges(lambda c: c.isdecimal()))
        + "/// `chr(c).lower()` where it is one character other than `c` (U+0130 alone maps to two: \"i\\u{307}\").\n"
        + f"pub(crate) const LOWER: &[(u32, u32)] = &[\n{lower_body}];\n"
    )
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(text.rstrip("\n") + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("cases", "unicode-tables"):
        sys.stderr.write(__doc__)
        sys.exit(2)
    if sys.argv[1] == "unicode-tables":
        unicode_tables(sys.argv[2])
        sys.exit(0)
    if fuzz.SequenceMatcher is not difflib.SequenceMatcher:
        sys.stderr.write("fuzzywuzzy is using python-Levenshtein; the reference semantics need difflib (uninstall python-Levenshtein)\n")
        sys.exit(3)
    # Module level on purpose (no main function): metrics must run at eval.py's call depth.
    rng = random.Random(20240701)
    out = {"metrics": {}, "datasets": {}}
    for m, triples in metric_cases(rng).items():
        rows = []
        for p, g, classes in triples:
            score, err = pair_score(METRICS[m], p, g, classes)
            # repr() gives the exact double back to a correct parser (Rust's str::parse)
            exact = None if score is None else repr(float(score))
            rows.append({"pred": p, "gt": g, "all_classes": classes, "score": score, "score_repr": exact, "error": err})
        out["metrics"][m] = rows
    ind = {}
    for i, name in enumerate(ALL_DATASETS):
        samples = dataset_samples(rng, name, [37, 150, 200, 61, 260][i % 5])
        preds = [s["pred"] for s in samples]
        answers = [s["answers"] for s in samples]
        lengths = [s["length"] for s in samples]
        all_classes = samples[-1]["all_classes"]  # eval.py keeps the last line's all_classes
        ind[name] = scorer(name, preds, answers, all_classes)
        score_e = scorer_e(name, preds, answers, lengths, all_classes)
        out["datasets"][name] = {"samples": samples, "score": ind[name], "score_e": score_e}
    tasks, avg = summary(ind)
    out["summary"] = {"task_average_result": tasks, "LB_average_result": avg}
    # Rounding and summation: many score lists whose averages land near .xx5, where Python's
    # round(), numpy's rint(x*100)/100 and sequential vs pairwise sums disagree.
    rounding = []
    for i in range(3000):
        n = rng.choice([1, 2, 3, 7, 8, 9, 15, 16, 17, 40, 127, 128, 129, 200, 257, 300])
        kind = i % 4
        if kind == 0:
            xs = [rng.randint(0, 100) / 100 for _ in range(n)]  # code_sim-like
        elif kind == 1:
            xs = [1 / rng.randint(1, 9) * rng.randint(0, 1) for _ in range(n)]  # count/classification-like
        elif kind == 2:
            xs = [rng.random() for _ in range(n)]
        else:
            xs = [rng.randint(0, 10000) / 100 for _ in range(min(n, 15))]  # dataset scores into a category mean
        r_scorer = round(100 * sum(xs) / len(xs), 2)
        r_e = float(round(100 * np.mean(xs), 2))
        total = 0
        for x in xs:
            total += x
        r_summary = float(np.round(total / len(xs), decimals=2))
        rounding.append({"scores": [repr(x) for x in xs], "scorer": repr(r_scorer), "scorer_e": repr(r_e), "summary": repr(r_summary)})
    out["rounding"] = rounding
    # jieba.cut(text, cut_all=False) token by token, the segmentation qa_f1_zh and rouge_zh use
    texts = [zh_text(rng, rng.randint(1, 12)) for _ in range(300)] + [any_text(rng, "zh") for _ in range(100)]
    out["jieba"] = [{"text": t, "tokens": list(jieba.cut(t, cut_all=False))} for t in texts]
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)
