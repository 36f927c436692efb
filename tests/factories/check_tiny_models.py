"""Build every tiny model, load it back with the standard classes and run one generation each.

Run:  .venv/bin/python tests/factories/check_tiny_models.py [family ...]

Prints build / load / generate timings per family and exits non-zero on any failure.
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile
import time
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from tests.factories.tiny_models import OMNI_TALKER_EOS, TINY_BUILDERS  # noqa: E402

TIMINGS: dict[str, dict[str, float]] = {}


def _image(w: int = 96, h: int = 72, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8))


def _frames(n: int = 4, w: int = 64, h: int = 48) -> list[Image.Image]:
    return [_image(w, h, seed=i) for i in range(n)]


def _waveform(seconds: float = 1.0, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr), dtype=np.float32) / sr
    return (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


def _new_tokens(out: torch.Tensor, inputs) -> torch.Tensor:
    return out[:, inputs["input_ids"].shape[1] :]


# --------------------------------------------------------------------------------------------


def check_text(path: pathlib.Path, expected_model: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

    t = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    load = time.perf_counter() - t
    assert type(model).__name__ == expected_model, type(model).__name__
    assert tok.eos_token == "<|im_end|>" and tok.pad_token is not None, (
        tok.eos_token,
        tok.pad_token,
    )
    sample = "Hello, world! Ünïcödé 🙂 1234"
    assert tok.decode(tok(sample, add_special_tokens=False)["input_ids"]) == sample
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ), repr(prompt)
    inputs = tok(prompt, add_special_tokens=False, return_tensors="pt")
    assert tok.convert_ids_to_tokens(int(inputs["input_ids"][0, 0])) == "<|im_start|>"
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    gen = time.perf_counter() - t
    text = tok.decode(_new_tokens(out, inputs)[0], skip_special_tokens=True)
    # left-padded batch
    tok.padding_side = "left"
    batch = tok(
        [prompt, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"],
        padding=True,
        add_special_tokens=False,
        return_tensors="pt",
    )
    with torch.no_grad():
        model.generate(**batch, max_new_tokens=4, do_sample=False)
        model.generate(**inputs, max_new_tokens=4, do_sample=True, temperature=0.8, top_p=0.9)
    # streaming
    import threading

    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    th = threading.Thread(
        target=model.generate, kwargs=dict(**inputs, max_new_tokens=4, streamer=streamer)
    )
    th.start()
    streamed = "".join(streamer)
    th.join()
    return dict(
        load=load, generate=gen, output=text, streamed=streamed, tokenizer=type(tok).__name__
    )


def check_qwen2_5_vl(path: pathlib.Path) -> dict:
    from qwen_vl_utils import process_vision_info
    from transformers import AutoModelForImageTextToText, AutoProcessor

    t = time.perf_counter()
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    load = time.perf_counter() - t
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration", type(model).__name__
    assert type(processor).__name__ == "Qwen2_5_VLProcessor", type(processor).__name__
    res = dict(
        load=load,
        processor=type(processor).__name__,
        image_processor=type(processor.image_processor).__name__,
        video_processor=type(processor.video_processor).__name__,
    )

    # --- image ---
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": _image()},
                {"type": "text", "text": "Describe the image."},
            ],
        }
    ]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>" in prompt, prompt
    images, videos = process_vision_info(messages)
    inputs = processor(
        text=[prompt], images=images, videos=videos, padding=True, return_tensors="pt"
    )
    n_img = int((inputs["input_ids"] == model.config.image_token_id).sum())
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    res["generate_image"] = time.perf_counter() - t
    res["image_tokens"] = n_img
    res["output_image"] = processor.batch_decode(
        _new_tokens(out, inputs), skip_special_tokens=True
    )[0]

    # --- video via qwen_vl_utils (frames -> float tensor (T, C, H, W)) ---
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "video", "video": _frames(4), "min_pixels": 3136, "max_pixels": 12544},
                {"type": "text", "text": "What happens in the video?"},
            ],
        }
    ]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    images, videos, video_kwargs = process_vision_info(messages, return_video_kwargs=True)
    fps = video_kwargs.pop("fps", [2.0])
    video_kwargs["fps"] = (
        float(fps[0]) if isinstance(fps, (list, tuple)) else fps
    )  # 5.23 wants a scalar
    inputs = processor(
        text=[prompt],
        images=images,
        videos=videos,
        padding=True,
        return_tensors="pt",
        **video_kwargs,
    )
    n_vid = int((inputs["input_ids"] == model.config.video_token_id).sum())
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    res["generate_video"] = time.perf_counter() - t
    res["video_tokens"] = n_vid
    res["video_input"] = f"{type(videos[0]).__name__}{tuple(videos[0].shape)}"
    res["output_video"] = processor.batch_decode(
        _new_tokens(out, inputs), skip_special_tokens=True
    )[0]

    # --- video as a plain list of PIL frames straight into the processor ---
    inputs = processor(
        text=[prompt], videos=[_frames(4)], fps=2.0, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    res["video_pil_tokens"] = int((inputs["input_ids"] == model.config.video_token_id).sum())
    return res


def check_blip(path: pathlib.Path) -> dict:
    from transformers import AutoModelForVisualQuestionAnswering, AutoProcessor

    t = time.perf_counter()
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForVisualQuestionAnswering.from_pretrained(path, dtype=torch.float32).eval()
    load = time.perf_counter() - t
    assert type(model).__name__ == "BlipForQuestionAnswering", type(model).__name__
    inputs = processor(images=_image(), text="what color is the cat?", return_tensors="pt")
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8)
    gen = time.perf_counter() - t
    answer = processor.decode(out[0], skip_special_tokens=True)
    assert isinstance(answer, str)
    return dict(
        load=load,
        generate=gen,
        output=answer,
        processor=type(processor).__name__,
        tokenizer=type(processor.tokenizer).__name__,
        pixel_values=tuple(inputs["pixel_values"].shape),
    )


def check_qwen2_audio(path: pathlib.Path) -> dict:
    from transformers import (
        AutoModelForMultimodalLM,
        AutoProcessor,
        Qwen2AudioForConditionalGeneration,
    )

    t = time.perf_counter()
    processor = AutoProcessor.from_pretrained(path)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    load = time.perf_counter() - t
    assert type(processor).__name__ == "Qwen2AudioProcessor", type(processor).__name__
    wav = _waveform(1.5)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "audio", "audio": wav},
                {"type": "text", "text": "What sound is this?"},
            ],
        }
    ]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n" in prompt, prompt
    inputs = processor(text=prompt, audio=[wav], sampling_rate=16000, return_tensors="pt")
    n_audio = int((inputs["input_ids"] == model.config.audio_token_id).sum())
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    gen = time.perf_counter() - t
    text = processor.batch_decode(_new_tokens(out, inputs), skip_special_tokens=True)[0]
    auto = type(AutoModelForMultimodalLM.from_pretrained(path)).__name__
    return dict(
        load=load,
        generate=gen,
        output=text,
        audio_tokens=n_audio,
        input_features=tuple(inputs["input_features"].shape),
        auto_multimodal=auto,
    )


def check_qwen2_5_omni(path: pathlib.Path) -> dict:
    from qwen_omni_utils import process_mm_info
    from transformers import (
        AutoProcessor,
        Qwen2_5OmniForConditionalGeneration,
        Qwen2_5OmniThinkerForConditionalGeneration,
    )

    t = time.perf_counter()
    processor = AutoProcessor.from_pretrained(path)
    thinker = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
        path, dtype=torch.float32
    ).eval()
    load = time.perf_counter() - t
    assert type(processor).__name__ == "Qwen2_5OmniProcessor", type(processor).__name__
    res = dict(load=load, processor=type(processor).__name__)

    messages = [
        {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": _image()},
                {"type": "audio", "audio": _waveform(1.0)},
                {"type": "text", "text": "Describe the picture and the sound."},
            ],
        },
    ]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    audios, images, videos = process_mm_info(messages, use_audio_in_video=False)
    inputs = processor(
        text=[prompt],
        audio=audios,
        images=images,
        videos=videos,
        return_tensors="pt",
        padding=True,
        load_audio_from_video=False,
    )
    cfg = thinker.config
    res["image_tokens"] = int((inputs["input_ids"] == cfg.image_token_id).sum())
    res["audio_tokens"] = int((inputs["input_ids"] == cfg.audio_token_id).sum())
    t = time.perf_counter()
    with torch.no_grad():
        out = thinker.generate(**inputs, max_new_tokens=8, do_sample=False)
    res["generate_thinker"] = time.perf_counter() - t
    res["output"] = processor.batch_decode(_new_tokens(out, inputs), skip_special_tokens=True)[0]

    # video + audio-less video through process_mm_info
    vmessages = [
        {
            "role": "user",
            "content": [
                {"type": "video", "video": _frames(4), "min_pixels": 3136, "max_pixels": 12544},
                {"type": "text", "text": "What happens?"},
            ],
        },
    ]
    vprompt = processor.apply_chat_template(vmessages, tokenize=False, add_generation_prompt=True)
    a2, i2, v2 = process_mm_info(vmessages, use_audio_in_video=False)
    # NB: Qwen2_5OmniProcessor has class-level videos_kwargs size {128*28*28 .. 768*28*28} that wins over the
    # saved video processor size, so pass a size explicitly to keep tiny videos tiny.
    vinputs = processor(
        text=[vprompt],
        audio=a2,
        images=i2,
        videos=v2,
        return_tensors="pt",
        padding=True,
        fps=2.0,
        videos_kwargs={"size": {"shortest_edge": 3136, "longest_edge": 12544}},
    )
    with torch.no_grad():
        thinker.generate(**vinputs, max_new_tokens=4, do_sample=False)
    res["video_tokens"] = int((vinputs["input_ids"] == cfg.video_token_id).sum())
    dinputs = processor(text=[vprompt], videos=v2, return_tensors="pt", padding=True, fps=2.0)
    res["video_tokens_default_size"] = int((dinputs["input_ids"] == cfg.video_token_id).sum())
    del thinker

    # full model (talker present)
    t = time.perf_counter()
    full = Qwen2_5OmniForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    res["load_full"] = time.perf_counter() - t
    res["has_talker"] = bool(full.has_talker)
    with torch.no_grad():
        out2 = full.generate(
            **inputs, generation_mode="text", thinker_max_new_tokens=8, thinker_do_sample=False
        )
    assert torch.equal(out2, out), (out2, out)
    # speech output: in 5.23 the talker rejects pixel_values / pixel_values_videos, so route them to the
    # thinker only with the `thinker_` prefix (image_grid_thw etc. must stay unprefixed: the talker uses them)
    speech_inputs = {
        ("thinker_" + k if k in ("pixel_values", "pixel_values_videos") else k): v
        for k, v in inputs.items()
    }
    t = time.perf_counter()
    with torch.no_grad():
        text_ids, wav = full.generate(
            **speech_inputs,
            thinker_max_new_tokens=4,
            thinker_do_sample=False,
            talker_max_new_tokens=8,
            talker_eos_token_id=OMNI_TALKER_EOS,
            token2wav_num_steps=2,
        )
    res["speech_out"] = f"wav{tuple(wav.shape)}"
    res["generate_speech"] = time.perf_counter() - t
    return res


def check_bert(path: pathlib.Path) -> dict:
    from transformers import AutoModel, AutoTokenizer

    t = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    load = time.perf_counter() - t
    assert type(model).__name__ == "BertModel", type(model).__name__

    def embed(texts):
        enc = tok(texts, padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        vec = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(vec, dim=-1)

    t = time.perf_counter()
    single = embed(["a cat sitting on a chair"])
    batch = embed(["a cat sitting on a chair", "the dog is running in the big green field today"])
    gen = time.perf_counter() - t
    assert torch.allclose(single[0], batch[0], atol=1e-5)
    return dict(
        load=load,
        generate=gen,
        dim=int(single.shape[-1]),
        tokenizer=type(tok).__name__,
        tokens=tok.tokenize("The cats are playing!"),
    )


CHECKS = {
    "text_llama": lambda p: check_text(p, "LlamaForCausalLM"),
    "text_qwen2": lambda p: check_text(p, "Qwen2ForCausalLM"),
    "qwen2_5_vl": check_qwen2_5_vl,
    "blip_vqa": check_blip,
    "qwen2_audio": check_qwen2_audio,
    "qwen2_5_omni": check_qwen2_5_omni,
    "bert_embedding": check_bert,
}


def _dir_size(path: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str]) -> int:
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    names = argv or list(TINY_BUILDERS)
    failures = []
    total_build = 0.0
    with tempfile.TemporaryDirectory(prefix="tiny_models_") as tmp:
        for name in names:
            out = pathlib.Path(tmp) / name
            try:
                t = time.perf_counter()
                TINY_BUILDERS[name](out)
                build = time.perf_counter() - t
                total_build += build
                res = CHECKS[name](out)
                print(
                    f"[OK]   {name:15s} build {build:5.2f}s  size {_dir_size(out) / 1e6:5.2f} MB  "
                    + "  ".join(
                        f"{k}={v:.2f}s" if isinstance(v, float) else f"{k}={v!r}"
                        for k, v in res.items()
                    ),
                    flush=True,
                )
            except Exception:  # noqa: BLE001 - report every family, fail at the end
                failures.append(name)
                print(f"[FAIL] {name}", flush=True)
                traceback.print_exc()
    print(
        f"total build time: {total_build:.2f}s for {len(names)} families; failures: {failures or 'none'}"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
