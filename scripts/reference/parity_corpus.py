"""Deterministic text corpus for tokenizer parity tests (kvbench).

`corpus(n=2000, seed=20241126)` returns n strings mixing synthetic and real text: Python source
lines (indentation, operators), English prose from package metadata, Chinese words from jieba's
dictionary, numbers of every shape, accents (composed and decomposed), emoji sequences, many
scripts, whitespace runs (spaces, tabs, newlines, CR, NBSP, ideographic space), and special-token
text (ChatML markers and the control tokens of SmolLM2 and Qwen2.5, whole and broken).

The same Python environment (same package versions) gives the same corpus: real text comes from
files of pinned packages (transformers 5.2.0, jieba 0.42.1) and of the Python standard library.
Run it directly to print the corpus as JSON.
"""

import importlib.metadata
import json
import os
import random
import sys

CATEGORIES = [
    # (name, share of the corpus in thousandths)
    ("python_source", 200),
    ("prose", 150),
    ("chinese", 100),
    ("numbers", 130),
    ("unicode", 150),
    ("whitespace", 100),
    ("special_tokens", 100),
    ("ascii_mix", 70),
]

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    # SmolLM2 control tokens
    "<repo_name>", "<reponame>", "<file_sep>", "<filename>", "<gh_stars>", "<issue_start>",
    "<issue_comment>", "<issue_closed>", "<jupyter_start>", "<jupyter_text>", "<jupyter_code>",
    "<jupyter_output>", "<jupyter_script>", "<empty_output>",
    # Qwen2.5 control and user-defined tokens
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
    "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",
    "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]

WORDS = ("the of and to in is was for on that with as by it at from his an were are which this be "
         "cache memory token model attention query key value budget compress evict quantize layer "
         "head window sink heavy hitter prefill decode context retrieval passkey needle haystack "
         "don't won't it's we'll they've I'm she'd you're O'Neil rock'n'roll").split()

UNICODE_SAMPLES = [
    "café", "naïve", "résumé", "Ångström", "Øresund", "Straße", "façade", "jalapeño", "Zürich",
    "cafe\u0301", "nai\u0308ve", "A\u030angstro\u0308m", "e\u0301e\u0300e\u0302", "\u1e9b\u0323",
    "Привет, мир", "Ελληνικά γράμματα", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีชาวโลก",
    "こんにちは世界", "カタカナとひらがな", "안녕하세요 세계", "你好，世界！", "繁體中文與简体中文",
    "😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷🇯🇵", "❤️", "🤖💬", "✨🚀🔥", "🧑🏿‍💻",
    "x²+y³=z⁴", "½ ⅓ ¼ ¾", "①②③", "Ⅻ", "٣٤٥", "१२३", "１２３ＡＢＣ", "∑∫∂√∞≠≤≥", "→⇒↔",
    "“quoted” ‘single’ «guillemets» „low“", "—–-", "…", "\u00a0", "\u200b", "\ufeff", "\u3000",
    "ﬁ ﬂ", "Ⅸ", "㎞", "ǅ", "İstanbul", "ß", "ﬀ",
]


def _site_file(module, relative):
    """Absolute path of `relative` inside the installed package (or stdlib module) `module`."""
    mod = __import__(module)
    base = os.path.dirname(mod.__file__)
    path = os.path.join(base, relative)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"parity corpus needs {path} ({module} is installed without it)")
    return path


def _lines(path, min_len=1):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if len(line.strip()) >= min_len]


def _real_sources():
    python = []
    for module, rel in [
        ("transformers", "models/llama/modeling_llama.py"),
        ("transformers", "integrations/ggml.py"),
        ("transformers", "generation/utils.py"),
        ("json", "decoder.py"),
        ("textwrap", "textwrap.py"),
    ]:
        python.extend(_lines(_site_file(module, rel), min_len=3))
    prose = []
    for dist in ["transformers", "jieba", "jinja2"]:
        meta = importlib.metadata.distribution(dist).read_text("METADATA") or ""
        body = meta.split("\n\n", 1)[-1]  # the long description, after the header fields
        prose.extend(line for line in body.splitlines() if len(line.strip()) > 20)
    if not prose:
        raise RuntimeError("parity corpus: no package METADATA prose found")
    chinese = _lines(_site_file("jieba", "dict.txt"))
    return python, prose, chinese


