"""transformers backend: CPU or GPU, left-padded batches, chat templates, stop strings."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from . import precision
from .base import Completion, Prompt, Sampling, row_seeds, truncate_at_stop, validate_prompts

log = logging.getLogger(__name__)


class TransformersBackend:
    name = "transformers"
    # chunked prefill (see chunked_prefill): the cost of one more forward pass, in prompt
    # positions; None prefills every batch whole
    prefill_overhead: int | None = 128
    # float32 linear layers on a CPU run through oneDNN with weights packed once at load
    # (pack_linears); a subclass that wraps the layers afterwards (the gated mixture) turns it off
    pack_cpu_linears: bool = True

    def __init__(
        self,
        model_path: str | Path,
        dtype: str = "auto",
        max_batch_size: int = 16,
        device: str | None = None,
        num_threads: int | None = None,
        adapter: str | Path | None = None,
        pack_linears: bool | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if num_threads:
            torch.set_num_threads(num_threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch_dtype = precision.resolve(dtype, self.device)
        self.model_path = str(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch_dtype)
        self.adapter = str(adapter) if adapter else None
        if adapter:
            # a LoRA merged into the weights generates at the base model's speed
            from peft import PeftModel

            if not (Path(adapter) / "adapter_config.json").is_file():
                raise FileNotFoundError(f"adapter {adapter}: no adapter_config.json there")
            self.model = PeftModel.from_pretrained(self.model, str(adapter)).merge_and_unload()
        self.model.to(self.device).eval()
        self.max_batch_size = max_batch_size
        self.eos_ids = self._eos_ids()
        self.packed_linears = 0
        want = self.pack_cpu_linears if pack_linears is None else pack_linears
        if want and self.device.type == "cpu" and self.model.dtype == torch.float32:
            self.packed_linears = pack_linears_for_cpu(self.model, max_batch_size)

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        if ids is None:
            ids = self.tokenizer.eos_token_id
        return set(ids if isinstance(ids, list) else [ids])

    def render(self, prompt: Prompt) -> str:
        """Text the model sees: chats go through the model's chat template."""
        if isinstance(prompt, str):
            return prompt
        return self.tokenizer.apply_chat_template(
            prompt, tokenize=False, add_generation_prompt=True
        )

    def generate(
        self, prompts: list[Prompt], sampling: Sampling, seeds: list[int | None] | None = None
    ) -> list[Completion]:
        validate_prompts(prompts)
        self._seeds = row_seeds(sampling, len(prompts), seeds)
        texts = [self.render(p) for p in prompts]
        chat = [not isinstance(p, str) for p in prompts]
        encoded = [
            self.tokenizer(t, add_special_tokens=not is_chat)["input_ids"]
            for t, is_chat in zip(texts, chat, strict=True)
        ]
        out: list[Completion | None] = [None] * len(encoded)
        # a prompt that fills the model's context is answered empty ("length") on its own
        # instead of reaching the model: its attention grew to tens of GB on a 5 MB prompt and
        # the actor, killed again and again, took every other prompt of the call with it
        context = getattr(self.model.config, "max_position_embeddings", None)
        for i, ids in enumerate(encoded):
            if context and len(ids) >= context:
                log.warning("prompt %d: %d tokens fill the context of %d", i, len(ids), context)
                out[i] = Completion(
                    "", len(ids), 0, "length",
                    meta={"error": f"prompt of {len(ids)} tokens fills the model's context "
                          f"of {context}"},
                )  # fmt: skip
        # sort by length so each micro-batch pads little; answers go back in input order
        order = sorted((i for i in range(len(encoded)) if out[i] is None),
                       key=lambda i: len(encoded[i]))  # fmt: skip
        for start in range(0, len(order), self.max_batch_size):
            idx = order[start : start + self.max_batch_size]
            for i, c in zip(
                idx, self._generate_rows(idx, [encoded[i] for i in idx], sampling), strict=True
            ):
                out[i] = c
        return out  # type: ignore[return-value]

    def _generate_rows(
        self, rows: list[int], batch: list[list[int]], sampling: Sampling
    ) -> list[Completion]:
        """One micro-batch; `rows` are the prompts' positions in the generate call (a subclass
        that conditions each row, like the customised solver, needs them)."""
        return self._generate_batch(batch, sampling, seeds=self.seeds_of(rows))

    def seeds_of(self, rows: list[int]) -> list[int | None]:
        """These prompts' seeds in the generate call under way."""
        return [self._seeds[i] for i in rows]

    @torch.inference_mode()
    def _generate_batch(
        self,
        batch: list[list[int]],
        sampling: Sampling,
        row_max_tokens: list[int] | None = None,
        on_token: Callable[[int, int], None] | None = None,
        rows_context: Callable[[list[int]], Any] | None = None,
        seeds: list[int | None] | None = None,
        **extra: Any,
    ) -> list[Completion]:
        """One padded `model.generate` call.

        `row_max_tokens`: each row's own token budget (a row stops when it is spent, the others
        go on up to `sampling.max_tokens`), so requests with different budgets share a batch.
        `on_token(row, token_id)` sees every new token of every unfinished row as it is made
        (streaming). `rows_context(rows)`: a context manager under which a forward pass of only
        these rows of the batch runs right (the gated mixture's per-row gates); needed for the
        chunked prefill below. `extra` goes to `model.generate` (e.g. peft's mixed-batch
        `adapter_names`; a batch with extras is prefilled whole). `seeds`: each row's own
        sampling seed (None: a fresh draw).
        """
        padded = self.tokenizer.pad({"input_ids": batch}, return_tensors="pt", padding=True)
        input_ids = padded["input_ids"].to(self.device)
        attention_mask = padded["attention_mask"].to(self.device)
        kwargs = dict(
            max_new_tokens=sampling.max_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=sorted(self.eos_ids),
        )
        if not extra and self.prefill_overhead is not None:
            cache = chunked_prefill(
                self.model,
                input_ids,
                attention_mask,
                [len(b) for b in batch],
                rows_context,
                overhead=self.prefill_overhead,
            )
            if cache is not None:
                kwargs[cache_kwarg(self.model)] = cache
        if row_max_tokens is not None:
            if len(row_max_tokens) != len(batch):
                raise ValueError("row_max_tokens needs one budget per row")
            if max(row_max_tokens) > sampling.max_tokens:
                raise ValueError("a row's budget exceeds sampling.max_tokens")
            kwargs["stopping_criteria"] = StoppingCriteriaList(
                [RowBudget(row_max_tokens, input_ids.shape[1], self.device)]
            )
        if on_token is not None:
            ends = self.eos_ids | {self.tokenizer.pad_token_id}
            kwargs["streamer"] = RowStreamer(on_token, ends, row_max_tokens)
        if sampling.ignore_eos:  # eos is masked until the budget is spent
            kwargs["min_new_tokens"] = sampling.max_tokens
        # sampled rows draw in RowSampler, each from its own generator, and the greedy step
        # after it takes the one token it left: generate's own sampling shares one generator
        # across the batch, so a row's draw would depend on its batch mates
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if not sampling.greedy:
            kwargs["logits_processor"] = LogitsProcessorList(
                [RowSampler(seeds or [None] * len(batch), sampling.temperature, sampling.top_p)]
            )
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        output = self.model.generate(
            input_ids=input_ids, attention_mask=attention_mask, **kwargs, **extra
        )
        new = output[:, input_ids.shape[1] :].tolist()
        # rows finished early (eos or a stop string) are filled with the pad token
        ends = set() if sampling.ignore_eos else self.eos_ids | {self.tokenizer.pad_token_id}
        results = []
        budgets = row_max_tokens or [sampling.max_tokens] * len(batch)
        for row, prompt_ids, budget in zip(new, batch, budgets, strict=True):
            row = row[:budget]  # a row stopped by its budget is padded after it
            n, hit_eos = len(row), False
            for j, tok in enumerate(row):
                if tok in ends:
                    n, hit_eos = j, tok in self.eos_ids
                    break
            text = self.tokenizer.decode(row[:n], skip_special_tokens=True)
            text, hit_stop = truncate_at_stop(text, sampling.stop)
            results.append(
                Completion(
                    text=text,
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=n + (1 if hit_eos else 0),
                    finish_reason="stop" if (hit_eos or hit_stop) else "length",
                )
            )
        return results


