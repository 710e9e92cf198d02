import pytest

from bdc_ray.llm.base import Sampling, row_seeds, truncate_at_stop
from bdc_ray.llm.transformers_backend import TransformersBackend

PROMPTS = [
    "def add(a, b):",
    "The quick brown fox",
    "import numpy as np\n\nx = np.zeros(",
    "Once",
    "class Stack:\n    def push(self, item):\n",
]


def test_batched_greedy_equals_one_by_one(tiny_backend):
    sp = Sampling(max_tokens=24)
    batched = tiny_backend.generate(PROMPTS, sp)
    single = [tiny_backend.generate([p], sp)[0] for p in PROMPTS]
    assert [c.text for c in batched] == [c.text for c in single]
    assert [c.completion_tokens for c in batched] == [c.completion_tokens for c in single]
    assert all(c.prompt_tokens > 0 for c in batched)


@pytest.mark.real_model
def test_batched_greedy_equals_one_by_one_on_the_embedded_model(embedded_model_path):
    backend = TransformersBackend(embedded_model_path, max_batch_size=4)
    chats = [
        [{"role": "user", "content": q}]
        for q in ("Write hello world in Python.", "What is 2+2?", "Name a prime.")
    ]
    sp = Sampling(max_tokens=16)
    batched = backend.generate(chats, sp)
    single = [backend.generate([c], sp)[0] for c in chats]
    assert [c.text for c in batched] == [c.text for c in single]
    assert all(c.text.strip() for c in batched)


@pytest.mark.real_model
def test_packed_cpu_linears_give_torchs_greedy_texts_on_the_embedded_model(embedded_model_path):
    """oneDNN on packed weights (the CPU default) and torch's own matmul: the same greedy texts
    for HumanEval chats, and every linear layer of the model was packed."""
    import torch

    from bdc_ray.data import load_humaneval
    from bdc_ray.llm.prompts import direct_messages

    if torch.cuda.is_available():
        pytest.skip("packing is for CPU float32")
    chats = [direct_messages(p) for p in load_humaneval()[:6]]
    sp = Sampling(max_tokens=32)
    packed = TransformersBackend(embedded_model_path, dtype="float32", max_batch_size=6)
    plain = TransformersBackend(
        embedded_model_path, dtype="float32", max_batch_size=6, pack_linears=False
    )
    layers = packed.model.config.num_hidden_layers
    assert packed.packed_linears == 7 * layers + 1 and plain.packed_linears == 0  # + lm_head
    assert not any(type(m) is torch.nn.Linear for m in packed.model.modules())
    assert [c.text for c in packed.generate(chats, sp)] == [
        c.text for c in plain.generate(chats, sp)
    ]


def test_chat_template_is_applied(tiny_backend):
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    rendered = tiny_backend.render(msgs)
    assert "<|im_start|>user\nU<|im_end|>" in rendered and rendered.endswith(
        "<|im_start|>assistant\n"
    )
    out = tiny_backend.generate([msgs], Sampling(max_tokens=5))[0]
    assert out.prompt_tokens == len(
        tiny_backend.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    )


def test_max_tokens_and_finish_reason(tiny_backend):
    out = tiny_backend.generate(PROMPTS[:2], Sampling(max_tokens=7))
    for c in out:
        assert c.completion_tokens <= 7
        assert c.finish_reason == ("length" if c.completion_tokens == 7 else "stop")


def test_ignore_eos_spends_the_whole_budget(tiny_backend):
    out = tiny_backend.generate(PROMPTS, Sampling(max_tokens=9, ignore_eos=True))
    assert [c.completion_tokens for c in out] == [9] * len(PROMPTS)


def test_stop_strings_cut_the_text(tiny_backend):
    free = tiny_backend.generate([PROMPTS[1]], Sampling(max_tokens=30))[0].text
    assert len(free) > 4
    stop = free[2:4]
    out = tiny_backend.generate([PROMPTS[1]], Sampling(max_tokens=30, stop=(stop,)))[0]
    assert out.text == free[: free.find(stop)]
    assert out.finish_reason == "stop"
    assert out.completion_tokens < 30


def test_sampling_with_a_seed_is_reproducible_and_differs_from_greedy(tiny_backend):
    sp = Sampling(max_tokens=20, temperature=1.0, top_p=0.95, seed=7)
    a = tiny_backend.generate(PROMPTS[:3], sp)
    b = tiny_backend.generate(PROMPTS[:3], sp)
    assert [c.text for c in a] == [c.text for c in b]
    c = tiny_backend.generate(PROMPTS[:3], Sampling(max_tokens=20, temperature=1.0, seed=8))
    assert [x.text for x in c] != [x.text for x in a]


def test_each_row_is_its_own_draw_whatever_shares_its_batch(tiny_backend):
    sp = Sampling(max_tokens=12, temperature=1.0, seed=3)
    repeats = tiny_backend.generate(["x"] * 4, sp)
    assert len({c.text for c in repeats}) == 4  # repeats of one prompt are distinct samples
    assert [c.text for c in tiny_backend.generate(["x"] * 4, sp)] == [c.text for c in repeats]
    # row i of a call is seeded by (seed, i): alone, or beside other prompts, it draws the same
    seeds = row_seeds(sp, 4)
    for i in (0, 3):
        alone = tiny_backend.generate(["x"], sp, seeds=[seeds[i]])[0]
        assert alone.text == repeats[i].text
    mixed = tiny_backend.generate([PROMPTS[4], "x", PROMPTS[0]], sp, seeds=[5, seeds[2], 6])
    assert mixed[1].text == repeats[2].text
    with pytest.raises(ValueError, match="seeds: 1 given for 2 prompts"):
        tiny_backend.generate(["x", "y"], sp, seeds=[1])


