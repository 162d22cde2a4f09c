"""Which results files maia wrote: an HMAC over ``result.json`` and ``eval.json``.

Every file under a results folder is data, and some of it could have been planted there (by
code that ran uncontained, by a results folder copied from elsewhere). ``maia eval`` and
``maia bench`` act on what ``result.json`` says (which target to rebuild, which ground truth
to score against) and reuse ``eval.json``; they trust a file only when it carries a valid
signature: an HMAC-SHA256, keyed by a secret of this user's, over the file's canonical JSON.

The key lives in ``$XDG_STATE_HOME/maia/results.key`` (default ``~/.local/state/maia/``),
made on first use, readable by its owner only; kernels never see it (no home in their
sandbox). To evaluate results written under another account or machine, point
``maia eval --results-key FILE`` at that key.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

from maia_core.errors import UserError

FIELD = "signature"


def default_key_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(state) / "maia" / "results.key"


_keys: dict[Path, bytes] = {}


def load_key(path: str | os.PathLike | None = None, *, create: bool = True) -> bytes:
    """The signing key at ``path`` (default: this user's), made there if it is missing and
    ``create``; a one-line error when it cannot be read or made."""
    path = Path(path) if path is not None else default_key_path()
    if path in _keys:
        return _keys[path]
    try:
        key = bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        if not create:
            raise UserError(
                f"No results key at {path}; give the key maia run used with --results-key FILE."
            ) from None
        key = _make_key(path)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"The results key {path} cannot be read ({exc}); remove it to make a new one (results signed with it will then not verify)."
        ) from None
    if len(key) < 16:
        raise UserError(f"The results key {path} is too short; remove it to make a new one.")
    _keys[path] = key
    return key


def _make_key(path: Path) -> bytes:
    """A new key, in place at once or not at all (a temporary file linked to its name), so
    two runs starting together agree on one key."""
    key = secrets.token_bytes(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".results.key.", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(key.hex() + "\n")
            os.link(tmp, path)
        except FileExistsError:  # another run made it first: use theirs
            return bytes.fromhex(path.read_text().strip())
        finally:
            os.unlink(tmp)
    except OSError as exc:
        raise UserError(
            f"Cannot make the results key {path} ({exc.strerror or exc}); make its folder writable or set XDG_STATE_HOME."
        ) from None
    return key


def _digest(data: dict[str, Any], key: bytes) -> str:
    body = {k: v for k, v in data.items() if k != FIELD}
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hmac.new(key, canonical.encode("utf-8"), hashlib.sha256).hexdigest()


def sign(data: dict[str, Any], key: bytes | None = None) -> dict[str, Any]:
    """``data`` with its signature."""
    key = load_key() if key is None else key
    return {**{k: v for k, v in data.items() if k != FIELD}, FIELD: _digest(data, key)}


def verified(data: Any, key: bytes | None = None) -> bool:
    """Whether ``data`` (a parsed JSON file) carries a valid signature by ``key``."""
    if not isinstance(data, dict) or not isinstance(data.get(FIELD), str):
        return False
    with contextlib.suppress(UserError):
        key = load_key(create=False) if key is None else key
        return hmac.compare_digest(data[FIELD], _digest(data, key))
    return False


def fingerprint(data: dict[str, Any]) -> str:
    """A short name for one signed file's content (an ``eval.json`` names the ``result.json``
    it scored by it)."""
    return str(data.get(FIELD, ""))[:32]
