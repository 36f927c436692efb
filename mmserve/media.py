"""Decoding and validation of base64 media (images, audio, video) before any model sees it."""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import pathlib
import re
import struct
import tempfile
import urllib.parse
from dataclasses import dataclass

import av
import numpy as np
import soundfile as sf
import soxr
from PIL import Image, ImageOps

log = logging.getLogger("mmserve.media")

IMAGE_FORMATS = ("png", "jpeg", "webp", "gif", "bmp")
AUDIO_FORMATS = ("wav", "mp3", "flac", "m4a", "ogg", "aac", "webm", "mkv")
VIDEO_FORMATS = ("mp4", "mov", "avi", "webm", "mkv")

_IMAGE_EXPECTED = "expected PNG, JPEG, WEBP, GIF or BMP"
_AUDIO_EXPECTED = "expected WAV, MP3, FLAC, OGG or M4A"
_VIDEO_EXPECTED = "expected MP4, MOV, AVI, WEBM or MKV"
_DISPLAY = {"jpeg": "JPEG", "mkv": "Matroska"}

# Seconds of slack between the duration a header declares and what decoding produces
# (encoder delay/padding, rounding of timestamps) before a limit is enforced mid-decode.
_DECODE_SLACK_SECONDS = 1.0
# Videos with at most this many frames per sampled frame are decoded front to back;
# longer ones are sampled by seeking to each target time.
_SEQUENTIAL_FRAMES_PER_SAMPLE = 32


class MediaError(ValueError):
    """Bad media in a request; .field names the request field, .limit names a limit that was exceeded (or None)."""

    def __init__(self, message: str, field: str, limit: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.limit = limit

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class MediaLimits:
    max_image_pixels: int = 16_000_000
    max_images: int = 8
    max_audio_seconds: float = 600.0
    max_video_bytes: int = 64 * 1024 * 1024
    max_video_seconds: float = 120.0
    max_video_frames: int = 8  # frames sampled for the model
    max_media_bytes: int = 32 * 1024 * 1024  # any single decoded image or audio item


@dataclass
class VideoClip:
    frames: list[Image.Image]  # uniformly sampled, at most max_frames, RGB
    fps: float  # effective fps of the sampled frames (len(frames) / fps ~ duration)
    duration: float  # seconds of the source
    source_fps: float


def _err(field: str, text: str, limit: str | None = None) -> MediaError:
    return MediaError(f"{field}: {text}", field, limit)


def _describe(kind: str, fmt: str) -> str:
    return f"{_DISPLAY.get(fmt, fmt.upper())} {kind}"


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):g} MB"


# --------------------------------------------------------------------------- base64

_B64_CHARS = re.compile(r"[A-Za-z0-9+/_-]*")
_URLSAFE = str.maketrans("-_", "+/")


def decode_base64(data: str, field: str) -> bytes:
    """Decode plain or urlsafe base64, or a `data:<mime>;base64,...` URI, to bytes.

    Whitespace and missing padding are tolerated. Raises MediaError on anything else, or
    when the result is empty. Size limits are checked by the load_* functions.
    """
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("ascii")
        except UnicodeDecodeError:
            raise _err(field, "not valid base64") from None
    if not isinstance(data, str):
        raise _err(field, "expected a base64 string")
    text = data.strip()
    if text[:5].lower() == "data:":
        header, sep, payload = text[5:].partition(",")
        if not sep:
            raise _err(field, "malformed data URI; no comma before the data")
        params = [p.strip().lower() for p in header.split(";")[1:]]
        if "base64" not in params:
            raise _err(field, "data URI is not base64-encoded; expected ;base64,")
        text = urllib.parse.unquote(payload) if "%" in payload else payload
    elif text[:7].lower() == "http://" or text[:8].lower() == "https://":
        raise _err(field, "expected base64 data or a data URI, not a URL")
    text = "".join(text.split())
    body = text.rstrip("=")
    if len(text) - len(body) > 2 or not _B64_CHARS.fullmatch(body):
        raise _err(field, "not valid base64")
    if not body:
        raise _err(field, "empty media data")
    if len(body) % 4 == 1:
        raise _err(field, "not valid base64 (truncated)")
    body = body.translate(_URLSAFE) + "=" * (-len(body) % 4)
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise _err(field, "not valid base64") from None
    if not raw:
        raise _err(field, "empty media data")
    return raw