def test_bad_prompts_and_sampling_are_refused(tiny_backend):
    with pytest.raises(TypeError, match=r"prompts\[1\]"):
        tiny_backend.generate(["ok", 3], Sampling())
    with pytest.raises(TypeError, match=r"prompts\[0\]\[0\]"):
        tiny_backend.generate([[{"role": "user"}]], Sampling())
    with pytest.raises(ValueError, match="temperature"):
        Sampling(temperature=-1)
    with pytest.raises(ValueError, match="max_tokens"):
        Sampling(max_tokens=0)


def test_truncate_at_stop_takes_the_earliest():
    assert truncate_at_stop("abcXdefY", ("Y", "X")) == ("abc", True)
    assert truncate_at_stop("abc", ("Z",)) == ("abc", False)
    assert truncate_at_stop("abc", ()) == ("abc", False)


def test_an_option_the_backend_does_not_take_is_named():
    from bdc_ray.config import ModelConfig
    from bdc_ray.llm.base import make_backend

    cfg = ModelConfig(path="tiny-random-llama", options={"gpu_memory_utilization": 0.5})
    with pytest.raises(
        ValueError, match="'gpu_memory_utilization' is not an option of the transformers backend"
    ):
        make_backend(cfg)


def test_prefill_chunks_groups_rows_by_length():
    from bdc_ray.llm.transformers_backend import prefill_chunks

    lengths = [100] * 31 + [330]
    groups = prefill_chunks(lengths, overhead=128)
    assert sorted(i for g in groups for i in g) == list(range(32))  # every row once
    assert [len(g) for g in groups] == [31, 1]  # the long outlier alone
    assert prefill_chunks([50] * 8, overhead=128) == [list(range(8))]  # nothing to gain
    mixed = [5, 300, 7, 290, 6, 310]
    groups = prefill_chunks(mixed, overhead=0)
    cost = sum(len(g) * max(mixed[i] for i in g) for g in groups)
    assert cost == sum(mixed) and len(groups) >= 2  # no overhead: no padding at all


def _spy_prefill(monkeypatch):
    from bdc_ray.llm import transformers_backend as tb

    used = []
    real = tb.chunked_prefill

    def spy(*args, **kwargs):
        cache = real(*args, **kwargs)
        used.append(cache is not None)
        return cache

    monkeypatch.setattr(tb, "chunked_prefill", spy)
    return used


def test_chunked_prefill_gives_the_whole_batch_cache(tiny_backend):
    """The grouped prefill's cache continues each row exactly as a whole-batch prefill does."""
    import torch

    from bdc_ray.llm.transformers_backend import cache_kwarg, chunked_prefill

    tok, model = tiny_backend.tokenizer, tiny_backend.model
    batch = [tok(p)["input_ids"] for p in PROMPTS]
    padded = tok.pad({"input_ids": batch}, return_tensors="pt", padding=True)
    dev = tiny_backend.device  # CUDA in the GPU check
    ids, mask = padded["input_ids"].to(dev), padded["attention_mask"].to(dev)
    pos = mask.long().cumsum(-1) - 1
    pos.masked_fill_(mask == 0, 1)
    with torch.inference_mode():
        whole = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
        cache = chunked_prefill(model, ids, mask, [len(b) for b in batch], overhead=0)
        assert cache is not None and cache.get_seq_length() == ids.shape[1] - 1
        last = model(
            input_ids=ids[:, -1:],
            attention_mask=mask,
            position_ids=pos[:, -1:],
            **{cache_kwarg(model): cache},
            cache_position=torch.tensor([ids.shape[1] - 1], device=dev),
        ).logits[:, -1]
    if whole.dtype == torch.float32:
        torch.testing.assert_close(last, whole, atol=1e-4, rtol=1e-4)
    else:  # bfloat16 (GPU check): other kernel shapes round differently; same next token
        assert torch.equal(last.argmax(-1), whole.argmax(-1))
        assert float((last - whole).abs().max()) <= 0.05 * float(whole.abs().max())


def test_batched_greedy_with_chunked_prefill_equals_one_by_one(tiny_backend, monkeypatch):
    used = _spy_prefill(monkeypatch)
    monkeypatch.setattr(tiny_backend, "prefill_overhead", 0)  # group even these short prompts
    sp = Sampling(max_tokens=24)
    batched = tiny_backend.generate(PROMPTS, sp)
    assert used and all(used)  # the batch was prefilled in groups
    monkeypatch.setattr(tiny_backend, "prefill_overhead", None)
    whole = tiny_backend.generate(PROMPTS, sp)
    single = [tiny_backend.generate([p], sp)[0] for p in PROMPTS]
    assert [c.text for c in batched] == [c.text for c in whole] == [c.text for c in single]
    assert [c.completion_tokens for c in batched] == [c.completion_tokens for c in single]
