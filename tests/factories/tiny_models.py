"""Tiny random-weight models of every family served by mmserve, built fully offline.

Each ``build_*`` function takes ``out_dir: pathlib.Path``, writes a complete checkpoint
(weights + tokenizer/processor + chat template) with ``save_pretrained`` and returns ``out_dir``.
Everything is deterministic (``torch.manual_seed`` + a tokenizer trained on a built-in corpus),
needs neither the Hub nor the network, and takes well under a second to a few seconds per family
on a 2-core CPU.  Checkpoints are a few hundred KB to a few MB.

How each family loads back (transformers 5.23):

===================  ==========================================  =========================================
builder              model class                                 tokenizer / processor
===================  ==========================================  =========================================
build_text_llama     AutoModelForCausalLM (LlamaForCausalLM)     AutoTokenizer (TokenizersBackend, ChatML)
build_text_qwen2     AutoModelForCausalLM (Qwen2ForCausalLM)     AutoTokenizer (Qwen2Tokenizer, ChatML)
build_qwen2_5_vl     AutoModelForImageTextToText                 AutoProcessor (Qwen2_5_VLProcessor)
                     (Qwen2_5_VLForConditionalGeneration)
build_blip_vqa       AutoModelForVisualQuestionAnswering         AutoProcessor (BlipProcessor)
                     (BlipForQuestionAnswering)
build_qwen2_audio    Qwen2AudioForConditionalGeneration or       AutoProcessor (Qwen2AudioProcessor)
                     AutoModelForMultimodalLM.  NOT loadable with
                     AutoModelForCausalLM / AutoModelForImageTextToText.
build_qwen2_5_omni   Qwen2_5OmniThinkerForConditionalGeneration  AutoProcessor (Qwen2_5OmniProcessor)
                     (text out, the usual way), or the full
                     Qwen2_5OmniForConditionalGeneration (thinker
                     + talker + token2wav; ``spk_dict.pt`` with
                     speaker "Chelsie" is saved so it loads).
build_bert_embedding AutoModel (BertModel)                       AutoTokenizer (BertTokenizer)
===================  ==========================================  =========================================

Auto classes probed on the saved checkpoints (5.23):
- qwen2_5_vl:   AutoModelForImageTextToText / AutoModelForMultimodalLM -> Qwen2_5_VLForConditionalGeneration;
                AutoModelForCausalLM raises.
- blip_vqa:     AutoModelForVisualQuestionAnswering -> BlipForQuestionAnswering; AutoModelForImageTextToText
                and AutoModelForMultimodalLM silently give BlipForConditionalGeneration (captioning head,
                VQA weights dropped).
- qwen2_audio:  AutoModelForMultimodalLM (and, oddly, AutoModelForSeq2SeqLM) -> Qwen2AudioForConditionalGeneration;
                AutoModelForCausalLM / AutoModelForImageTextToText raise.
- qwen2_5_omni: AutoModelForMultimodalLM -> full Qwen2_5OmniForConditionalGeneration (spk_dict.pt is read);
                AutoModelForImageTextToText / AutoModelForCausalLM / AutoModel raise: use the thinker class.

Notes:
- The Omni checkpoint is the FULL model (talker present, ``enable_audio_output=True``). The full
  class needs ``generate(..., generation_mode="text")`` for text only (``return_audio=False``
  raises in 5.23); for speech pass ``talker_eos_token_id=OMNI_TALKER_EOS`` (the default
  ``[8292, 8294]`` is outside the tiny codec vocabulary).
- Qwen2.5-VL / Omni prompts: ``processor.apply_chat_template(messages, tokenize=False,
  add_generation_prompt=True)`` then ``qwen_vl_utils.process_vision_info`` /
  ``qwen_omni_utils.process_mm_info`` and ``processor(text=[prompt], images=..., videos=...,
  audio=..., fps=<scalar>, return_tensors="pt")``.  See ``check_tiny_models.py``.
- Omni speech output: the 5.23 talker rejects ``pixel_values``/``pixel_values_videos``; pass them as
  ``thinker_pixel_values=...`` / ``thinker_pixel_values_videos=...`` (grid_thw keys unprefixed).
- Omni video: ``Qwen2_5OmniProcessor`` has class-level ``videos_kwargs`` size (128*28*28 ..
  768*28*28 pixels/frame) that overrides the saved video processor size; pass
  ``videos_kwargs={"size": {"shortest_edge": 3136, "longest_edge": 12544}}`` to keep videos tiny.
- Loading the full Omni config logs transformers' own "tts_text_start_token_id must be ... within the
  vocabulary (between 0 and 8447)" warnings: they come from the *default* talker config built for
  the config diff, not from this checkpoint; harmless.
- Qwen2-Audio: ``processor(text=prompt, audio=[waveform], sampling_rate=16000, return_tensors="pt")``
  (``audios=`` raises in 5.23).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable

import torch

# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, how are you today? I am fine, thank you.",
    "What is in this picture? There is a cat sitting on a red chair.",
    "Describe the image in detail. The photo shows a green field under a blue sky.",
    "What sound is this? It sounds like a dog barking in the distance.",
    "Please summarize the video. A person walks across the street and waves.",
    "The capital of France is Paris. The capital of Italy is Rome.",
    "You are a helpful assistant. Answer the question briefly.",
    "One, two, three, four, five, six, seven, eight, nine, ten.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 3.14",
    "Machine learning models turn text, images, audio and video into numbers.",
    "A small model is fast to build and easy to test on any computer.",
    "Yes. No. Maybe. I do not know. Let me think about it.",
    "The weather is sunny and warm, with a light wind from the west.",
    "Write a short poem about the sea and the moon and the stars.",
    "def add(a, b):\n    return a + b\n",
    "print('hello world')  # a comment\n",
    "Question: how many people are in the room? Answer: two people.",
    "The music is loud and the singer has a beautiful voice.",
    "Colors: red, green, blue, yellow, black, white, orange, purple.",
    "Animals: cat, dog, bird, fish, horse, cow, sheep, lion, tiger.",
    "Where is the nearest station? Turn left, then walk straight ahead.",
    "I like to read books, watch movies and listen to the radio.",
    "The system prompt tells the assistant how to behave.",
    "User: hi!\nAssistant: Hello! How can I help you?\n",
    "Ünïcödé tëxt, 日本語, emoji 🙂 and other bytes.",
]

# ChatML, text only.  A message's content may be a string or a list of {"type": "text", ...} parts.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# ChatML + Qwen2-VL vision placeholders.
QWEN_VL_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in part -%}{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# ChatML + Qwen2-Audio placeholders ("Audio N: <|audio_bos|><|AUDIO|><|audio_eos|>\n").
QWEN_AUDIO_TEMPLATE = (
    "{%- set audio_count = namespace(value=0) -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'audio' or 'audio' in part or 'audio_url' in part -%}"
    "{%- set audio_count.value = audio_count.value + 1 -%}"
    "{{- 'Audio ' + audio_count.value|string + ': <|audio_bos|><|AUDIO|><|audio_eos|>\\n' -}}"
    "{%- elif 'text' in part -%}{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# ChatML + Qwen2.5-Omni placeholders.
QWEN_OMNI_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{- '<|vision_bos|><|IMAGE|><|vision_eos|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{{- '<|vision_bos|><|VIDEO|><|vision_eos|>' -}}"
    "{%- elif part['type'] == 'audio' or 'audio' in part or 'audio_url' in part -%}"
    "{{- '<|audio_bos|><|AUDIO|><|audio_eos|>' -}}"
    "{%- elif 'text' in part -%}{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_VL_SPECIALS = CHATML_SPECIALS + [
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
QWEN_AUDIO_SPECIALS = CHATML_SPECIALS + ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
QWEN_OMNI_SPECIALS = CHATML_SPECIALS + [
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
    "<|vision_bos|>",
    "<|vision_eos|>",
    "<|vision_pad|>",
    "<|IMAGE|>",
    "<|VIDEO|>",
    "<|tts_pad|>",
    "<|tts_bos|>",
    "<|tts_eos|>",
]

_QWEN_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def _train_byte_bpe(special_tokens: list[str], vocab_size: int = 400):
    """Train a deterministic byte-level BPE (Qwen2 pre-tokenization) on the built-in corpus.

    Returns ``(tokenizers.Tokenizer, vocab dict, merges list[tuple])``; special tokens get ids 0..n-1.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 3, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = dict(model["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    for i, t in enumerate(special_tokens):
        assert vocab[t] == i, (t, vocab[t])
    return tok, vocab, merges


def _qwen2_tokenizer(
    special_tokens: list[str], chat_template: str, named: dict[str, str] | None = None
):
    """A Qwen2Tokenizer (eos <|im_end|>, pad <|endoftext|>) from a freshly trained byte BPE."""
    from transformers import Qwen2Tokenizer

    _, vocab, merges = _train_byte_bpe(special_tokens)
    named = dict(named or {})
    extras = [t for t in special_tokens if t not in CHATML_SPECIALS[:1] + ["<|im_end|>"]]
    kwargs = {}
    if named:
        # named model-specific tokens become attributes (tokenizer.image_token, ..._id)
        kwargs["extra_special_tokens"] = named
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        errors="replace",
        model_max_length=32768,
        **kwargs,
    )
    # all family specials (named or not) must stay atomic
    tok.add_special_tokens({"extra_special_tokens": extras}, replace_extra_special_tokens=False)
    tok.chat_template = chat_template
    for t in special_tokens:
        assert tok.convert_tokens_to_ids(t) == special_tokens.index(t), t
    return tok


def _chatml_fast_tokenizer():
    """A generic TokenizersBackend (PreTrainedTokenizerFast) ChatML tokenizer, SmolLM2-style."""
    from transformers import PreTrainedTokenizerFast

    tok_obj, _, _ = _train_byte_bpe(CHATML_SPECIALS)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tok_obj,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=2048,
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


# Hand-written BERT WordPiece vocab (the WordPiece trainer is not deterministic).
_BERT_WORDS = """
the a an is are was were be been am do does did have has had of in on at to from for with by and or
not no yes it this that these those there here what which who whom whose where when why how many much
i you he she we they me him her us them my your his its our their
cat cats dog dogs bird birds fish horse cow sheep lion tiger animal animals person people man woman
men women boy girl child children baby car cars bus train plane boat bike road street city house room
table chair bed sofa door window wall floor tree trees grass field sky sun moon star sea water river
mountain snow rain cloud food pizza apple banana cake bread cup glass bottle plate phone book ball
red green blue yellow black white orange purple brown gray pink color colour
one two three four five six seven eight nine ten zero many some all none
big small large little tall short long old new young good bad hot cold happy sad
left right up down top bottom front back inside outside near far
sitting standing walking running playing eating drinking holding looking riding flying swimming
sit stand walk run play eat drink hold look ride fly swim see show picture image photo video
sound music voice noise question answer describe tell say what's
hello hi world test model text audio small fast
""".split()
_BERT_PIECES = ["##s", "##es", "##ed", "##ing", "##er", "##ly", "##n", "##t", "##y", "##e"]


def _bert_vocab(extra_specials: tuple[str, ...] = ()) -> dict[str, int]:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *extra_specials]
    tokens += list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    tokens += [str(d) for d in range(10)]
    tokens += [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens += ["##" + str(d) for d in range(10)]
    tokens += ["##" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens += _BERT_PIECES
    for w in _BERT_WORDS:
        if w not in tokens:
            tokens.append(w)
    out: dict[str, int] = {}
    for t in tokens:
        out.setdefault(t, len(out))
    return out


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------

_TEXT_DIMS = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
)


def _save(model, proc, out_dir: pathlib.Path) -> pathlib.Path:
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out_dir)
    proc.save_pretrained(out_dir)
    return out_dir


