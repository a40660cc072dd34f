"""Checkpoints written atomically: to a temporary file beside the target, then renamed over it.

Lightning's default writer stages the file in the system temp folder and moves it, which becomes a plain
copy, interruptible half-way, when that folder is on another file system than the run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from twotower.files import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
                        ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        with atomic_path(Path(path)) as temporary:
            torch.save(checkpoint, temporary)