# --------------------------------------------------------------------------- sniffing

_MP3_BITRATES = {
    (3, 3): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (3, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (3, 1): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (2, 3): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (2, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_BITRATES[(2, 1)] = _MP3_BITRATES[(2, 2)]
_ISO_AUDIO_BRANDS = {b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "}
_ISO_IMAGE_BRANDS = {
    b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis",
}  # fmt: skip
_QT_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}
_BMP_DIB_SIZES = {12, 40, 52, 56, 64, 108, 124}


def _mpeg_frame_length(h: bytes) -> int | None:
    """Length in bytes of the MPEG audio frame whose 4-byte header is `h`, or None."""
    if len(h) < 4 or h[0] != 0xFF or (h[1] & 0xE0) != 0xE0:
        return None
    version = (h[1] >> 3) & 3  # 0: MPEG-2.5, 1: reserved, 2: MPEG-2, 3: MPEG-1
    layer = (h[1] >> 1) & 3  # 0: reserved, 1: III, 2: II, 3: I
    br_index, sr_index, padding = h[2] >> 4, (h[2] >> 2) & 3, (h[2] >> 1) & 1
    if version == 1 or layer == 0 or br_index in (0, 15) or sr_index == 3:
        return None
    rate = (44100, 48000, 32000)[sr_index] >> {3: 0, 2: 1, 0: 2}[version]
    bitrate = _MP3_BITRATES[(3 if version == 3 else 2, layer)][br_index - 1] * 1000
    if layer == 3:
        return (12 * bitrate // rate + padding) * 4
    if layer == 1 and version != 3:
        return 72 * bitrate // rate + padding
    return 144 * bitrate // rate + padding


def _is_mp3_stream(data: bytes, offset: int = 0) -> bool:
    """True when an MPEG audio frame header starts at `offset`, followed by another one
    (or by the end of the data)."""
    length = _mpeg_frame_length(data[offset : offset + 4])
    if length is None:
        return False
    nxt = offset + length
    return nxt == len(data) or _mpeg_frame_length(data[nxt : nxt + 4]) is not None


def _is_adts(data: bytes, offset: int = 0) -> bool:
    """True when an AAC ADTS header (and the next one, if present) starts at `offset`."""
    h = data[offset : offset + 7]
    if len(h) < 7 or h[0] != 0xFF or (h[1] & 0xF6) != 0xF0 or ((h[2] >> 2) & 0xF) > 12:
        return False
    length = ((h[3] & 3) << 11) | (h[4] << 3) | (h[5] >> 5)
    if length < 7:
        return False
    nxt = offset + length
    if nxt == len(data):
        return True
    return nxt + 2 <= len(data) and data[nxt] == 0xFF and (data[nxt + 1] & 0xF6) == 0xF0


def _probe_tracks(data: bytes) -> tuple[bool, bool] | None:
    """(has a video track, has an audio track) per PyAV, or None if it cannot parse the data."""
    try:
        with av.open(io.BytesIO(data), "r", metadata_errors="ignore") as container:
            video = any(not _is_cover_art(s) for s in container.streams.video)
            return video, bool(container.streams.audio)
    except Exception as exc:  # noqa: BLE001 - any parse failure just means "unknown"
        log.debug("media probe failed: %s", exc)
        return None


def _is_cover_art(stream) -> bool:
    try:
        return bool(stream.disposition & av.stream.Disposition.attached_pic)
    except (AttributeError, TypeError):
        return False


def _sniff_container(data: bytes, fmt: str, brand_says_audio: bool) -> tuple[str, str]:
    tracks = _probe_tracks(data)
    if tracks is None:
        return ("audio", "m4a") if brand_says_audio else ("video", fmt)
    has_video, has_audio = tracks
    if not has_video and has_audio:
        return ("audio", "m4a" if fmt in ("mp4", "mov") else fmt)
    if fmt == "mov" or not brand_says_audio:
        return ("video", fmt)
    return ("video", "mp4") if has_video else ("audio", "m4a")


def sniff(data: bytes) -> tuple[str, str] | None:
    """(kind, format) from the magic bytes of `data`, or None when it is not supported.

    kind is "image", "audio" or "video". ISO-BMFF (MP4/MOV/M4A) and Matroska/WebM files
    are probed with PyAV: without a video track (cover art aside) but with an audio track
    they are audio ("m4a", or "webm"/"mkv"); otherwise video.
    """
    head = bytes(data[:64])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ("image", "png")
    if head.startswith(b"\xff\xd8\xff"):
        return ("image", "jpeg")
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return ("image", "gif")
    if head[:4] in (b"RIFF", b"RF64") and len(head) >= 12:
        riff = head[8:12]
        if riff == b"WEBP" and head[:4] == b"RIFF":
            return ("image", "webp")
        if riff == b"WAVE":
            return ("audio", "wav")
        if riff == b"AVI ":
            return ("video", "avi")
        return None
    if head[:2] == b"BM" and len(head) >= 18:
        if struct.unpack_from("<I", head, 14)[0] in _BMP_DIB_SIZES:
            return ("image", "bmp")
        return None
    if head.startswith(b"fLaC"):
        return ("audio", "flac")
    if head.startswith(b"OggS") and len(head) > 27:
        first = head[27 + head[26] :]
        if first.startswith((b"\x01vorbis", b"OpusHead", b"\x7fFLAC", b"Speex   ")):
            return ("audio", "ogg")
        return None
    if head.startswith(b"ID3") and len(head) >= 10:
        size = 0
        for byte in head[6:10]:  # a "syncsafe" integer: 7 bits per byte
            size = (size << 7) | (byte & 0x7F)
        end = 10 + size + (10 if head[5] & 0x10 else 0)
        if data[end : end + 4] == b"fLaC":
            return ("audio", "flac")
        if _is_adts(data, end):
            return ("audio", "aac")
        return ("audio", "mp3")
    if _is_mp3_stream(data):
        return ("audio", "mp3")
    if _is_adts(data):
        return ("audio", "aac")
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        fmt = "webm" if b"webm" in head else "mkv"
        return _sniff_container(data, fmt, brand_says_audio=False)
    if head[4:8] == b"ftyp" and len(head) >= 12:
        brand = head[8:12]
        if brand in _ISO_IMAGE_BRANDS:
            return None
        if brand == b"qt  ":
            return _sniff_container(data, "mov", brand_says_audio=False)
        return _sniff_container(data, "mp4", brand_says_audio=brand in _ISO_AUDIO_BRANDS)
    if head[4:8] in _QT_ATOMS:
        return _sniff_container(data, "mov", brand_says_audio=False)
    return None


def _check_kind(data: bytes, field: str, kind: str, expected: str) -> str:
    found = sniff(data)
    if found is None:
        raise _err(field, f"the data is not a supported {kind} format; {expected}")
    if found[0] != kind:
        raise _err(
            field,
            f"the data is not a supported {kind} format (it is {_describe(*found)}); {expected}",
        )
    return found[1]


# --------------------------------------------------------------------------- images


def load_image(data: bytes, field: str, limits: MediaLimits) -> Image.Image:
    """Decode an image to RGB after checking its size and its declared pixel count.

    Transparent images are composited on white; EXIF orientation is applied.
    """
    if len(data) > limits.max_media_bytes:
        raise _err(
            field,
            f"image is {_mb(len(data))}; the limit is {_mb(limits.max_media_bytes)}",
            "max_media_bytes",
        )
    fmt = _check_kind(data, field, "image", _IMAGE_EXPECTED)
    # Pillow's own bomb check runs inside Image.open: with its default MAX_IMAGE_PIXELS it
    # raises DecompressionBombError above ~179M pixels. Between ~89M and ~179M it only warns;
    # that warning is not turned into an error here because warnings.catch_warnings() is
    # process-global (not thread-safe) and our own limit below is what decides.
    try:
        img = Image.open(io.BytesIO(data), formats=[fmt.upper()])
        width, height = img.size  # from the header: nothing is decoded yet
        if width * height > limits.max_image_pixels:
            raise _err(
                field,
                f"image is {width}x{height} pixels; the limit is "
                f"{limits.max_image_pixels} pixels",
                "max_image_pixels",
            )
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
    except MediaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _err(
            field,
            f"image is larger than the limit of {limits.max_image_pixels} pixels",
            "max_image_pixels",
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        log.debug("%s: image decode failed: %r", field, exc)
        raise _err(field, "could not decode the image (corrupt or truncated data)") from None
    if width <= 0 or height <= 0:
        raise _err(field, "image has no pixels")
    return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = float(arr.max()) or 1.0
        img = Image.fromarray(np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


# --------------------------------------------------------------------------- audio


def load_audio(
    data: bytes,
    field: str,
    limits: MediaLimits,
    tmp_dir: pathlib.Path,
    sr: int = 16000,
) -> np.ndarray:
    """Decode audio to float32 mono at `sr` Hz.

    WAV/FLAC/OGG/MP3 are read with soundfile, M4A/AAC/WebM (or anything soundfile
    rejects) with PyAV; both read from memory, so nothing is written to `tmp_dir`. The
    duration declared by the header is checked before decoding, and decoding stops as
    soon as the decoded samples pass the limit (headers may lie).
    """
    del tmp_dir  # both decoders read from memory
    if len(data) > limits.max_media_bytes:
        raise _err(
            field,
            f"audio is {_mb(len(data))}; the limit is {_mb(limits.max_media_bytes)}",
            "max_media_bytes",
        )
    fmt = _check_kind(data, field, "audio", _AUDIO_EXPECTED)
    samples = native_sr = None
    if fmt in ("wav", "flac", "ogg", "mp3"):
        try:
            samples, native_sr = _decode_soundfile(data, field, limits)
        except MediaError:
            raise
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
            log.debug("%s: soundfile could not decode %s (%s); trying PyAV", field, fmt, exc)
    if samples is None:
        try:
            samples, native_sr = _decode_av_audio(data, field, limits, exact=fmt == "m4a")
        except MediaError:
            raise
        except (av.FFmpegError, OSError, ValueError, RuntimeError, EOFError) as exc:
            log.debug("%s: PyAV could not decode %s: %r", field, fmt, exc)
            raise _err(field, "could not decode the audio (corrupt or truncated data)") from None
    if samples.size == 0:
        raise _err(field, "audio contains no samples")
    if not np.isfinite(samples).all():
        raise _err(field, "audio contains invalid (NaN or infinite) samples")
    if native_sr != sr:
        samples = _resample(samples, native_sr, sr)
    return np.ascontiguousarray(samples, dtype=np.float32)


def _resample(samples: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """What librosa.resample does by default (soxr "HQ", length fixed to ceil(n * ratio)),
    called directly: librosa's lazy submodule loading costs seconds on a first call."""
    out = soxr.resample(samples, orig_sr, target_sr, quality="soxr_hq")
    size = int(np.ceil(samples.shape[-1] * target_sr / orig_sr))
    if out.shape[-1] > size:
        return out[:size]
    return np.pad(out, (0, size - out.shape[-1])) if out.shape[-1] < size else out


def _too_long_audio(field: str, seconds: float, limits: MediaLimits) -> MediaError:
    return _err(
        field,
        f"audio is {seconds:.1f} seconds long; the limit is {limits.max_audio_seconds:g} seconds",
        "max_audio_seconds",
    )


def _decode_soundfile(data: bytes, field: str, limits: MediaLimits) -> tuple[np.ndarray, int]:
    with sf.SoundFile(io.BytesIO(data)) as f:
        rate = int(f.samplerate)
        if rate <= 0:
            raise ValueError("no sample rate")
        if f.frames > 0 and f.frames / rate > limits.max_audio_seconds:
            raise _too_long_audio(field, f.frames / rate, limits)
        cap = int((limits.max_audio_seconds + _DECODE_SLACK_SECONDS) * rate)
        blocks, total = [], 0
        for block in f.blocks(blocksize=1 << 16, dtype="float32", always_2d=True):
            total += len(block)
            if total > cap:
                raise _too_long_audio(field, total / rate, limits)
            blocks.append(block.mean(axis=1, dtype=np.float32))
    return (np.concatenate(blocks) if blocks else np.zeros(0, np.float32)), rate


def _decode_av_audio(
    data: bytes, field: str, limits: MediaLimits, exact: bool = False
) -> tuple[np.ndarray, int]:
    """Decode the first audio track with PyAV. `exact`: the container's declared duration
    is exact (MP4/M4A tracks), so trailing codec padding beyond it (AAC decodes whole
    1024-sample frames) is cut off."""
    with av.open(io.BytesIO(data), "r", metadata_errors="ignore") as container:
        if not container.streams.audio:
            raise _err(field, "contains no audio track")
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        if rate <= 0:
            raise ValueError("no sample rate")
        declared = _declared_seconds(container, stream)
        if declared is not None and declared > limits.max_audio_seconds:
            raise _too_long_audio(field, declared, limits)
        resampler = av.AudioResampler(format="fltp", rate=rate)
        cap = int((limits.max_audio_seconds + _DECODE_SLACK_SECONDS) * rate)
        chunks, total = [], 0

        def take(frames) -> None:
            nonlocal total
            for out in frames:
                mono = out.to_ndarray().mean(axis=0, dtype=np.float32)
                total += mono.size
                if total > cap:
                    raise _too_long_audio(field, total / rate, limits)
                chunks.append(mono)

        for frame in container.decode(stream):
            take(resampler.resample(frame))
        take(resampler.resample(None))
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if exact and declared is not None:
        expected = round(declared * rate)
        if 0 < expected < samples.size <= expected + 4096:
            samples = samples[:expected]
    return samples, rate


def _declared_seconds(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


# --------------------------------------------------------------------------- video


def load_video(
    data: bytes,
    field: str,
    limits: MediaLimits,
    tmp_dir: pathlib.Path,
    max_frames: int | None = None,
) -> VideoClip:
    """Sample at most `max_frames` (default limits.max_video_frames) RGB frames uniformly.

    The data is written to a temporary file inside `tmp_dir` (removed before returning,
    also on failure) and decoded with PyAV. Short videos are decoded front to back; long
    ones are sampled by seeking to each target time.
    """
    if len(data) > limits.max_video_bytes:
        raise _err(
            field,
            f"video is {_mb(len(data))}; the limit is {_mb(limits.max_video_bytes)}",
            "max_video_bytes",
        )
    fmt = _check_kind(data, field, "video", _VIDEO_EXPECTED)
    count = limits.max_video_frames if max_frames is None else max_frames
    if count < 1:
        raise ValueError("max_frames must be at least 1")
    fd, name = tempfile.mkstemp(prefix="video-", suffix=f".{fmt}", dir=tmp_dir)
    path = pathlib.Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            return _decode_video(path, field, limits, count)
        except MediaError:
            raise
        except (av.FFmpegError, OSError, ValueError, RuntimeError, EOFError) as exc:
            log.debug("%s: video decode failed: %r", field, exc)
            raise _err(field, "could not decode the video (corrupt or truncated data)") from None
    finally:
        path.unlink(missing_ok=True)


def _too_long_video(field: str, seconds: float, limits: MediaLimits) -> MediaError:
    return _err(
        field,
        f"video is {seconds:.1f} seconds long; the limit is {limits.max_video_seconds:g} seconds",
        "max_video_seconds",
    )


def _open_video(path: pathlib.Path, field: str):
    container = av.open(str(path), "r", metadata_errors="ignore")
    streams = [s for s in container.streams.video if not _is_cover_art(s)]
    if not streams:
        container.close()
        raise _err(field, "contains no video track")
    stream = streams[0]
    stream.thread_type = "AUTO"
    return container, stream


def _scan_duration(path: pathlib.Path, field: str, limits: MediaLimits) -> float:
    """Duration from packet timestamps (demuxing only), for containers that do not declare it."""
    container, stream = _open_video(path, field)
    with container:
        tb = float(stream.time_base)
        first = last = None
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            start = packet.pts * tb
            end = start + (packet.duration or 0) * tb
            first = start if first is None else min(first, start)
            last = end if last is None else max(last, end)
            if last - first > limits.max_video_seconds + _DECODE_SLACK_SECONDS:
                raise _too_long_video(field, last - first, limits)
    return 0.0 if first is None else last - first


def _decode_video(path: pathlib.Path, field: str, limits: MediaLimits, count: int) -> VideoClip:
    container, stream = _open_video(path, field)
    with container:
        ctx = stream.codec_context
        if ctx.width and ctx.height and ctx.width * ctx.height > limits.max_image_pixels:
            raise _err(
                field,
                f"video frames are {ctx.width}x{ctx.height} pixels; the limit is "
                f"{limits.max_image_pixels} pixels",
                "max_image_pixels",
            )
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        source_fps = float(rate) if rate else 0.0
        duration = _declared_seconds(container, stream)
        n_frames = int(stream.frames or 0)
    if duration is None:
        duration = _scan_duration(path, field, limits)
    if duration > limits.max_video_seconds:
        raise _too_long_video(field, duration, limits)
    if source_fps <= 0 and n_frames and duration > 0:
        source_fps = n_frames / duration
    if not n_frames and source_fps and duration:
        n_frames = max(1, round(duration * source_fps))
    count = min(count, n_frames) if n_frames else count
    # The middle of each of `count` equal slices, less half a frame (frame k shows from k/fps
    # to (k+1)/fps): when count equals the number of frames, every frame is a target.
    half_frame = 0.5 / source_fps if source_fps > 0 else 0.0
    targets = [max(0.0, duration * (i + 0.5) / count - half_frame) for i in range(count)]

    frames = None
    if n_frames > _SEQUENTIAL_FRAMES_PER_SAMPLE * count:
        try:
            frames = _sample_by_seeking(path, field, targets)
        except MediaError:
            raise
        except (av.FFmpegError, OSError, ValueError, RuntimeError, EOFError) as exc:
            log.debug("%s: seeking failed (%r); decoding sequentially", field, exc)
    if frames is None:
        frames = _sample_sequentially(path, field, limits, targets, duration)
    if not frames:
        raise _err(field, "video contains no decodable frames")
    if duration <= 0 and source_fps > 0:
        duration = len(frames) / source_fps
    fps = len(frames) / duration if duration > 0 else (source_fps or 1.0)
    return VideoClip(frames=frames, fps=fps, duration=duration, source_fps=source_fps)


def _frame_time(frame, index: int, fps: float) -> float:
    if frame.time is not None:
        return float(frame.time)
    return index / fps if fps else float(index)


def _sample_sequentially(
    path: pathlib.Path,
    field: str,
    limits: MediaLimits,
    targets: list[float],
    duration: float,
) -> list[Image.Image]:
    """Decode every frame once, keeping the one nearest each target (seconds from start)."""
    container, stream = _open_video(path, field)
    chosen: list[Image.Image] = []
    with container:
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        start = None
        prev = prev_t = None
        prev_index = last_index = -1
        j = 0
        cap = limits.max_video_seconds + _DECODE_SLACK_SECONDS
        for index, frame in enumerate(container.decode(stream)):
            t = _frame_time(frame, index, fps)
            start = t if start is None else start
            t -= start
            if t > cap:
                raise _too_long_video(field, max(t, duration), limits)
            while j < len(targets) and t >= targets[j]:
                use_prev = prev is not None and targets[j] - prev_t < t - targets[j]
                pick, pick_index = (prev, prev_index) if use_prev else (frame, index)
                if pick_index != last_index:
                    chosen.append(pick.to_image())
                    last_index = pick_index
                j += 1
            if j == len(targets):
                break
            prev, prev_t, prev_index = frame, t, index
        if j < len(targets) and prev is not None and prev_index != last_index:
            chosen.append(prev.to_image())  # the stream ended before the last targets
    return [img if img.mode == "RGB" else img.convert("RGB") for img in chosen]


def _sample_by_seeking(path: pathlib.Path, field: str, targets: list[float]) -> list[Image.Image]:
    """Seek to the keyframe before each target and decode forward to the nearest frame."""
    container, stream = _open_video(path, field)
    chosen: list[Image.Image] = []
    with container:
        tb = stream.time_base
        origin = float(stream.start_time * tb) if stream.start_time is not None else 0.0
        last_time = None
        for target in targets:
            absolute = origin + target
            container.seek(int(absolute / tb), stream=stream, backward=True)
            prev = prev_t = None
            pick = pick_t = None
            for frame in container.decode(stream):
                if frame.time is None:
                    raise ValueError("frames without timestamps")
                t = float(frame.time)
                if t >= absolute:
                    use_prev = prev is not None and absolute - prev_t < t - absolute
                    pick, pick_t = (prev, prev_t) if use_prev else (frame, t)
                    break
                prev, prev_t = frame, t
            if pick is None:
                pick, pick_t = prev, prev_t
            if pick is None:
                raise ValueError("seek produced no frame")
            if pick_t != last_time:
                chosen.append(pick.to_image().convert("RGB"))
                last_time = pick_t
    return chosen
