"""Expert training on one CUDA GPU without Ray (the lent GPU machine has no Ray): the loop Ray
Train runs (`ExpertTraining`, DeepSpeed ZeRO 0/2/3, nccl) vs the plain peft + torch loop on the
same data, and the saved adapter reloaded with `PeftModel.from_pretrained`.

    python benchmarks/device_train.py --model PATH [--steps 20] [--batch 8] [--seq 512]

Prints one line per run and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bdc_ray.config import DataConfig, ExpertsConfig  # noqa: E402
from bdc_ray.data import load_problems  # noqa: E402
from bdc_ray.disentangle.examples import reference_examples  # noqa: E402
from bdc_ray.disentangle.train import (  # noqa: E402
    ExpertSpec,
    ExpertTraining,
    collate,
    tokenize_examples,
    train_single_process,
)


def reload_matches(model_path: str, trained, out_dir: str, rows) -> float:
    """Max |logit difference| between the trained model and its saved adapter reloaded."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    dtype = next(trained.parameters()).dtype
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).cuda()
    reloaded = PeftModel.from_pretrained(base, out_dir).eval()
    trained.eval()
    b = collate(tokenize_examples(tok, rows[:4], 256), tok.pad_token_id)
    with torch.no_grad():
        kw = {"input_ids": b["input_ids"].cuda(), "attention_mask": b["attention_mask"].cuda()}
        return float((trained(**kw).logits - reloaded(**kw).logits).abs().max())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="model folder")
    ap.add_argument("--arch", type=Path, help="folder with config.json + tokenizer: random weights")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--stages", type=int, nargs="+", default=[0, 2, 3])
    args = ap.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    if args.arch:  # the real weights cannot travel to the GPU machine; the speed is the same
        from generate import _random_copy

        args.model = str(_random_copy(args.arch, Path(tempfile.mkdtemp()) / "model"))
    rows = reference_examples(load_problems(DataConfig()))[: args.steps * args.batch]
    tmp = Path(tempfile.mkdtemp())
    out = {"gpu": torch.cuda.get_device_name(0), "model": str(args.arch or args.model)}
    for dtype in ("float32", "bfloat16"):
        e = ExpertsConfig(
            batch_size=args.batch, max_seq_len=args.seq, dtype=dtype, checkpoint_every=10_000
        )
        # the plain loop first (it also warms CUDA up for everyone)
        spec = ExpertSpec("plain", args.model, rows, str(tmp / f"plain-{dtype}"), e, seed=0)
        plain = train_single_process(spec, write=False)
        print(
            f"{dtype} plain: {plain['tokens_per_s']} tok/s, loss {plain['first_loss']} -> "
            f"{plain['final_loss']}",
            flush=True,
        )
        out[f"plain_{dtype}_tokens_per_s"] = plain["tokens_per_s"]
        for stage in args.stages:
            e_ds = e.model_copy(update={"zero_stage": stage})
            spec = ExpertSpec(f"z{stage}", args.model, rows, str(tmp / f"z{stage}-{dtype}"), e_ds)
            calls = []
            t = ExpertTraining(spec)
            log = t.run(
                checkpoint=lambda step, m, save, calls=calls: (
                    save(str(tmp / "ckpt")),
                    calls.append(step),
                )
            )
            diff = reload_matches(args.model, t.model, spec.out_dir, rows)
            same = max(
                abs(a - b)
                for a, b in zip(log["history"]["loss"], plain["history"]["loss"], strict=True)
            )
            print(
                f"{dtype} zero{stage}: {log['tokens_per_s']} tok/s "
                f"(x{log['tokens_per_s'] / plain['tokens_per_s']:.2f} of plain), loss "
                f"{log['first_loss']} -> {log['final_loss']}, max |loss - plain| {same:.2e}, "
                f"reload max |dlogit| {diff:.2e}, checkpoints at {calls}",
                flush=True,
            )
            out[f"zero{stage}_{dtype}_tokens_per_s"] = log["tokens_per_s"]
            out[f"zero{stage}_{dtype}_ratio"] = round(
                log["tokens_per_s"] / plain["tokens_per_s"], 3
            )
            out[f"zero{stage}_{dtype}_max_loss_diff"] = same
            out[f"zero{stage}_{dtype}_reload_max_logit_diff"] = diff
            del t
            torch.cuda.empty_cache()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
