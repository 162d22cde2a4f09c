"""The ``dataset_exemplars`` tool and the ``maia exemplars`` commands.

- ``tools.dataset_exemplars(system, k=15, bottom=False)``: MAIA's most used tool, served
  from an exemplar store (maia_core/exemplars.py); the store's thresholds also become the
  units' mask thresholds in ``system.call_neuron``.
- ``maia exemplars compute``: one pass over a dataset for any layers of any target.
- ``maia exemplars import-maia``: MAIA's published exemplar folders into a store.
- ``maia exemplars show``: a unit's exemplars as a contact sheet.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maia_core import hookimpl
from maia_core.errors import ToolError, UserError, check_count
from maia_core.files import atomic_write_bytes, full_disk_stops
from maia_core.options import reject_unknown
from maia_core.tools import ToolContext

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_ROOT = Path("exemplars")
# Upper bounds of the counts a computation takes, far above any use and below what would
# exhaust a machine: k maps per unit at the top and the bottom, samples per unit in memory.
MAX_K = 1000
MAX_BATCH_SIZE = 4096
MAX_WORKERS = 64
MIN_SAMPLES, MAX_SAMPLES = 100, 1_000_000


@hookimpl
def register_tools(register):
    register(
        "dataset_exemplars",
        DatasetExemplars,
        help="The dataset images that activate the unit most (or least), its region highlighted",
    )


class DatasetExemplars:
    def __init__(self, ctx: ToolContext, dataset: str | None = None, **options: str):
        reject_unknown(options, "Tool dataset_exemplars", ("dataset",))
        self._ctx = ctx
        self._root = ctx.exemplars or DEFAULT_ROOT
        self._dataset = dataset
        self._store: Any = False  # False: not looked for yet; None: there is none
        # Looked for now, where the models load: a damaged store is one line before any unit runs.
        self._find()

    def _find(self):
        if self._store is False:
            from maia_core.torch_runtime.exemplars import find_store

            self._store = find_store(self._root, self._ctx.target.name, self._dataset)
        return self._store

    def threshold_for(self, unit: Any) -> float | None:
        """The unit's dataset threshold, for call_neuron's masks (None without a store)."""
        store = self._find()
        if store is None or unit.layer not in store.layers:
            return None
        return store.threshold(unit.layer, unit.index)

    def __call__(
        self, system: Any, k: int = 15, bottom: bool = False
    ) -> list[tuple[float, Image.Image]]:
        """Get the images of a large dataset that activate the unit most, with its region highlighted.

        Args:
            system: the unit you are studying (pass `system`).
            k: how many exemplars to return (at most the number stored, usually 15).
            bottom: if True, return the least activating images instead, least activating first.

        Returns:
            A list of (activation, masked_image) pairs, from the highest activation to the
            lowest (lowest first when bottom=True). Each image is shown as the model sees it,
            with the region where the unit is active kept and everything else dimmed to 25%.

        Example:
            for activation, image in tools.dataset_exemplars(system):
                tools.display(image, f"activation {activation:.3f}")
        """
        layer = getattr(system, "layer", None)
        index = getattr(system, "neuron_num", None)
        if layer is None or index is None:
            raise ToolError(
                "dataset_exemplars needs the unit: call it as tools.dataset_exemplars(system)."
            )
        store = self._find()
        # The name the agent's system carries: a user's set file path (synthetic:/home/me/
        # set.json) is not the agent's to see.
        target = getattr(self._ctx.target, "public_name", None) or self._ctx.target.name
        if store is None or layer not in store.layers:
            raise ToolError(
                f"There are no dataset exemplars for layer {layer} of {target} (looked in {self._root}). "
                f"They are computed with: maia exemplars compute --target {target} --dataset scenes --layers {layer}"
            )
        try:
            return store.masked(layer, int(index), bottom=bool(bottom), k=max(1, int(k)))
        except UserError as exc:
            raise ToolError(exc.message) from None


# -- commands ---------------------------------------------------------------------------------


@hookimpl
def register_commands(cli):
    import typer

    app = typer.Typer(help="Dataset exemplars: compute, import MAIA's, show.", no_args_is_help=True)
    cli.add_typer(app, name="exemplars")

    @app.command("compute")
    def compute(
        target: str = typer.Option(..., "--target", "-t", help="The target, as for maia run."),
        dataset: str = typer.Option(
            ...,
            "--dataset",
            "-d",
            help="imagefolder:PATH, hf:NAME[:split], scenes, ... (maia plugins).",
        ),
        dataset_option: list[str] = typer.Option(
            [], "--dataset-option", help="KEY=VALUE passed to the dataset, e.g. column=img."
        ),
        layers: str = typer.Option(
            ...,
            "--layers",
            "-l",
            help="Comma-separated layers, or all (the main layers of maia layers).",
        ),
        k: int = typer.Option(
            15, "--k", help="Exemplars kept per unit, at the top and at the bottom (1 to 1000)."
        ),
        batch_size: int = typer.Option(64, "--batch-size", help="Images per batch (1 to 4096)."),
        workers: int = typer.Option(2, "--workers", help="Data loading processes (0 to 64)."),
        device: str = typer.Option("auto", "--device"),
        precision: str = typer.Option("fp32", "--precision", help="fp32, bf16 or fp16 (autocast)."),
        limit: int | None = typer.Option(None, "--limit", help="Use only the first N images."),
        out: Path | None = typer.Option(
            None, "--out", help="The store folder. Default: <exemplars>/<target>/<dataset>."
        ),
        exemplars: Path = typer.Option(DEFAULT_ROOT, "--exemplars", help="Root of the stores."),
        target_option: list[str] = typer.Option(
            [], "--target-option", help="KEY=VALUE passed to the target."
        ),
        basis: list[str] = typer.Option(
            [], "--basis", help="LAYER=FILE.safetensors, as for maia run."
        ),
        embed_images: bool = typer.Option(
            False,
            "--embed-images",
            help="Store the exemplar images (JPEG) so the store works without the dataset.",
        ),
        samples: int = typer.Option(
            20_000,
            "--samples",
            help="Activations sampled per unit for its 0.99-quantile threshold (100 to 1,000,000).",
        ),
        seed: int = typer.Option(0, "--seed"),
        checkpoint_every: float = typer.Option(
            60.0, "--checkpoint-every", help="Seconds between checkpoints (0: every batch)."
        ),
        decode: str = typer.Option(
            "auto",
            "--decode",
            help="auto (JPEGs decoded on the GPU when there is one), pil, or torchvision.",
        ),
        restart: bool = typer.Option(
            False, "--restart", help="Discard a checkpoint instead of resuming it."
        ),
        force: bool = typer.Option(False, "--force", help="Recompute a store that already exists."),
    ) -> None:
        """Compute dataset exemplars and thresholds for layers of a target, in one pass."""
        try:
            compute_store(
                target=target,
                dataset=dataset,
                dataset_options=dataset_option,
                layers=layers,
                k=k,
                batch_size=batch_size,
                workers=workers,
                device=device,
                precision=precision,
                limit=limit,
                out=out,
                root=exemplars,
                target_options=target_option,
                bases=basis,
                embed_images=embed_images,
                samples=samples,
                seed=seed,
                checkpoint_every=checkpoint_every,
                decode=decode,
                restart=restart,
                force=force,
            )
        except KeyboardInterrupt:
            import sys

            sys.stderr.write(
                "Interrupted; a checkpoint is saved. Run the same command again to resume.\n"
            )
            raise typer.Exit(130) from None

    @app.command("import-maia")
    def import_maia(
        folder: Path = typer.Argument(
            ..., help="MAIA's exemplars folder (or one model's folder in it)."
        ),
        target: str = typer.Option(
            ..., "--target", "-t", help="resnet152, clip-RN50, dino_vits8 or synthetic_neurons."
        ),
        exemplars: Path = typer.Option(DEFAULT_ROOT, "--exemplars", help="Root of the stores."),
        out: Path | None = typer.Option(
            None, "--out", help="The store folder. Default: <exemplars>/<target>/maia-imagenet."
        ),
    ) -> None:
        """Convert MAIA's published exemplars (images.npy, masks.npy, activations.csv, thresholds.csv) into a store."""
        from maia_plugins.tools.maia_import import import_maia_folder

        summary = import_maia_folder(folder, target, out, exemplars)
        print(
            f"imported {summary['layers']} layer(s), {summary['units']} units, {summary['images']} unique images "
            f"into {summary['out']} ({summary['bytes'] / 2**20:.1f} MB; MAIA's arrays: {summary['source_bytes'] / 2**20:.1f} MB)"
        )

    @app.command("show")
    def show(
        target: str = typer.Option(..., "--target", "-t"),
        layer: str = typer.Option(..., "--layer", "-l"),
        unit: int = typer.Option(..., "--unit", "-u", min=0),
        out: Path | None = typer.Option(
            None, "--out", help="PNG to write. Default: exemplars-<layer>-<unit>.png."
        ),
        k: int = typer.Option(15, "--k", help="How many (1 to 1000)."),
        bottom: bool = typer.Option(False, "--bottom", help="The least activating images instead."),
        dataset: str | None = typer.Option(
            None, "--dataset", help="Which store, when the target has several."
        ),
        exemplars: Path = typer.Option(
            DEFAULT_ROOT, "--exemplars", help="Root of the stores, or a store folder."
        ),
    ) -> None:
        """Render a unit's exemplars, with their activations, as one image."""
        from maia_core.files import ensure_output_file, slug
        from maia_core.units import unit_range

        check_count(k, "--k", 1, MAX_K)
        path = ensure_output_file(
            out or Path(f"exemplars-{slug(layer)}-{unit}{'-bottom' if bottom else ''}.png"), "--out"
        )
        from maia_core.torch_runtime.exemplars import find_store, grid  # torch, after the checks

        if exemplars.is_file():
            raise UserError(
                f"--exemplars {str(exemplars)!r} is a file; give the folder of exemplar stores."
            )

        store = find_store(exemplars, target, dataset)
        if store is None or layer not in store.layers:
            raise UserError(
                f"No exemplars for layer {layer} of {target} under {exemplars}. "
                f"Compute them with: maia exemplars compute --target {target} --dataset scenes --layers {layer}"
            )
        units = store.layers[layer]["units"]
        if unit >= units:
            raise UserError(
                f"Unit {unit} is out of range for layer {layer!r}, which has {unit_range(units)}."
            )
        title = f"{target} {layer} unit {unit}: {'least' if bottom else 'most'} activating of {store.dataset_spec}"
        sheet = grid(store.masked(layer, unit, bottom=bottom, k=k), title=title)
        buf = io.BytesIO()
        sheet.save(buf, format="PNG")
        atomic_write_bytes(path, buf.getvalue())
        print(f"wrote {path}")


