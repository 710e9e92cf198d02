"""Generation throughput of the transformers backend, side by side with raw `model.generate`.

    python benchmarks/generate.py                       # embedded SmolLM2, CPU or GPU
    python benchmarks/generate.py --arch DIR --batches 1 16 64 --tokens 128
        # random weights in the architecture of DIR/config.json (same speed as the real model;
        # for machines the 98 MB GGUF cannot reach)

For each batch size the same prompts run through (a) `TransformersBackend.generate` and
(b) a bare left-padded `model.generate` with the same settings, alternately, `--repeats` times;
medians are reported. Generation is forced to the full token budget (eos ignored) so every row
does the same work. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bdc_ray.llm.base import Sampling  # noqa: E402
from bdc_ray.llm.transformers_backend import TransformersBackend  # noqa: E402

PROMPTS = [
    "def fibonacci(n):",
    "Write a function that reverses a linked list.",
    "import re\n\ndef is_valid_email(s):",
    "class LRUCache:\n    def __init__(self, capacity):",
    "Sort a list of tuples by their second element.",
    "def merge_intervals(intervals):",
    "Explain binary search in one paragraph.",
    "def count_vowels(text: str) -> int:",
]


def _random_copy(arch: Path, out: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(arch)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(arch).save_pretrained(out)
    return out


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--arch", type=Path, help="folder with config.json + tokenizer: random weights")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args(argv)

    if args.arch:
        import tempfile

        path = _random_copy(args.arch, Path(tempfile.mkdtemp()) / "model")
    else:
        from bdc_ray.llm.models import resolve_model

        path = resolve_model(args.model)
    backend = TransformersBackend(path, dtype=args.dtype, max_batch_size=max(args.batches))
    # every row generates exactly `tokens` tokens in both paths
    tok, model = backend.tokenizer, backend.model
    sp = Sampling(max_tokens=args.tokens, ignore_eos=True)

    def ours(prompts):
        _sync()
        t = time.perf_counter()
        out = backend.generate(prompts, sp)
        _sync()
        return sum(c.completion_tokens for c in out) / (time.perf_counter() - t)

    @torch.inference_mode()
    def raw(prompts):
        enc = tok(prompts, return_tensors="pt", padding=True).to(backend.device)
        _sync()
        t = time.perf_counter()
        out = model.generate(
            **enc,
            max_new_tokens=args.tokens,
            min_new_tokens=args.tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=None,
        )
        _sync()
        n = (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
        return n / (time.perf_counter() - t)

    ours(PROMPTS[:2])  # warm-up: kernels, allocator
    rows = []
    for b in args.batches:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(b)]
        o, r = [], []
        for _ in range(args.repeats):
            o.append(ours(prompts))
            r.append(raw(prompts))
        rows.append(
            dict(
                batch=b,
                backend_tokens_per_s=statistics.median(o),
                raw_tokens_per_s=statistics.median(r),
            )
        )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"device: {device}, dtype: {backend.model.dtype}, tokens per row: {args.tokens}")
    print(f"{'batch':>6} {'backend tok/s':>14} {'raw tok/s':>10} {'ratio':>6}")
    for row in rows:
        row["ratio"] = row["backend_tokens_per_s"] / row["raw_tokens_per_s"]
        print(
            f"{row['batch']:>6} {row['backend_tokens_per_s']:>14.1f} {row['raw_tokens_per_s']:>10.1f} {row['ratio']:>6.2f}"
        )
    result = {
        "bench": "generate",
        "device": device,
        "dtype": str(backend.model.dtype),
        "model": "random:" + str(args.arch) if args.arch else args.model,
        "rows": [
            {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rows
        ],
        "best_tokens_per_s": round(max(r["backend_tokens_per_s"] for r in rows), 1),
        "median_ratio_vs_raw": round(statistics.median(r["ratio"] for r in rows), 3),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
