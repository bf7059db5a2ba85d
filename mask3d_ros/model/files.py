"""Where model files are: the bundled checkpoint, found in a ROS install's share directory or the
source tree, and user checkpoints given relative to either or to the working directory.

No ROS needed: the offline tools resolve the bundled model the same way the node does.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE = "mask3d_ros"


class ModelError(RuntimeError):
    """The model cannot be built from the parameters (checkpoint, preset, device, backend)."""


BUNDLED_CHECKPOINT = "model/mask3d_tabletop.ckpt"
"""The project's own tabletop model, relative to the package share directory (or the source tree)."""


def share_directory() -> Path | None:
    """The source tree when the package runs from one (a checkout or an editable install, whose
    copies under a prefix may be stale), else the share directory of a ROS install, else the
    ``share/mask3d_ros`` a pip install writes under its prefix; None when none of them exists."""
    source = Path(__file__).resolve().parents[2]
    if (source / "package.xml").is_file():
        return source
    try:
        from ament_index_python.packages import get_package_share_directory  # noqa: PLC0415 - ROS installs only

        return Path(get_package_share_directory(PACKAGE))
    except Exception:  # noqa: BLE001 - not installed with colcon (or no ament_index)
        pass
    prefix = Path(sys.prefix) / "share" / PACKAGE
    return prefix if (prefix / "package.xml").is_file() else None


def resolve_checkpoint(path: str) -> Path:
    """An existing checkpoint file for ``path`` (absolute, share-relative or cwd-relative)."""
    candidate = Path(os.path.expanduser(path))
    tried = []
    if candidate.is_absolute():
        tried.append(candidate)
    else:
        share = share_directory()
        if share is not None:
            tried.append(share / candidate)
        tried.append(Path.cwd() / candidate)
    for option in tried:
        if option.is_file():
            return option
    raise ModelError(f"model.checkpoint {path!r} not found (looked at: {', '.join(str(p) for p in tried)})")


def bundled_checkpoint() -> Path:
    """The bundled model's file, or ModelError naming where it was looked for."""
    return resolve_checkpoint(BUNDLED_CHECKPOINT)
