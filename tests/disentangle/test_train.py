"""One expert's training loop without Ray: data, loss masking, DeepSpeed vs plain torch, reload."""

import pytest
import torch

from bdc_ray.config import ExpertsConfig
from bdc_ray.disentangle.train import (
    IGNORE,
    ExpertSpec,
    ExpertTraining,
    collate,
    epoch_batches,
    prepare_torch_extensions,
    tokenize_example,
    tokenize_examples,
    train_single_process,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


def test_loss_is_on_the_response_only_with_the_inference_prompt(
    tokenizer, tiny_backend, reference_rows
):
    ex = reference_rows[0]
    row = tokenize_example(tokenizer, ex["messages"], ex["response"], 2048)
    # the prompt part is exactly what the inference backend feeds the model
    prompt_ids = tokenizer(tiny_backend.render(ex["messages"]), add_special_tokens=False)[
        "input_ids"
    ]
    n = len(prompt_ids)
    assert row["input_ids"][:n] == prompt_ids
    assert all(label == IGNORE for label in row["labels"][:n])
    assert row["labels"][n:] == row["input_ids"][n:]
    target = tokenizer.decode(row["labels"][n:])
    assert target == ex["response"] + "<|im_end|>"  # the model learns to stop, then nothing
    # truncation keeps the prompt and cuts the response; a prompt that fills the budget is dropped
    short = tokenize_example(tokenizer, ex["messages"], ex["response"], n + 5)
    assert len(short["input_ids"]) == n + 5 and sum(lb != IGNORE for lb in short["labels"]) == 5
    assert tokenize_example(tokenizer, ex["messages"], ex["response"], n) is None
    with pytest.raises(ValueError, match="max_seq_len=16"):
        tokenize_examples(tokenizer, [ex], 16)


def test_collate_pads_without_loss_or_attention():
    b = collate(
        [{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [8], "labels": [8]}], 0
    )
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.mark.parametrize(("n", "bs", "world"), [(16, 4, 2), (10, 4, 2), (3, 4, 1), (7, 2, 3)])
def test_epoch_batches_shard_every_example_across_ranks(n, bs, world):
    per_rank = [epoch_batches(n, bs, r, world, seed=1, epoch=0) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1  # every rank takes the same number of steps
    seen = [i for b in per_rank for step in b for i in step]
    assert set(seen) == set(range(n))
    if n % (bs * world) == 0:
        assert sorted(seen) == list(range(n))  # nothing twice when it divides evenly
    assert epoch_batches(n, bs, 0, world, 1, 0) != epoch_batches(n, bs, 0, world, 1, 1) or n < 3


def _spec(path, rows, out, **over):
    e = ExpertsConfig(**{"lr": 1e-2, "epochs": 3, "batch_size": 4, "max_seq_len": 192, **over})
    return ExpertSpec("t", str(path), rows, str(out), e.model_dump(), seed=0, fingerprint="fp")


def _loss(model, tok, rows):
    model.eval()
    data = tokenize_examples(tok, rows, 192)
    b = collate(data, tok.pad_token_id)
    with torch.no_grad():
        return model(**b).loss.item()


def test_deepspeed_expert_learns_and_reloads_with_identical_logits(
    tiny_model_path, tokenizer, reference_rows, tmp_path
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    prepare_torch_extensions()
    rows = reference_rows[:8]
    out = tmp_path / "expert"
    calls = []
    training = ExpertTraining(_spec(tiny_model_path, rows, out, checkpoint_every=2))
    log = training.run(checkpoint=lambda step, metrics, save: calls.append(step))
    assert log["steps"] == 6 and calls == [2, 4, 6]
    before = _loss(AutoModelForCausalLM.from_pretrained(tiny_model_path), tokenizer, rows)
    after = _loss(training.model, tokenizer, rows)
    assert after < before - 0.1, (before, after)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert (out / "loss.png").stat().st_size > 3000

    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path), out)
    reloaded.eval()
    training.model.eval()
    ids = collate(tokenize_examples(tokenizer, rows[:3], 192), tokenizer.pad_token_id)
    with torch.no_grad():
        a = training.model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits
        b = reloaded(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits
    assert torch.equal(a, b)

    # the plain peft + torch loop over the same data and order takes the same steps
    plain = train_single_process(_spec(tiny_model_path, rows, tmp_path / "plain"), write=False)
    assert plain["history"]["loss"] == pytest.approx(log["history"]["loss"], rel=1e-4)


def test_a_bf16_expert_holds_the_float32_losses(tiny_model_path, reference_rows, tmp_path):
    """DeepSpeed's bf16 mode (what `experts.dtype: auto` picks on bf16 hardware) trains the same
    expert as float32 within bf16's rounding: each step's loss within 2%."""
    prepare_torch_extensions()
    rows = reference_rows[:4]
    logs = {}
    for dtype in ("float32", "bfloat16"):
        spec = _spec(tiny_model_path, rows, tmp_path / dtype, dtype=dtype)
        training = ExpertTraining(spec)
        logs[dtype] = training.run()["history"]["loss"]
        assert next(training.model.parameters()).dtype == getattr(torch, dtype)
    fp32, bf16 = logs["float32"], logs["bfloat16"]
    assert len(bf16) == len(fp32) and bf16[-1] < bf16[0] - 0.1, bf16
    assert bf16 == pytest.approx(fp32, rel=0.02), (fp32, bf16)
