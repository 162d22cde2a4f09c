"""Is the model still the one that was loaded? For ``--sandbox none``, where agent code runs in
the process that holds the model and could scale a weight, register a hook or swap a module's
``forward``: every unit must start from the pristine model, whatever the units before did.

(With the process sandbox this cannot happen: kernels never reach the model.)
"""

from __future__ import annotations

from typing import Any


class Pristine:
    """A fingerprint of a torch target's model, taken when it was loaded."""

    def __init__(self, target: Any):
        self.model = getattr(target, "model", None)
        self.fingerprint = self._fingerprint() if self.model is not None else None

    def _fingerprint(self) -> list[tuple]:
        import torch

        with torch.no_grad():
            return [
                (
                    name,
                    tuple(t.shape),
                    str(t.dtype),
                    t.data_ptr(),
                    float(t.double().sum()),
                    float(t.double().abs().sum()),
                )
                for name, t in self.model.state_dict(keep_vars=True).items()
            ]

    def tampered(self) -> str | None:
        """Why the model is no longer pristine, or None."""
        if self.model is None:
            return None
        import torch.nn.modules.module as module_globals

        for attr in (
            "_global_forward_hooks",
            "_global_forward_pre_hooks",
            "_global_backward_hooks",
        ):
            if getattr(module_globals, attr, None):
                return "a global module hook was registered"
        for name, module in self.model.named_modules():
            if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks:
                return f"a hook was registered on {name or 'the model'}"
            if "forward" in vars(module):
                return f"the forward of {name or 'the model'} was replaced"
            if module.training:
                return f"{name or 'the model'} was put in training mode"
        if self._fingerprint() != self.fingerprint:
            return "its weights were changed"
        return None
