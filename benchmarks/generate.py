"""Generation throughput of the transformers backend, side by side with raw `model.generate`.

    python benchmarks/generate.py                       # embedded SmolLM2, CPU or GPU
    python benchmarks/generate.py --arch DIR --batches 1 16 64 --tokens 128
        # random weights in the architecture of DIR/config.json (same speed as the real model;
        # for machines the 98 MB GGUF cannot reach)

For each batch size the same prompts run through (a) `TransformersBackend.generate` and
(b) a bare left-padded `model.generate` with the same settings, alternately, `--repeats` times;
medians are reported. Generation is forced to the full token budget (eos ignored) so every row
does the same work. Prints a table, then one JSON line.

    python benchmarks/generate.py --compare-dtypes      # float32 vs bfloat16, batch 16

loads the model three times, in float32 (linears packed for oneDNN, the backend's CPU default),
in float32 with torch's own matmul, and in bfloat16, and runs the same greedy batches through
each in turn: `bf16_speedup` is the ratio of bfloat16's and float32's median tokens per second,
`packing_speedup` that of packed and torch-matmul float32; `greedy_equal` the share
of rows whose text is the same in both, `common_prefix_tokens` the mean length (in float32
tokens) before a row's texts first differ. It also states this CPU's limit for decoding
(`cpu_limit_tokens_per_s`): a decode step reads every weight once and does 2 FLOPs per weight
and row, so tokens/s <= min(batch * memory bandwidth / weight bytes, peak FLOP/s / (2 * params));
the bandwidth is measured (a large array copy) and the peak is cores x clock x FLOPs a cycle of
the widest FMA units the flags show (attention and the KV cache are left out: a bound, not a
forecast).
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

from bdc_ray.llm import precision  # noqa: E402
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
    ap.add_argument(
        "--compare-dtypes", action="store_true", help="float32 vs bfloat16 side by side"
    )
    args = ap.parse_args(argv)
    if args.compare_dtypes:
        return compare_dtypes(args)

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


def _flops_per_cycle(flags: set[str], dtype: str) -> int:
    """FLOPs one core can do a cycle in `dtype` on its widest units (2 FMA pipes assumed)."""
    if dtype == "bfloat16" and "amx_bf16" in flags:
        return 2048  # AMX TMUL: 1024 bf16 multiply-adds a cycle
    if dtype == "bfloat16" and "avx512_bf16" in flags:
        return 128  # VDPBF16PS: 32 bf16 pairs a pipe
    if "avx512f" in flags:
        return 64
    if "fma" in flags:
        return 32
    return 8


def _clock_hz() -> float:
    mhz = [
        float(line.split(":")[1])
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("cpu MHz")
    ]
    return statistics.median(mhz) * 1e6 if mhz else 2.0e9


def _memory_bandwidth() -> float:
    """Bytes a second for a 512 MiB copy (read + write), best of 3."""
    a = torch.empty(2**27, dtype=torch.float32).fill_(1.0)
    b = torch.empty_like(a)
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        b.copy_(a)
        best = max(best, 2 * a.numel() * 4 / (time.perf_counter() - t))
    return best


def cpu_limit(model, batch: int, dtype: str) -> dict:
    params = sum(p.numel() for p in model.parameters())
    flags = precision._cpu_flags()
    cores = torch.get_num_threads()
    peak = cores * _clock_hz() * _flops_per_cycle(flags, dtype)
    bw = _memory_bandwidth()
    weight_bytes = params * (2 if dtype == "bfloat16" else 4)
    memory_bound = batch * bw / weight_bytes
    compute_bound = peak / (2 * params)
    return dict(
        params=params,
        threads=cores,
        peak_gflops=round(peak / 1e9, 1),
        bandwidth_gb_s=round(bw / 1e9, 2),
        memory_bound_tokens_per_s=round(memory_bound, 1),
        compute_bound_tokens_per_s=round(compute_bound, 1),
        limit_tokens_per_s=round(min(memory_bound, compute_bound), 1),
    )


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def compare_dtypes(args) -> dict:
    from bdc_ray.llm.models import resolve_model

    if torch.cuda.is_available():
        raise SystemExit("--compare-dtypes measures the CPU; run it where no GPU is visible")
    path = resolve_model(args.model)
    batch = max(args.batches) if args.batches != [1, 8, 16] else 16
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    sp = Sampling(max_tokens=args.tokens, ignore_eos=True)
    backends = {
        d: TransformersBackend(path, dtype=d, max_batch_size=batch, device="cpu")
        for d in ("float32", "bfloat16")
    }
    # the backend packs float32 linears for oneDNN on CPU; torch's own matmul beside it
    backends["float32_torch_matmul"] = TransformersBackend(
        path, dtype="float32", max_batch_size=batch, device="cpu", pack_linears=False
    )
    speeds: dict[str, list[float]] = {d: [] for d in backends}
    texts: dict[str, list[str]] = {}
    for b in backends.values():
        b.generate(prompts[:2], Sampling(max_tokens=4))  # warm-up: kernels, allocator
    for _ in range(args.repeats):
        for d, b in backends.items():  # in turn, so noise falls on both
            t = time.perf_counter()
            out = b.generate(prompts, sp)
            speeds[d].append(sum(c.completion_tokens for c in out) / (time.perf_counter() - t))
            texts[d] = [c.text for c in out]
    tok = backends["float32"].tokenizer
    ids = {d: [tok(t, add_special_tokens=False)["input_ids"] for t in texts[d]] for d in texts}
    equal = sum(a == b for a, b in zip(texts["float32"], texts["bfloat16"], strict=True)) / batch
    prefix = statistics.mean(
        _common_prefix(a, b) for a, b in zip(ids["float32"], ids["bfloat16"], strict=True)
    )
    med = {d: statistics.median(v) for d, v in speeds.items()}
    auto = precision.resolve_name("auto", "cpu")
    # (the packed model's weights are buffers, not parameters: count the unpacked one's)
    limits = {
        "float32": cpu_limit(backends["float32_torch_matmul"].model, batch, "float32"),
        "bfloat16": cpu_limit(backends["bfloat16"].model, batch, "bfloat16"),
    }
    limits["float32_torch_matmul"] = limits["float32"]
    packed_equal = sum(
        a == b for a, b in zip(texts["float32"], texts["float32_torch_matmul"], strict=True)
    )
    print(f"cpu bf16 instructions: {precision.cpu_bf16() or 'none'}; auto means {auto} here")
    print(f"batch {batch}, {args.tokens} greedy tokens a row, {torch.get_num_threads()} threads")
    print(f"{'dtype':>20} {'tok/s':>8} {'limit':>8} {'of limit':>9}")
    for d in backends:
        lim = limits[d]["limit_tokens_per_s"]
        print(f"{d:>20} {med[d]:>8.1f} {lim:>8.1f} {med[d] / lim:>9.2f}")
    print(
        f"bf16 vs float32 greedy texts equal: {equal:.2f} of rows; tokens before they differ: {prefix:.1f}"
    )
    print(f"packed vs torch matmul greedy texts equal: {packed_equal} of {batch}")
    result = {
        "bench": "generate_dtypes",
        "batch": batch,
        "tokens": args.tokens,
        "cpu_bf16": precision.cpu_bf16(),
        "auto": auto,
        "float32_tokens_per_s": round(med["float32"], 1),
        "float32_torch_matmul_tokens_per_s": round(med["float32_torch_matmul"], 1),
        "packing_speedup": round(med["float32"] / med["float32_torch_matmul"], 3),
        "bfloat16_tokens_per_s": round(med["bfloat16"], 1),
        "greedy_equal": round(equal, 3),
        "packed_greedy_equal": round(packed_equal / batch, 3),
        "common_prefix_tokens": round(prefix, 1),
        "cpu_limit": limits,
        "fraction_of_limit": round(med[auto] / limits[auto]["limit_tokens_per_s"], 3),
        "bf16_speedup": round(med["bfloat16"] / med["float32"], 3),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
