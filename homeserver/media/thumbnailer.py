"""Thumbnails with Pillow: sizes, choice among the configured sizes, and encoding.

Everything that decodes an image is blocking and runs in a worker thread.
An image is opened lazily (only its header is read) and refused before any
pixel is decoded when it has more than `max_image_pixels` pixels, so a small
file that claims to be a huge image (a decompression bomb) costs nothing.
Only JPEG, PNG (APNG), GIF and WebP decoders are ever used.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError, features

# Content types we make thumbnails of (Synapse's set), and the Pillow formats
# allowed to decode them.
THUMBNAILABLE_TYPES = frozenset(
    {"image/jpeg", "image/jpg", "image/png", "image/apng", "image/gif", "image/webp"}
)
_FORMATS = ("JPEG", "PNG", "GIF", "WEBP")
# EXIF orientations that swap width and height.
_TRANSPOSED = {5, 6, 7, 8}
_JPEG_QUALITY = 80


class CannotThumbnail(Exception):
    """The content is not an image we can read."""


class ImageTooLarge(Exception):
    """The image has more pixels than max_image_pixels."""


@dataclass(frozen=True)
class ImageInfo:
    width: int  # as displayed, after EXIF orientation
    height: int
    format: str  # Pillow's name: JPEG, PNG, GIF, WEBP
    animated: bool


@dataclass(frozen=True)
class EncodedThumbnail:
    data: bytes
    content_type: str


def _open(path: Path, max_pixels: int) -> Image.Image:
    try:
        image = Image.open(path, formats=_FORMATS)
    except Image.DecompressionBombError:
        raise ImageTooLarge() from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise CannotThumbnail() from None
    width, height = image.size
    if width < 1 or height < 1:
        image.close()
        raise CannotThumbnail()
    if width * height > max_pixels:
        image.close()
        raise ImageTooLarge()
    return image


def probe(path: Path, max_pixels: int) -> ImageInfo:
    """The image's size and format from its header, without decoding it."""
    with _open(path, max_pixels) as image:
        width, height = image.size
        try:
            orientation = image.getexif().get(0x0112) if image.format == "JPEG" else None
            animated = bool(getattr(image, "is_animated", False))
        except (OSError, ValueError, SyntaxError, EOFError):
            raise CannotThumbnail() from None
        if orientation in _TRANSPOSED:
            width, height = height, width
        return ImageInfo(width, height, image.format or "", animated)


def target_size(info: ImageInfo, width: int, height: int, method: str) -> tuple[int, int]:
    """The size of the thumbnail of `info` for a request of width x height; never upscaled.

    scale: the largest size of the image's aspect that fits in the box.
    crop: the box itself (shrunk, keeping its aspect, to fit in the image).
    """
    if method == "crop":
        factor = min(1.0, info.width / width, info.height / height)
        return max(1, round(width * factor)), max(1, round(height * factor))
    factor = min(1.0, width / info.width, height / info.height)
    return max(1, round(info.width * factor)), max(1, round(info.height * factor))


def choose_size(
    candidates: list[tuple[int, int, str]], need: tuple[int, int], method: str
) -> tuple[int, int, str]:
    """The best of the (clamped) configured sizes when `need` is what the request needs.

    The smallest one at least as large as `need` in both dimensions made with
    the asked method (for crop, the closest in aspect ratio first); else the
    smallest large enough by the other method; else the largest there is.
    """
    need_w, need_h = need
    aspect = need_w / need_h

    def large_enough(c: tuple[int, int, str]) -> bool:
        return c[0] >= need_w and c[1] >= need_h

    def fit(c: tuple[int, int, str]) -> tuple[float, int]:
        t_w, t_h, t_method = c
        aspect_error = abs(math.log((t_w / t_h) / aspect)) if t_method == "crop" else 0.0
        return (round(aspect_error, 3), t_w * t_h)

    same = [c for c in candidates if c[2] == method and large_enough(c)]
    if same:
        return min(same, key=fit)
    other = [c for c in candidates if large_enough(c)]
    if other:
        return min(other, key=fit)
    return max(candidates, key=lambda c: (c[2] == method, c[0] * c[1]))


def _static_frame(image: Image.Image, for_jpeg: bool) -> Image.Image:
    image = ImageOps.exif_transpose(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if for_jpeg or not has_alpha:
        return image.convert("RGB")
    return image.convert("RGBA")


def _resize(image: Image.Image, size: tuple[int, int], method: str) -> Image.Image:
    if method == "crop":
        return ImageOps.fit(image, size, Image.Resampling.LANCZOS)
    return image.resize(size, Image.Resampling.LANCZOS)


def make_thumbnail(
    path: Path, size: tuple[int, int], method: str, animated: bool, max_pixels: int
) -> EncodedThumbnail:
    """Encode a thumbnail of the image at `path` of exactly `size`.

    Static thumbnails are JPEG for JPEG sources and PNG otherwise. Animated
    ones are WebP (GIF where Pillow lacks WebP), and fall back to static
    when the frames together exceed `max_pixels`.
    """
    with _open(path, max_pixels) as image:
        try:
            if animated:
                encoded = _animated_thumbnail(image, size, method, max_pixels)
                if encoded is not None:
                    return encoded
                image.seek(0)
            for_jpeg = image.format == "JPEG"
            if for_jpeg:
                # Decode at the smallest 1/2, 1/4 or 1/8 scale still large enough: far faster.
                width, height = image.size
                factor = max(size[0] / width, size[1] / height, size[0] / height, size[1] / width)
                image.draft("RGB", (math.ceil(width * factor), math.ceil(height * factor)))
            frame = _resize(_static_frame(image, for_jpeg), size, method)
            out = io.BytesIO()
            if for_jpeg:
                frame.save(out, "JPEG", quality=_JPEG_QUALITY, optimize=True)
                return EncodedThumbnail(out.getvalue(), "image/jpeg")
            frame.save(out, "PNG", optimize=True)
            return EncodedThumbnail(out.getvalue(), "image/png")
        except Image.DecompressionBombError:
            raise ImageTooLarge() from None
        except (OSError, ValueError, SyntaxError, EOFError):
            raise CannotThumbnail() from None


def _animated_thumbnail(
    image: Image.Image, size: tuple[int, int], method: str, max_pixels: int
) -> EncodedThumbnail | None:
    frame_pixels = image.size[0] * image.size[1]
    frames, durations = [], []
    for index, frame in enumerate(ImageSequence.Iterator(image)):
        if (index + 1) * frame_pixels > max_pixels:
            return None
        frames.append(_resize(frame.convert("RGBA"), size, method))
        durations.append(int(frame.info.get("duration", 100)) or 100)
    if len(frames) < 2:
        return None
    out = io.BytesIO()
    if features.check("webp"):
        frames[0].save(
            out, "WEBP", save_all=True, append_images=frames[1:], duration=durations, loop=0
        )
        return EncodedThumbnail(out.getvalue(), "image/webp")
    frames[0].save(
        out, "GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0,
        disposal=2,
    )
    return EncodedThumbnail(out.getvalue(), "image/gif")
