"""What the CLI reads from the command line into tensors and shapes: ``--input`` and ``--input-shape``."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def load_inputs(specs: list[str]) -> dict[str, np.ndarray]:
    """Parse ``--input name=file.npy`` (repeatable) or ``--input file.npz`` (every array, by its name)."""
    out: dict[str, np.ndarray] = {}
    for s in specs:
        if "=" in s:
            key, path = s.split("=", 1)
            out[key] = np.load(Path(path), allow_pickle=False)
        elif s.endswith(".npz"):
            with np.load(Path(s), allow_pickle=False) as z:
                out.update({k: z[k] for k in z.files})
        else:
            raise ValueError(f"--input {s!r}: use name=file.npy or file.npz")
    return out


def parse_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    """Parse ``--input-shape NAME=1x3x224x224`` (repeatable) into ``{name: (1, 3, 224, 224)}``."""
    out = {}
    for item in items:
        name, _, dims = item.partition("=")
        if not name or not dims:
            raise ValueError(f"--input-shape {item!r}: use NAME=1x3x224x224")
        out[name] = tuple(int(d) for d in dims.lower().split("x"))
    return out
