import pytest

from bdc_ray.llm.base import Sampling, truncate_at_stop
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
