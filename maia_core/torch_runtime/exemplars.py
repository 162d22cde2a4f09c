"""Exemplar stores: for every unit, the dataset images that activate it most and least, their
activation maps, and the unit's activation threshold.

A store is a folder, by default ``exemplars/<target>/<dataset>/``::

    manifest.json             what was computed: target, preprocessing, dataset, layers, k,
                              threshold method, versions; written last, so its presence
                              means the store is complete
    items.json                the dataset's item ids, by index (what the indices refer to)
    <layer>.safetensors       one file per layer:
        top_values     [U, k]        float32  highest spatial-max activations, descending
        top_indices    [U, k]        int64    their dataset indices
        top_maps       [U, k, h, w]  float16  their activation maps (not for vector layers)
        bottom_values  [U, k]        float32  lowest spatial-max activations, ascending
        bottom_indices [U, k]        int64
        bottom_maps    [U, k, h, w]  float16
        thresholds     [U]           float32  the unit's 0.99 quantile over all positions, or the
                                              threshold the target fixes (see fixed_threshold)
        top_masks / bottom_masks [U, k, ceil(H*W/8)] uint8   (imported MAIA stores only):
                              bit-packed masks at image resolution, instead of maps
    images/<index>.jpg        with --embed-images (and in imported stores): the model's view
                              of every exemplar image, so the store works without the dataset
    .checkpoint/state.safetensors   while computing; removed when the store is complete

Computation is one pass over the dataset for every layer at once, with memory that does not
grow with the dataset: a running top-k and bottom-k per unit (maps kept inside the buffers,
so masks need no second pass) and, for thresholds, a uniform random sample of each unit's
activations (see :func:`threshold_error`). It checkpoints, and resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from maia_core.errors import UserError
from maia_core.files import atomic_write_bytes, atomic_write_json, slug
from maia_core.images import dim_outside, encode_image

FORMAT = "maia-exemplars/1"
QUANTILE = 0.99
DEFAULT_K = 15
# Activations sampled per unit for its threshold; see threshold_error().
DEFAULT_SAMPLES = 20_000


def threshold_error(samples: int, q: float = QUANTILE) -> float:
    """Standard deviation of the rank (as a fraction) of the estimated ``q`` quantile.

    The threshold is the exact ``q`` quantile of a uniform random sample of about ``samples``
    of the unit's activations (every activation when there are fewer, and then it is exact).
    Its rank among all the unit's activations is approximately normal around ``q`` with this
    standard deviation, sqrt(q (1 - q) / samples): 0.0007 for the default 20,000 samples, so
    the threshold lies between the 0.9879 and 0.9921 quantiles with probability 0.997.
    Sampling without replacement from a finite dataset only makes the error smaller.
    """
    return math.sqrt(q * (1 - q) / samples)


def layer_file(layer: str) -> str:
    return f"{slug(layer)}.safetensors"


# -- computing --------------------------------------------------------------------------------


class _LayerState:
    """Running top-k and bottom-k (with maps) and the threshold sample of one layer."""

    def __init__(
        self,
        name: str,
        units: int,
        spatial: tuple[int, int] | None,
        k: int,
        p_sample: float,
        device: torch.device,
    ):
        self.name, self.units, self.spatial, self.k, self.p = name, units, spatial, k, p_sample
        shape = (units, k, *spatial) if spatial else None
        self.top_v = torch.full((units, k), -math.inf, device=device)
        self.top_i = torch.full((units, k), -1, dtype=torch.long, device=device)
        self.bot_v = torch.full((units, k), math.inf, device=device)
        self.bot_i = torch.full((units, k), -1, dtype=torch.long, device=device)
        self.top_m = torch.zeros(shape, dtype=torch.float16, device=device) if shape else None
        self.bot_m = torch.zeros(shape, dtype=torch.float16, device=device) if shape else None
        self.samples: list[torch.Tensor] = []

    def update(self, maps: torch.Tensor, indices: torch.Tensor, generator: torch.Generator) -> None:
        """Fold one batch in: ``maps`` [B, U, h, w] (or [B, U]), ``indices`` [B] ascending."""
        B = maps.shape[0]
        spatial = maps.ndim == 4
        acts = maps.flatten(2).amax(2) if spatial else maps  # [B, U]
        idx = indices.to(acts.device).expand(self.units, B)
        per_unit = maps.transpose(0, 1).half() if spatial else None  # [U, B, h, w]
        # Stable sorts with the running buffer first: ties go to the lower dataset index, so
        # the result equals a brute-force ranking whatever the batching.
        for descending in (True, False):
            v, i, m = (
                (self.top_v, self.top_i, self.top_m)
                if descending
                else (self.bot_v, self.bot_i, self.bot_m)
            )
            cand_v = torch.cat([v, acts.T], 1)
            order = torch.sort(cand_v, dim=1, descending=descending, stable=True).indices[
                :, : self.k
            ]
            new_v = cand_v.gather(1, order)
            new_i = torch.cat([i, idx], 1).gather(1, order)
            if spatial:
                cand_m = torch.cat([m, per_unit], 1)
                new_m = cand_m.gather(1, order[:, :, None, None].expand(-1, -1, *cand_m.shape[2:]))
            else:
                new_m = None
            if descending:
                self.top_v, self.top_i, self.top_m = new_v, new_i, new_m
            else:
                self.bot_v, self.bot_i, self.bot_m = new_v, new_i, new_m
        # Threshold sample: each position of the batch is kept with probability p (the same
        # positions for every unit, which keeps each unit's sample uniform).
        flat = maps.transpose(0, 1).flatten(1) if spatial else maps.T  # [U, B*h*w]
        n = flat.shape[1]
        if self.p >= 1.0:
            chosen = torch.arange(n)
        else:
            count = int(
                torch.binomial(torch.tensor(float(n)), torch.tensor(self.p), generator=generator)
            )
            chosen = torch.randperm(n, generator=generator)[:count].sort().values
        if len(chosen):
            self.samples.append(flat[:, chosen.to(flat.device)].float().cpu())

    def thresholds(self) -> torch.Tensor:
        if not self.samples:
            return torch.full((self.units,), float("nan"))
        return quantile_rows(torch.cat(self.samples, 1), QUANTILE)

    def state(self) -> dict[str, torch.Tensor]:
        out = {"top_v": self.top_v, "top_i": self.top_i, "bot_v": self.bot_v, "bot_i": self.bot_i}
        if self.top_m is not None:
            out |= {"top_m": self.top_m, "bot_m": self.bot_m}
        out["samples"] = torch.cat(self.samples, 1) if self.samples else torch.zeros(self.units, 0)
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def load_state(self, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
        self.top_v, self.top_i = tensors["top_v"].to(device), tensors["top_i"].to(device)
        self.bot_v, self.bot_i = tensors["bot_v"].to(device), tensors["bot_i"].to(device)
        if "top_m" in tensors:
            self.top_m, self.bot_m = tensors["top_m"].to(device), tensors["bot_m"].to(device)
        self.samples = [tensors["samples"]] if tensors["samples"].shape[1] else []

    def result(self) -> dict[str, torch.Tensor]:
        """The store tensors, trimmed to the images actually seen when there were fewer than k."""
        valid = int((self.top_i[0] >= 0).sum())
        out = {
            "top_values": self.top_v[:, :valid],
            "top_indices": self.top_i[:, :valid],
            "bottom_values": self.bot_v[:, :valid],
            "bottom_indices": self.bot_i[:, :valid],
            "thresholds": self.thresholds(),
        }
        if self.top_m is not None:
            out["top_maps"] = self.top_m[:, :valid]
            out["bottom_maps"] = self.bot_m[:, :valid]
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def quantile_rows(x: torch.Tensor, q: float, chunk: int = 256) -> torch.Tensor:
    """Per-row ``q`` quantile with linear interpolation (numpy's default), in row chunks
    (torch.quantile refuses large inputs)."""
    out = []
    n = x.shape[1]
    pos = q * (n - 1)
    lo, hi = int(math.floor(pos)), int(math.ceil(pos))
    frac = pos - lo
    for rows in x.split(chunk):
        s = rows.sort(dim=1).values
        out.append(s[:, lo] + (s[:, hi] - s[:, lo]) * frac)
    return torch.cat(out)


@dataclass
class ComputeConfig:
    layers: list[str]
    k: int = DEFAULT_K
    batch_size: int = 64
    workers: int = 2
    limit: int | None = None
    samples: int = DEFAULT_SAMPLES
    seed: int = 0
    checkpoint_every: float = 60.0  # seconds; 0 checkpoints after every batch
    embed_images: bool = False
    decode: str = "auto"  # "pil", "torchvision" (JPEG decoding on the target's device) or "auto"


class _Items(torch.utils.data.Dataset):
    """Dataset items as model views (uint8 HxWx3), or as encoded JPEG bytes for GPU decoding."""

    def __init__(self, dataset: Any, preprocess: Any, start: int, stop: int, encoded: bool):
        self.dataset, self.preprocess, self.start, self.stop, self.encoded = (
            dataset,
            preprocess,
            start,
            stop,
            encoded,
        )

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, j: int) -> tuple[int, Any]:
        i = self.start + j
        try:
            if self.encoded:
                data = self.dataset.encoded(i)
                if data is not None:
                    return i, ("jpeg", torch.frombuffer(bytearray(data), dtype=torch.uint8))
            view = self.preprocess.view(self.dataset.image(i))
            return i, ("view", np.array(view, dtype=np.uint8))
        except Exception:  # noqa: BLE001 - a corrupt or unreadable item is skipped and counted
            return i, None


def _collate(batch: list[tuple[int, Any]]) -> tuple[list[int], list[Any], list[int]]:
    good = [(i, x) for i, x in batch if x is not None]
    return [i for i, _ in good], [x for _, x in good], [i for i, x in batch if x is None]


def _to_batch(
    items: list[Any], preprocess: Any, device: torch.device
) -> tuple[torch.Tensor, list[int]]:
    """Normalized [B, 3, H, W] on ``device``; positions (in ``items``) that could not be decoded.

    Views decoded in the workers travel to the device as one stacked transfer. Encoded JPEGs
    are decoded on the device in one batched call; a file the device decoder refuses (CMYK,
    say) falls back to PIL before it counts as unreadable.
    """
    views: list[torch.Tensor | None] = [None] * len(items)
    arrays = [(pos, data) for pos, (kind, data) in enumerate(items) if kind == "view"]
    if arrays:
        stacked = torch.from_numpy(np.stack([data for _, data in arrays]))
        if device.type == "cuda":
            stacked = stacked.pin_memory()
        stacked = stacked.to(device, non_blocking=True).permute(0, 3, 1, 2)
        for (pos, _), view in zip(arrays, stacked):
            views[pos] = view
    jpegs = [(pos, data) for pos, (kind, data) in enumerate(items) if kind == "jpeg"]
    if jpegs:
        for (pos, data), img in zip(jpegs, _decode_jpegs([data for _, data in jpegs], device)):
            if img is None:
                img = _decode_with_pil(data, device)
            if img is not None:
                views[pos] = preprocess.view_tensor(img)
    failed = [pos for pos, view in enumerate(views) if view is None]
    kept = [view for view in views if view is not None]
    if not kept:
        return torch.empty(0, 3, *preprocess.size, device=device), failed
    return preprocess.normalize(torch.stack(kept)), failed


def _decode_jpegs(blobs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return list(decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:  # one bad file fails the whole batch: find it
        out: list[torch.Tensor | None] = []
        for blob in blobs:
            try:
                out.append(decode_jpeg(blob, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(None)
        return out


def _decode_with_pil(blob: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    import io

    try:
        with Image.open(io.BytesIO(blob.numpy().tobytes())) as img:
            arr = np.array(img.convert("RGB"))
    except (OSError, ValueError):
        return None
    return torch.from_numpy(arr).permute(2, 0, 1).to(device)


class ExemplarComputation:
    """One pass over a dataset, for every requested layer of a target."""

    def __init__(self, target: Any, dataset: Any, out_dir: str | Path, config: ComputeConfig):
        self.target, self.dataset, self.config = target, dataset, config
        self.out = Path(out_dir)
        self.n = min(len(dataset), config.limit) if config.limit else len(dataset)
        if self.n < 1:
            raise UserError(f"Dataset {dataset.name} has no images to compute exemplars on.")
        self.infos = [target.require_layer(name) for name in config.layers]
        self.device = target.device
        self.layers = {}
        for info in self.infos:
            positions = self.n * (info.spatial[0] * info.spatial[1] if info.spatial else 1)
            p = min(1.0, config.samples / positions)
            self.layers[info.name] = _LayerState(
                info.name, info.units, info.spatial, config.k, p, self.device
            )
        self.next_index = 0
        self.skipped: list[int] = []
        self.checkpoint = self.out / ".checkpoint" / "state.safetensors"

    # -- checkpoints --------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed."""
        return {
            "target": self.target.name,
            "dataset": self.dataset.name,
            "fingerprint": self.dataset.fingerprint(),
            "n": self.n,
            "layers": self.config.layers,
            "k": self.config.k,
            "batch_size": self.config.batch_size,
            "samples": self.config.samples,
            "seed": self.config.seed,
        }

    def save_checkpoint(self) -> None:
        from safetensors.torch import save

        tensors = {}
        for name, state in self.layers.items():
            for key, value in state.state().items():
                tensors[f"{name}\0{key}"] = value
        meta = {
            "identity": self._identity(),
            "next_index": self.next_index,
            "skipped": self.skipped,
        }
        atomic_write_bytes(self.checkpoint, save(tensors, metadata={"state": json.dumps(meta)}))

    def resume(self) -> bool:
        """Load the checkpoint if there is one for this same computation."""
        if not self.checkpoint.is_file():
            return False
        from safetensors import safe_open

        with safe_open(str(self.checkpoint), "pt") as f:
            meta = json.loads(f.metadata()["state"])
            if meta["identity"] != self._identity():
                raise UserError(
                    f"{self.checkpoint} is a checkpoint of a different computation (other target, dataset, layers, k or batch size). "
                    "Run with --restart to discard it, or repeat the original command to resume it."
                )
            for name, state in self.layers.items():
                keys = [k for k in f.keys() if k.startswith(f"{name}\0")]  # noqa: SIM118 - safetensors, not a dict
                state.load_state({k.split("\0", 1)[1]: f.get_tensor(k) for k in keys}, self.device)
        self.next_index = meta["next_index"]
        self.skipped = meta["skipped"]
        return True

    # -- the pass -----------------------------------------------------------------------------
    def _decode_on_device(self) -> bool:
        if self.config.decode == "pil":
            return False
        if self.config.decode == "torchvision":
            return True
        return self.device.type == "cuda" and self.dataset.encoded(0) is not None

    def batches(self) -> Iterator[tuple[list[int], list[Any], list[int]]]:
        encoded = self._decode_on_device()
        items = _Items(self.dataset, self.target.preprocess, self.next_index, self.n, encoded)
        loader = torch.utils.data.DataLoader(
            items,
            batch_size=self.config.batch_size,
            num_workers=self.config.workers,
            worker_init_fn=_die_with_parent if self.config.workers else None,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if self.config.workers else None,
        )
        yield from loader

    def run(self, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Compute to the end (resuming a checkpoint) and write the store. Returns a summary.

        Ctrl-C finishes the batch in hand, saves a checkpoint and raises KeyboardInterrupt, so
        the same command resumes where it stopped.
        """
        import signal
        import threading

        stop = []
        handled = threading.current_thread() is threading.main_thread()
        # SIGTERM (SLURM, timeout, docker) and SIGHUP stop like Ctrl-C: checkpoint, then exit.
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = (
            {s: signal.signal(s, lambda *_: stop.append(True)) for s in signals} if handled else {}
        )
        try:
            return self._run(progress, stop)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run(self, progress: Callable[[int, int], None] | None, stop: list[bool]) -> dict[str, Any]:
        last_save = time.monotonic()
        for indices, items, bad in self.batches():
            batch_start = self.next_index
            x, failed = _to_batch(items, self.target.preprocess, self.device)
            if failed:
                bad = bad + [indices[p] for p in failed]
                indices = [i for p, i in enumerate(indices) if p not in set(failed)]
            self.skipped.extend(bad)
            if indices:
                self._note_truth(x, indices)
                outputs = self.target.forward_layers(x, list(self.layers))
                gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + batch_start)
                idx = torch.tensor(indices, dtype=torch.long)
                for name, state in self.layers.items():
                    state.update(outputs[name], idx, gen)
            self.next_index = batch_start + len(indices) + len(bad)
            if progress:
                progress(self.next_index, self.n)
            if stop:
                self.save_checkpoint()
                raise KeyboardInterrupt
            if (
                time.monotonic() - last_save >= self.config.checkpoint_every
                and self.next_index < self.n
            ):
                self.save_checkpoint()
                last_save = time.monotonic()
        return self.write()

    def _note_truth(self, x: torch.Tensor, indices: list[int]) -> None:
        """A target that reads images' ground truth (synthetic neurons on the ``scenes``
        detector) gets the dataset's annotations of the batch's rows, when it has them."""
        note = getattr(self.target, "note_truth", None)
        annotate = getattr(self.dataset, "annotation", None)
        if callable(note) and callable(annotate):
            note(x, [annotate(i) for i in indices])

    def write(self) -> dict[str, Any]:
        from safetensors.torch import save

        layers_meta = {}
        used: set[int] = set()
        for info in self.infos:
            tensors = self.layers[info.name].result()
            fixed = fixed_threshold(self.target, info.name)
            if fixed is not None:
                tensors["thresholds"] = torch.full_like(tensors["thresholds"], fixed)
            atomic_write_bytes(self.out / layer_file(info.name), save(tensors))
            used.update(tensors["top_indices"].flatten().tolist())
            used.update(tensors["bottom_indices"].flatten().tolist())
            layers_meta[info.name] = {
                "file": layer_file(info.name),
                "units": info.units,
                "spatial": list(info.spatial) if info.spatial else None,
                "kind": info.kind,
                "k": int(tensors["top_values"].shape[1]),
                "masks": "maps",
            }
            if fixed is not None:
                layers_meta[info.name]["fixed_threshold"] = fixed
        atomic_write_json(
            self.out / "items.json", [self.dataset.item_id(i) for i in range(self.n)], indent=None
        )
        if self.config.embed_images:
            for i in sorted(used):
                path = self.out / "images" / f"{i}.jpg"
                if not path.exists():
                    view = self.target.preprocess.view(self.dataset.image(i))
                    atomic_write_bytes(path, encode_image(view)[0])
        manifest = {
            "format": FORMAT,
            "target": {"spec": self.target.name, "description": self.target.describe()},
            "preprocess": preprocess_json(self.target.preprocess),
            "dataset": {**self.dataset.describe(), "used": self.n, "skipped": len(self.skipped)},
            "layers": layers_meta,
            "k": self.config.k,
            "threshold": {
                "quantile": QUANTILE,
                "method": "exact quantile of a uniform random sample of each unit's activations (all of them when fewer)",
                "samples": self.config.samples,
                "rank_sd": threshold_error(self.config.samples),
            },
            "embedded_images": self.config.embed_images,
            "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write_json(self.out / "manifest.json", manifest)  # last: the store is now complete
        if self.checkpoint.exists():
            self.checkpoint.unlink()
            self.checkpoint.parent.rmdir()
        return {
            "images": self.n,
            "skipped": len(self.skipped),
            "skipped_indices": self.skipped[:20],
            "layers": list(layers_meta),
        }


def fixed_threshold(target: Any, layer: str) -> float | None:
    """The threshold a target fixes for a layer's masks, if it fixes one (a target may define
    ``fixed_threshold(layer) -> float | None``: synthetic neurons use 0, their region being
    everything the detector marks); the store then holds it instead of the 0.99 quantile."""
    method = getattr(target, "fixed_threshold", None)
    if method is None:
        return None
    value = method(layer)
    return None if value is None else float(value)


def _die_with_parent(_worker_id: int) -> None:
    """DataLoader workers die with the computation, even a SIGKILLed one (no orphans holding
    hundreds of MB each)."""
    from maia_core.execution.isolation import die_with_parent

    die_with_parent()


def preprocess_json(preprocess: Any) -> dict[str, Any]:
    return {
        "size": list(preprocess.size),
        "crop_pct": preprocess.crop_pct,
        "interpolation": preprocess.interpolation,
        "mean": list(preprocess.mean),
        "std": list(preprocess.std),
    }


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("maia", "torch", "torchvision", "timm", "transformers", "open_clip_torch"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


# -- reading ----------------------------------------------------------------------------------


@dataclass
class UnitExemplars:
    values: list[float]
    indices: list[int]
    maps: torch.Tensor | None  # [k, h, w] float, or None
    masks: np.ndarray | None  # [k, H, W] bool (imported stores), or None
    threshold: float


class ExemplarStore:
    """A complete store on disk. Layers load lazily; one unit's slice is read on its own."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        manifest = self.folder / "manifest.json"
        if not manifest.is_file():
            raise UserError(f"{self.folder} is not an exemplar store (no manifest.json).")
        try:
            self.manifest = json.loads(manifest.read_text())
        except (OSError, ValueError) as exc:
            raise self.damaged(
                f"its manifest.json is not readable JSON ({type(exc).__name__})"
            ) from None
        if not isinstance(self.manifest, dict):
            raise self.damaged("its manifest.json is not a JSON object")
        if self.manifest.get("format") != FORMAT:
            raise UserError(
                f"{self.folder} has store format {self.manifest.get('format')!r}; this maia reads {FORMAT}."
            )
        self._dataset: Any = None
        self._items: list[str] | None = None
        self._check()

    def damaged(self, why: str) -> UserError:
        """The one-line error for a store that cannot be read, with how to rebuild it."""
        target = (
            (self.manifest.get("target") or {}).get("spec", "TARGET")
            if isinstance(getattr(self, "manifest", None), dict)
            else "TARGET"
        )
        dataset = (
            (self.manifest.get("dataset") or {}).get("spec", "DATASET")
            if isinstance(getattr(self, "manifest", None), dict)
            else "DATASET"
        )
        return UserError(
            f"The exemplar store {self.folder} is damaged: {why}. Rebuild it with: maia exemplars compute "
            f"--target {target} --dataset {dataset} --layers all --out {self.folder} --force"
        )

    def _check(self) -> None:
        """Every layer file the manifest names is there and readable (headers only: cheap)."""
        from safetensors import safe_open

        try:
            layers = self.manifest["layers"]
            self.manifest["target"]["spec"]
            self.manifest["dataset"]["spec"]
            self.manifest["preprocess"]["size"]
        except (KeyError, TypeError):
            raise self.damaged(
                "its manifest.json lacks layers, target, dataset or preprocess"
            ) from None
        for layer, meta in layers.items():
            path = self.folder / str(meta.get("file", ""))
            if not path.is_file():
                raise self.damaged(f"the file of layer {layer} ({path.name}) is missing")
            try:
                with safe_open(str(path), "pt") as f:
                    keys = set(f.keys())
            except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
                raise self.damaged(
                    f"the file of layer {layer} is unreadable ({type(exc).__name__}: {exc})"
                ) from None
            if not {"top_values", "top_indices", "thresholds"} <= keys:
                raise self.damaged(f"the file of layer {layer} lacks its tensors")

    @property
    def layers(self) -> dict[str, dict[str, Any]]:
        return self.manifest["layers"]

    @property
    def target(self) -> str:
        return self.manifest["target"]["spec"]

    @property
    def dataset_spec(self) -> str:
        return self.manifest["dataset"]["spec"]

    def preprocess(self) -> Any:
        from maia_core.torch_runtime.target import Preprocess

        p = self.manifest["preprocess"]
        return Preprocess(
            size=tuple(p["size"]),
            crop_pct=p["crop_pct"],
            interpolation=p["interpolation"],
            mean=tuple(p["mean"]),
            std=tuple(p["std"]),
        )

    def _open(self, layer: str):
        from safetensors import safe_open

        if layer not in self.layers:
            raise KeyError(layer)
        return safe_open(str(self.folder / self.layers[layer]["file"]), "pt")

    def threshold(self, layer: str, unit: int) -> float | None:
        if layer not in self.layers:
            return None
        with self._open(layer) as f:
            value = float(f.get_slice("thresholds")[unit : unit + 1][0])
        return None if math.isnan(value) else value

    def unit(
        self, layer: str, unit: int, *, bottom: bool = False, k: int | None = None
    ) -> UnitExemplars:
        meta = self.layers[layer]
        if not 0 <= unit < meta["units"]:
            raise IndexError(
                f"unit {unit} is out of range for layer {layer} ({meta['units']} units)"
            )
        side = "bottom" if bottom else "top"
        with self._open(layer) as f:
            keys = set(f.keys())
            values = f.get_slice(f"{side}_values")[unit][:k]
            indices = f.get_slice(f"{side}_indices")[unit][:k]
            maps = f.get_slice(f"{side}_maps")[unit][:k].float() if f"{side}_maps" in keys else None
            masks = None
            if f"{side}_masks" in keys:
                packed = f.get_slice(f"{side}_masks")[unit][:k].numpy()
                h, w = self.preprocess().size
                masks = (
                    np.unpackbits(packed, axis=1)[:, : h * w]
                    .reshape(len(packed), h, w)
                    .astype(bool)
                )
            threshold = float(f.get_slice("thresholds")[unit : unit + 1][0])
        return UnitExemplars(values.tolist(), indices.tolist(), maps, masks, threshold)

    def items(self) -> list[str]:
        if self._items is None:
            self._items = json.loads((self.folder / "items.json").read_text())
        return self._items

    def dataset(self) -> Any:
        """The dataset the store was computed on, checked against the manifest's fingerprint."""
        if self._dataset is None:
            from maia_core import plugins

            described = self.manifest["dataset"]
            spec = described["spec"]
            entry, arg = plugins.registry("datasets").resolve(spec)
            dataset = entry.factory(arg, **described.get("options", {}))
            if dataset.fingerprint() != described["fingerprint"]:
                raise UserError(
                    f"The dataset {spec} has changed since the store {self.folder} was computed on it; recompute the store, "
                    "or compute it with --embed-images so it does not need the dataset."
                )
            self._dataset = dataset
        return self._dataset

    def view(self, index: int) -> Image.Image:
        """The model's view of dataset item ``index``: embedded in the store, or from the dataset."""
        for suffix in (".png", ".jpg"):
            embedded = self.folder / "images" / f"{index}{suffix}"
            if embedded.is_file():
                return Image.open(embedded).convert("RGB")
        return self.preprocess().view(self.dataset().image(index))

    def masked(
        self, layer: str, unit: int, *, bottom: bool = False, k: int | None = None
    ) -> list[tuple[float, Image.Image]]:
        """``[(activation, masked image), ...]``: MAIA's exemplars, rendered on demand."""
        ex = self.unit(layer, unit, bottom=bottom, k=k)
        out = []
        for n, (value, index) in enumerate(zip(ex.values, ex.indices)):
            view = self.view(index)
            if ex.masks is not None:
                mask = ex.masks[n]
            elif ex.maps is not None:
                mask = render_mask(ex.maps[n], (view.height, view.width), ex.threshold)
            else:
                mask = np.ones((view.height, view.width), dtype=bool)
            out.append((value, dim_outside(view, mask)))
        return out


