"""Per-request mixtures of LoRA experts: our batched gated mixture vs peft's routes.

    python benchmarks/mixture.py [--model smollm2-135m-instruct] [--tokens 64] [--experts 3]
    python benchmarks/mixture.py --arch DIR --dtype bfloat16   # e.g. on a GPU, random weights

16 HumanEval prompts, batch 16, each request with its own weights over K experts (rank 8 on
q_proj/v_proj; random weights: speed does not depend on training), greedy with a fixed number
of new tokens per request, in one run:
  (a) base model without LoRA, one batched generate;
  (b) our gated mixture: one batched generate, each row under its own gates;
  (c) naive per-request route: for each request build its adapter with peft
      `add_weighted_adapter(..., combination_type="cat")`, `set_adapter`, generate alone;
  (d) the strongest peft route: build one such adapter per request, then one batched generate
      with peft's mixed-batch `adapter_names`.
Adapter building is included in (c) and (d). Rows of (b) are checked against (c)'s text.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bdc_ray.customize.mixture import inject_mixture  # noqa: E402
from bdc_ray.customize.solver import _GatedBackend  # noqa: E402
from bdc_ray.customize.synthetic import random_expert  # noqa: E402
from bdc_ray.data import load_humaneval  # noqa: E402
from bdc_ray.llm.base import Sampling  # noqa: E402
from bdc_ray.llm.models import resolve_model  # noqa: E402
from bdc_ray.llm.prompts import direct_messages  # noqa: E402
from bdc_ray.llm.transformers_backend import TransformersBackend  # noqa: E402


def make_experts(base: str, k: int, root: Path) -> dict[str, Path]:
    # B x 0.05: a trained expert's size: outputs change, text stays sane
    return {f"e{i}": random_expert(base, root / f"e{i}", 100 + i, b_scale=0.05) for i in range(k)}


def tokens(completions) -> int:
    return sum(c.completion_tokens for c in completions)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--experts", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--arch", type=Path, help="folder with config.json + tokenizer: random weights")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument(
        "--routes",
        nargs="*",
        choices=["merge", "mixed_batch"],
        default=["merge", "mixed_batch"],
        help="peft's routes to run beside base and mixture (none: `--routes` alone)",
    )
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-mixture-"))
    if args.arch:  # the embedded weights cannot travel to a GPU machine; speed does not need them
        from generate import _random_copy

        base = str(_random_copy(args.arch, tmp / "model"))
    else:
        base = str(resolve_model(args.model))
    experts = make_experts(base, args.experts, tmp)
    names = list(experts)
    prompts = [direct_messages(p) for p in load_humaneval()[: args.batch]]
    sampling = Sampling(max_tokens=args.tokens, temperature=0.0, ignore_eos=True)
    torch.manual_seed(0)
    weights = torch.distributions.Dirichlet(torch.ones(args.experts)).sample((args.batch,))
    weights = weights.to(torch.float32)  # per request: its weights over the K experts

    # (a) and (b): the same backend class; (b) with the mixture injected
    # like for like: the gated backend keeps torch's own linears (the mixture wraps them), so
    # the base runs without the oneDNN packing here too
    plain = TransformersBackend(
        base, dtype=args.dtype, max_batch_size=args.batch, pack_linears=False
    )
    gated = _GatedBackend(base, dtype=args.dtype, max_batch_size=args.batch)
    gated.mix = inject_mixture(gated.model, experts, base)
    mix = gated.mix
    gates = weights.repeat_interleave(mix.r, dim=1)[:, None, :].expand(-1, len(mix.modules), -1)
    gated.row_gates = gates.contiguous().to(gated.device)

    # (c) and (d): peft with the K experts loaded
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    peft_backend = TransformersBackend(
        base, dtype=args.dtype, max_batch_size=args.batch, pack_linears=False
    )
    pm = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base, dtype=peft_backend.model.dtype),
        str(experts[names[0]]),
        adapter_name=names[0],
    )
    for n in names[1:]:
        pm.load_adapter(str(experts[n]), adapter_name=n)
    pm.to(peft_backend.device).eval()
    peft_backend.model = pm

    def build(i: int) -> str:
        name = f"req{i}"
        if name in pm.peft_config:
            pm.delete_adapter(name)
        pm.add_weighted_adapter(names, weights[i].tolist(), name, combination_type="cat")
        return name

    def run_a():
        return plain.generate(prompts, sampling)

    def run_b():
        return gated.generate(prompts, sampling)

    def run_c():
        out = []
        for i, p in enumerate(prompts):
            pm.set_adapter(build(i))
            out.extend(peft_backend.generate([p], sampling))
        return out

    def run_d():
        adapter_names = [build(i) for i in range(len(prompts))]

        def generate_rows(rows, batch, s):  # each row through its own adapter, one generate
            return peft_backend._generate_batch(
                batch, s, adapter_names=[adapter_names[r] for r in rows]
            )

        peft_backend._generate_rows = generate_rows
        try:
            return peft_backend.generate(prompts, sampling)
        finally:
            del peft_backend._generate_rows

    ways = {"base": run_a, "mixture": run_b, "merge": run_c, "mixed_batch": run_d}
    ways = {k: f for k, f in ways.items() if k in {"base", "mixture", *args.routes}}
    warm = Sampling(max_tokens=4, temperature=0.0, ignore_eos=True)
    plain.generate(prompts, warm), gated.generate(prompts, warm)  # CUDA/BLAS set-up, untimed
    times: dict[str, list[float]] = {k: [] for k in ways}
    texts: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for name, fn in ways.items():  # side by side, in turn
            t0 = time.perf_counter()
            out = fn()
            times[name].append(tokens(out) / (time.perf_counter() - t0))
            texts[name] = [c.text for c in out]
    tps = {k: statistics.median(v) for k, v in times.items()}
    agree = {  # rows whose greedy text equals the mixture's
        k: sum(a == b for a, b in zip(texts["mixture"], texts[k], strict=True))
        for k in ("merge", "mixed_batch")
        if k in texts
    }
    print(f"{'route':<12} tokens/s")
    for k, v in tps.items():
        print(f"{k:<12} {v:8.1f}")
    print(
        "greedy texts equal to ours: "
        + ", ".join(f"{k} {n}/{args.batch}" for k, n in agree.items())
    )
    speedups = {f"speedup_vs_{k}": round(tps["mixture"] / tps[k], 2) for k in agree}
    print(
        json.dumps(
            {
                "bench": "mixture",
                "model": str(args.arch or args.model),
                "device": torch.cuda.get_device_name(0) if gated.device.type == "cuda" else "cpu",
                "dtype": str(gated.model.dtype).removeprefix("torch."),
                "batch": args.batch,
                "experts": args.experts,
                "new_tokens": args.tokens,
                **{f"{k}_tokens_per_s": round(v, 1) for k, v in tps.items()},
                "ratio_vs_base": round(tps["mixture"] / tps["base"], 3),
                **speedups,
                **{f"texts_equal_{k}": n for k, n in agree.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
