"""Import MAIA's published exemplar folders into an exemplar store.

MAIA's layout (its utils/DatasetExemplars.py and SyntheticExemplars.py):

- ``<root>/<model>/imagenet/<layer>/`` for resnet152, clip-RN50 and dino_vits8, with
  ``activations.csv`` [units, n], ``thresholds.csv`` [units], ``images.npy``
  [units, n, 3, H, W] uint8 and ``masks.npy`` [units, n, 1, H, W] (inside where > 0);
- ``<root>/synthetic_neurons/<mode>/`` (mono, or, and) with ``activations.csv``,
  ``images.npy`` [units, n, H, W, 3] and ``masks.npy`` [units, n, H, W] in 0-255 (no thresholds).

MAIA stores every exemplar image once per unit that uses it. The store keeps each distinct
image once (lossless PNG, so masked images match MAIA's), masks bit-packed at full resolution,
and the thresholds, which then also serve ``system.call_neuron``.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from maia_core.errors import UserError
from maia_core.files import atomic_write_bytes, atomic_write_json

NEEDED = ("activations.csv", "images.npy", "masks.npy")


def find_layer_dirs(folder: Path, target: str) -> list[Path]:
    """The layer folders of ``target`` under ``folder`` (which may be any level of MAIA's tree)."""
    if folder.is_file():
        raise UserError(
            f"MAIA exemplar folder {str(folder)!r} is a file; give the folder MAIA's download_exemplars.sh made (or one model's folder in it)."
        )
    if not folder.is_dir():
        raise UserError(f"MAIA exemplar folder {str(folder)!r} does not exist.")
    for base in (folder / target / "imagenet", folder / target, folder / "imagenet", folder):
        if not base.is_dir():
            continue
        layers = sorted(
            d for d in base.iterdir() if d.is_dir() and all((d / f).is_file() for f in NEEDED)
        )
        if layers:
            return layers
    if all((folder / f).is_file() for f in NEEDED):
        return [folder]
    raise UserError(
        f"No MAIA exemplar layers under {str(folder)!r}: expected <model>/imagenet/<layer>/ folders holding "
        "activations.csv, images.npy and masks.npy (thresholds.csv too, except for synthetic neurons)."
    )


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def import_maia_folder(
    folder: str | Path, target: str, out: str | Path | None, root: str | Path
) -> dict[str, Any]:
    import torch
    from safetensors.torch import save

    from maia_core.files import slug
    from maia_core.torch_runtime.exemplars import FORMAT, layer_file, versions

    folder = Path(folder)
    layer_dirs = find_layer_dirs(folder, target)
    synthetic = "synthetic" in target or not all(
        (d / "thresholds.csv").is_file() for d in layer_dirs
    )
    dataset = "maia-synthetic" if synthetic else "maia-imagenet"
    out = Path(out) if out else Path(root) / slug(target) / dataset
    items: dict[bytes, int] = {}
    layers_meta: dict[str, Any] = {}
    size: tuple[int, int] | None = None
    units_total = 0
    source_bytes = 0
    for d in layer_dirs:
        images = np.load(d / "images.npy", mmap_mode="r")
        masks = np.load(d / "masks.npy", mmap_mode="r")
        source_bytes += (d / "images.npy").stat().st_size + (d / "masks.npy").stat().st_size
        acts = np.atleast_2d(np.loadtxt(d / "activations.csv", delimiter=","))
        if images.ndim != 5 or images.shape[:2] != acts.shape:
            raise UserError(
                f"{d}: images.npy has shape {images.shape}, which does not fit activations.csv {acts.shape}."
            )
        chw = images.shape[2] == 3
        h, w = images.shape[3:5] if chw else images.shape[2:4]
        if size is not None and size != (h, w):
            raise UserError(f"{d}: images are {h}x{w}, other layers' are {size[0]}x{size[1]}.")
        size = (h, w)
        U, n = acts.shape
        if (d / "thresholds.csv").is_file():
            thresholds = np.atleast_1d(np.loadtxt(d / "thresholds.csv", delimiter=",")).astype(
                np.float32
            )
            if thresholds.shape != (U,):
                raise UserError(
                    f"{d}: thresholds.csv has {thresholds.shape[0]} values for {U} units."
                )
        else:
            thresholds = np.full(U, np.nan, dtype=np.float32)
        top_i = np.zeros((U, n), dtype=np.int64)
        packed = np.zeros((U, n, math.ceil(h * w / 8)), dtype=np.uint8)
        order = np.argsort(-acts, axis=1, kind="stable")  # MAIA's lists are sorted; make sure
        for u in range(U):
            for slot, e in enumerate(order[u]):
                img = np.asarray(images[u, e])
                img = img.transpose(1, 2, 0) if chw else img
                img = np.ascontiguousarray(img, dtype=np.uint8)
                key = hashlib.blake2b(img.tobytes(), digest_size=16).digest()
                if key not in items:
                    items[key] = len(items)
                    atomic_write_bytes(out / "images" / f"{items[key]}.png", _png(img))
                top_i[u, slot] = items[key]
                m = np.asarray(masks[u, e])
                m = m.reshape(m.shape[-2:]) if m.ndim == 3 and m.shape[0] == 1 else m
                m = m[..., 0] if m.ndim == 3 else m
                # MAIA's imagenet masks are 0/1 (inside where > 0); synthetic ones are 0-255 alpha.
                inside = m >= 128 if synthetic and m.max() > 1 else m > 0
                packed[u, slot] = np.packbits(inside.reshape(-1))
        tensors = {
            "top_values": torch.from_numpy(np.take_along_axis(acts, order, 1).astype(np.float32)),
            "top_indices": torch.from_numpy(top_i),
            "top_masks": torch.from_numpy(packed),
            "bottom_values": torch.zeros(U, 0),
            "bottom_indices": torch.zeros(U, 0, dtype=torch.long),
            "bottom_masks": torch.zeros(U, 0, packed.shape[2], dtype=torch.uint8),
            "thresholds": torch.from_numpy(thresholds),
        }
        atomic_write_bytes(out / layer_file(d.name), save(tensors))
        layers_meta[d.name] = {
            "file": layer_file(d.name),
            "units": U,
            "spatial": None,
            "kind": "imported",
            "k": n,
            "masks": "bitpacked",
        }
        units_total += U
    ids = [""] * len(items)
    for key, i in items.items():
        ids[i] = f"maia:{key.hex()}"
    atomic_write_json(out / "items.json", ids, indent=None)
    manifest = {
        "format": FORMAT,
        "target": {"spec": target, "description": f"imported from MAIA's exemplars ({folder})"},
        "preprocess": {
            "size": list(size),
            "crop_pct": 1.0,
            "interpolation": "bicubic",
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        },
        "dataset": {
            "spec": dataset,
            "size": len(items),
            "fingerprint": hashlib.sha256("".join(ids).encode()).hexdigest()[:16],
            "source": str(folder.resolve()),
        },
        "layers": layers_meta,
        "k": max(m["k"] for m in layers_meta.values()),
        "threshold": {
            "quantile": 0.99,
            "method": "MAIA's thresholds.csv" if not synthetic else "none (synthetic neurons)",
        },
        "embedded_images": True,
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_json(out / "manifest.json", manifest)
    stored = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {
        "out": str(out),
        "layers": len(layers_meta),
        "units": units_total,
        "images": len(items),
        "bytes": stored,
        "source_bytes": source_bytes,
    }
