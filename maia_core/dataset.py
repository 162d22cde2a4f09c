"""The dataset interface: images with stable ids.

A dataset plugin registers a factory returning a :class:`Dataset` (see
``hookspecs.register_datasets``). ``maia exemplars compute`` reads datasets by index, in
worker processes, so a dataset must be picklable and cheap to open: keep file handles and
decoded data out of ``__init__`` or rebuild them lazily.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image


class Dataset(ABC):
    """An indexable collection of images, each with a stable id."""

    #: the spec the user named (``imagefolder:/data/val``, ``scenes``); set by the factory
    name: str = ""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def image(self, index: int) -> Image.Image:
        """Item ``index`` as an RGB PIL image. Raise ``OSError`` (or ``ValueError``) if it cannot
        be read: callers skip and count such items."""

    def item_id(self, index: int) -> str:
        """A stable id for item ``index`` (a relative path, a hub row number...)."""
        return str(index)

    def encoded(self, index: int) -> bytes | None:
        """Item ``index``'s encoded file bytes when it is stored as a file (for GPU decoding),
        else None."""
        return None

    def annotation(self, index: int) -> dict[str, Any] | None:
        """Ground truth for item ``index`` where the dataset has it (objects, labels, masks)."""
        return None

    def fingerprint(self) -> str:
        """Changes whenever the items change; stores computed on another version are refused."""
        h = hashlib.sha256()
        for i in range(len(self)):
            h.update(self.item_id(i).encode())
            h.update(b"\0")
        return h.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """What the exemplar store's manifest records about this dataset.

        ``spec`` (and ``options``, passed back to the factory) must rebuild the same dataset.
        """
        return {"spec": self.name, "size": len(self), "fingerprint": self.fingerprint()}

    def __repr__(self) -> str:
        return f"<dataset {self.name}: {len(self)} images>"
