"""Where a command writes its output, checked before it starts working: a simulation,
sweep, evaluation, demo or export that ran for minutes must not end in a traceback
because its output cannot be written there."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

__all__ = ["output_directory", "output_file"]


def output_directory(path: str | Path, flag: str = "--out") -> Path:
    """``path`` as a directory that can be written in, made (with its parents) if it is
    not there; a :class:`ConfigError` naming ``flag`` and why otherwise."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag}: not a directory (got {str(out)!r}); give a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{flag}: cannot create {str(out)!r} ({e.strerror or e})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}: cannot write in {str(out)!r}; give a writable directory")
    return out


def output_file(path: str | Path, flag: str = "--out") -> Path:
    """``path`` as a file that can be written (nothing is made); a :class:`ConfigError`
    naming ``flag`` and why otherwise: a directory, a folder not there, not writable."""
    out = Path(path)
    if out.is_dir():
        raise ConfigError(f"{flag}: {str(out)!r} is a directory; give a file to write")
    if not out.parent.is_dir():
        raise ConfigError(f"{flag}: {str(out)!r}: no such directory {str(out.parent)!r}")
    if not os.access(out if out.exists() else out.parent, os.W_OK):
        raise ConfigError(f"{flag}: {str(out)!r}: not writable")
    return out
