"""transformers backend: CPU or GPU, left-padded batches, chat templates, stop strings."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .base import Completion, Prompt, Sampling, truncate_at_stop, validate_prompts

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TransformersBackend:
    name = "transformers"

    def __init__(
        self,
        model_path: str | Path,
        dtype: str = "auto",
        max_batch_size: int = 16,
        device: str | None = None,
        num_threads: int | None = None,
        adapter: str | Path | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if num_threads:
            torch.set_num_threads(num_threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype == "auto":
            # bf16 on GPUs that have it; fp32 on CPU, where bf16 matmuls are slow on most cores
            use_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
            torch_dtype = torch.bfloat16 if use_bf16 else torch.float32
        else:
            torch_dtype = _DTYPES[dtype]
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

    def generate(self, prompts: list[Prompt], sampling: Sampling) -> list[Completion]:
        validate_prompts(prompts)
        texts = [self.render(p) for p in prompts]
        chat = [not isinstance(p, str) for p in prompts]
        encoded = [
            self.tokenizer(t, add_special_tokens=not is_chat)["input_ids"]
            for t, is_chat in zip(texts, chat, strict=True)
        ]
        # sort by length so each micro-batch pads little; answers go back in input order
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        out: list[Completion | None] = [None] * len(encoded)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
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
        return self._generate_batch(batch, sampling)

    @torch.inference_mode()
    def _generate_batch(
        self, batch: list[list[int]], sampling: Sampling, **extra: Any
    ) -> list[Completion]:
        """`extra` goes to `model.generate` (e.g. peft's mixed-batch `adapter_names`)."""
        padded = self.tokenizer.pad({"input_ids": batch}, return_tensors="pt", padding=True)
        input_ids = padded["input_ids"].to(self.device)
        attention_mask = padded["attention_mask"].to(self.device)
        kwargs = dict(
            max_new_tokens=sampling.max_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=sorted(self.eos_ids),
        )
        if sampling.ignore_eos:  # eos is masked until the budget is spent
            kwargs["min_new_tokens"] = sampling.max_tokens
        if sampling.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(
                do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=None
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
        for row, prompt_ids in zip(new, batch, strict=True):
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