def prefill_chunks(lengths: list[int], overhead: int = 128) -> list[list[int]]:
    """Rows grouped by prompt length so that prefilling each group padded to its own longest
    prompt computes the fewest positions: sum over groups of rows x longest, plus `overhead`
    positions per group for the cost of one more forward pass (exact, by dynamic programming
    over the rows sorted by length). One group means: prefill the batch whole."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    sorted_len = [lengths[i] for i in order]
    n = len(order)
    best = [0] + [0] * n  # best[j]: cost of the first j rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        best[j], cut[j] = min(
            (best[i] + (j - i) * sorted_len[j - 1] + overhead, i) for i in range(j)
        )
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


@torch.inference_mode()
def chunked_prefill(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    lengths: list[int],
    rows_context: Callable[[list[int]], Any] | None = None,
    min_saving: float = 0.1,
    overhead: int = 128,
) -> Any | None:
    """The KV cache of a left-padded batch's prompts (all but the last position, which
    `generate` then runs), computed group by group (`prefill_chunks`) so that short prompts are
    not padded to the longest one. A batch's prefill is most of its cost on a CPU (70% for 32
    HumanEval chats and 32 new tokens), and up to half of it was padding. The groups' keys and
    values are laid into one cache of the batch's width, their padding masked as before; each
    row keeps its own positions (from the attention mask, as `generate` computes them), so the
    result is the same cache up to float rounding. None when grouping would save less than
    `min_saving` of the positions or the model's cache is not a plain per-layer one (sliding
    windows): `generate` then prefills the batch whole."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    rows, width = input_ids.shape
    if rows < 2 or width < 3:
        return None
    groups = prefill_chunks(lengths, overhead)
    grouped = sum(len(g) * max(lengths[i] for i in g) for g in groups)
    if len(groups) < 2 or grouped > (1 - min_saving) * rows * width:
        return None
    positions = attention_mask.long().cumsum(-1) - 1
    positions.masked_fill_(attention_mask == 0, 1)
    cache = None
    for group in groups:
        cols = max(lengths[i] for i in group) - 1  # the group's prompt columns but the last
        if cols <= 0:
            continue
        idx = torch.tensor(group, device=input_ids.device)
        part = DynamicCache(config=model.config)
        ctx = rows_context(group) if rows_context is not None else nullcontext()
        with ctx:
            model(
                input_ids=input_ids[idx, width - 1 - cols : width - 1],
                attention_mask=attention_mask[idx, width - 1 - cols : width - 1],
                position_ids=positions[idx, width - 1 - cols : width - 1],
                **{cache_kwarg(model): part},
                use_cache=True,
                logits_to_keep=1,
            )
        if not all(type(layer) is DynamicLayer for layer in part.layers):
            return None
        if cache is None:
            cache = [
                (
                    layer.keys.new_zeros(
                        (rows, *layer.keys.shape[1:2], width - 1, layer.keys.shape[3])
                    ),
                    layer.values.new_zeros(
                        (rows, *layer.values.shape[1:2], width - 1, layer.values.shape[3])
                    ),
                )
                for layer in part.layers
            ]
        for (keys, values), layer in zip(cache, part.layers, strict=True):
            keys[idx, :, width - 1 - cols :] = layer.keys
            values[idx, :, width - 1 - cols :] = layer.values
    if cache is None:
        return None
    merged = DynamicCache(config=model.config)
    for i, (keys, values) in enumerate(cache):
        merged.update(keys, values, i)
    return merged


