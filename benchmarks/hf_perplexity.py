"""WikiText-2 test perplexity of a saved model, loaded by plain transformers (slimbench is never
imported): the check that a ``save_dir`` checkpoint works without slimbench.

The protocol is slimbench's perplexity evaluator, written out here with transformers and torch
only: the raw file's lines (a line holding a single space is the empty row, every other line
keeps its newline) joined with "\\n\\n", tokenized once (special tokens added), cut into
non-overlapping windows of ``seqlen`` tokens; perplexity = exp(mean over the first ``windows``
windows of the window's mean next-token NLL).

    python benchmarks/hf_perplexity.py <saved dir> <data dir> [--windows 8] [--seqlen 2048] [--ref logits.pt]

Prints one JSON line: perplexity, windows, the text's sha256 (compare with the record's
``protocols.perplexity.text_sha256``), the threads, and whether slimbench was imported. With
``--ref`` (a ``torch.save`` of ``{"input_ids": [1, T], "logits": [1, T, V]}``, e.g. slimbench's
in-memory compressed model on the same tokens) also the largest absolute logit difference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer


def wikitext_test_text(data_dir: Path) -> str:
    raw = (data_dir / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")
    rows = ["" if line == " \n" else line for line in raw.splitlines(keepends=True)]
    return "\n\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("data_dir")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--ref", help="reference logits to compare with (see above)")
    args = parser.parse_args()

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    load_s = time.perf_counter() - start
    text = wikitext_test_text(Path(args.data_dir))
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=True, verbose=False).input_ids[0]
    n = min(args.windows, ids.numel() // args.seqlen)
    windows = ids[: n * args.seqlen].view(n, args.seqlen)
    nlls = []
    with torch.inference_mode():
        for w in windows:
            logits = model(input_ids=w[None], use_cache=False).logits  # [1, T, V]
            nlls.append(F.cross_entropy(logits[0, :-1].float(), w[1:]).double().item())
        ref = torch.load(args.ref) if args.ref else None
        ref_diff = None if ref is None else float((model(input_ids=ref["input_ids"], use_cache=False).logits.float() - ref["logits"]).abs().max())
    print(json.dumps({
        "model_dir": args.model_dir, "perplexity": math.exp(sum(nlls) / len(nlls)), "windows": n, "seqlen": args.seqlen,
        "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "threads": torch.get_num_threads(),
        "load_s": round(load_s, 2), "weights_dtype": str(next(model.parameters()).dtype),
        "ref_max_abs_logit_diff": ref_diff, "slimbench_imported": "slimbench" in sys.modules,
    }))


if __name__ == "__main__":
    main()
