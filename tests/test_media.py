"""Tests of mmserve.media: base64 decoding, format sniffing, and image/audio/video loading."""

from __future__ import annotations

import base64
import io
import os
import re
import resource
import time

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mmserve.media import (
    MediaError,
    MediaLimits,
    VideoClip,
    decode_base64,
    load_audio,
    load_image,
    load_video,
    sniff,
)
from tests.factories.media import (
    make_audio,
    make_bomb_png,
    make_image,
    make_video,
)

LIMITS = MediaLimits()
IMAGE_FORMATS = ["PNG", "JPEG", "WEBP", "GIF", "BMP"]
AUDIO_FORMATS = ["wav", "mp3", "flac", "m4a", "ogg"]
VIDEO_FORMATS = ["mp4", "mov", "avi", "webm", "mkv"]


@pytest.fixture
def tmp_dir(tmp_path):
    """A per-request directory holding one file that is not ours: it must survive untouched."""
    (tmp_path / "someone-elses.txt").write_text("keep me")
    return tmp_path


def assert_tmp_clean(tmp_dir) -> None:
    assert sorted(os.listdir(tmp_dir)) == ["someone-elses.txt"]
    assert (tmp_dir / "someone-elses.txt").read_text() == "keep me"


def assert_clean_error(err: MediaError, field: str, limit: str | None = None) -> None:
    """The message is human text that names the field, with no repr, class name or path."""
    msg = str(err)
    assert err.field == field
    assert err.limit == limit
    assert msg == err.message
    assert msg.startswith(f"{field}: ")
    assert not re.search(r"\b0x[0-9a-f]{4,}|<|>|Traceback|Error|Exception|/tmp|\\\\|b'", msg), msg
    assert "\n" not in msg


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def roundtrip_bytes(data: bytes, mime: str, field: str) -> bytes:
    """Send `data` as a data URI, as a client would, and decode it back."""
    return decode_base64(f"data:{mime};base64,{b64(data)}", field)


def dominant_frequency(y: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.fft.rfftfreq(len(y), 1 / sr)[np.argmax(spectrum)])


# --------------------------------------------------------------------------- factories


def test_factories_are_deterministic_and_small():
    assert make_image("PNG") == make_image("PNG")
    for fmt in AUDIO_FORMATS:
        data = make_audio(fmt)
        assert data == make_audio(fmt), fmt
        assert len(data) < 64 * 1024
    for fmt in VIDEO_FORMATS:
        data = make_video(fmt)
        assert data == make_video(fmt), fmt
        assert len(data) < 64 * 1024
    assert len(make_bomb_png()) < 200 * 1024


# --------------------------------------------------------------------------- base64


def test_decode_base64_variants():
    raw = (bytes(range(256)) * 3)[:-1]  # encodes to + / (- _ urlsafe), with padding
    plain = base64.b64encode(raw).decode()
    urlsafe = base64.urlsafe_b64encode(raw).decode()
    assert "+" in plain and "/" in plain and "-" in urlsafe and "_" in urlsafe
    assert plain.endswith("=")
    assert decode_base64(plain, "f") == raw
    assert decode_base64(urlsafe, "f") == raw
    assert decode_base64(plain.rstrip("="), "f") == raw
    assert decode_base64(urlsafe.rstrip("="), "f") == raw
    wrapped = "\n".join(plain[i : i + 76] for i in range(0, len(plain), 76))
    assert decode_base64(f"  {wrapped}\r\n", "f") == raw
    assert decode_base64(f"data:image/png;base64,{plain}", "f") == raw
    assert decode_base64(f"DATA:application/octet-stream;name=x.bin;base64,{urlsafe}", "f") == raw
    assert decode_base64(f"data:;base64,{plain.rstrip('=')}", "f") == raw
    assert decode_base64(plain.encode(), "f") == raw  # bytes input
    odd = b"ab"  # "YWI=": needs one padding character
    assert decode_base64("YWI", "f") == odd


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        "not base64 at all!",
        "QUJD$",
        "QUJDR",  # 5 characters: one too many for any padding
        "QU=JD",  # padding in the middle
        "QUJD====",
        "====",
        "data:image/png;base64,",
        "data:image/png,iVBORw0KGgo=",  # not base64-encoded
        "data:image/png;base64",  # no comma
        "https://example.com/cat.png",
        "ñandú",
    ],
)
def test_decode_base64_rejects(bad):
    with pytest.raises(MediaError) as info:
        decode_base64(bad, "messages[0].content[1].image_url")
    assert_clean_error(info.value, "messages[0].content[1].image_url")


