"""``synthetic:<set>``: synthetic neurons with known concepts, scored by a detector.

A synthetic neuron fires for a known concept (mono), for either of its concepts (OR) or for
all of them together (AND); which concepts is the ground truth an agent's label is checked
against. The layers are the modes ``mono``, ``or`` and ``and``; the units the neurons of each
mode, by index (``--units mono=1,8:or=9:and=0,2,5``).

Sets (``--target synthetic:<set>``):

- ``maia`` (also the target ``synthetic_neurons``): MAIA's 47 mono, 18 OR and 20 AND neurons,
  same indices, scored by ``grounded-sam`` (Grounding DINO + SAM, as MAIA);
- ``offline``: neurons on concepts the ``offline`` detector (EfficientNet-Lite0 + colour rules)
  finds and the offline ``scenes`` text2image draws; works with no network;
- ``PATH.json``: your own, ``{"detector": "offline", "mono": ["zebra"], "or": ["zebra_tiger"],
  "and": ["dog_grass"]}``; a label's concepts are its parts between underscores, as in MAIA
  (``car window`` is one concept). ``maia synthetic create`` adds neurons to such a file.

Semantics, and where they differ from MAIA's code (``SAMNeuron.calc_activations``):

- a concept the detector does not find (score under its threshold) scores 0. MAIA carried the
  previous concept's summed box scores over to an undetected one, so its OR neurons reached 11;
- mono = the concept's score; OR = the highest of its concepts' scores, regions united;
- AND = the lowest of its concepts' scores, regions united, and exactly 0 unless every concept
  is present. MAIA returned the first concept's score and region only, and random noise in
  [0, 0.1] when a concept was missing;
- every image is scored on its own (MAIA's AND check broke with several images per call);
- the region is everything the detector marks (threshold 0, as MAIA's Synthetic_System).

Target options: ``detector=NAME`` swaps the set's detector; ``detector.KEY=VALUE`` is passed to
it (``detector.threshold=0.2``); ``batch_size``; ``map_size`` (the maps' side, default 28).

The ground truth stays in the target (``ground_truth(unit)``, ``unit_listing``): the agent's
``system`` carries no concept, in no attribute, docstring, description or error message.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maia_core import hookimpl
from maia_core.errors import UserError
from maia_core.options import as_int, reject_unknown

SETS_DIR = Path(__file__).resolve().parent / "synthetic_sets"
BUILTIN_SETS = ("maia", "offline")
MODES = ("mono", "or", "and")
SET_KEYS = ("detector", "notes", *MODES)
OPTIONS = ("detector", "batch_size", "map_size")
SET_FORMAT = (
    '{"detector": "offline", "mono": ["zebra"], "or": ["zebra_tiger"], "and": ["dog_grass"]}'
)


@hookimpl
def register_targets(register):
    register(
        "synthetic",
        make_synthetic,
        help="Synthetic neurons with known concepts: synthetic:maia, synthetic:offline or "
        "synthetic:PATH.json (layers mono, or, and)",
    )
    register(
        "synthetic_neurons",
        make_synthetic_neurons,
        help="MAIA's synthetic neurons (synthetic:maia: 47 mono, 18 OR, 20 AND; Grounded-SAM)",
    )


# -- sets ---------------------------------------------------------------------------------


def normalize_concept(concept: str) -> str:
    return " ".join(str(concept).lower().split())


def split_label(label: str) -> list[str]:
    """MAIA's label -> concepts: ``"people_building"`` -> ``["people", "building"]``."""
    return [normalize_concept(part) for part in str(label).split("_")]