def check_compute_options(
    *,
    k: int,
    batch_size: int,
    workers: int,
    samples: int,
    limit: int | None,
    checkpoint_every: float,
    decode: str,
) -> None:
    """The numbers of a computation, each a one-line error naming its bound, before any work."""
    import math

    check_count(k, "--k", 1, MAX_K, "maps are kept for each of them, per unit, top and bottom")
    check_count(batch_size, "--batch-size", 1, MAX_BATCH_SIZE)
    check_count(workers, "--workers", 0, MAX_WORKERS, "a process each")
    check_count(samples, "--samples", MIN_SAMPLES, MAX_SAMPLES, "every unit's are kept in memory")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, not {limit}.")
    if not (math.isfinite(checkpoint_every) and checkpoint_every >= 0):
        raise UserError(
            f"--checkpoint-every must be a number of seconds, 0 or more, not {checkpoint_every!r}."
        )
    if decode not in ("auto", "pil", "torchvision"):
        raise UserError(f"Unknown --decode {decode!r}. Use auto, pil or torchvision.")


@full_disk_stops(", then run the same command again: it resumes from the last checkpoint.")
def compute_store(
    *,
    target: str,
    dataset: str,
    layers: str,
    dataset_options: list[str] | None = None,
    k: int = 15,
    batch_size: int = 64,
    workers: int = 2,
    device: str = "auto",
    precision: str = "fp32",
    limit: int | None = None,
    out: Path | None = None,
    root: Path = DEFAULT_ROOT,
    target_options: list[str] | None = None,
    bases: list[str] | None = None,
    embed_images: bool = False,
    samples: int = 20_000,
    seed: int = 0,
    checkpoint_every: float = 60.0,
    decode: str = "auto",
    restart: bool = False,
    force: bool = False,
    quiet: bool = False,
    target_object: Any = None,
    announce: bool = True,
) -> dict[str, Any]:
    """``maia exemplars compute`` as a function (tests and notebooks call it too).

    ``target_object`` is the target already built for ``target`` (``maia synthetic create``
    computes a set's store before writing the set's file). A full disk is a one-line error;
    the same command then resumes from the last checkpoint."""
    import shutil

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from maia_core import plugins
    from maia_core.execution.host import load_target
    from maia_core.execution.specs import WorldSpec
    from maia_core.options import parse_basis_specs, parse_pairs

    check_compute_options(
        k=k,
        batch_size=batch_size,
        workers=workers,
        samples=samples,
        limit=limit,
        checkpoint_every=checkpoint_every,
        decode=decode,
    )
    from maia_core.files import ensure_output_folder

    if target_object is None:
        plugins.registry("targets").resolve(target)  # a typo is told before folders are made
    if out is not None:
        ensure_output_folder(out, "--out")
    elif Path(root).is_file():
        raise UserError(f"--exemplars {str(root)!r} is a file; give the folder of exemplar stores.")
    entry, arg = plugins.registry("datasets").resolve(dataset)
    data = entry.factory(arg, **parse_pairs(dataset_options or [], "--dataset-option"))
    data.name = data.name or dataset
    # Where the store goes, checked before the model loads: a full or read-only disk is told now.
    store_dir = Path(out) if out else default_store_dir(root, target, data.name)
    ensure_output_folder(store_dir, "--out" if out else "--exemplars")
    if (store_dir / "manifest.json").exists() and not force:
        raise UserError(
            f"A store already exists at {store_dir}. Use --force to recompute it, or --out for another folder."
        )
    spec = WorldSpec(
        target=target,
        target_options=parse_pairs(target_options or [], "--target-option"),
        device=device,
        precision=precision,
        bases=parse_basis_specs(bases or []),
    )
    tgt = target_object if target_object is not None else load_target(spec)
    if layers.strip() == "all":
        names = [i.name for i in tgt.layers()]
    else:
        names = [n.strip() for n in layers.split(",") if n.strip()]
        for name in names:
            tgt.require_layer(name)
    if not names:
        raise UserError("Give the layers to compute: --layers L1,L2 or --layers all.")
    if restart and (store_dir / ".checkpoint").exists():
        shutil.rmtree(store_dir / ".checkpoint")
    tgt.batch_size = batch_size
    # torch, only now: bad input above is told without it (two seconds of importing)
    from maia_core.torch_runtime.exemplars import ComputeConfig, ExemplarComputation

    config = ComputeConfig(
        layers=names,
        k=k,
        batch_size=batch_size,
        workers=workers,
        limit=limit,
        samples=samples,
        seed=seed,
        checkpoint_every=checkpoint_every,
        embed_images=embed_images,
        decode=decode,
    )
    job = ExemplarComputation(tgt, data, store_dir, config)
    console = Console(stderr=True, quiet=quiet)
    resumed = job.resume()
    if resumed:
        console.print(
            f"resuming from image {job.next_index} of {job.n} ({store_dir / '.checkpoint'})"
        )
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, disable=quiet) as progress:
        task = progress.add_task(
            f"exemplars of {target} on {data.name}", total=job.n, completed=job.next_index, rate=""
        )
        started, first = time.monotonic(), job.next_index

        def update(done: int, total: int) -> None:
            elapsed = time.monotonic() - started
            rate = f"{(done - first) / elapsed:.1f} images/s" if elapsed > 0 else ""
            progress.update(task, completed=done, rate=rate)

        summary = job.run(update)
    summary["out"] = str(store_dir)
    summary["resumed"] = resumed
    summary["layers"] = len(names)
    if announce and not quiet:
        print(store_summary(summary))
    return summary


def default_store_dir(root: str | Path, target: str, dataset: str) -> Path:
    """Where ``maia exemplars compute`` puts a store by default: ``ROOT/<target>/<dataset>``."""
    from maia_core.files import slug

    return Path(root) / slug(target) / slug(dataset)


def store_summary(summary: dict[str, Any]) -> str:
    """``wrote STORE: 2 layer(s) over 1000 images``, from what compute_store returns."""
    skipped = f", {summary['skipped']} unreadable image(s) skipped" if summary["skipped"] else ""
    return f"wrote {summary['out']}: {summary['layers']} layer(s) over {summary['images']} images{skipped}"