def test_decode_base64_rejects_non_string():
    with pytest.raises(MediaError) as info:
        decode_base64(None, "image")  # type: ignore[arg-type]
    assert_clean_error(info.value, "image")
    assert str(info.value) == "image: expected a base64 string"


def test_broken_base64_message():
    with pytest.raises(MediaError) as info:
        decode_base64("@@@@", "image")
    assert str(info.value) == "image: not valid base64"


# --------------------------------------------------------------------------- sniff


@pytest.mark.parametrize("fmt", IMAGE_FORMATS)
def test_sniff_images(fmt):
    assert sniff(make_image(fmt)) == ("image", fmt.lower())


@pytest.mark.parametrize("fmt", AUDIO_FORMATS)
def test_sniff_audio(fmt):
    assert sniff(make_audio(fmt)) == ("audio", fmt)


@pytest.mark.parametrize("fmt", VIDEO_FORMATS)
def test_sniff_video(fmt):
    assert sniff(make_video(fmt)) == ("video", fmt)


@pytest.mark.parametrize("fmt", VIDEO_FORMATS)
def test_sniff_video_with_audio_track_is_video(fmt, tmp_dir):
    data = make_video(fmt, audio=True)
    assert sniff(data) == ("video", fmt)
    assert len(load_video(data, "video", LIMITS, tmp_dir).frames) == 8
    with pytest.raises(MediaError) as info:
        load_audio(data, "audio", LIMITS, tmp_dir)
    assert_clean_error(info.value, "audio")
    assert_tmp_clean(tmp_dir)


def test_sniff_iso_and_matroska_audio_only():
    # AAC in an isom-branded MP4 with no video track is audio, not video
    assert make_audio("m4a", muxer="mp4")[8:12] == b"isom"
    assert sniff(make_audio("m4a", muxer="mp4")) == ("audio", "m4a")
    assert sniff(make_audio("m4a", muxer="mov")) == ("audio", "m4a")
    # Opus in WebM (what browsers record) is audio; a WebM with a video track is video
    assert sniff(make_audio("webm", sr=48000)) == ("audio", "webm")
    assert sniff(make_video("webm")) == ("video", "webm")


def test_sniff_mp3_without_id3():
    data = make_audio("mp3")
    size = 10 + sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(data[6:10]))
    bare = data[size:]
    assert bare[0] == 0xFF
    assert sniff(bare) == ("audio", "mp3")


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(0).bytes(4096),
        np.random.default_rng(1).bytes(64),
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n",
        b"hello, this is plain text and not media at all\n" * 10,
        b"<html><body>nope</body></html>",
        b"\x00" * 100,
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",  # HEIC: unsupported image
        b"BM this is text",
        b"RIFF\x10\x00\x00\x00ABCD",
        b"\xff",
        b"",
    ],
)
def test_sniff_unknown(data):
    assert sniff(data) is None


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(0).bytes(4096),
        b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n",
        b"just some text",
    ],
)
def test_unknown_format_rejected_by_every_loader(data, tmp_dir):
    for load, expected in (
        (lambda: load_image(data, "image", LIMITS), "image format"),
        (lambda: load_audio(data, "audio", LIMITS, tmp_dir), "audio format"),
        (lambda: load_video(data, "video", LIMITS, tmp_dir), "video format"),
    ):
        with pytest.raises(MediaError) as info:
            load()
        assert_clean_error(info.value, info.value.field)
        assert f"is not a supported {expected}" in str(info.value)
    assert_tmp_clean(tmp_dir)


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize("fmt", IMAGE_FORMATS)
def test_image_roundtrip(fmt):
    data = roundtrip_bytes(make_image(fmt, size=(64, 48)), f"image/{fmt.lower()}", "image")
    assert sniff(data) == ("image", fmt.lower())
    img = load_image(data, "image", LIMITS)
    assert isinstance(img, Image.Image)
    assert img.mode == "RGB"
    assert img.size == (64, 48)
    if fmt in ("PNG", "WEBP", "BMP"):  # (lossy or palette formats shift colours a little)
        assert abs(np.asarray(img, dtype=float)[..., 0].mean() - 115) < 3