@dataclass
class NeuronSet:
    """A set of synthetic neurons: per mode, the labels of its neurons, in unit order."""

    name: str  # "maia", "offline", or the file as given
    detector: str
    labels: dict[str, list[str]] = field(default_factory=dict)
    notes: str = ""
    path: Path | None = None
    # SHA-256 of the file as read when the run started (recorded in result.json).
    sha256: str = ""

    @property
    def builtin(self) -> bool:
        return self.name in BUILTIN_SETS

    def concepts_by_mode(self) -> dict[str, list[list[str]]]:
        return {mode: [split_label(lb) for lb in self.labels.get(mode, [])] for mode in MODES}

    def counts(self) -> dict[str, int]:
        return {mode: len(self.labels.get(mode, [])) for mode in MODES}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"detector": self.detector}
        if self.notes:
            out["notes"] = self.notes
        for mode in MODES:
            out[mode] = list(self.labels.get(mode, []))
        return out


def set_path(spec: str) -> Path:
    """Where a set lives: a built-in name, or a JSON file path."""
    if spec in BUILTIN_SETS:
        return SETS_DIR / f"{spec}.json"
    path = Path(spec).expanduser()
    if path.suffix.lower() != ".json":
        raise UserError(
            f"Unknown synthetic neuron set {spec!r}. Use one of {', '.join(BUILTIN_SETS)}, "
            f"or a JSON file: synthetic:PATH.json (format: {SET_FORMAT})."
        )
    return path


def load_set(spec: str) -> NeuronSet:
    """Read and check a set (its structure; concepts are checked against the detector)."""
    path = set_path(spec)
    try:
        data = path.read_bytes()  # read once: the run's truth is what this says
        obj = json.loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"The synthetic neuron set {str(path)!r} does not exist. Create it with: "
            f"maia synthetic create --set {spec} --mode mono --concepts zebra"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"Cannot read the synthetic neuron set {str(path)!r}: {exc}.") from None
    except json.JSONDecodeError as exc:
        raise UserError(
            f"The synthetic neuron set {str(path)!r} is not valid JSON ({exc}); expected {SET_FORMAT}."
        ) from None
    loaded = parse_set(obj, spec, path)
    loaded.sha256 = hashlib.sha256(data).hexdigest()
    return loaded


def parse_set(obj: Any, name: str, path: Path | None = None) -> NeuronSet:
    where = str(path or name)
    if not isinstance(obj, dict):
        raise UserError(
            f"The synthetic neuron set {where!r} must be a JSON object like {SET_FORMAT}."
        )
    extra = sorted(set(obj) - set(SET_KEYS))
    if extra:
        raise UserError(
            f"The synthetic neuron set {where!r} has an unknown key {extra[0]!r}; its keys are "
            f"{', '.join(SET_KEYS)}."
        )
    detector = obj.get("detector", "offline")
    if not isinstance(detector, str) or not detector.strip():
        raise UserError(
            f'In {where!r}, "detector" must name a detector, e.g. "offline" (see maia plugins).'
        )
    notes = obj.get("notes", "")
    if not isinstance(notes, str):
        raise UserError(f'In {where!r}, "notes" must be a string.')
    labels: dict[str, list[str]] = {}
    for mode in MODES:
        items = obj.get(mode, [])
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise UserError(
                f"In {where!r}, {mode!r} must be a list of labels (strings), like {SET_FORMAT}."
            )
        for index, label in enumerate(items):
            check_label(
                mode, split_label(label), f"In {where!r}, {mode} neuron {index} ({label!r})"
            )
        labels[mode] = list(items)
    if not any(labels.values()):
        raise UserError(
            f"The synthetic neuron set {where!r} has no neurons; add some: {SET_FORMAT}."
        )
    return NeuronSet(name=name, detector=detector.strip(), labels=labels, notes=notes, path=path)


def check_label(mode: str, concepts: list[str], where: str) -> None:
    if any(not c for c in concepts):
        raise UserError(
            f"{where}: a concept is empty; concepts are joined with single underscores."
        )
    if mode == "mono" and len(concepts) != 1:
        raise UserError(
            f"{where}: a mono neuron has one concept, this one has {len(concepts)}; "
            'put neurons of several concepts under "or" or "and".'
        )
    if mode != "mono" and len(concepts) < 2:
        raise UserError(
            f"{where}: an {mode.upper()} neuron needs at least two concepts joined with "
            'underscores, like "zebra_tiger".'
        )
    if len(set(concepts)) != len(concepts):
        raise UserError(f"{where}: a concept is repeated.")


