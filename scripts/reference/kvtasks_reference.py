"""Python references for kvtasks tests (stdlib only; run with $KVBENCH_PYTHON).

Subcommands (JSON on stdout):
  pyrandom SEED            outputs of CPython's `random` for a fixed call sequence
  passkey ESSAY_DIR CFG    the paper's passkey inputs (longctx_bench eval/passkey_utils logic, restated),
                           with the essay files read in sorted order; CFG is a JSON object
  passkey_metrics PAIRS    exact_match / partial_match of [[answer, response], ...] (JSON)
"""
import json
import os
import random
import re
import string
import sys
from difflib import SequenceMatcher


def cmd_pyrandom(seed):
    r = random.Random(int(seed))
    out = {}
    out["u32"] = [r.getrandbits(32) for _ in range(5)]
    out["random"] = [int(r.random() * 2**53) for _ in range(5)]  # exact: k / 2**53
    out["randbelow10"] = [r.randrange(10) for _ in range(20)]
    out["randint"] = [r.randint(1000000, 9999999) for _ in range(5)]
    x = list(range(30))
    r.shuffle(x)
    out["shuffle30"] = x
    out["sample_pool"] = r.sample(range(20), 7)
    out["sample_set"] = r.sample(range(1000), 12)
    out["choice"] = [r.choice("0123456789") for _ in range(10)]
    out["bits128"] = str(r.getrandbits(128))
    out["bits40"] = r.getrandbits(40)
    return out


WORD = re.compile(r"[^\s]+[\s]*")


def truncate(text, end, start=0):
    if start < end:
        return "".join(WORD.findall(text)[start:end]).strip()
    return ""


def spaced(lo, hi, n, as_int=False):
    if lo == hi:
        vals = [lo]
    else:
        k = n - 1
        vals = [lo] + [i * (hi - lo) / k + lo for i in range(1, k)] + [hi]
    return [int(v) for v in vals] if as_int else vals


def cmd_passkey(essay_dir, cfg_json):
    cfg = json.loads(cfg_json)
    files = sorted(f for f in os.listdir(essay_dir) if f.endswith(".txt"))
    texts = [open(os.path.join(essay_dir, f), encoding="utf-8").read() for f in files]
    counts = [len(WORD.findall(t)) for t in texts]
    random.seed(cfg["seed"])
    out = []
    for blen in spaced(cfg["background_len_min"], cfg["background_len_max"], cfg["n_background_lens"], True):
        bg, have, i = "", 0, 0
        while True:
            bg += texts[i % len(texts)]
            have += counts[i % len(texts)]
            i += 1
            if have >= blen:
                break
        bg = truncate(bg, blen)
        for depth in spaced(cfg["depth_min"], cfg["depth_max"], cfg["n_depths"]):
            for _ in range(cfg["iterations"]):
                key = "".join(random.choice("0123456789") for _ in range(cfg["key_digits"]))
                target = "The pass key is <PASS KEY>. Remember it. <PASS KEY> is the pass key.".replace("<PASS KEY>", key)
                n = len(WORD.findall(bg))
                pos = int(n * depth)
                content = " ".join([truncate(bg, pos, 0), target, truncate(bg, n, pos), ""])
                if blen <= cfg.get("full_text_upto", 0):
                    out.append({"key": key, "content": content})
                else:
                    out.append({"key": key})
    return out


def normalize(s):
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", "", s)
    return " ".join(s.split())


def cmd_passkey_metrics(pairs_json):
    res = []
    for answer, response in json.loads(pairs_json):
        em = 1 if normalize(answer) in normalize(response) else 0
        m = SequenceMatcher(None, answer, response, autojunk=False).find_longest_match(0, len(answer), 0, len(response))
        res.append([em, m.size / len(answer)])
    return res


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    fn = {"pyrandom": cmd_pyrandom, "passkey": cmd_passkey, "passkey_metrics": cmd_passkey_metrics}[cmd]
    json.dump(fn(*args), sys.stdout)


if __name__ == "__main__":
    main()
