"""Detectors for synthetic neurons (see maia_core.torch_runtime.detector)."""
