"""Plugin discovery and the registries of targets, backbones, tools and reporters.

Plugins are found through the entry-point group ``maia``. ``MAIA_PLUGINS=a,b`` restricts
loading to the named entry points. Discovery only imports the registration modules, which
must not import heavy libraries; a plugin that fails to import is reported on stderr and
skipped, so one broken third-party plugin cannot break ``maia``.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from maia_core import hookspecs
from maia_core.errors import UserError

ENTRY_POINT_GROUP = "maia"
KINDS = ("targets", "backbones", "tools", "reporters", "datasets", "detectors", "tasks")


@dataclass
class PluginInfo:
    """One discovered plugin: where it came from and what it provides."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    provides: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class Entry:
    """One registered thing: a target, backbone, tool or reporter factory."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    help: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class Registry:
    """The registered factories of one kind, resolved from user-facing spec strings."""

    def __init__(self, kind: str, flag: str):
        self.kind = kind
        self.flag = flag
        self.entries: dict[str, Entry] = {}

    @staticmethod
    def key(entry: Entry) -> str:
        """Tools are named within their capability (``text2image=scenes`` and
        ``edit_images=scenes`` are two tools); everything else by its name."""
        capability = entry.meta.get("capability")
        if entry.kind == "tools" and capability and capability != entry.name:
            return f"{capability}={entry.name}"
        return entry.name

    def add(self, entry: Entry) -> None:
        key = self.key(entry)
        if key in self.entries:
            other = self.entries[key].plugin
            sys.stderr.write(
                f"maia: plugin {entry.plugin!r} registers {self.kind[:-1]} {key!r}, "
                f"already registered by {other!r}; keeping the first\n"
            )
            return
        self.entries[key] = entry

    def names(self) -> list[str]:
        return sorted(self.entries)

    def known(self) -> str:
        shown = []
        for name in self.names():
            patterns = self.entries[name].meta.get("patterns") or ()
            shown.append(name if not patterns else f"{name} ({', '.join(patterns)})")
        return ", ".join(shown) or "none installed"

    def resolve(self, spec: str, flag: str | None = None) -> tuple[Entry, str | None]:
        """Find the entry for ``spec``: an exact name, a glob pattern, or ``name:arg``.

        ``flag`` names the option in errors when it is not the kind's usual one
        (``--describer`` for a backbone)."""
        flag = flag or self.flag
        spec = spec.strip()
        if spec in self.entries:
            return self.entries[spec], None
        for entry in self.entries.values():
            if any(fnmatch.fnmatchcase(spec, p) for p in entry.meta.get("patterns", ())):
                return entry, spec
        name, sep, arg = spec.partition(":")
        if sep and name in self.entries:
            if not arg:
                raise UserError(
                    f"{flag} {spec!r} needs something after the colon, like {name}:<name>."
                )
            return self.entries[name], arg
        raise UserError(f"Unknown {self.kind[:-1]} {spec!r} for {flag}. Known: {self.known()}.")


class _PluginSet:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("maia")
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self._registries: dict[str, Registry] = {}

    def load_entry_points(self, only: set[str] | None) -> None:
        # A distribution's metadata is parsed once, not once per entry point: maia's own
        # carries the whole README, and parsing it dozens of times was half of `maia --help`.
        named: dict[Any, tuple[str | None, str | None]] = {}
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if only is not None and ep.name not in only:
                continue
            if ep.name in self.infos:  # the same distribution seen twice on sys.path
                continue
            dist = getattr(ep, "dist", None)
            where = getattr(dist, "_path", None) or id(dist)
            if dist is not None and where not in named:
                meta = dist.metadata
                named[where] = (meta["Name"], meta["Version"])
            distribution, version = named.get(where, (None, None))
            info = PluginInfo(
                name=ep.name, module=ep.value, distribution=distribution, version=version
            )
            self.infos[ep.name] = info
            try:
                self.pm.register(ep.load(), name=ep.name)
            except Exception as exc:  # a broken plugin must not break maia
                info.error = f"{type(exc).__name__}: {exc}"
                sys.stderr.write(
                    f"maia: plugin {ep.name!r} ({ep.value}) failed to load: {info.error}\n"
                )

    def register_object(self, plugin: object, name: str) -> None:
        self.pm.register(plugin, name=name)
        self.infos[name] = PluginInfo(name=name, module=getattr(plugin, "__name__", repr(plugin)))
        self._registries.clear()

    def registry(self, kind: str) -> Registry:
        if kind not in self._registries:
            self._registries[kind] = self._collect(kind)
        return self._registries[kind]

    def _collect(self, kind: str) -> Registry:
        flag = {
            "targets": "--target",
            "backbones": "--backbone",
            "tools": "--tools",
            "reporters": "--reporter",
            "datasets": "--dataset",
            "detectors": "--target-option detector",
            "tasks": "--task",
        }[kind]
        registry = Registry(kind, flag)
        caller = getattr(self.pm.hook, f"register_{kind}")
        # Hook implementations are called one by one so each registration is attributed
        # to its plugin, which `maia plugins` shows.
        for impl in reversed(caller.get_hookimpls()):
            plugin_name = impl.plugin_name

            def register(
                name: str,
                factory: Callable[..., Any],
                *,
                help: str = "",
                _p=plugin_name,
                **meta: Any,
            ) -> None:
                if kind == "tools":
                    meta.setdefault("capability", name)
                if "patterns" in meta:
                    meta["patterns"] = tuple(meta["patterns"])
                registry.add(
                    Entry(kind, name, factory, _p, help or _first_line(factory.__doc__), meta)
                )
                info = self.infos.setdefault(_p, PluginInfo(name=_p, module=_p))
                shown = name
                if kind == "tools" and meta["capability"] != name:
                    shown = f"{meta['capability']}={name}"
                info.provides.setdefault(kind, []).append(shown)

            impl.function(register=register)
        return registry


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n")[0]


_plugins: _PluginSet | None = None


def get_plugins() -> _PluginSet:
    """The process-wide plugin set, loaded on first use from the ``maia`` entry points."""
    global _plugins
    if _plugins is None:
        only = os.environ.get("MAIA_PLUGINS")
        wanted = {n.strip() for n in only.split(",") if n.strip()} if only is not None else None
        _plugins = _PluginSet()
        _plugins.load_entry_points(wanted)
    return _plugins


def load_plugins() -> pluggy.PluginManager:
    """Discover the installed plugins and return their plugin manager."""
    return get_plugins().pm


def reset_plugins() -> None:
    """Forget the loaded plugins, so the next use discovers them again (tests, notebooks)."""
    global _plugins
    _plugins = None


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Register a plugin object by hand, for notebooks and tests: no entry point needed."""
    get_plugins().register_object(plugin, name or getattr(plugin, "__name__", repr(plugin)))