def test_transparent_image_is_composited_on_white():
    buf = io.BytesIO()
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(buf, "PNG")
    img = load_image(buf.getvalue(), "image", LIMITS)
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 255, 255)


def test_grayscale_and_palette_images_become_rgb():
    for mode in ("L", "P", "1", "I;16"):
        buf = io.BytesIO()
        Image.new(mode, (5, 4)).save(buf, "PNG")
        img = load_image(buf.getvalue(), "image", LIMITS)
        assert (img.mode, img.size) == ("RGB", (5, 4))


def test_image_over_pixel_limit():
    data = make_image("PNG", size=(64, 48))
    with pytest.raises(MediaError) as info:
        load_image(data, "image", MediaLimits(max_image_pixels=64 * 48 - 1))
    assert_clean_error(info.value, "image", "max_image_pixels")
    assert "64x48" in str(info.value)
    assert load_image(data, "image", MediaLimits(max_image_pixels=64 * 48)).size == (64, 48)


@pytest.mark.parametrize("size", [(30000, 30000), (5000, 5000)])
def test_bomb_png_rejected_fast_without_allocating(size):
    # 30000^2 trips Pillow's own DecompressionBombError inside Image.open; 5000^2 only our
    # 16M-pixel limit, checked on the header before anything is decoded.
    bomb = make_bomb_png(*size)
    assert sniff(bomb) == ("image", "png")
    limits = LIMITS
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    with pytest.raises(MediaError) as info:
        load_image(bomb, "messages[0].content[0]", limits)
    elapsed = time.perf_counter() - start
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert_clean_error(info.value, "messages[0].content[0]", "max_image_pixels")
    assert elapsed < 0.5
    assert rss_after - rss_before < 32 * 1024  # decoding would need >= 25 MB (5000^2)


def test_corrupt_and_truncated_images():
    png = make_image("PNG")
    jpeg = make_image("JPEG")
    for bad in (png[:60], jpeg[:40], png[:16] + b"\x00" * 200, b"\x89PNG\r\n\x1a\n"):
        with pytest.raises(MediaError) as info:
            load_image(bad, "image", LIMITS)
        assert_clean_error(info.value, "image")


def test_image_over_bytes_limit():
    with pytest.raises(MediaError) as info:
        load_image(make_image("BMP"), "image", MediaLimits(max_media_bytes=1000))
    assert_clean_error(info.value, "image", "max_media_bytes")


def test_wrong_kind_for_image():
    with pytest.raises(MediaError) as info:
        load_image(make_audio("wav"), "messages[0].content[2].image_url", LIMITS)
    assert_clean_error(info.value, "messages[0].content[2].image_url")
    assert "not a supported image format" in str(info.value)
    assert "WAV audio" in str(info.value)
    with pytest.raises(MediaError) as info:
        load_image(make_video("mp4"), "image", LIMITS)
    assert "MP4 video" in str(info.value)


# --------------------------------------------------------------------------- audio


@pytest.mark.parametrize("fmt", AUDIO_FORMATS + ["webm"])
def test_audio_roundtrip(fmt, tmp_dir):
    source_sr = 48000 if fmt == "webm" else 16000
    data = roundtrip_bytes(make_audio(fmt, seconds=1.0, sr=source_sr), f"audio/{fmt}", "audio")
    assert sniff(data) == ("audio", fmt)
    y = load_audio(data, "audio", LIMITS, tmp_dir, sr=16000)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - 16000) <= 64, len(y)
    assert 0.4 < float(np.abs(y).max()) < 0.6
    assert abs(dominant_frequency(y, 16000) - 440) < 5
    assert_tmp_clean(tmp_dir)


@pytest.mark.parametrize("fmt", ["wav", "mp3", "m4a"])
def test_audio_is_resampled(fmt, tmp_dir):
    data = make_audio(fmt, seconds=0.5, sr=44100)
    y = load_audio(data, "audio", LIMITS, tmp_dir, sr=16000)
    assert abs(len(y) - 8000) <= 64
    assert abs(dominant_frequency(y, 16000) - 440) < 5
    y = load_audio(data, "audio", LIMITS, tmp_dir, sr=22050)
    assert abs(len(y) - 11025) <= 96


