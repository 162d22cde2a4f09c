"""Image helpers shared by the loop, tools, targets and reporters (PIL and numpy only).

numpy and PIL are imported by the functions that use them, so that importing this module (as
the transcript, and through it every plugin, does) costs nothing to `maia --help`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

# Masked images keep the unit's region and dim the rest to this fraction (as in MAIA).
DIM_OUTSIDE = 0.25


def is_pil_image(obj: Any) -> bool:
    """Whether ``obj`` is a PIL image; if PIL was never imported, nothing can be one."""
    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(obj, pil.Image)


def sniff_media_type(data: bytes) -> str:
    """The media type of encoded image bytes, from their magic numbers."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"BM"):
        return "image/bmp"
    raise ValueError("not a PNG, JPEG, GIF, WebP or BMP image")


def encode_image(img: Image.Image, *, quality: int = 90) -> tuple[bytes, str]:
    """Encode compactly: JPEG for opaque images, PNG where there is transparency or a palette."""
    buf = io.BytesIO()
    if img.mode in ("RGBA", "LA", "P", "PA") or "transparency" in img.info:
        img.save(buf, format="PNG", optimize=False)
        return buf.getvalue(), "image/png"
    if img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), "image/jpeg"


def decode_image(data: bytes) -> Image.Image:
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def data_uri(data: bytes, media_type: str | None = None) -> str:
    media_type = media_type or sniff_media_type(data)
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def resize_longest(img: Image.Image, max_side: int) -> Image.Image:
    """Shrink so the longest side is at most ``max_side``; never enlarge."""
    from PIL import Image

    w, h = img.size
    if max(w, h) <= max_side:
        return img
    scale = max_side / max(w, h)
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)


def as_rgb(img: Image.Image) -> Image.Image:
    """``img`` itself if it is RGB, else its RGB conversion (``convert`` would copy it)."""
    return img if img.mode == "RGB" else img.convert("RGB")


def to_pil(obj: Any) -> Image.Image:
    """Turn what agent code passes for an image into an RGB PIL image.

    Accepts PIL images, numpy arrays (HxW, HxWx3 or HxWx4; uint8, or floats in [0, 1]),
    torch tensors (CxHxW or HxWxC), encoded bytes, base64 strings (MAIA's image form) and
    paths to image files.
    """
    import numpy as np
    from PIL import Image

    if isinstance(obj, Image.Image):
        return as_rgb(obj)
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):  # a torch tensor, without importing torch
        arr = obj.detach().float().cpu().numpy()
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
            arr = arr.transpose(1, 2, 0)
        return to_pil(arr)
    if isinstance(obj, np.ndarray):
        arr = obj
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
            raise TypeError(f"an image array must be HxW, HxWx3 or HxWx4, not shape {arr.shape}")
        if arr.dtype != np.uint8:
            arr = arr.astype(np.float32)
            if arr.max(initial=0.0) <= 1.0:  # floats in [0, 1]
                arr = arr * 255.0
            arr = np.clip(arr, 0.0, 255.0).round().astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if isinstance(obj, (bytes, bytearray)):
        return decode_image(bytes(obj)).convert("RGB")
    if isinstance(obj, Path) or (
        isinstance(obj, str) and len(obj) < 4096 and Path(obj).suffix and Path(obj).is_file()
    ):
        return Image.open(obj).convert("RGB")
    if isinstance(obj, str):
        text = obj.split(",", 1)[1] if obj.startswith("data:") else obj
        try:
            return decode_image(base64.b64decode(text, validate=False)).convert("RGB")
        except (binascii.Error, OSError, ValueError):
            pass
        raise TypeError(
            "a string image must be a base64-encoded image or the path to an image file"
        )
    raise TypeError(f"cannot use a {type(obj).__name__} as an image")


def to_pil_list(images: Any) -> list[Image.Image]:
    """Accept one image or a list of them; always return a list of RGB PIL images."""
    import numpy as np

    if isinstance(images, (list, tuple)):
        return [to_pil(i) for i in images]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return [to_pil(i) for i in images]
    if hasattr(images, "detach") and getattr(images, "ndim", 0) == 4:
        return [to_pil(i) for i in images]
    return [to_pil(images)]


def dim_outside(img: Image.Image, mask: np.ndarray, factor: float = DIM_OUTSIDE) -> Image.Image:
    """Keep pixels where ``mask`` is true; scale the others by ``factor`` (each channel value
    ``v`` becomes ``round(v * factor)``, in float32)."""
    import numpy as np
    from PIL import Image

    img = as_rgb(img)
    if mask.shape != (img.height, img.width):
        raise ValueError(f"mask {mask.shape} does not match image {(img.height, img.width)}")
    # PIL's table lookup and composite: the same pixels as the arithmetic in numpy, in a
    # third of its time (a masked image for every image a unit is measured on). A mask that
    # keeps nothing (a unit silent on the image) or everything needs no composite: a quarter
    # of the time, or none.
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return img.point(_dim_table(float(factor)))
    if mask.all():
        return img.copy()
    keep = Image.fromarray(mask.astype(np.uint8) * 255, "L")
    return Image.composite(img, img.point(_dim_table(float(factor))), keep)


@functools.lru_cache(maxsize=8)
def _dim_table(factor: float) -> list[int]:
    import numpy as np

    values = np.arange(256, dtype=np.float32) * np.float32(factor)
    return np.clip(values.round(), 0, 255).astype(np.uint8).tolist() * 3
