"""Your own model with no plugin: ``--target python:<module>:<factory>``.

``<module>`` is an importable module (found on PYTHONPATH or in the current folder) or a path
to a ``.py`` file. ``factory(**options)`` gets the ``--target-option`` pairs that are not
maia's own (``batch_size``, ``mask_quantile``, ``channels_last``) and returns one of

- a ``torch.nn.Module`` (ImageNet preprocessing at 224 px is assumed);
- ``(model, preprocess)``;
- a dict with ``model`` and optionally ``preprocess``, ``class_names``, ``main_layers``,
  ``prefix_tokens`` and ``description``.

``preprocess`` is a ``maia_core.torch_runtime.target.Preprocess``, a dict of its fields (``size``,
``crop_pct``, ``interpolation``, ``mean``, ``std``), or a torchvision transform pipeline
with Resize/CenterCrop/Normalize steps.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

from maia_core import hookimpl
from maia_core.errors import UserError
from maia_core.options import TARGET_TUNING, target_tuning

FORM = "python:<module or file.py>:<factory>"


@hookimpl
def register_targets(register):
    register("python", make_python_target, help=f"Your own model from a factory function: {FORM}")


def load_factory(arg: str):
    module_name, sep, func = arg.rpartition(":")
    if not sep or not module_name or not func:
        raise UserError(
            f"Malformed --target python:{arg}. Expected {FORM}, e.g. python:mymodels:make_net."
        )
    if module_name.endswith(".py") or os.sep in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise UserError(f"Model file {module_name!r} does not exist.")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        if os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name.split(".")[0]:
                raise
            raise UserError(
                f"Cannot import module {module_name!r}: put it on PYTHONPATH or in the current folder."
            ) from None
    factory = getattr(module, func, None)
    if not callable(factory):
        raise UserError(f"Module {module_name!r} has no function {func!r}.")
    return factory


def as_preprocess(preprocess):
    from maia_core.torch_runtime.target import Preprocess

    if preprocess is None:
        return Preprocess()
    if isinstance(preprocess, Preprocess):
        return preprocess
    if isinstance(preprocess, dict):
        return Preprocess(**preprocess)
    return Preprocess.from_transforms(preprocess)


def make_python_target(
    arg: str | None, *, device: str = "auto", precision: str = "fp32", **options: str
):
    if not arg:
        raise UserError(f"The python target needs a factory: --target {FORM}.")
    import torch

    from maia_core.torch_runtime.target import TorchTarget

    factory = load_factory(arg)
    own = {k: v for k, v in options.items() if k not in TARGET_TUNING}
    try:
        made = factory(**own)
    except TypeError as exc:
        if own and "argument" in str(exc):
            raise UserError(f"{arg} does not take the options {', '.join(own)}: {exc}.") from None
        raise
    if isinstance(made, torch.nn.Module):
        made = {"model": made}
    elif isinstance(made, tuple) and len(made) == 2:
        made = {"model": made[0], "preprocess": made[1]}
    if not isinstance(made, dict) or not isinstance(made.get("model"), torch.nn.Module):
        raise UserError(
            f"{arg} must return a torch.nn.Module, (model, preprocess) or a dict with 'model'."
        )
    return TorchTarget(
        f"python:{arg}",
        made["model"],
        as_preprocess(made.get("preprocess")),
        device=device,
        precision=precision,
        description=made.get("description"),
        class_names=made.get("class_names"),
        main_layers=made.get("main_layers"),
        prefix_tokens=made.get("prefix_tokens"),
        **target_tuning(options),
    )