def test_stereo_audio_is_mixed_to_mono(tmp_dir):
    t = np.arange(16000) / 16000
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.zeros_like(t)], axis=1) * 0.8
    buf = io.BytesIO()
    sf.write(buf, stereo, 16000, format="WAV")
    y = load_audio(buf.getvalue(), "audio", LIMITS, tmp_dir)
    assert y.shape == (16000,)
    assert abs(float(np.abs(y).max()) - 0.4) < 0.01


@pytest.mark.parametrize("fmt", AUDIO_FORMATS + ["webm"])
def test_audio_over_duration_limit(fmt, tmp_dir):
    data = make_audio(fmt, seconds=2.0, sr=48000 if fmt == "webm" else 16000)
    with pytest.raises(MediaError) as info:
        load_audio(data, "audio", MediaLimits(max_audio_seconds=1.0), tmp_dir)
    assert_clean_error(info.value, "audio", "max_audio_seconds")
    assert "limit is 1 seconds" in str(info.value)
    assert_tmp_clean(tmp_dir)


def test_audio_over_bytes_limit(tmp_dir):
    with pytest.raises(MediaError) as info:
        load_audio(make_audio("wav"), "audio", MediaLimits(max_media_bytes=1000), tmp_dir)
    assert_clean_error(info.value, "audio", "max_media_bytes")


def test_wrong_kind_for_audio(tmp_dir):
    for data, got in ((make_image("PNG"), "PNG image"), (make_video("mp4"), "MP4 video")):
        with pytest.raises(MediaError) as info:
            load_audio(data, "input_audio", LIMITS, tmp_dir)
        assert_clean_error(info.value, "input_audio")
        assert "not a supported audio format" in str(info.value)
        assert got in str(info.value)
    assert_tmp_clean(tmp_dir)


def test_corrupt_audio(tmp_dir):
    for fmt in AUDIO_FORMATS:
        data = make_audio(fmt)
        bad = data[:12] + bytes(len(data) - 12)
        try:
            load_audio(bad, "audio", LIMITS, tmp_dir)
        except MediaError as err:
            assert_clean_error(err, "audio")
    truncated = make_audio("m4a")[:200]
    with pytest.raises(MediaError) as info:
        load_audio(truncated, "audio", LIMITS, tmp_dir)
    assert_clean_error(info.value, "audio")
    assert_tmp_clean(tmp_dir)


# --------------------------------------------------------------------------- video


def brightness(clip: VideoClip) -> list[float]:
    return [float(np.asarray(f, dtype=float).mean()) for f in clip.frames]


@pytest.mark.parametrize("fmt", VIDEO_FORMATS)
def test_video_roundtrip(fmt, tmp_dir):
    data = roundtrip_bytes(make_video(fmt, frames=12, fps=6), f"video/{fmt}", "video")
    assert sniff(data) == ("video", fmt)
    clip = load_video(data, "video", LIMITS, tmp_dir)
    assert isinstance(clip, VideoClip)
    assert len(clip.frames) == LIMITS.max_video_frames == 8
    assert all(f.mode == "RGB" and f.size == (64, 48) for f in clip.frames)
    assert clip.duration == pytest.approx(2.0, abs=0.2)
    assert clip.source_fps == pytest.approx(6.0, abs=0.1)
    assert len(clip.frames) / clip.fps == pytest.approx(clip.duration, rel=0.01)
    levels = brightness(clip)
    assert levels == sorted(levels) and levels[-1] - levels[0] > 120  # spread over the clip
    assert_tmp_clean(tmp_dir)


def test_video_max_frames(tmp_dir):
    data = make_video("mp4", frames=12, fps=6)
    clip = load_video(data, "video", LIMITS, tmp_dir, max_frames=3)
    assert len(clip.frames) == 3 and clip.fps == pytest.approx(1.5, rel=0.05)
    clip = load_video(data, "video", LIMITS, tmp_dir, max_frames=50)
    assert len(clip.frames) == 12 and clip.fps == pytest.approx(6.0, rel=0.05)
    assert brightness(clip) == sorted(brightness(clip))
    assert_tmp_clean(tmp_dir)


@pytest.mark.parametrize("fmt", ["mp4", "webm", "avi"])
def test_long_video_is_sampled_by_seeking(fmt, tmp_dir):
    data = make_video(fmt, frames=600, fps=30, gop=30)
    start = time.perf_counter()
    clip = load_video(data, "video", LIMITS, tmp_dir)
    assert time.perf_counter() - start < 2.0
    assert len(clip.frames) == 8
    assert clip.duration == pytest.approx(20.0, abs=0.2)
    levels = brightness(clip)
    assert levels == sorted(levels)
    # centres of 8 equal slices of a ramp from ~35 to ~235: roughly evenly spaced
    steps = np.diff(levels)
    assert steps.min() > 15 and steps.max() < 35
    assert_tmp_clean(tmp_dir)