def _number(rng):
    kind = rng.randrange(12)
    digits = lambda n: "".join(rng.choice("0123456789") for _ in range(n))
    if kind == 0:
        return digits(rng.randint(1, 40))
    if kind == 1:
        return f"{rng.randint(0, 10**9):,}"
    if kind == 2:
        return f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 9)}f}"
    if kind == 3:
        return f"{rng.uniform(0, 1):.3e}"
    if kind == 4:
        return f"0x{rng.getrandbits(rng.choice([8, 16, 32, 64])):x}"
    if kind == 5:
        return f"{rng.randint(1900, 2099)}-{rng.randint(1, 12):02}-{rng.randint(1, 28):02}"
    if kind == 6:
        return f"+1 ({digits(3)}) {digits(3)}-{digits(4)}"
    if kind == 7:
        return f"v{rng.randint(0, 9)}.{rng.randint(0, 99)}.{rng.randint(0, 999)}"
    if kind == 8:
        return rng.choice([" ", "  ", "\t", "\n", "   ", " \n"]) + digits(rng.randint(1, 6))
    if kind == 9:
        return f"{rng.randint(0, 100)}%"
    if kind == 10:
        return f"${rng.randint(0, 99999)}.{digits(2)}"
    return f"{digits(rng.randint(1, 3))}:{digits(2)}:{digits(2)}"


def _whitespace(rng):
    return "".join(rng.choice([" ", "  ", "    ", "\t", "\n", "\n\n", "\r\n", "\u00a0", "\u3000", " \t "])
                   for _ in range(rng.randint(1, 4)))


def _sentence(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def corpus(n=2000, seed=20241126):
    rng = random.Random(seed)
    python, prose, chinese = _real_sources()
    chinese_words = [line.split(" ")[0] for line in chinese]
    plan = []
    for name, share in CATEGORIES:
        plan.extend([name] * (n * share // 1000))
    plan.extend(["ascii_mix"] * (n - len(plan)))
    out = []
    for category in plan:
        if category == "python_source":
            start = rng.randrange(len(python))
            text = "\n".join(python[start:start + rng.choice([1, 1, 1, 2, 3])])
        elif category == "prose":
            text = rng.choice(prose)
        elif category == "chinese":
            if rng.random() < 0.5:
                text = rng.choice(chinese)
            else:
                text = "".join(rng.choice(chinese_words) for _ in range(rng.randint(2, 12)))
                text += rng.choice(["。", "，", "！", "？", "", " 2024年", "（注）"])
        elif category == "numbers":
            parts = [_number(rng) for _ in range(rng.randint(1, 4))]
            glue = [rng.choice([" ", ", ", " and ", "  ", "\t", "=", "x", " + ", ""]) for _ in parts]
            text = "".join(g + p for g, p in zip(glue, parts)).lstrip(" ") or parts[0]
            if rng.random() < 0.3:
                text = _sentence(rng, rng.randint(1, 5)) + " " + text
        elif category == "unicode":
            pieces = [rng.choice(UNICODE_SAMPLES) for _ in range(rng.randint(1, 4))]
            if rng.random() < 0.5:
                pieces.append(_sentence(rng, rng.randint(1, 4)))
            rng.shuffle(pieces)
            text = rng.choice([" ", "", ", ", "\n"]).join(pieces)
        elif category == "whitespace":
            pieces = []
            for _ in range(rng.randint(1, 5)):
                pieces.append(_whitespace(rng))
                pieces.append(rng.choice([_sentence(rng, rng.randint(1, 3)), _number(rng), rng.choice(UNICODE_SAMPLES)]))
            text = "".join(pieces)
        elif category == "special_tokens":
            mode = rng.randrange(4)
            token = rng.choice(SPECIAL_TOKENS)
            if mode == 0:
                role = rng.choice(["system", "user", "assistant"])
                text = f"<|im_start|>{role}\n{_sentence(rng, rng.randint(2, 8))}<|im_end|>\n"
            elif mode == 1:
                text = _sentence(rng, 2) + token + _sentence(rng, 2) + rng.choice(SPECIAL_TOKENS)
            elif mode == 2:
                cut = rng.randint(1, len(token) - 1)
                text = rng.choice(["<", "", " "]) + token[:cut] + " " + token[cut:] + rng.choice([">", "|", ""])
            else:
                text = rng.choice([" ", "  ", "\n", ""]) + token + rng.choice([" ", "\n", "x", ""]) + token
        else:
            alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?'\"()[]{}<>/\\|@#$%^&*-_=+~`"
            kind = rng.randrange(4)
            if kind == 0:
                text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60)))
            elif kind == 1:
                text = f"https://example.org/{_sentence(rng, 2).replace(' ', '/')}?q={rng.randint(0, 999)}&lang=en#top"
            elif kind == 2:
                text = json.dumps({rng.choice(WORDS): rng.randint(0, 999), "list": [rng.random() for _ in range(2)]})
            else:
                text = _sentence(rng, rng.randint(3, 12)).upper() + rng.choice(["'S", "'LL", "'VE", "'D", "..."])
        out.append(text)
    return out


if __name__ == "__main__":
    json.dump(corpus(), sys.stdout, ensure_ascii=False, indent=0)