def _set_generation(model, tok, max_new_tokens: int = 16) -> None:
    gc = model.generation_config
    gc.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    gc.pad_token_id = tok.pad_token_id
    gc.bos_token_id = None
    gc.do_sample = False
    gc.max_new_tokens = max_new_tokens


def build_text_llama(out_dir: pathlib.Path) -> pathlib.Path:
    """Tiny LlamaForCausalLM + ChatML TokenizersBackend tokenizer (bos <|im_start|>, eos <|im_end|>,
    pad <|endoftext|>; no BOS is added on encode).  AutoTokenizer + AutoModelForCausalLM."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = _chatml_fast_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        head_dim=16,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **_TEXT_DIMS,
    )
    model = LlamaForCausalLM(config)
    _set_generation(model, tok)
    return _save(model, tok, out_dir)


def build_text_qwen2(out_dir: pathlib.Path) -> pathlib.Path:
    """Tiny Qwen2ForCausalLM + Qwen2Tokenizer (ChatML).  AutoTokenizer + AutoModelForCausalLM."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    tok = _qwen2_tokenizer(CHATML_SPECIALS, CHATML_TEMPLATE)
    config = Qwen2Config(
        vocab_size=len(tok),
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **_TEXT_DIMS,
    )
    model = Qwen2ForCausalLM(config)
    _set_generation(model, tok)
    return _save(model, tok, out_dir)