def test_video_over_bytes_limit_writes_nothing(tmp_dir, monkeypatch):
    import tempfile

    def no_files(*args, **kwargs):
        raise AssertionError("a file was created before the size check")

    monkeypatch.setattr(tempfile, "mkstemp", no_files)
    data = make_video("mp4")
    with pytest.raises(MediaError) as info:
        load_video(data, "video", MediaLimits(max_video_bytes=len(data) - 1), tmp_dir)
    assert_clean_error(info.value, "video", "max_video_bytes")
    assert_tmp_clean(tmp_dir)


@pytest.mark.parametrize("fmt", VIDEO_FORMATS)
def test_video_over_duration_limit(fmt, tmp_dir):
    data = make_video(fmt, frames=12, fps=6)  # 2 seconds
    with pytest.raises(MediaError) as info:
        load_video(data, "video", MediaLimits(max_video_seconds=1.5), tmp_dir)
    assert_clean_error(info.value, "video", "max_video_seconds")
    assert "2.0 seconds" in str(info.value)
    assert_tmp_clean(tmp_dir)


def test_video_without_declared_duration(tmp_dir, monkeypatch):
    """Containers that declare no duration (live-recorded WebM) are measured by demuxing."""
    import mmserve.media as media

    monkeypatch.setattr(media, "_declared_seconds", lambda container, stream: None)
    data = make_video("webm", frames=12, fps=6)
    clip = load_video(data, "video", LIMITS, tmp_dir)
    assert len(clip.frames) == 8 and clip.duration == pytest.approx(2.0, abs=0.2)
    with pytest.raises(MediaError) as info:
        load_video(data, "video", MediaLimits(max_video_seconds=1.5), tmp_dir)
    assert_clean_error(info.value, "video", "max_video_seconds")
    assert_tmp_clean(tmp_dir)


def test_video_frame_pixels_limit(tmp_dir):
    data = make_video("mp4", frames=2, size=(64, 48))
    with pytest.raises(MediaError) as info:
        load_video(data, "video", MediaLimits(max_image_pixels=1000), tmp_dir)
    assert_clean_error(info.value, "video", "max_image_pixels")
    assert_tmp_clean(tmp_dir)


def test_corrupt_video(tmp_dir):
    for fmt in VIDEO_FORMATS:
        data = make_video(fmt)
        for bad in (data[:64], data[:16] + bytes(len(data) - 16)):
            if sniff(bad) is None or sniff(bad)[0] != "video":
                continue
            with pytest.raises(MediaError) as info:
                load_video(bad, "video", LIMITS, tmp_dir)
            assert_clean_error(info.value, "video")
    assert_tmp_clean(tmp_dir)


def test_wrong_kind_for_video(tmp_dir):
    for data, got in ((make_audio("wav"), "WAV audio"), (make_audio("m4a"), "M4A audio")):
        with pytest.raises(MediaError) as info:
            load_video(data, "video", LIMITS, tmp_dir)
        assert_clean_error(info.value, "video")
        assert "not a supported video format" in str(info.value)
        assert got in str(info.value)
    assert_tmp_clean(tmp_dir)


def test_tmp_file_removed_when_decoding_fails_midway(tmp_dir, monkeypatch):
    import mmserve.media as media

    seen = []

    def boom(path, *args, **kwargs):
        seen.append(path)
        assert path.parent == tmp_dir and path.exists()
        raise media.MediaError("video: boom", "video")

    monkeypatch.setattr(media, "_decode_video", boom)
    with pytest.raises(MediaError):
        load_video(make_video("mp4"), "video", LIMITS, tmp_dir)
    assert seen and not seen[0].exists()
    assert_tmp_clean(tmp_dir)


def test_media_error_is_value_error():
    err = MediaError("image: too big", "image", "max_image_pixels")
    assert isinstance(err, ValueError)
    assert (str(err), err.field, err.limit) == ("image: too big", "image", "max_image_pixels")
    assert MediaError("x: y", "x").limit is None