def render_mask(unit_map: torch.Tensor, size: tuple[int, int], threshold: float) -> np.ndarray:
    """A stored map upsampled (bilinear) to ``size`` and thresholded: the unit's region."""
    from maia_core.torch_runtime.target import upsample

    return (upsample(unit_map.float(), size) > threshold).numpy()


def find_store(root: str | Path, target: str, dataset: str | None = None) -> ExemplarStore | None:
    """The store for ``target`` under ``root``: ``root`` itself if it is a store, else
    ``root/<target>/<dataset>``; with several datasets and none named, the newest."""
    root = Path(root)
    if (root / "manifest.json").is_file():
        return ExemplarStore(root)
    base = root / slug(target)
    if dataset is not None:
        folder = base / slug(dataset)
        return ExemplarStore(folder) if (folder / "manifest.json").is_file() else None
    candidates = sorted(base.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    return ExemplarStore(candidates[0].parent) if candidates else None


def grid(
    exemplars: Sequence[tuple[float, Image.Image]], columns: int = 5, title: str = ""
) -> Image.Image:
    """A contact sheet of exemplars with their activations under each image."""
    from PIL import ImageDraw

    if not exemplars:
        raise UserError("No exemplars to show.")
    columns = min(columns, len(exemplars))
    w, h = exemplars[0][1].size
    pad, label = 6, 18
    top = 24 if title else 0
    rows = math.ceil(len(exemplars) / columns)
    sheet = Image.new(
        "RGB", (columns * (w + pad) + pad, top + rows * (h + label + pad) + pad), "white"
    )
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 6), title, fill="black")
    for n, (value, img) in enumerate(exemplars):
        x = pad + (n % columns) * (w + pad)
        y = top + pad + (n // columns) * (h + label + pad)
        sheet.paste(img.resize((w, h)), (x, y))
        draw.text((x, y + h + 3), f"{value:.3f}", fill="black")
    return sheet
