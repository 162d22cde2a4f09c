"""maia's built-in plugins, installed as the package ``maia_plugins``.

Each module registers itself through its own entry point in pyproject.toml, exactly as a
third-party plugin would. The core never imports these modules.
"""
