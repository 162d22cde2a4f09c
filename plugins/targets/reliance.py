"""``reliance:<set>``: classifiers whose classes rely on planted conditions (SAIA's benchmark).

Each unit is one class of a classifier, named after its object only (``zebra``), in the layer
``output``. Its score is SAIA's composition (Li et al., NeurIPS 2025):

- the object's score (the detector's: exact presence, 1, on images the scenes world made;
  EfficientNet-Lite0's probability summed over the object's classes on any other image) when
  the object is there and the planted condition holds;
- that score times 1 - alpha when the object is there and the condition does not hold;
- a random value in [0, 0.1] (two decimals, fixed per image and class) when the object is
  absent.

A condition is a category and a value (``background=grass``), see
:mod:`.reliance_conditions`; a model may have two, combined with ``and`` or ``or``.

Sets (``--target reliance:<set>``):

- ``offline``: 40 single-condition models over the 12 categories, each at alpha 0.9 and 0.5
  (80 classes), then 5 AND and 5 OR pairs at 0.9: 90 classes, offline;
- ``learned``: a linear head trained on frozen EfficientNet-Lite0 features over scenes renders
  where each class goes with one background (see :mod:`.reliance_learned`); its reliance is
  measured, not planted;
- ``PATH.json``: yours, as below.

```json
{"detector": "scenes",
 "models": [{"object": "zebra", "condition": "background=grass", "alpha": [0.9, 0.5]},
            {"object": "dog", "and": ["color=red", "position=left"], "alpha": 0.9}]}
```

Target options: ``detector=NAME`` (``scenes``, the default, or ``offline`` to read every image
through pixels), ``detector.KEY=VALUE``, ``batch_size``.

The ground truth (the conditions, alpha, the mode) stays in the target: ``ground_truth(unit)``
is read by maia after the agent answers; the agent's ``system`` names the object only.
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

SETS_DIR = Path(__file__).resolve().parent / "reliance_sets"
BUILTIN_SETS = ("offline",)
LEARNED = "learned"
SET_KEYS = ("detector", "notes", "models")
MODEL_KEYS = ("object", "condition", "and", "or", "alpha")
OPTIONS = ("detector", "batch_size")
SET_FORMAT = (
    '{"detector": "scenes", "models": [{"object": "zebra", "condition": "background=grass", '
    '"alpha": [0.9, 0.5]}, {"object": "dog", "and": ["color=red", "position=left"], "alpha": 0.9}]}'
)


@hookimpl
def register_targets(register):
    register(
        "reliance",
        make_reliance,
        help="Classifiers whose classes rely on planted conditions (SAIA): reliance:offline, "
        "reliance:learned or reliance:PATH.json (layer output)",
    )


@dataclass
class PlantedModel:
    """One class: its object, conditions, how they combine, and alpha."""

    object: str
    conditions: list[Any]  # reliance_conditions.Condition
    mode: str  # "single", "and", "or"
    alpha: float

    def ground_truth(self) -> dict[str, Any]:
        first = self.conditions[0]
        joiner = {"single": "", "and": " and ", "or": " or "}[self.mode]
        said = joiner.join(f"{c.category.replace('_', ' ')} {c.text()}" for c in self.conditions)
        return {
            "object": self.object,
            "mode": self.mode,
            "alpha": self.alpha,
            "conditions": [c.to_json() for c in self.conditions],
            "category": first.category,
            "value": first.text(),
            "label": f"{self.object}, relying on {said}",
        }


@dataclass
class RelianceSet:
    name: str
    detector: str
    models: list[PlantedModel] = field(default_factory=list)
    notes: str = ""
    path: Path | None = None
    # SHA-256 of the file as read when the run started (recorded in result.json).
    sha256: str = ""

    @property
    def builtin(self) -> bool:
        return self.name in BUILTIN_SETS


def set_path(spec: str) -> Path:
    if spec in BUILTIN_SETS:
        return SETS_DIR / f"{spec}.json"
    path = Path(spec).expanduser()
    if path.suffix.lower() != ".json":
        raise UserError(
            f"Unknown reliance set {spec!r}. Use offline, learned, or a JSON file: "
            f"reliance:PATH.json (format: {SET_FORMAT})."
        )
    return path


def load_set(spec: str, detector: str | None = None) -> RelianceSet:
    """Read and check a set; objects are checked against the detector's vocabulary."""
    path = set_path(spec)
    try:
        data = path.read_bytes()  # read once: the run's truth is what this says
        obj = json.loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"The reliance set {str(path)!r} does not exist; write one like {SET_FORMAT}."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"Cannot read the reliance set {str(path)!r}: {exc}.") from None
    except json.JSONDecodeError as exc:
        raise UserError(
            f"The reliance set {str(path)!r} is not valid JSON ({exc}); expected {SET_FORMAT}."
        ) from None
    loaded = parse_set(obj, spec, path, detector)
    loaded.sha256 = hashlib.sha256(data).hexdigest()
    return loaded


