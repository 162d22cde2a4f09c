"""``imagefolder:PATH``: every jpg, png, webp and bmp under a folder, searched recursively.

Items are ordered by relative path, and the relative path is the item's id, so a store
computed on one machine reads the same images on another copy of the folder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from maia_core import hookimpl
from maia_core.dataset import Dataset
from maia_core.errors import UserError
from maia_core.options import reject_unknown

if TYPE_CHECKING:
    from PIL import Image

SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
JPEG = {".jpg", ".jpeg"}


@hookimpl
def register_datasets(register):
    register(
        "imagefolder",
        make_imagefolder,
        help="A folder of images, searched recursively: imagefolder:PATH",
    )


def make_imagefolder(arg: str | None, **options: str) -> ImageFolder:
    reject_unknown(options, "Dataset imagefolder", ())
    if not arg:
        raise UserError("The imagefolder dataset needs a folder: --dataset imagefolder:PATH.")
    return ImageFolder(arg)


class ImageFolder(Dataset):
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.name = f"imagefolder:{self.root}"  # absolute, so a store finds it from anywhere
        if not self.root.is_dir():
            raise UserError(f"Image folder {str(root)!r} does not exist.")
        self.files = sorted(
            p.relative_to(self.root).as_posix()
            for p in self.root.rglob("*")
            if p.suffix.lower() in SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(self.root).parts)
        )
        if not self.files:
            raise UserError(f"Image folder {str(root)!r} holds no jpg, png, webp or bmp files.")

    def __len__(self) -> int:
        return len(self.files)

    def image(self, index: int) -> Image.Image:
        from PIL import Image

        with Image.open(self.root / self.files[index]) as img:
            return img.convert("RGB")

    def item_id(self, index: int) -> str:
        return self.files[index]

    def encoded(self, index: int) -> bytes | None:
        path = self.root / self.files[index]
        return path.read_bytes() if path.suffix.lower() in JPEG else None

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for rel in self.files:
            h.update(f"{rel}\0{(self.root / rel).stat().st_size}\0".encode())
        return h.hexdigest()[:16]

    def describe(self) -> dict:
        return {**super().describe(), "root": str(self.root)}