def detector_vocabulary(name: str) -> list[str] | None:
    """A detector's vocabulary without loading its models (None: open vocabulary)."""
    from maia_core import plugins

    registry = plugins.registry("detectors")
    if name not in registry.entries:
        raise UserError(f"Unknown detector {name!r}. Known: {registry.known()}.")
    vocab = registry.entries[name].meta.get("vocabulary")
    return vocab() if vocab is not None else None


def check_concepts(neuron_set: NeuronSet, check: Any) -> None:
    """Run ``check(concept)`` (a detector's) on every concept, naming the neuron on failure."""
    for mode, lists in neuron_set.concepts_by_mode().items():
        for index, concepts in enumerate(lists):
            for concept in concepts:
                try:
                    check(concept)
                except UserError as exc:
                    raise UserError(
                        f"{neuron_set.path or neuron_set.name}, {mode} neuron {index}: {exc.message}"
                    ) from None


# -- the target -----------------------------------------------------------------------------


def make_synthetic_neurons(arg: str | None, **options: Any):
    return make_synthetic("maia", name="synthetic_neurons", **options)


def make_synthetic(
    arg: str | None,
    *,
    device: str = "auto",
    precision: str = "fp32",
    name: str | None = None,
    neuron_set: NeuronSet | None = None,
    **options: str,
):
    """The target ``synthetic:<arg>``; ``neuron_set`` is the set to use instead of reading it
    from ``arg`` (``maia synthetic create`` builds it before the file is written)."""
    if not arg:
        raise UserError(
            "The synthetic target needs a set: synthetic:maia, synthetic:offline or synthetic:PATH.json."
        )
    detector_options = {
        k.split(".", 1)[1]: v for k, v in options.items() if k.startswith("detector.")
    }
    plain = {k: v for k, v in options.items() if not k.startswith("detector.")}
    reject_unknown(plain, "Target synthetic", OPTIONS)
    map_size = as_int(plain.get("map_size", 28), "map_size")
    if not 1 <= map_size <= 512:
        raise UserError(f"Option map_size={map_size} must be between 1 and 512.")
    neuron_set = neuron_set if neuron_set is not None else load_set(arg)
    detector_name = plain.get("detector") or neuron_set.detector
    from maia_core.torch_runtime.detector import load_detector

    detector = load_detector(detector_name, **detector_options)
    check_concepts(neuron_set, detector.check)
    from maia_plugins.targets.synthetic_model import SyntheticTarget

    if name is not None:
        public = name
    elif neuron_set.builtin:
        public = f"synthetic:{arg}"
    else:
        public = "synthetic:custom"
    return SyntheticTarget(
        name or f"synthetic:{arg}",
        neuron_set,
        detector,
        public_name=public,
        device=device,
        precision=precision,
        batch_size=as_int(plain.get("batch_size", 32), "batch_size"),
        map_size=map_size,
    )


# -- commands -------------------------------------------------------------------------------