class PackedLinear(torch.nn.Module):
    """A float32 linear layer whose weight oneDNN has reordered once into its own blocked layout.
    torch's default CPU matmul (MKL's sgemm) reaches ~5 GB/s of weights at decode's few rows on
    AVX2 cores; oneDNN on the packed weight about twice that (the same float32 arithmetic up to
    summation order: greedy texts stay equal, tested). This is the packing torch.compile's
    freezing pass does for CPU linears, without compiling the model."""

    def __init__(self, linear: torch.nn.Linear, rows_hint: int) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            w = linear.weight.detach()
            self.register_buffer(
                "packed", torch.ops.mkldnn._reorder_linear_weight(w, rows_hint), persistent=False
            )
        self.bias = linear.bias  # the dense weight is dropped unless something else holds it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        y = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
        return y.reshape(*x.shape[:-1], self.out_features)


def pack_linears_for_cpu(model: torch.nn.Module, rows_hint: int) -> int:
    """Swap every float32 `nn.Linear` of an inference model for a PackedLinear; returns how
    many. Where this torch has no oneDNN, nothing changes."""
    if not torch.backends.mkldnn.is_available():
        return 0
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is torch.nn.Linear and child.weight.dtype == torch.float32
    ]
    for parent, name, child in swaps:
        setattr(parent, name, PackedLinear(child, rows_hint))
    return len(swaps)


