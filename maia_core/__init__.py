"""maia's core: hook specs, plugin discovery, the transcript, the investigation loop and the
sandbox. Concrete targets, backbones, tools and reporters are plugins (see ``plugins/``).

Importing this package stays light: no torch, no provider SDKs.
"""

from __future__ import annotations

import pluggy

from maia_core.errors import BackboneError, UserError

__version__ = "0.1.0"

#: Decorate your plugin's hook functions with this.
hookimpl = pluggy.HookimplMarker("maia")

__all__ = ["BackboneError", "UserError", "__version__", "hookimpl"]
