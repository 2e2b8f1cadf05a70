"""Loading the CLI's input tensors (``--input name=file.npy`` or ``file.npz``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def load_inputs(specs: list[str]) -> dict[str, np.ndarray]:
    """Parse CLI ``--input name=file.npy`` (or ``.npz`` whose arrays are all taken by name)."""
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