def cache_kwarg(model: Any) -> str:
    """The name under which this transformers takes a KV cache: `cache` (newer 5.x releases,
    which deprecate the other) or `past_key_values`."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class RowSampler(LogitsProcessor):
    """Temperature, top-p and the draw of each row from its own `torch.Generator`, so a row's
    samples depend on its seed alone, not on which rows share its batch. Returns scores that
    leave only the drawn token, which the greedy step then picks."""

    def __init__(self, seeds: list[int | None], temperature: float, top_p: float) -> None:
        self.seeds, self.temperature, self.top_p = seeds, temperature, top_p
        self.generators: list[torch.Generator] | None = None

    def _make(self, device: torch.device) -> list[torch.Generator]:
        gens = []
        for s in self.seeds:
            g = torch.Generator(device=device)
            # an unseeded row draws its seed from torch's global generator
            g.manual_seed(int(torch.randint(1 << 62, ())) if s is None else s)
            gens.append(g)
        return gens

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.generators is None:
            self.generators = self._make(scores.device)
        logits = scores.float() / self.temperature
        if self.top_p < 1.0:  # keep the smallest set of tokens whose mass reaches top_p
            ordered, idx = logits.sort(dim=-1)
            drop = ordered.softmax(-1).cumsum(-1) <= 1 - self.top_p
            drop[:, -1] = False
            logits = logits.masked_fill(drop.scatter(1, idx, drop), float("-inf"))
        probs = logits.softmax(-1)
        picks = torch.cat([
            torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)
        ])  # fmt: skip
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, picks[:, None], 0.0)


class RowBudget(StoppingCriteria):
    """Finishes each row of a batch when it has generated its own number of tokens."""

    def __init__(self, budgets: list[int], prompt_len: int, device: torch.device) -> None:
        self.budgets = torch.tensor(budgets, device=device)
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return (input_ids.shape[1] - self.prompt_len) >= self.budgets


class RowStreamer(BaseStreamer):
    """Hands each new token of each unfinished row to `on_token(row, token_id)`.

    `generate` first puts the prompt (2-D), then one token per row per step; a finished row
    (end token, stop string or its budget spent) gets pad tokens, which are not passed on."""

    def __init__(
        self, on_token: Callable[[int, int], None], ends: set[int], budgets: list[int] | None
    ) -> None:
        self.on_token, self.ends, self.budgets = on_token, ends, budgets
        self.counts: list[int] = []
        self.done: list[bool] = []

    def put(self, value: torch.Tensor) -> None:
        if value.dim() > 1:  # the prompt
            self.counts = [0] * value.shape[0]
            self.done = [False] * value.shape[0]
            return
        for row, tok in enumerate(value.tolist()):
            if self.done[row]:
                continue
            if tok in self.ends:
                self.done[row] = True
                continue
            self.counts[row] += 1
            if self.budgets is not None and self.counts[row] >= self.budgets[row]:
                self.done[row] = True
            self.on_token(row, tok)

    def end(self) -> None:
        pass