def plan_neuron(
    set_file: str, mode: str, concepts: list[str], detector: str | None = None
) -> tuple[NeuronSet, int, bool]:
    """The set file's set with a neuron added, in memory: nothing is written. Returns the
    set, the neuron's index in its mode, and whether it is new (False: already there)."""
    if set_file in BUILTIN_SETS:
        raise UserError(
            f"The built-in set {set_file!r} is read-only; give a file for your own set, e.g. --set myset.json."
        )
    if mode not in MODES:
        raise UserError(f"Unknown --mode {mode!r}. Use mono, or or and.")
    path = set_path(set_file)
    if path.exists():
        neuron_set = load_set(set_file)
        if detector and detector != neuron_set.detector:
            raise UserError(
                f"{path} uses the detector {neuron_set.detector!r}, not {detector!r}; "
                "use another file for neurons of another detector."
            )
    else:
        neuron_set = NeuronSet(
            name=set_file,
            detector=detector or "offline",
            labels={m: [] for m in MODES},
            path=path,
        )
    concepts = [normalize_concept(c) for c in concepts]
    if any("_" in c for c in concepts):
        raise UserError(
            "A concept cannot contain an underscore: underscores join the concepts of a label."
        )
    check_label(mode, concepts, f"--mode {mode} --concepts {','.join(concepts)}")
    vocab = detector_vocabulary(neuron_set.detector)
    if vocab is not None:
        from maia_core.torch_runtime.detector import VOCABULARY_COMMAND

        known = set(vocab)
        for concept in concepts:
            if concept not in known:
                raise UserError(
                    f"The {neuron_set.detector} detector does not know the concept {concept!r}. "
                    f"See its vocabulary with: {VOCABULARY_COMMAND.format(name=neuron_set.detector)}"
                )
    label = "_".join(concepts)
    labels = neuron_set.labels.setdefault(mode, [])
    if label in labels:
        return neuron_set, labels.index(label), False
    labels.append(label)
    return neuron_set, len(labels) - 1, True


def write_set(neuron_set: NeuronSet) -> None:
    """The set's file, atomically: a reader sees the old set or the new one."""
    from maia_core.files import atomic_write_json, full_disk_stops, shown_path

    try:
        with full_disk_stops(", then run the same command again."):
            atomic_write_json(neuron_set.path, neuron_set.to_json())
    except OSError as exc:  # a full disk is a UserError already
        raise UserError(
            f"Cannot write the set file {shown_path(neuron_set.path)!r} ({exc.strerror or exc}). "
            "Give a --set file in a folder you can write to."
        ) from None


def add_neuron(
    set_file: str, mode: str, concepts: list[str], detector: str | None = None
) -> tuple[NeuronSet, int, bool]:
    """Add a neuron to a set file (created if missing), atomically. Returns the set, the
    neuron's index in its mode, and whether it was added (False: it was already there)."""
    neuron_set, index, added = plan_neuron(set_file, mode, concepts, detector)
    if added:
        write_set(neuron_set)
    return neuron_set, index, added


def check_set_folder(set_file: str) -> None:
    """The set file can be written (its folder is made if missing): told before any work."""
    from maia_core.files import check_writable, shown_path

    path = set_path(set_file)
    if path.is_dir():
        raise UserError(f"--set {shown_path(path)!r} is a folder; give a JSON file name.")
    existing = next(p for p in path.parents if p.exists())
    if not existing.is_dir():
        raise UserError(
            f"--set {shown_path(path)!r} lies under {shown_path(existing)!r}, which is a file; "
            "give another path."
        )
    check_writable(
        existing, "--set's folder", "Give a --set file in a folder you can write to", probe_bytes=0
    )