# Qwen2-VL style vision tower: patch 14, merge 2 (28 px per merged token), temporal patch 2.
_VISION_DIMS = dict(
    depth=2,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    in_channels=3,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[1],
)
# ~4-16 tokens per image / per temporal group of 2 video frames
IMAGE_MIN_PIXELS = 3136  # 56 * 56
IMAGE_MAX_PIXELS = 12544  # 112 * 112
_MROPE = {
    "rope_type": "default",
    "rope_theta": 1000000.0,
    "mrope_section": [2, 3, 3],
}  # sums to head_dim/2 = 8


def _qwen_image_video_processors():
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    size = {"shortest_edge": IMAGE_MIN_PIXELS, "longest_edge": IMAGE_MAX_PIXELS}
    image_processor = Qwen2VLImageProcessor(
        size=size, patch_size=14, temporal_patch_size=2, merge_size=2
    )
    video_processor = Qwen2VLVideoProcessor(
        size=size,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
        min_frames=2,
        max_frames=16,
        cap_pixels_per_frame=True,  # qwen-vl-utils behaviour; silences a 5.23 warning
    )
    return image_processor, video_processor


def build_qwen2_5_vl(out_dir: pathlib.Path) -> pathlib.Path:
    """Tiny Qwen2_5_VLForConditionalGeneration + Qwen2_5_VLProcessor.
    AutoProcessor + AutoModelForImageTextToText."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
    )

    torch.manual_seed(0)
    tok = _qwen2_tokenizer(QWEN_VL_SPECIALS, QWEN_VL_TEMPLATE)
    ids = tok.convert_tokens_to_ids
    image_processor, video_processor = _qwen_image_video_processors()
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor,
        chat_template=QWEN_VL_TEMPLATE,
    )
    text_config = dict(
        vocab_size=len(tok),
        rms_norm_eps=1e-6,
        rope_parameters=dict(_MROPE),
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
        tie_word_embeddings=False,
        **_TEXT_DIMS,
    )
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=dict(
            _VISION_DIMS, out_hidden_size=_TEXT_DIMS["hidden_size"], tokens_per_second=2
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
        tie_word_embeddings=False,
    )
    model = Qwen2_5_VLForConditionalGeneration(config)
    _set_generation(model, tok)
    return _save(model, processor, out_dir)


BLIP_IMAGE_SIZE = 32


def build_blip_vqa(out_dir: pathlib.Path) -> pathlib.Path:
    """Tiny BlipForQuestionAnswering + BlipProcessor (BertTokenizer, hand-written vocab, [DEC] bos).
    AutoProcessor + AutoModelForVisualQuestionAnswering (NOT AutoModelForImageTextToText, which loads
    the captioning head)."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForQuestionAnswering,
        BlipImageProcessor,
        BlipProcessor,
    )

    torch.manual_seed(0)
    vocab = _bert_vocab(extra_specials=("[DEC]",))
    tok = BertTokenizer(vocab=vocab, do_lower_case=True, bos_token="[DEC]", model_max_length=64)
    image_processor = BlipImageProcessor(size={"height": BLIP_IMAGE_SIZE, "width": BLIP_IMAGE_SIZE})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tok)
    text_config = dict(
        vocab_size=len(vocab),
        hidden_size=32,
        encoder_hidden_size=32,
        intermediate_size=64,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        bos_token_id=vocab["[DEC]"],
        eos_token_id=vocab["[SEP]"],
        sep_token_id=vocab["[SEP]"],
        pad_token_id=vocab["[PAD]"],
    )
    vision_config = dict(
        hidden_size=32,
        intermediate_size=64,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=BLIP_IMAGE_SIZE,
        patch_size=16,
        initializer_range=0.02,
    )
    config = BlipConfig(
        text_config=text_config,
        vision_config=vision_config,
        projection_dim=32,
        image_text_hidden_size=32,
    )
    model = BlipForQuestionAnswering(config)
    gc = model.generation_config
    gc.max_new_tokens = 8
    gc.do_sample = False
    return _save(model, processor, out_dir)


