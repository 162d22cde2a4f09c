"""Registers the ``scenes`` dataset (see :mod:`maia_plugins.datasets.scenes`).

Registration only: the dataset's module imports numpy and PIL, which ``maia --help`` must not
pay for, so it is imported when a ``scenes`` dataset is made.
"""

from __future__ import annotations

from typing import Any

from maia_core import hookimpl


@hookimpl
def register_datasets(register):
    register(
        "scenes",
        make_scenes,
        help="Offline world: Tux Paint photo cut-outs on texture/photo/plain backgrounds, "
        "with objects, labels and masks as ground truth (scenes:n=500,size=224,...)",
    )


def make_scenes(arg: str | None, **options: Any):
    """``scenes[:key=value,...]``; keyword options override keys given in ``arg``."""
    from maia_plugins.datasets.scenes import make_scenes

    return make_scenes(arg, **options)