@hookimpl
def register_commands(cli):
    import typer

    app = typer.Typer(
        help="Synthetic neurons: create your own, list a set, show a detector's vocabulary.",
        no_args_is_help=True,
    )
    cli.add_typer(app, name="synthetic")

    @app.command("create")
    def create(
        set_file: str = typer.Option(
            ..., "--set", help="The set's JSON file (created if missing)."
        ),
        mode: str = typer.Option(..., "--mode", help="mono, or, or and."),
        concepts: str = typer.Option(
            ..., "--concepts", help="Comma-separated concepts, e.g. cheese,lemon."
        ),
        detector: str | None = typer.Option(
            None, "--detector", help="The detector of a new set (default offline)."
        ),
        dataset: str | None = typer.Option(
            None, "--dataset", help="Also compute the set's exemplars over this dataset."
        ),
        dataset_option: list[str] = typer.Option([], "--dataset-option", help="KEY=VALUE."),
        limit: int | None = typer.Option(None, "--limit", help="Use only N images."),
        batch_size: int = typer.Option(32, "--batch-size", help="Images per batch (1 to 4096)."),
        workers: int = typer.Option(2, "--workers", help="Data loading processes (0 to 64)."),
        device: str = typer.Option("auto", "--device"),
        exemplars: Path = typer.Option(
            Path("exemplars"), "--exemplars", help="Root of the stores."
        ),
    ) -> None:
        """Add a synthetic neuron to a set file and print its unit (MODE=INDEX).

        The file changes only when everything succeeds (its exemplars too, with --dataset),
        and atomically: a reader sees the old set or the new one."""
        import sys

        parts = [c for c in concepts.split(",") if c.strip()]
        # Everything is checked before the file changes or any work starts.
        if dataset:
            from maia_plugins.tools.dataset_exemplars import check_compute_options

            check_compute_options(
                k=15,
                batch_size=batch_size,
                workers=workers,
                samples=20_000,
                limit=limit,
                checkpoint_every=60.0,
                decode="auto",
            )
        if set_file not in BUILTIN_SETS:
            check_set_folder(set_file)
        neuron_set, index, added = plan_neuron(set_file, mode, parts, detector)
        if dataset:
            from maia_core import plugins
            from maia_core.options import parse_pairs
            from maia_plugins.tools.dataset_exemplars import compute_store, store_summary

            plugins.registry("datasets").resolve(dataset)
            parse_pairs(dataset_option, "--dataset-option")
            if exemplars.exists() and not exemplars.is_dir():
                raise UserError(
                    f"--exemplars {str(exemplars)!r} is a file; give the folder of exemplar stores."
                )
            # The store of the set as it will be, built from the set in memory: the file is
            # written only once it exists.
            target = make_synthetic(set_file, device=device, neuron_set=neuron_set)
            try:
                summary = compute_store(
                    target=f"synthetic:{set_file}",
                    dataset=dataset,
                    dataset_options=dataset_option,
                    layers=",".join(m for m, n in neuron_set.counts().items() if n),
                    batch_size=batch_size,
                    workers=workers,
                    device=device,
                    limit=limit,
                    root=exemplars,
                    force=True,
                    restart=True,
                    target_object=target,
                    announce=False,
                )
            finally:
                target.close()
        if added:
            write_set(neuron_set)
        print(f"{mode}={index}")
        what = "added to" if added else "already in"
        sys.stderr.write(
            f"{what} {set_file}; study it with: maia run --target synthetic:{set_file} --units {mode}={index}\n"
        )
        if dataset:
            sys.stderr.write(store_summary(summary) + "\n")

    @app.command("vocabulary")
    def vocabulary_command(
        detector: str = typer.Option("offline", "--detector", help="The detector."),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON list."),
    ) -> None:
        """Print the concepts a detector knows (what a set may use)."""
        from maia_core import plugins

        vocab = detector_vocabulary(detector)
        if as_json:
            print(json.dumps(vocab))
            return
        if vocab is None:
            print(f"The {detector} detector has an open vocabulary: any short English noun phrase.")
            return
        text = plugins.registry("detectors").entries[detector].meta.get("vocabulary_text")
        print(text() if text is not None else "\n".join(vocab))

    @app.command("list")
    def list_command(
        set_name: str = typer.Option("offline", "--set", help="maia, offline or a JSON file."),
        show_concepts: bool = typer.Option(
            False, "--show-concepts", help="Show each neuron's concepts (the ground truth)."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """List a set's neurons (without loading its detector)."""
        neuron_set = load_set(set_name)
        rows = []
        for mode, lists in neuron_set.concepts_by_mode().items():
            for index, concepts in enumerate(lists):
                row: dict[str, Any] = {"layer": mode, "unit": index}
                if show_concepts:
                    row |= {"mode": mode, "concepts": concepts}
                rows.append(row)
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        counts = ", ".join(f"{n} {m}" for m, n in neuron_set.counts().items())
        print(f"{set_name}: detector {neuron_set.detector}; {counts}")
        for row in rows:
            shown = f"  {row['layer']}={row['unit']}"
            if show_concepts:
                joiner = {"mono": "", "or": " OR ", "and": " AND "}[row["mode"]]
                shown += f"  {joiner.join(row['concepts'])}"
            print(shown)
