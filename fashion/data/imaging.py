"""Image bytes -> verified 8-bit RGB -> resized -> JPEG bytes (OpenCV throughout).

The type of a file is recognised from its first bytes, never from a URL or a
Content-Type header. Pixel counts are checked from the header before any
decoding, so a decompression bomb is refused without allocating it.
"""

from __future__ import annotations

import codecs
import io
import warnings

import cv2
import numpy as np
from PIL import Image

RESIZE_MODES = ("crop", "stretch", "keep")

# (magic bytes at offset 0, format name)
_MAGIC = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)

cv2.setNumThreads(1)  # parallelism comes from our worker pool; nested pools only thrash
try:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
except AttributeError:  # older builds without the logging module
    pass


class ImageError(Exception):
    """An image we refuse; `str(e)` is `kind: detail` for failures.csv."""


def sniff(data: bytes) -> str | None:
    """The image format named by the leading bytes, or None."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


# What a file that is not an image usually is: named in failures.csv instead of its bytes
# (the first bytes of a local file may be anything, a key or a password included).
_NOT_IMAGES = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\x7fELF", "an executable (ELF)"),
    (b"8BPS", "a Photoshop document (PSD, not supported)"),
    (b"\x00\x00\x01\x00", "an icon (ICO, not supported)"),
)


def describe_non_image(data: bytes) -> str:
    """`not an image: <what it is>`: the detected type only, never the content."""
    head = data[:512].lstrip().lower()
    if not data:
        kind = "empty file"
    elif head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        kind = "content is an HTML page"
    elif b"<svg" in head:
        kind = "an SVG drawing (vector images are not supported)"
    elif data[4:8] == b"ftyp":  # ISO media: HEIC/AVIF photos or MP4/QuickTime video
        photo = data[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"avif", b"avis")
        kind = "a HEIC/AVIF photo (not supported: convert it to JPEG)" if photo else "a video (MP4/QuickTime)"
    else:
        kind = next((name for magic, name in _NOT_IMAGES if data.startswith(magic)), None) or _text_or_binary(data)
    return f"not an image: {kind}"


def _text_or_binary(data: bytes) -> str:
    head = data[:512]
    try:  # final=False: a multi-byte character cut at 512 bytes is still text
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        return "a text file (JSON?)" if head.lstrip()[:1] in (b"{", b"[") else "a text file"
    return f"unrecognised binary data ({len(data):,} bytes)"


def header_size(data: bytes) -> tuple[int, int]:
    """(width, height) read from the header only."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Image.DecompressionBombError as e:  # PIL's own hard stop, far above ours
        raise ImageError(f"too many pixels: {e}") from None
    except Exception as e:
        raise ImageError(f"decode error: unreadable header ({type(e).__name__})") from None


def _reduction(width: int, height: int, target: int) -> int:
    """Largest JPEG DCT scale (1, 2, 4, 8) that still leaves the short side >= target."""
    short = min(width, height)
    for factor in (8, 4, 2):
        if short // factor >= target:
            return factor
    return 1


_REDUCED = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def decode_rgb(data: bytes, *, target: int = 0, min_side: int = 1, max_pixels: int = 64_000_000) -> np.ndarray:
    """Decode to an HxWx3 uint8 RGB array with EXIF orientation applied.

    RGBA/LA are composited on white, palette and grey become RGB, 16-bit is
    scaled to 8-bit. JPEGs much larger than `target` are decoded at a reduced
    DCT scale (2-8x faster, same quality after the later downscale).
    """
    fmt = sniff(data)
    if fmt is None:
        raise ImageError(describe_non_image(data))
    try:
        width, height = header_size(data)
    except ImageError as e:  # Pillow's own stop (2 x Image.MAX_IMAGE_PIXELS): still say which flag limits
        if str(e).startswith("too many pixels"):
            raise ImageError(f"{e} (--max-pixels {max_pixels:,})") from None
        raise
    if width * height > max_pixels:
        raise ImageError(f"too many pixels: {width}x{height} = {width * height:,} > --max-pixels {max_pixels:,}")
    if min(width, height) < min_side:
        raise ImageError(f"image too small: {width}x{height}, shorter side < --min-side {min_side}")
    buf = np.frombuffer(data, np.uint8)
    if fmt == "jpeg":
        # libjpeg fills a cut-off scan with grey rather than failing: insist on the end marker.
        if b"\xff\xd9" not in data[-4096:]:
            raise ImageError("decode error: truncated JPEG (no end-of-image marker)")
        # IMREAD_COLOR applies EXIF orientation and converts CMYK/grey JPEGs to BGR.
        img = cv2.imdecode(buf, _REDUCED[_reduction(width, height, target)] if target else cv2.IMREAD_COLOR)
    else:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        if img is None:
            img = _decode_with_pil(data)
        else:
            img = _to_bgr8(img)
    if img is None:
        raise ImageError(f"decode error: corrupt or truncated {fmt.upper()}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _to_bgr8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        return _on_white(img)
    if img.shape[2] == 2:  # grey + alpha
        grey = cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2BGR)
        return _on_white(np.dstack([grey, img[:, :, 1]]))
    return img


def _on_white(bgra: np.ndarray) -> np.ndarray:
    """Composite a BGRA image on a white background (transparent product shots stay white)."""
    alpha = bgra[:, :, 3:4].astype(np.float32) / 255.0
    rgb = bgra[:, :, :3].astype(np.float32)
    return (rgb * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)


def _decode_with_pil(data: bytes) -> np.ndarray | None:
    """Fallback for formats this OpenCV build cannot read (e.g. some GIF/TIFF variants)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGBA")
            rgba = np.asarray(im)
    except Exception:
        return None
    return _on_white(cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))


def resize(img: np.ndarray, size: int, mode: str = "crop") -> np.ndarray:
    """Resize an RGB array.

    Args:
      img: HxWx3 uint8.
      size: target square side (`crop`, `stretch`) or shorter side (`keep`).
      mode: `crop` = shorter side to `size` then center crop (the ResNet recipe);
        `stretch` = plain resize to a square (the original generator);
        `keep` = shorter side to `size`, aspect ratio kept.
    Returns:
      The resized uint8 array.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    h, w = img.shape[:2]
    if mode == "stretch":
        return cv2.resize(img, (size, size), interpolation=_interp(min(h, w), size))
    scale = size / min(h, w)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    out = img if (nw, nh) == (w, h) else cv2.resize(img, (nw, nh), interpolation=_interp(min(h, w), size))
    if mode == "keep":
        return out
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(out[top : top + size, left : left + size])


def _interp(src: int, dst: int) -> int:
    # INTER_AREA averages (no aliasing) for a real shrink, below half size. Above half size (what is left
    # after a JPEG's reduced DCT decode, and any enlargement) bilinear samples every source pixel anyway, at
    # a fifth of INTER_AREA's cost there (0.25 vs 1.3 ms per 550x825 photo, measured 2026-12-03).
    return cv2.INTER_AREA if dst * 2 < src else cv2.INTER_LINEAR


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ImageError("encode error: OpenCV could not write JPEG")
    return buf.tobytes()


def process(
    data: bytes, *, size: int, mode: str = "crop", quality: int = 95, min_side: int = 1, max_pixels: int = 64_000_000
) -> tuple[bytes, int, int]:
    """Bytes in, (JPEG bytes, height, width) out: the whole per-image step of ingestion."""
    rgb = decode_rgb(data, target=size, min_side=min_side, max_pixels=max_pixels)
    out = resize(rgb, size, mode)
    return encode_jpeg(out, quality), out.shape[0], out.shape[1]
