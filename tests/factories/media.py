"""Deterministic generators of small, real media files (images, audio, video) for tests."""

from __future__ import annotations

import functools
import io
import struct
import zlib
from fractions import Fraction

import av
import numpy as np
import soundfile as sf
from PIL import Image

# Muxer and codec used for each container; all of them work with the wheels installed here
# (PyAV 18 bundles its own FFmpeg with libx264, libvpx, libmp3lame, libopus and the native
# AAC/MJPEG/MPEG-4 encoders; no system ffmpeg is needed).
VIDEO_CODECS: dict[str, tuple[str, str, str]] = {
    # fmt: (muxer, codec, pixel format)
    "mp4": ("mp4", "libx264", "yuv420p"),
    "mov": ("mov", "mpeg4", "yuv420p"),
    "avi": ("avi", "mjpeg", "yuvj420p"),
    "webm": ("webm", "libvpx", "yuv420p"),
    "mkv": ("matroska", "libx264", "yuv420p"),
}
AUDIO_CODECS: dict[str, tuple[str, str]] = {
    # fmt: (muxer, codec) for the formats encoded with PyAV
    "mp3": ("mp3", "libmp3lame"),
    "m4a": ("ipod", "aac"),
    "ogg": ("ogg", "libopus"),
    "webm": ("webm", "libopus"),
}
_BITEXACT = {"fflags": "+bitexact"}


def _pattern(width: int, height: int, level: int) -> np.ndarray:
    """An RGB frame: a flat `level` of gray plus a small horizontal/vertical gradient."""
    x = np.linspace(0, 30, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 30, height, dtype=np.float32)[:, None]
    base = np.full((height, width), float(level), dtype=np.float32)
    rgb = np.stack([base + x, base + y, base + (x + y) / 2], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def make_image(fmt: str = "PNG", size: tuple[int, int] = (64, 48)) -> bytes:
    """An RGB image of `size` (width, height) encoded as PNG, JPEG, WEBP, GIF or BMP."""
    fmt = fmt.upper()
    if fmt == "JPG":
        fmt = "JPEG"
    img = Image.fromarray(_pattern(size[0], size[1], 100))
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=90)
    elif fmt == "WEBP":
        img.save(buf, "WEBP", quality=90, method=0)
    elif fmt in ("PNG", "GIF", "BMP"):
        img.save(buf, fmt)
    else:
        raise ValueError(f"unsupported image format {fmt}")
    return buf.getvalue()


def _tone(seconds: float, sr: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * sr)), dtype=np.float64) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def make_audio(
    fmt: str = "wav",
    seconds: float = 1.0,
    sr: int = 16000,
    *,
    muxer: str | None = None,
) -> bytes:
    """A mono 440 Hz sine tone: WAV, FLAC (soundfile); MP3, M4A/AAC, OGG/Opus, WEBM/Opus (PyAV).

    `muxer` overrides the PyAV container (e.g. "mp4" writes AAC audio in a plain
    isom-branded MP4 instead of an M4A-branded one).
    """
    fmt = fmt.lower()
    y = _tone(seconds, sr)
    if fmt in ("wav", "flac"):
        # (soundfile's OGG writer picks a random stream serial number: not deterministic)
        buf = io.BytesIO()
        sf.write(buf, y, sr, format=fmt.upper(), subtype="PCM_16")
        return buf.getvalue()
    if fmt not in AUDIO_CODECS:
        raise ValueError(f"unsupported audio format {fmt}")
    default_muxer, codec = AUDIO_CODECS[fmt]
    if codec == "libopus" and sr not in (8000, 12000, 16000, 24000, 48000):
        raise ValueError("Opus needs a sample rate of 8, 12, 16, 24 or 48 kHz")
    buf = io.BytesIO()
    with av.open(buf, "w", format=muxer or default_muxer, options=_BITEXACT) as out:
        stream = out.add_stream(codec, rate=sr, layout="mono")
        stream.codec_context.options = {"flags": "+bitexact"}
        if codec != "libopus":
            stream.bit_rate = 64000
        frame = av.AudioFrame.from_ndarray(
            (y * 32767).astype(np.int16)[None, :], format="s16", layout="mono"
        )
        frame.sample_rate = sr
        frame.time_base = Fraction(1, sr)
        frame.pts = 0
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def make_video(
    fmt: str = "mp4",
    frames: int = 12,
    fps: int = 6,
    size: tuple[int, int] = (64, 48),
    *,
    gop: int = 12,
    audio: bool = False,
) -> bytes:
    """A video of `frames` frames at `fps`; frame i is brighter than frame i-1.

    mp4/mkv: H.264 (libx264), mov: MPEG-4 part 2, avi: MJPEG, webm: VP8 (libvpx).
    With `audio`, a 440 Hz tone track as long as the video is added (AAC; Opus in webm,
    MP3 in avi).
    """
    fmt = fmt.lower()
    if fmt not in VIDEO_CODECS:
        raise ValueError(f"unsupported video format {fmt}")
    muxer, codec, pix_fmt = VIDEO_CODECS[fmt]
    width, height = size
    buf = io.BytesIO()
    with av.open(buf, "w", format=muxer, options=_BITEXACT) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.gop_size = gop
        stream.codec_context.thread_count = 1
        opts = {"flags": "+bitexact"}
        if codec == "libx264":
            opts.update(preset="ultrafast", tune="zerolatency")
        elif codec == "libvpx":
            opts.update(deadline="realtime", cpu_used="8")
        stream.codec_context.options = opts
        if audio:
            _add_tone_track(out, fmt, frames / fps)
        for i in range(frames):
            level = 20 + round(200 * i / max(frames - 1, 1))
            frame = av.VideoFrame.from_ndarray(_pattern(width, height, level), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame.reformat(format=pix_fmt)):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def _add_tone_track(out, fmt: str, seconds: float) -> None:
    codec = {"webm": "libopus", "avi": "libmp3lame"}.get(fmt, "aac")
    sr = 48000
    stream = out.add_stream(codec, rate=sr, layout="mono")
    stream.codec_context.options = {"flags": "+bitexact"}
    y = (_tone(seconds, sr) * 32767).astype(np.int16)[None, :]
    frame = av.AudioFrame.from_ndarray(y, format="s16", layout="mono")
    frame.sample_rate, frame.time_base, frame.pts = sr, Fraction(1, sr), 0
    for packet in [*stream.encode(frame), *stream.encode(None)]:
        out.mux(packet)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


@functools.lru_cache(maxsize=8)
def make_bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid, tiny PNG (1-bit grayscale, all zeros) whose header claims width x height pixels.

    Decoding it fully would need width*height bytes of memory; the file itself is ~1/1000
    of the raw 1-bit data (30000x30000 -> about 110 KB).
    """
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte "None" + packed bits
    comp = zlib.compressobj(9)
    rows_per_chunk = max(1, (1 << 20) // len(row))
    parts = []
    for start in range(0, height, rows_per_chunk):
        parts.append(comp.compress(row * min(rows_per_chunk, height - start)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )
