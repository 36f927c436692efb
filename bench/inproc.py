"""In-process baselines: raw from_pretrained, model.generate, and prefill plus one decode step.

They run in the benchmark's own process while no server is busy, with the same dtype
(float32 on the CPU), the same chat template and greedy decoding the server uses.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def load(path: Path):
    """What a user would write: tokenizer and model from the folder, float32, eval mode."""
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return tok, model


def load_seconds(path: Path, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        tok, model = load(path)
        out.append(time.perf_counter() - t0)
        del tok, model
        gc.collect()
    return out


class Baseline:
    """One loaded model and the prompt rendered exactly as the server renders it."""

    def __init__(self, path: Path):
        self.tok, self.model = load(path)

    def inputs(self, prompt: str):
        messages = [{"role": "user", "content": prompt}]
        text = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tok(text, return_tensors="pt", add_special_tokens=False)

    def generate_seconds(self, prompt: str, max_tokens: int, n: int, warmup: int = 2):
        """Seconds per call of template + tokenize + greedy generate + decode; and tokens made."""
        out, made = [], 0
        for i in range(warmup + n):
            t0 = time.perf_counter()
            batch = self.inputs(prompt)
            with torch.inference_mode():
                seq = self.model.generate(**batch, max_new_tokens=max_tokens, do_sample=False)
            new = seq[0, batch["input_ids"].shape[1] :]
            self.tok.decode(new, skip_special_tokens=True)
            if i >= warmup:
                out.append(time.perf_counter() - t0)
                made = int(new.shape[0])
        return out, made

    def prefill_plus_step_seconds(self, prompt: str, n: int, warmup: int = 1) -> list[float]:
        """Seconds for the prompt's forward pass and one decode step with its cache."""
        out = []
        for i in range(warmup + n):
            t0 = time.perf_counter()
            batch = self.inputs(prompt)
            with torch.inference_mode():
                first = self.model(**batch, use_cache=True)
                token = first.logits[:, -1].argmax(-1, keepdim=True)
                mask = torch.cat([batch["attention_mask"], torch.ones_like(token)], dim=1)
                self.model(
                    input_ids=token, attention_mask=mask, past_key_values=first.past_key_values
                )
            if i >= warmup:
                out.append(time.perf_counter() - t0)
        return out

    def count_tokens(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False)["input_ids"])

    def close(self) -> None:
        del self.model, self.tok
        gc.collect()
