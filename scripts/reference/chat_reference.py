"""Reference chat-template renders for kvbench's chat tests, made by transformers.

Usage: chat_reference.py REQUEST.json RESULT.json

REQUEST holds {"cases": [{"gguf": path or null, "template": str or null, "bos_token", "eos_token",
"messages": [{"role", "content"}], "add_generation_prompt": bool}]}. A case with "gguf" renders the
template embedded in that GGUF with `AutoTokenizer.from_pretrained(dir, gguf_file=name)
.apply_chat_template(messages, tokenize=False, ...)`; a case with "template" renders that string
with `transformers.utils.chat_template_utils.render_jinja_template`, the renderer
`apply_chat_template` calls. bos_token/eos_token are passed as template variables in both.
`strftime_now` is pinned to 2024-07-26 00:00:00, as in kvbench. RESULT holds, per case,
{"rendered": str} or {"error": str} (the exception message, e.g. from raise_exception).
"""

import datetime as _datetime
import json
import os
import sys

try:
    import transformers.utils.chat_template_utils as ctu
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging
except ImportError as e:  # the Rust test shows this message
    sys.exit(f"chat_reference.py needs transformers and jinja2: {e}")


class PinnedDatetime(_datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(2024, 7, 26, 0, 0, 0)


def main():
    request_path, result_path = sys.argv[1:3]
    hf_logging.set_verbosity_error()
    ctu.datetime = PinnedDatetime  # strftime_now() reads the module's `datetime.now()`
    with open(request_path, encoding="utf-8") as f:
        cases = json.load(f)["cases"]
    tokenizers = {}
    results = []
    for case in cases:
        # Unset tokens stay undefined, as in apply_chat_template's special_tokens_map.
        variables = {k: case[k] for k in ("bos_token", "eos_token") if case.get(k) is not None}
        # Messages as users write them: {"role", "content"} in that order (matters for tojson).
        messages = [{"role": m["role"], "content": m["content"]} for m in case["messages"]]
        try:
            if case.get("gguf"):
                path = case["gguf"]
                if path not in tokenizers:
                    tokenizers[path] = AutoTokenizer.from_pretrained(
                        os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path))
                rendered = tokenizers[path].apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=case["add_generation_prompt"], **variables)
            else:
                rendered = ctu.render_jinja_template(
                    conversations=[messages], chat_template=case["template"],
                    add_generation_prompt=case["add_generation_prompt"], **variables)[0][0]
            results.append({"rendered": rendered})
        except Exception as e:  # a template error is a result to compare, not a failure
            results.append({"error": f"{type(e).__name__}: {e}"})
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump({"results": results}, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