def _whisper_features():
    from transformers import WhisperFeatureExtractor

    # the Qwen audio encoders want 128 mel bins; 30 s chunks -> exactly 3000 frames
    return WhisperFeatureExtractor(
        feature_size=128,
        sampling_rate=16000,
        hop_length=160,
        chunk_length=30,
        n_fft=400,
        padding_value=0.0,
    )


_AUDIO_ENCODER_DIMS = dict(
    num_mel_bins=128,
    encoder_layers=1,
    encoder_attention_heads=2,
    encoder_ffn_dim=64,
    d_model=32,
    max_source_positions=1500,
)


def build_qwen2_audio(out_dir: pathlib.Path) -> pathlib.Path:
    """Tiny Qwen2AudioForConditionalGeneration + Qwen2AudioProcessor.
    AutoProcessor + Qwen2AudioForConditionalGeneration (or AutoModelForMultimodalLM); not
    AutoModelForCausalLM / AutoModelForImageTextToText."""
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
    )

    torch.manual_seed(0)
    tok = _qwen2_tokenizer(
        QWEN_AUDIO_SPECIALS,
        QWEN_AUDIO_TEMPLATE,
        named={
            "audio_token": "<|AUDIO|>",
            "audio_bos_token": "<|audio_bos|>",
            "audio_eos_token": "<|audio_eos|>",
        },
    )
    ids = tok.convert_tokens_to_ids
    processor = Qwen2AudioProcessor(
        feature_extractor=_whisper_features(), tokenizer=tok, chat_template=QWEN_AUDIO_TEMPLATE
    )
    text_config = dict(
        model_type="qwen2",
        vocab_size=len(tok),
        rms_norm_eps=1e-6,
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
        tie_word_embeddings=False,
        **_TEXT_DIMS,
    )
    config = Qwen2AudioConfig(
        audio_config=dict(_AUDIO_ENCODER_DIMS),
        text_config=text_config,
        audio_token_index=ids("<|AUDIO|>"),
        pad_token_id=ids("<|endoftext|>"),
    )
    model = Qwen2AudioForConditionalGeneration(config)
    _set_generation(model, tok)
    return _save(model, processor, out_dir)


