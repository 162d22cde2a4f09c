"""``hf:NAME[:split]``: a Hugging Face dataset's image column.

NAME is a hub id (read from the local cache when offline: ``HF_HUB_OFFLINE=1``, or when the
Hub cannot be reached) or a local folder (a ``save_to_disk`` folder, or data files such as
parquet). Without a split, ``validation``, then ``test``, then ``train`` is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from maia_core import hookimpl
from maia_core.dataset import Dataset
from maia_core.errors import UserError
from maia_core.options import reject_unknown

if TYPE_CHECKING:
    from PIL import Image

PREFERRED_SPLITS = ("validation", "val", "test", "train")


@hookimpl
def register_datasets(register):
    register(
        "hf",
        make_hf_dataset,
        help="A Hugging Face dataset: hf:NAME[:split], from the local cache offline",
    )


def make_hf_dataset(arg: str | None, **options: str) -> HFDataset:
    reject_unknown(options, "Dataset hf", ("column",))
    if not arg:
        raise UserError(
            "The hf dataset needs a name: --dataset hf:NAME[:split], e.g. hf:frgfm/imagenette:validation."
        )
    name, _, split = arg.partition(":")
    return HFDataset(name, split or None, options.get("column"))


def _pick_split(splits: list[str], name: str) -> str:
    for s in PREFERRED_SPLITS:
        if s in splits:
            return s
    if len(splits) == 1:
        return splits[0]
    raise UserError(
        f"Dataset {name} has splits {', '.join(splits)}; name one: --dataset hf:{name}:<split>."
    )


class HFDataset(Dataset):
    def __init__(self, path: str, split: str | None, column: str | None = None):
        try:
            import datasets
        except ModuleNotFoundError:
            raise UserError(
                "The hf dataset needs the datasets package: pip install datasets."
            ) from None
        from maia_core.torch_runtime.target import hf_cache_dir, hub_offline_unless_reachable

        try:
            with hub_offline_unless_reachable():
                if Path(path).is_dir() and any(
                    (Path(path) / f).exists() for f in ("dataset_dict.json", "state.json")
                ):
                    data = datasets.load_from_disk(path)
                else:
                    data = datasets.load_dataset(path)
        except (
            OSError,
            ValueError,
            FileNotFoundError,
            datasets.exceptions.DatasetNotFoundError,
        ) as exc:
            raise UserError(
                f"Cannot load dataset {path} ({type(exc).__name__}): it is not in the Hugging Face cache "
                f"{hf_cache_dir()} and could not be downloaded. Fetch it where there is network with: "
                f"python -c \"import datasets; datasets.load_dataset('{path}')\" (then copy the cache here)."
            ) from None
        if isinstance(data, datasets.DatasetDict):
            split = split or _pick_split(list(data), path)
            if split not in data:
                raise UserError(
                    f"Dataset {path} has no split {split!r}. Splits: {', '.join(data)}."
                )
            data = data[split]
        self.split = split or "all"
        images = [k for k, f in data.features.items() if isinstance(f, datasets.Image)]
        if column is None:
            if not images:
                raise UserError(
                    f"Dataset {path} has no image column; its columns: {', '.join(data.features)}."
                )
            column = images[0]
        elif column not in data.features:
            raise UserError(
                f"Dataset {path} has no column {column!r}; its columns: {', '.join(data.features)}."
            )
        self.data = data
        self.column = column
        self.path = path
        self.name = f"hf:{path}" + (f":{split}" if split else "")

    def __len__(self) -> int:
        return len(self.data)

    def image(self, index: int) -> Image.Image:
        from PIL import Image

        img = self.data[index][self.column]
        if not isinstance(img, Image.Image):
            raise ValueError(f"row {index} holds no image")
        return img.convert("RGB")

    def item_id(self, index: int) -> str:
        return f"{self.split}/{index}"

    def fingerprint(self) -> str:
        return str(getattr(self.data, "_fingerprint", None) or super().fingerprint())

    def describe(self) -> dict:
        return {
            **super().describe(),
            "path": self.path,
            "split": self.split,
            "options": {"column": self.column},
        }
