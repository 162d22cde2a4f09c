"""The hooks a maia plugin can implement.

Every hook is register-callback style: maia calls the hook with a ``register`` function and
the plugin calls it once per thing it provides. A plugin is a module (or any object) with
functions decorated with :data:`maia_core.hookimpl`, exposed through an entry point in the
group ``maia``::

    [project.entry-points.maia]
    mynet = "mynet_maia"

Registration modules must stay light: they must not import torch, transformers, diffusers
or provider SDKs at module top. Import those inside the factories you register.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("maia")


@hookspec
def register_targets(register):
    """Register targets: ``register(name, factory, help=...)``.

    ``factory(arg, **options)`` returns a :class:`maia_core.target.Target`. ``arg`` is the part
    of the ``--target`` spec after the first colon (``timm:resnet18`` gives ``"resnet18"``), or
    ``None``; ``options`` are the ``--target-option key=value`` pairs plus ``device`` and
    ``precision``. Factories run inside the sandbox worker, where heavy imports belong.
    """


@hookspec
def register_backbones(register):
    """Register backbones: ``register(name, factory, help=..., patterns=("gpt-*",))``.

    ``factory(arg, **options)`` returns a :class:`maia_core.backbone.Backbone`. A spec
    matches a name exactly, one of its glob ``patterns`` (then ``arg`` is the whole spec), or
    ``name:arg``.
    """


@hookspec
def register_tools(register):
    """Register tools: ``register(name, factory, capability=..., help=..., default=False)``.

    ``capability`` is the attribute the agent calls (``tools.<capability>``), defaulting to
    ``name``. Several plugins may implement one capability; ``--tools cap=name`` picks one,
    else the one registered with ``default=True``, else the first. ``factory(ctx, **options)``
    gets a :class:`maia_core.tools.ToolContext` and returns a callable whose signature and
    docstring are shown to the agent.
    """


@hookspec
def register_reporters(register):
    """Register reporters: ``register(name, factory, help=..., default=True)``.

    ``factory(results_dir, **options)`` returns a :class:`maia_core.loop.reporter.Reporter`.
    """


@hookspec
def register_datasets(register):
    """Register datasets: ``register(name, factory, help=...)``; spec ``name`` or ``name:arg``.

    ``factory(arg, **options)`` returns a :class:`maia_core.dataset.Dataset`. Datasets feed
    ``maia exemplars compute`` and anything else that needs images with stable ids.
    """


@hookspec
def register_detectors(register):
    """Register detectors: ``register(name, factory, help=...)``.

    ``factory(**options)`` returns a detector (see ``maia_core.torch_runtime.detector``): what
    scores a concept in an image and says where it is. Synthetic neurons are built on one, and
    ``--target-option detector=NAME`` swaps it.
    """


@hookspec
def register_tasks(register):
    """Register tasks: ``register(name, factory, help=...)``.

    ``factory(**options)`` returns a :class:`maia_core.task.Task`: what an investigation is
    asked to find (``maia run --task NAME``), the agent's ``system`` for its subject, how the
    final answer is parsed, shown and scored. ``options`` are the ``--task-option`` pairs.
    """


@hookspec
def register_commands(cli):
    """Add subcommands to the ``maia`` command line. ``cli`` is the root ``typer.Typer`` app."""