# Tiny talker codec vocabulary: codes 0..59, then pad / bos / eos / mask.
OMNI_CODEC_VOCAB = 64
OMNI_CODEC_PAD, OMNI_CODEC_BOS, OMNI_CODEC_EOS, OMNI_CODEC_MASK = 60, 61, 62, 63
OMNI_TALKER_EOS = [OMNI_CODEC_PAD, OMNI_CODEC_EOS]
OMNI_MEL_DIM = 20


def build_qwen2_5_omni(out_dir: pathlib.Path) -> pathlib.Path:
    """Tiny FULL Qwen2_5OmniForConditionalGeneration (thinker + talker + token2wav, plus spk_dict.pt
    with speaker "Chelsie") + Qwen2_5OmniProcessor.

    Loads with AutoProcessor + Qwen2_5OmniThinkerForConditionalGeneration (text only, weights of the
    talker/token2wav are ignored) or with Qwen2_5OmniForConditionalGeneration (talker present:
    ``generate(..., generation_mode="text")`` for text, or audio with
    ``talker_eos_token_id=OMNI_TALKER_EOS``)."""
    from transformers import (
        Qwen2_5OmniConfig,
        Qwen2_5OmniForConditionalGeneration,
        Qwen2_5OmniProcessor,
    )

    torch.manual_seed(0)
    named = {
        "image_token": "<|IMAGE|>",
        "audio_token": "<|AUDIO|>",
        "video_token": "<|VIDEO|>",
        "vision_bos_token": "<|vision_bos|>",
        "vision_eos_token": "<|vision_eos|>",
        "audio_bos_token": "<|audio_bos|>",
        "audio_eos_token": "<|audio_eos|>",
    }
    tok = _qwen2_tokenizer(QWEN_OMNI_SPECIALS, QWEN_OMNI_TEMPLATE, named=named)
    ids = tok.convert_tokens_to_ids
    image_processor, video_processor = _qwen_image_video_processors()
    processor = Qwen2_5OmniProcessor(
        image_processor=image_processor,
        video_processor=video_processor,
        feature_extractor=_whisper_features(),
        tokenizer=tok,
        chat_template=QWEN_OMNI_TEMPLATE,
    )
    hidden = _TEXT_DIMS["hidden_size"]
    token_ids = dict(
        audio_token_index=ids("<|AUDIO|>"),
        image_token_index=ids("<|IMAGE|>"),
        video_token_index=ids("<|VIDEO|>"),
        audio_start_token_id=ids("<|audio_bos|>"),
        audio_end_token_id=ids("<|audio_eos|>"),
        vision_start_token_id=ids("<|vision_bos|>"),
        vision_end_token_id=ids("<|vision_eos|>"),
    )
    text_config = dict(
        vocab_size=len(tok),
        rms_norm_eps=1e-6,
        rope_parameters=dict(_MROPE),
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
        tie_word_embeddings=False,
        **_TEXT_DIMS,
    )
    thinker_config = dict(
        audio_config=dict(_AUDIO_ENCODER_DIMS, output_dim=hidden, n_window=100),
        vision_config=dict(_VISION_DIMS, out_hidden_size=hidden),
        text_config=text_config,
        user_token_id=ids("<|im_start|>"),
        position_id_per_seconds=25,
        seconds_per_chunk=2,
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
        **token_ids,
    )
    talker_config = dict(
        vocab_size=OMNI_CODEC_VOCAB,
        embedding_size=hidden,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        rope_parameters=dict(_MROPE),
        tts_text_start_token_id=ids("<|tts_bos|>"),
        tts_text_end_token_id=ids("<|tts_eos|>"),
        tts_text_pad_token_id=ids("<|tts_pad|>"),
        tts_codec_start_token_id=OMNI_CODEC_BOS,
        tts_codec_end_token_id=OMNI_CODEC_EOS,
        tts_codec_pad_token_id=OMNI_CODEC_PAD,
        tts_codec_mask_token_id=OMNI_CODEC_MASK,
        spatial_merge_size=2,
        position_id_per_seconds=25,
        seconds_per_chunk=2,
        pad_token_id=OMNI_CODEC_PAD,
        **token_ids,
    )
    token2wav_config = dict(
        dit_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            ff_mult=2,
            emb_dim=16,
            head_dim=16,
            max_position_embeddings=2048,
            block_size=24,
            look_ahead_layers=[1],
            look_backward_layers=[0],
            repeats=2,
            num_embeds=OMNI_CODEC_VOCAB,
            mel_dim=OMNI_MEL_DIM,
            dropout=0.0,
            enc_emb_dim=16,
            enc_dim=16,
            enc_channels=[32, 32, 32, 32, 96],  # last = sum of the three SE-Res2Net blocks
            enc_kernel_sizes=[5, 3, 3, 3, 1],
            enc_dilations=[1, 2, 3, 4, 1],
            enc_attention_channels=16,
            enc_res2net_scale=2,
            enc_se_channels=16,
        ),
        bigvgan_config=dict(
            mel_dim=OMNI_MEL_DIM,
            upsample_initial_channel=64,
            resblock_kernel_sizes=[3],
            resblock_dilation_sizes=[[1, 3, 5]],
            upsample_rates=[5, 3, 2, 2, 2, 2],
            upsample_kernel_sizes=[11, 7, 4, 4, 4, 4],
        ),
    )
    config = Qwen2_5OmniConfig(
        thinker_config=thinker_config,
        talker_config=talker_config,
        token2wav_config=token2wav_config,
        enable_audio_output=True,
    )
    model = Qwen2_5OmniForConditionalGeneration(config)
    _set_generation(model.thinker, tok)
    out_dir = _save(model, processor, out_dir)
    # speaker conditioning needed by Qwen2_5OmniForConditionalGeneration.from_pretrained
    g = torch.Generator().manual_seed(0)
    spk = {
        "Chelsie": {
            "bos_token": ids("<|tts_bos|>"),
            "cond": torch.randn(1, 16, generator=g),
            "ref_mel": torch.randn(1, 24, OMNI_MEL_DIM, generator=g),
        }
    }
    torch.save(spk, out_dir / "spk_dict.pt")
    return out_dir


def build_bert_embedding(out_dir: pathlib.Path) -> pathlib.Path:
    """Tiny BertModel + BertTokenizer (hand-written WordPiece vocab).  AutoTokenizer + AutoModel.
    Use masked mean pooling + L2 normalisation for sentence embeddings (hidden size 32)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    torch.manual_seed(0)
    vocab = _bert_vocab()
    tok = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=128)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=vocab["[PAD]"],
    )
    model = BertModel(config, add_pooling_layer=True)
    return _save(model, tok, out_dir)


TINY_BUILDERS: dict[str, Callable[[pathlib.Path], pathlib.Path]] = {
    "text_llama": build_text_llama,
    "text_qwen2": build_text_qwen2,
    "qwen2_5_vl": build_qwen2_5_vl,
    "blip_vqa": build_blip_vqa,
    "qwen2_audio": build_qwen2_audio,
    "qwen2_5_omni": build_qwen2_5_omni,
    "bert_embedding": build_bert_embedding,
}

__all__ = [
    "TINY_BUILDERS",
    "build_bert_embedding",
    "build_blip_vqa",
    "build_qwen2_5_omni",
    "build_qwen2_5_vl",
    "build_qwen2_audio",
    "build_text_llama",
    "build_text_qwen2",
]
