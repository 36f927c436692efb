"""Vision-language family (Qwen2.5-VL style): images and sampled video frames in a chat."""

from __future__ import annotations

from ..errors import BadRequest
from ..types import GenerationRequest, Part
from .base import FamilyHandler, Prepared
from .rules import MediaRules, processor_config, qwen_factor, qwen_pixel_bounds

# Qwen's per-frame pixel budget for video (qwen-vl-utils: 768 tokens of 28x28 pixels). A
# checkpoint that saves one size for images and video (min 3136 .. max 12845056 pixels for
# Qwen2.5-VL-3B) would otherwise send every sampled frame at full image resolution.
VIDEO_FRAME_MAX_PIXELS = 768 * 28 * 28
# The (min, max) pixels of transformers' Qwen2-VL image and video processors when a
# checkpoint saves none.
QWEN_IMAGE_PIXELS = (56 * 56, 28 * 28 * 1280)
QWEN_VIDEO_PIXELS = (128 * 28 * 28, 28 * 28 * 768)


def _size_value(size, *keys):
    for key in keys:
        value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
        if value:
            return int(value)
    return None


def pixel_bounds(proc, cap: int | None = None) -> dict:
    """{"min_pixels", "max_pixels"} of a Qwen image or video processor: the checkpoint's own size.

    Qwen2-VL processors keep the pixel bounds in `size` (shortest_edge = min pixels,
    longest_edge = max pixels). Passing them to qwen-vl-utils makes its resize agree with
    the processor's, so an image is resized once. `cap` bounds max_pixels (video frames).
    """
    size = getattr(proc, "size", None) or {}
    lo = _size_value(size, "shortest_edge", "min_pixels") or getattr(proc, "min_pixels", None)
    hi = _size_value(size, "longest_edge", "max_pixels") or getattr(proc, "max_pixels", None)
    out = {}
    if hi:
        out["max_pixels"] = int(min(hi, cap)) if cap else int(hi)
    if lo:
        out["min_pixels"] = int(min(lo, out.get("max_pixels", lo)))
    return out


def qwen_media_entry(processor, part: Part, accepts: tuple[str, ...]) -> dict:
    """One chat-template content part for decoded media, as qwen-vl/omni-utils read it."""
    if part.type not in accepts:
        raise BadRequest(f"{part.type} input is not supported by this model", param=part.field)
    if part.type == "image":
        return {"type": "image", "image": part.data, **pixel_bounds(processor.image_processor)}
    if part.type == "video":
        clip = part.data
        bounds = pixel_bounds(processor.video_processor, VIDEO_FRAME_MAX_PIXELS)
        # sample_fps: the rate of the frames media.load_video sampled (becomes the fps kwarg)
        return {
            "type": "video",
            "video": list(clip.frames),
            "sample_fps": float(clip.fps),
            **bounds,
        }
    return {"type": "audio", "audio": part.data}


def qwen_media_rules(path, smart_resize) -> MediaRules:
    """Qwen2.5-VL/Omni image and video-frame rules: qwen-utils' `smart_resize` (aspect ratio at
    most 200:1, sides of whole 28-pixel patches) within the checkpoint's pixel bounds."""
    image_cfg = processor_config(path, "image_processor")
    video_cfg = processor_config(path, "video_processor") or image_cfg
    return MediaRules(
        smart_resize=smart_resize,
        factor=qwen_factor(image_cfg),
        image_pixels=qwen_pixel_bounds(image_cfg, QWEN_IMAGE_PIXELS),
        frame_pixels=qwen_pixel_bounds(video_cfg, QWEN_VIDEO_PIXELS, VIDEO_FRAME_MAX_PIXELS),
    )


def _vl_smart_resize(*args):
    from qwen_vl_utils.vision_process import smart_resize  # imports torchvision: on first use

    return smart_resize(*args)


def video_fps(video_kwargs: dict) -> dict:
    """qwen-utils' video kwargs with `fps` as the scalar transformers 5.23 wants (or dropped).

    One fps serves every video of a request: the first clip's, which all share when they
    come from one media.load_video configuration.
    """
    out = dict(video_kwargs)
    fps = out.pop("fps", None)
    if isinstance(fps, (list, tuple)):
        fps = fps[0] if fps else None
    if fps:
        out["fps"] = float(fps)
    return out


class VisionLanguageHandler(FamilyHandler):
    family = "vision_language"
    capabilities = ("text", "image", "video")
    default_loader = "AutoModelForImageTextToText"
    default_processor = "AutoProcessor"
    cpu_fallback = True
    accepts = ("image", "video")

    def check_request(self, spec, req: GenerationRequest) -> None:
        raw_media_check(req)

    def media_rules(self, spec, path) -> MediaRules:
        return qwen_media_rules(path, _vl_smart_resize)

    def prepare(self, lm, req: GenerationRequest) -> Prepared:
        if req.raw_prompt:
            return raw_text_prepared(self, lm, req)
        from qwen_vl_utils import process_vision_info

        processor = lm.processor
        messages = self.chat_messages(
            req, lambda part: qwen_media_entry(processor, part, self.accepts)
        )
        prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        images, videos, vkw = process_vision_info(messages, return_video_kwargs=True)
        batch = processor(
            text=[prompt],
            images=images,
            videos=videos,
            padding=True,
            return_tensors="pt",
            **(video_fps(vkw) if videos else {}),
        )
        inputs = self.to_device(lm, batch)
        return Prepared(inputs, int(inputs["input_ids"].shape[1]), {"prompt_text": prompt})


def raw_media_check(req: GenerationRequest) -> None:
    """A raw prompt has no chat template to place media in: refuse the mix before loading."""
    if req.raw_prompt:
        for part in req.media_parts():
            raise BadRequest(
                f"a raw prompt cannot hold media ({part.field}); send it without 'raw'",
                param="raw",
            )


def raw_text_prepared(handler: FamilyHandler, lm, req: GenerationRequest) -> Prepared:
    """The text fed as is to the tokenizer, without the chat template."""
    text = "".join(m.text() for m in req.messages)
    inputs = handler.to_device(lm, lm.tokenizer(text, return_tensors="pt"))
    return Prepared(inputs, int(inputs["input_ids"].shape[1]), {"prompt_text": text})