def registry(kind: str) -> Registry:
    """The registry of ``kind``: ``targets``, ``backbones``, ``tools``, ``reporters``, ``datasets``,
    ``detectors`` or ``tasks``."""
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}")
    return get_plugins().registry(kind)


def plugin_infos() -> list[PluginInfo]:
    """Every discovered plugin, with what it provides (all registries collected)."""
    plugins = get_plugins()
    for kind in KINDS:
        plugins.registry(kind)
    return sorted(plugins.infos.values(), key=lambda i: i.name)


def add_commands(cli: Any) -> None:
    """Let each plugin add its subcommands to ``cli`` (a Typer app); record who added what."""
    plugins = get_plugins()
    for impl in reversed(plugins.pm.hook.register_commands.get_hookimpls()):
        before = _command_names(cli)
        impl.function(cli=cli)
        added = [n for n in _command_names(cli) if n not in before]
        info = plugins.infos.setdefault(
            impl.plugin_name, PluginInfo(name=impl.plugin_name, module=impl.plugin_name)
        )
        info.provides.setdefault("commands", []).extend(added)


def _command_names(cli: Any) -> list[str]:
    names = [
        c.name or c.callback.__name__.replace("_", "-")
        for c in getattr(cli, "registered_commands", [])
    ]
    names += [g.name for g in getattr(cli, "registered_groups", [])]
    return names


def select_tools(selection: Iterable[str] | None, device: str | None = None) -> dict[str, Entry]:
    """Pick one implementation per tool capability.

    ``selection`` lists capabilities, each optionally ``capability=implementation``; ``None``
    exposes every capability that has a default implementation here. The default is, in order
    of ``priority``, the first implementation whose ``available(device)`` says it can run here
    (FLUX on a CUDA device with its weights cached, say), else the one registered with
    ``default=True``, else the capability's only implementation. Implementations that are
    neither (a heavy model for small GPUs) run only when named: ``--tools cap=name``. Without a
    ``device`` (in the main process, which loads no models) availability is not asked.
    """
    reg = registry("tools")
    by_cap: dict[str, list[Entry]] = {}
    for entry in reg.entries.values():
        by_cap.setdefault(entry.meta["capability"], []).append(entry)

    def default(cap: str) -> Entry | None:
        impls = sorted(by_cap[cap], key=lambda e: -int(e.meta.get("priority", 0)))
        if device is None:  # no models here: a static choice, for checking names
            return next((e for e in impls if e.meta.get("default")), by_cap[cap][0])
        # An implementation that checks where it can run is chosen only where it can; others
        # only when registered as the default, or when they are the capability's only one.
        for e in impls:
            available = e.meta.get("available")
            if available is not None and _available(available, device):
                return e
        marked = next((e for e in impls if e.meta.get("default")), None)
        if marked is not None:
            return marked
        return impls[0] if len(impls) == 1 and impls[0].meta.get("available") is None else None

    if selection is None:
        chosen_all = {cap: default(cap) for cap in sorted(by_cap)}
        return {cap: e for cap, e in chosen_all.items() if e is not None}
    chosen: dict[str, Entry] = {}
    for item in selection:
        cap, _, impl = item.strip().partition("=")
        if cap not in by_cap:
            raise UserError(
                f"Unknown tool {cap!r} for --tools. Known: {', '.join(sorted(by_cap)) or 'none installed'}."
            )
        if impl:
            match = [e for e in by_cap[cap] if e.name == impl]
            if not match:
                names = ", ".join(e.name for e in by_cap[cap])
                raise UserError(f"Unknown implementation {impl!r} of tool {cap!r}. Known: {names}.")
            chosen[cap] = match[0]
        else:
            entry = default(cap)
            if entry is None:
                names = ", ".join(e.name for e in by_cap[cap])
                raise UserError(
                    f"No implementation of tool {cap!r} can run on {device} here ({names}); "
                    f"name one with --tools {cap}=NAME."
                )
            chosen[cap] = entry
    return chosen


def _available(check: Callable[[str], bool], device: str) -> bool:
    try:
        return bool(check(device))
    except Exception as exc:  # a plugin's check must not break tool selection
        sys.stderr.write(
            f"maia: checking a tool's availability failed ({type(exc).__name__}: {exc})\n"
        )
        return False
