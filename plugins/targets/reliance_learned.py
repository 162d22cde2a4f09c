"""``reliance:learned``: a linear head on frozen EfficientNet-Lite0 features that learned a
background shortcut, as in Spawrious, and its reliance measured rather than planted.

Four classes of look-alike animals (goat, sheep, ram, cow: Tux Paint stamps, drawn small),
each shown on one background 95% of the time in training (grass, a brick wall, gravel, space)
and on one of the others the rest of the time. A multinomial logistic regression on Lite0's
pooled 1280 features (at 128 px) learns the backgrounds as much as the animals.

**Measured ground truth.** For each class, ``pairs`` scenes of its animal are drawn on every
training background and on two plain greys, the scene otherwise the same (matched pairs); the
reliance on a background is the mean change of the class's probability from the mid-grey
reference to that background. Its own background raises it a lot, the other classes'
backgrounds lower it, a second grey changes it little: that is the truth ``ground_truth(unit)``
returns, with the numbers.

**Cached.** Training renders about 600 scenes and takes well under a minute on two cores; the
result (the head, the features of the biased training set, a balanced training set and a
balanced test set, the measured reliance) is cached in ``$XDG_CACHE_HOME/maia/`` (default
``~/.cache/maia/``), under a key of everything that determines it (this code's version, the
options, the weights file, the stamps, the scenes world's version, torch's version). A cache
whose key, files, names, shapes or values do not check out is rebuilt, never trusted; nothing
is unpickled (safetensors and JSON).

Layers: ``features`` (Lite0's last feature map, 1280 units of 4 x 4 at 128 px; the head reads
their spatial mean) and ``output`` (the 4 classes, softmax). Options: ``n_train`` (160),
``n_test`` (96), ``pairs`` (6), ``seed`` (0), ``bias`` (0.95), ``batch_size``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from maia_core.errors import UserError
from maia_core.options import as_float, as_int, reject_unknown
from maia_core.torch_runtime.target import OUTPUT, Preprocess, TorchTarget
from maia_core.units import Unit

VERSION = 1  # of the recipe below: a change here changes the cache key
OPTIONS = ("n_train", "n_test", "pairs", "seed", "bias", "batch_size")
# (class name, stamp, the background it goes with in training)
CLASSES = (
    ("goat", "animals/mammals/bovines/goat"),
    ("sheep", "animals/mammals/bovines/sheep"),
    ("ram", "animals/mammals/bovines/ram"),
    ("cow", "animals/mammals/bovines/cow"),
)
# (label, scenes background name, tint)
BACKGROUNDS = (
    ("grass", "grass", (140, 255, 100)),
    ("brick wall", "brick", (255, 150, 120)),
    ("gravel", "gravel", (255, 245, 225)),
    ("space", "hubble", None),
)
# Neutral backgrounds: a share of every class's training images, so they carry no class.
NEUTRALS = (("plain gray", "plain", (128, 128, 128)), ("plain beige", "plain", (215, 190, 140)))
NEUTRAL_SHARE = 0.25
SIZE = 128
SCALE = (0.2, 0.35)  # the animal's longest side, of the image's: small, so backgrounds matter
WEIGHT_DECAY = 0.01
PREPROCESS = Preprocess(
    size=SIZE, crop_pct=1.0, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3
)
ARRAYS = (
    "head_weight",
    "head_bias",
    "train_x",
    "train_y",
    "train_bg",
    "balanced_x",
    "balanced_y",
    "balanced_bg",
    "test_x",
    "test_y",
    "test_bg",
)
_BUILD_LOCK = threading.Lock()


@dataclass(frozen=True)
class LearnedConfig:
    n_train: int = 160
    n_test: int = 96
    pairs: int = 6
    seed: int = 0
    bias: float = 0.95

    @classmethod
    def from_options(cls, options: dict[str, str]) -> LearnedConfig:
        cfg = cls(
            n_train=as_int(options.get("n_train", cls.n_train), "n_train"),
            n_test=as_int(options.get("n_test", cls.n_test), "n_test"),
            pairs=as_int(options.get("pairs", cls.pairs), "pairs"),
            seed=as_int(options.get("seed", cls.seed), "seed"),
            bias=as_float(options.get("bias", cls.bias), "bias"),
        )
        if cfg.n_train < 8 or cfg.n_test < 4 or cfg.pairs < 1:
            raise UserError(
                "reliance:learned needs n_train of at least 8, n_test of at least 4 and pairs of at least 1."
            )
        if not 0.25 <= cfg.bias <= 1.0:
            raise UserError(f"Option bias={cfg.bias} must be between 0.25 (none) and 1.")
        return cfg


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "maia"


# -- the world it is trained on ---------------------------------------------------------------


def _background(index: int, rng: random.Random) -> Any:
    """Background ``index`` of BACKGROUNDS, then NEUTRALS; a random crop of a texture."""
    from maia_plugins.datasets.scenes import Background

    _label, name, tint = (BACKGROUNDS + NEUTRALS)[index]
    if name == "plain":
        return Background(name, color=tint)
    crop = (round(rng.random(), 4), round(rng.random(), 4), round(0.6 + 0.4 * rng.random(), 4))
    return Background(name, crop, rng.random() < 0.5, tint)


def _scene(cls: int, background: Any, rng: random.Random) -> Any:
    from maia_plugins.datasets.scenes import Placement, SceneSpec

    scale = SCALE[0] + (SCALE[1] - SCALE[0]) * rng.random()
    x, y = 0.25 + 0.5 * rng.random(), 0.25 + 0.5 * rng.random()
    return SceneSpec(background, (Placement(CLASSES[cls][1], x, y, scale, rng.random() < 0.5),))


def _sample(
    n: int, bias: float, rng: random.Random, neutral: float = 0.0
) -> tuple[list[Any], list[int], list[int]]:
    """``n`` scenes, classes in turn: a share ``neutral`` on a neutral background, the rest on
    the class's own background with probability ``bias``, else on one of the others'."""
    specs, ys, bgs = [], [], []
    k = len(CLASSES)
    for i in range(n):
        c = i % k
        if rng.random() < neutral:
            b = k + int(rng.random() * len(NEUTRALS))
        else:
            b = c if rng.random() < bias else (c + 1 + int(rng.random() * (k - 1))) % k
        specs.append(_scene(c, _background(b, rng), rng))
        ys.append(c)
        bgs.append(b)
    return specs, ys, bgs


# -- training -------------------------------------------------------------------------------------


def _lite0() -> torch.nn.Module:
    import timm

    from maia_plugins.targets.efficientnet_lite import VARIANTS, load_by_key_order, weights_path

    module_name, arch, _size = VARIANTS["efficientnet_lite0"]
    model = timm.create_model(arch, pretrained=False)
    load_by_key_order(
        model, torch.load(weights_path(module_name), map_location="cpu", weights_only=True)
    )
    return model.eval().requires_grad_(False)


def _features(model: torch.nn.Module, renderer: Any, specs: list[Any]) -> torch.Tensor:
    out = []
    for start in range(0, len(specs), 32):
        images = [renderer.render(s, SIZE, masks=False).image for s in specs[start : start + 32]]
        x = PREPROCESS.to_tensor([PREPROCESS.view(im) for im in images])
        with torch.inference_mode():
            out.append(model.forward_features(x).mean((2, 3)))
    return torch.cat(out)


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, classes: int, weight_decay: float = 0.0, l1: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A multinomial logistic regression on ``x`` [N, D]: (weight [classes, D], bias), in the
    features' own units (fitted on standardized features, which keeps LBFGS well
    conditioned). ``l1`` > 0 fits the L1-penalised one by proximal gradient instead.
    Deterministic."""
    x = x.double()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mu) / sd
    w = torch.zeros(z.shape[1], classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    if l1 > 0:
        lr = 0.5
        for _ in range(400):
            loss = F.cross_entropy(z @ w + b, y)
            gw, gb = torch.autograd.grad(loss, (w, b))
            with torch.no_grad():
                w -= lr * gw
                w.copy_(torch.sign(w) * (w.abs() - lr * l1).clamp_min(0))
                b -= lr * gb
    else:
        opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(z @ w + b, y) + weight_decay * (w**2).sum()
            loss.backward()
            return loss

        opt.step(closure)
    weight = (w.detach() / sd[:, None]).T
    bias = b.detach() - (mu / sd) @ w.detach()
    return weight.float(), bias.float()


def accuracy(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(((x @ weight.T + bias).argmax(1) == y).float().mean())


@dataclass
class Learned:
    """The trained head and what it was trained and tested on, with its measured reliance."""

    config: LearnedConfig
    arrays: dict[str, torch.Tensor]
    ground_truth: list[dict[str, Any]]
    accuracy: dict[str, float]
    folder: Path


def _key(cfg: LearnedConfig) -> str:
    from maia_plugins.datasets.scenes import WORLD_VERSION, StampLibrary
    from maia_plugins.targets.efficientnet_lite import VARIANTS, weights_path

    weights = Path(weights_path(VARIANTS["efficientnet_lite0"][0]))
    library = StampLibrary.open()
    parts = {
        "version": VERSION,
        "config": asdict(cfg),
        "classes": CLASSES,
        "backgrounds": BACKGROUNDS,
        "neutrals": [NEUTRALS, NEUTRAL_SHARE],
        "scale": SCALE,
        "size": SIZE,
        "weight_decay": WEIGHT_DECAY,
        "weights": [weights.name, weights.stat().st_size],
        "stamps": [[s, library[s].file_size] for _, s in CLASSES],
        "world": WORLD_VERSION,
        "torch": torch.__version__.split("+")[0],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def load_or_train(cfg: LearnedConfig, *, root: Path | None = None) -> Learned:
    """The cached head for ``cfg``, trained (and cached) first if there is none that checks out."""
    key = _key(cfg)
    folder = (root or cache_root()) / "reliance-learned" / key[:24]
    with _BUILD_LOCK:
        found = _read(folder, key, cfg)
        if found is not None:
            return found
        learned = _train(cfg, folder)
        _write(learned, key)
        return learned


def _read(folder: Path, key: str, cfg: LearnedConfig) -> Learned | None:
    """The cache in ``folder``, or None when anything about it does not check out."""
    from safetensors.torch import load_file

    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if meta.get("key") != key or meta.get("config") != asdict(cfg):
            return None
        arrays = load_file(str(folder / "data.safetensors"))
        if set(arrays) != set(ARRAYS):
            return None
        k, d = len(CLASSES), arrays["train_x"].shape[1]
        sizes = {"train": cfg.n_train, "balanced": cfg.n_train, "test": cfg.n_test}
        ok = arrays["head_weight"].shape == (k, d) and arrays["head_bias"].shape == (k,)
        for part, n in sizes.items():
            ok &= arrays[f"{part}_x"].shape == (n, d)
            ok &= arrays[f"{part}_y"].shape == (n,) and arrays[f"{part}_bg"].shape == (n,)
            ok &= bool(((arrays[f"{part}_y"] >= 0) & (arrays[f"{part}_y"] < k)).all())
        ok &= all(bool(torch.isfinite(t.float()).all()) for t in arrays.values())
        truth = meta.get("ground_truth")
        ok &= isinstance(truth, list) and len(truth) == k
        if not ok:
            return None
        return Learned(cfg, arrays, truth, dict(meta.get("accuracy") or {}), folder)
    except Exception:  # noqa: BLE001 - whatever is wrong with it, it is not trusted
        return None


def _write(learned: Learned, key: str) -> None:
    from safetensors.torch import save

    from maia_core.files import atomic_write_bytes, atomic_write_json

    data = {k: v.contiguous() for k, v in learned.arrays.items()}
    atomic_write_bytes(learned.folder / "data.safetensors", save(data))
    # written last: its presence, with the key, marks a complete cache
    atomic_write_json(
        learned.folder / "meta.json",
        {
            "key": key,
            "config": asdict(learned.config),
            "ground_truth": learned.ground_truth,
            "accuracy": learned.accuracy,
        },
    )


def _train(cfg: LearnedConfig, folder: Path) -> Learned:
    from maia_plugins.datasets.scenes import SceneRenderer, SceneSpec, StampLibrary

    torch.manual_seed(cfg.seed)
    renderer = SceneRenderer(StampLibrary.open())
    for _, stamp in CLASSES:
        if stamp not in renderer.library:
            raise UserError(
                f"reliance:learned needs the Tux Paint stamp {stamp}, which is missing."
            )
    model = _lite0()
    rng = random.Random(f"maia-reliance-learned/{cfg.seed}")
    k = len(CLASSES)
    sets = {
        "train": _sample(cfg.n_train, cfg.bias, rng, NEUTRAL_SHARE),
        "balanced": _sample(cfg.n_train, 1.0 / k, rng),
        "test": _sample(cfg.n_test, 1.0 / k, rng),
    }
    arrays: dict[str, torch.Tensor] = {}
    for part, (specs, ys, bgs) in sets.items():
        arrays[f"{part}_x"] = _features(model, renderer, specs)
        arrays[f"{part}_y"] = torch.tensor(ys, dtype=torch.long)
        arrays[f"{part}_bg"] = torch.tensor(bgs, dtype=torch.long)
    weight, bias = fit_logistic(arrays["train_x"], arrays["train_y"], k, WEIGHT_DECAY)
    arrays["head_weight"], arrays["head_bias"] = weight, bias
    # matched pairs: the same scene on every background, only the background changed
    # matched pairs: the same scenes on every background, only the background changed; the
    # reliance on a background is the mean change from the first neutral one
    truth = []
    labels = [b[0] for b in BACKGROUNDS + NEUTRALS]
    reference = NEUTRALS[0][0]
    for c, (name, _stamp) in enumerate(CLASSES):
        pair_rng = random.Random(f"maia-reliance-learned/pairs/{cfg.seed}/{c}")
        base = [_scene(c, _background(c, pair_rng), pair_rng) for _ in range(cfg.pairs)]
        probs = {}
        for index, label in enumerate(labels):
            swapped = [
                SceneSpec(_background(index, random.Random(f"{cfg.seed}/{j}")), s.objects)
                for j, s in enumerate(base)
            ]
            x = _features(model, renderer, swapped)
            probs[label] = (x @ weight.T + bias).softmax(1)[:, c]
        scores = {label: float(p.mean()) for label, p in probs.items()}
        tied = BACKGROUNDS[c][0]
        others = [b[0] for b in BACKGROUNDS if b[0] != tied]
        truth.append(
            {
                "kind": "learned",
                "object": name,
                "mode": "single",
                "category": "background",
                "value": tied,
                "conditions": [{"category": "background", "value": tied}],
                "alpha": None,
                # the mean drop when only its background is swapped for another class's
                "reliance": round(scores[tied] - sum(scores[o] for o in others) / len(others), 4),
                # the mean change when only one neutral background is swapped for the other
                "neutral_reliance": round(scores[NEUTRALS[1][0]] - scores[reference], 4),
                # each background against the first neutral one
                "by_background": {
                    label: round(float((p - probs[reference]).mean()), 4)
                    for label, p in probs.items()
                    if label != reference
                },
                "scores": {label: round(v, 4) for label, v in scores.items()},
                "pairs": cfg.pairs,
                "label": f"{name}, relying on background {tied} (measured)",
            }
        )
    acc = {
        "biased_train": accuracy(weight, bias, arrays["train_x"], arrays["train_y"]),
        "balanced_test": accuracy(weight, bias, arrays["test_x"], arrays["test_y"]),
    }
    return Learned(cfg, arrays, truth, acc, folder)


# -- the target -----------------------------------------------------------------------------------


class LearnedHead(torch.nn.Module):
    """Lite0's features (a named module, so the layer can be read) and the trained head."""

    def __init__(self, backbone: torch.nn.Module, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.backbone = backbone
        self.features = torch.nn.Identity()
        self.head = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.backbone.forward_features(x)).mean((2, 3)))


class LearnedTarget(TorchTarget):
    """``reliance:learned``: layers ``features`` and ``output`` (see the module docstring)."""

    def __init__(self, learned: Learned, *, device: str | None, precision: str, batch_size: int):
        self.learned = learned
        model = LearnedHead(_lite0(), learned.arrays["head_weight"], learned.arrays["head_bias"])
        super().__init__(
            "reliance:learned",
            model,
            PREPROCESS,
            device=device,
            precision=precision,
            batch_size=batch_size,
            description=(
                "an image classifier (reliance:learned): EfficientNet-Lite0 features and a linear "
                f"head over {len(CLASSES)} animal classes ({SIZE}x{SIZE} input)"
            ),
            class_names=[name for name, _ in CLASSES],
            main_layers=["features", OUTPUT],
        )

    def ground_truth(self, unit: Unit) -> dict[str, Any] | None:
        if unit.layer != OUTPUT:
            return None
        info = self.require_layer(unit.layer)
        if not 0 <= unit.index < info.units:
            return None
        return {**self.learned.ground_truth[unit.index], "set": "learned"}


def make_learned(*, device: str = "auto", precision: str = "fp32", **options: str) -> LearnedTarget:
    reject_unknown(options, "Target reliance:learned", OPTIONS)
    cfg = LearnedConfig.from_options(options)
    learned = load_or_train(cfg)
    return LearnedTarget(
        learned,
        device=device,
        precision=precision,
        batch_size=as_int(options.get("batch_size", 32), "batch_size"),
    )
