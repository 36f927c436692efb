"""GPU section: a random-weight 8B Llama in bf16 and nf4 through mmserve's own manager and engine.

Runs only when torch.cuda.is_available() (`--gpu-dry-run` runs the same path on the CPU with
a tiny config, to check the code). Per variant it reports single-request decode tokens/s
against the HBM bound (weight bytes read once per token at the measured copy bandwidth),
the aggregate gain of 8 and 32 concurrent requests batched by the server, and the CUDA
memory left after unloading against the baseline before loading.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from pathlib import Path

import torch

LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                max_position_embeddings=8192, rope_theta=500000.0)  # fmt: skip
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=2048, max_position_embeddings=2048)  # fmt: skip


def copy_bandwidth(device: str) -> float:
    """Bytes per second of a device-to-device copy (read + write), the decode roofline."""
    n = (1 << 30) if device == "cuda" else (1 << 26)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    sync(device)
    t0 = time.perf_counter()
    reps = 10
    for _ in range(reps):
        dst.copy_(src)
    sync(device)
    return 2 * n * reps / (time.perf_counter() - t0)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def build_checkpoint(out: Path, dims: dict) -> Path:
    """Random weights saved once as bf16 safetensors with a byte-level tokenizer (cached)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (out / "config.json").is_file():
        return out
    # One token per byte (BPE without merges), then filler tokens up to the vocabulary size.
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({f"<t{i}>": i for i in range(len(vocab), dims["vocab_size"])})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<t257>", pad_token="<t258>")
    config = LlamaConfig(**dims, eos_token_id=257, pad_token_id=258, bos_token_id=None)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(torch.float32)
    model.generation_config.eos_token_id = None  # random weights: always run max_tokens
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model
    gc.collect()
    return out


def run(work: Path, quick: bool, dry_run: bool = False, log=print) -> dict:
    """The GPU section's numbers, one dict per variant."""
    from app import create_app
    from mmserve.types import GenerationRequest, Message, Part, SamplingParams

    device = "cuda" if torch.cuda.is_available() and not dry_run else "cpu"
    dims = TINY if dry_run else LLAMA_8B
    folder = build_checkpoint(work / ("gpu-tiny" if dry_run else "gpu-llama8b"), dims)
    for alias in ("gpu_nf4", "gpu_bf16_compiled"):  # the table needs one folder per entry
        link = folder.parent / f"{folder.name}-{alias}"
        if not link.exists():
            os.symlink(folder, link)
    entry = {"repo_id": "bench/random-llama", "family": "text", "capabilities": ["text"],
             "keep_alive": -1, "generation": {"max_new_tokens": 64, "temperature": 0.0}}  # fmt: skip
    models = [
        dict(entry, name="gpu_bf16", local_dir=folder.name, dtype="bfloat16"),
        dict(entry, name="gpu_nf4", local_dir=f"{folder.name}-gpu_nf4", dtype="bfloat16",
             quantization=4),
        dict(entry, name="gpu_bf16_compiled", local_dir=f"{folder.name}-gpu_bf16_compiled",
             dtype="bfloat16"),
    ]  # fmt: skip
    config = {"models_dir": folder.parent, "models": models, "replace_models": True,
              "offline": True, "log_to_file": False, "batch_max_size": 32,
              "max_queue": 64, "log_dir": work / "logs",
              "tmp_dir": work / "tmp", "device": device}  # fmt: skip
    # The same server twice: eager, and with a static cache + torch.compile for text models
    # (reduce-overhead: CUDA graphs; on the CPU dry run the plain inductor mode).
    compiled = dict(config, text_compile="all" if dry_run else "cuda",
                    text_compile_mode="default" if dry_run else "reduce-overhead")  # fmt: skip
    apps = {"eager": create_app(config), "compiled": create_app(compiled)}
    bandwidth = copy_bandwidth(device)
    n_tokens = 16 if quick else 64

    def request(name: str, i: int) -> GenerationRequest:
        prompt = f"Request {i}: tell me a long story about the sea."
        params = SamplingParams(max_new_tokens=n_tokens, temperature=0.0)
        return GenerationRequest(name, [Message("user", [Part("text", text=prompt)])], params)

    def aggregate(rt, name: str, clients: int) -> float:
        made = [0] * clients

        def one(i):
            made[i] = rt.service.generate(request(name, i)).completion_tokens

        threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(made) / (time.perf_counter() - t0)

    results = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (dry run)",
               "copy_bandwidth_gb_s": bandwidth / 1e9, "variants": []}  # fmt: skip
    variants = (("gpu_bf16", "eager"), ("gpu_nf4", "eager"), ("gpu_bf16_compiled", "compiled"))
    try:
        for name, which in variants:
            rt = apps[which].extensions["mmserve"]
            gc.collect()
            base = torch.cuda.memory_allocated() if device == "cuda" else 0
            t0 = time.perf_counter()
            rt.manager.load(name)  # the compiled variant compiles here (warm-up)
            load_s = time.perf_counter() - t0
            weights = rt.manager.status_of(name)["bytes"]
            rt.service.generate(request(name, 0))  # warm-up
            single = rt.service.generate(request(name, 0))
            tok_s = single.completion_tokens / single.seconds
            bound = bandwidth / weights
            gains = {c: aggregate(rt, name, c) / tok_s for c in (8, 32)}
            rt.manager.unload(name)
            gc.collect()
            after = torch.cuda.memory_allocated() if device == "cuda" else 0
            results["variants"].append({
                "name": name, "weights_gb": weights / 1e9, "decode_tok_s": tok_s,
                "hbm_bound_tok_s": bound, "fraction_of_bound": tok_s / bound,
                "gain_8": gains[8], "gain_32": gains[32],
                "cuda_baseline_gb": base / 1e9, "cuda_after_unload_gb": after / 1e9,
                "load_s": load_s,
            })  # fmt: skip
            log(f"gpu {name}: {tok_s:.1f} tok/s ({tok_s / bound:.0%} of bound), "
                f"x{gains[8]:.1f} at 8, x{gains[32]:.1f} at 32")  # fmt: skip
    finally:
        for app in apps.values():
            app.extensions["mmserve_close"](timeout=10)
    return results