def parse_set(
    obj: Any, name: str, path: Path | None = None, detector: str | None = None
) -> RelianceSet:
    from maia_plugins.targets.reliance_conditions import parse_condition
    from maia_plugins.targets.synthetic import detector_vocabulary, normalize_concept

    where = str(path or name)
    if not isinstance(obj, dict):
        raise UserError(f"The reliance set {where!r} must be a JSON object like {SET_FORMAT}.")
    extra = sorted(set(obj) - set(SET_KEYS))
    if extra:
        raise UserError(
            f"The reliance set {where!r} has an unknown key {extra[0]!r}; its keys are "
            f"{', '.join(SET_KEYS)}."
        )
    chosen = detector or obj.get("detector", "scenes")
    if not isinstance(chosen, str) or not chosen.strip():
        raise UserError(f'In {where!r}, "detector" must name a detector, e.g. "scenes".')
    chosen = chosen.strip()
    vocab = detector_vocabulary(chosen)
    known = set(vocab) if vocab is not None else None

    def check_object(text: str, at: str) -> str:
        concept = normalize_concept(text)
        if not concept or (known is not None and concept not in known):
            raise UserError(
                f"{at}: the {chosen} detector does not know the object {concept!r}; see its "
                f"objects with: maia synthetic vocabulary --detector {chosen}"
            )
        return concept

    items = obj.get("models")
    if not isinstance(items, list) or not items:
        raise UserError(f"The reliance set {where!r} needs a list of models, like {SET_FORMAT}.")
    models: list[PlantedModel] = []
    for index, item in enumerate(items):
        at = f"{where}, model {index}"
        if not isinstance(item, dict):
            raise UserError(f"{at} must be an object like {SET_FORMAT}.")
        bad = sorted(set(item) - set(MODEL_KEYS))
        if bad:
            raise UserError(
                f"{at} has an unknown key {bad[0]!r}; its keys are {', '.join(MODEL_KEYS)}."
            )
        if not isinstance(item.get("object"), str):
            raise UserError(f'{at} needs an "object", e.g. "zebra".')
        target = check_object(item["object"], at)
        modes = [m for m in ("condition", "and", "or") if m in item]
        if len(modes) != 1:
            raise UserError(
                f'{at} needs exactly one of "condition" (one), "and" or "or" (a list of two).'
            )
        mode = modes[0]
        specs = item[mode] if mode != "condition" else [item[mode]]
        if mode != "condition" and (not isinstance(specs, list) or len(specs) != 2):
            raise UserError(
                f'{at}: "{mode}" is a list of two conditions, like ["color=red", "size=large"].'
            )
        conditions = [
            parse_condition(s, at, lambda text, _at=at: check_object(text, _at)) for s in specs
        ]
        for c in conditions:
            if c.other == target:
                raise UserError(f"{at}: a condition names the model's own object {target!r}.")
        alphas = item.get("alpha", [0.9, 0.5])
        alphas = alphas if isinstance(alphas, list) else [alphas]
        for alpha in alphas:
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
                raise UserError(f'{at}: "alpha" must be a number in (0, 1], or a list of them.')
            models.append(
                PlantedModel(
                    target, conditions, "single" if mode == "condition" else mode, float(alpha)
                )
            )
    notes = obj.get("notes", "")
    return RelianceSet(name, chosen, models, notes if isinstance(notes, str) else "", path)


def make_reliance(
    arg: str | None, *, device: str = "auto", precision: str = "fp32", **options: str
):
    if not arg:
        raise UserError(
            "The reliance target needs a set: reliance:offline, reliance:learned or reliance:PATH.json."
        )
    if arg == LEARNED:
        from maia_plugins.targets.reliance_learned import make_learned

        return make_learned(device=device, precision=precision, **options)
    detector_options = {
        k.split(".", 1)[1]: v for k, v in options.items() if k.startswith("detector.")
    }
    plain = {k: v for k, v in options.items() if not k.startswith("detector.")}
    reject_unknown(plain, "Target reliance", OPTIONS)
    reliance_set = load_set(arg, plain.get("detector"))
    from maia_core.torch_runtime.detector import load_detector
    from maia_plugins.targets.reliance_model import RelianceTarget

    detector = load_detector(reliance_set.detector, **detector_options)
    public = f"reliance:{arg}" if reliance_set.builtin else "reliance:custom"
    return RelianceTarget(
        f"reliance:{arg}",
        reliance_set,
        detector,
        public_name=public,
        device=device,
        precision=precision,
        batch_size=as_int(plain.get("batch_size", 32), "batch_size"),
    )
