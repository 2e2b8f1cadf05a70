"""Representative input shapes for planning a model whose inputs have dynamic dimensions.

A deployment serves requests of any shape the model accepts; the planner only needs *one* shape to cost the
nodes on. For each dynamic dimension (a symbolic name, unknown, or a ``dim_value`` of -1 or 0, which several
exporters write for "dynamic"), the value comes from, in order:

1. ``input_shapes`` given by the operator (``--input-shape x=1x3x640x640``);
2. a sample input (``--sample-input`` / the canary check data);
3. a default by the dimension's role, with a note saying which shape was used and how to give another:
   batch (the first dimension of a rank >= 2 input) 1; image height/width (an NCHW or NHWC input whose
   channel dimension is 1, 3 or 4) from the model's metadata when it names a size, else
   ``DEFAULT_IMAGE_SIZE``; any other dimension ``DEFAULT_LENGTH``.

Named dimensions shared by several inputs (``batch``, ``seq``) get one value; anonymous ones (``?``, empty,
-1, 0) are independent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx

if TYPE_CHECKING:
    from models.cost import ModelCost

DEFAULT_IMAGE_SIZE = 224   # divisible by 32: survives the usual five stride-2 stages of a CNN
DEFAULT_LENGTH = 64        # sequence, time or feature length when nothing says otherwise
# When the model rejects the default (a text recognizer needs its trained height, a detector a multiple of
# 64...), these (height, width) / lengths are tried in turn: common input sizes across model families.
IMAGE_FALLBACKS = ((640, 640), (48, 320), (32, 320), (64, 256), (320, 320), (96, 96))
LENGTH_FALLBACKS = (16, 128, 512, 1)
_ANONYMOUS = {"", "?", "-1", "None", "unk", "N/A"}
_SIZE_KEYS = re.compile(r"(image|img|input)_?(size|shape|hw)", re.I)


@dataclass
class ShapeChoice:
    """Concrete shapes for every feedable input, and a note per input whose shape was not fully declared."""

    shapes: dict[str, tuple[int, ...]]
    sources: dict[str, str] = field(default_factory=dict)   # input -> declared | given | sample | default
    notes: list[str] = field(default_factory=list)

    @property
    def defaulted(self) -> bool:
        return any(s == "default" for s in self.sources.values())


def is_dynamic(dim: onnx.TensorShapeProto.Dimension) -> bool:
    """True for a symbolic or unknown dimension, and for ``dim_value`` <= 0 (exporters' "dynamic")."""
    return not dim.HasField("dim_value") or dim.dim_value <= 0


def declared_dims(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    """Dims of a value as declared: int when fixed (> 0), the name when symbolic, None when anonymous."""
    out: list[int | str | None] = []
    for d in vi.type.tensor_type.shape.dim:
        if not is_dynamic(d):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param not in _ANONYMOUS:
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def _metadata_image_size(model: onnx.ModelProto) -> int | None:
    for prop in model.metadata_props:
        if _SIZE_KEYS.search(prop.key):
            nums = [int(n) for n in re.findall(r"\d+", prop.value) if 8 <= int(n) <= 8192]
            if nums:
                return nums[-1]
    return None


def _image_axes(dims: Sequence[int | str | None]) -> tuple[int, int] | None:
    """(height axis, width axis) of an image-like rank-4 input, or None."""
    if len(dims) != 4:
        return None
    if dims[1] in (1, 3, 4):
        return (2, 3)
    if dims[3] in (1, 3, 4):
        return (1, 2)
    return None


def shape_candidates(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None,
                     sample: Mapping[str, np.ndarray] | None = None) -> list[ShapeChoice]:
    """:func:`representative_shapes`, then the same with each fallback size in place of the defaults (only
    when some input was defaulted): the planner takes the first the model accepts."""
    first = representative_shapes(model, input_shapes, sample)
    if not first.defaulted:
        return [first]
    out = [first]
    for (h, w), n in zip(IMAGE_FALLBACKS, LENGTH_FALLBACKS * 2):
        out.append(representative_shapes(model, input_shapes, sample, image_hw=(h, w), length=n))
    return out


def representative_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None,
                          sample: Mapping[str, np.ndarray] | None = None, *,
                          image_hw: tuple[int, int] | None = None, length: int = DEFAULT_LENGTH) -> ShapeChoice:
    """Choose one concrete shape per feedable input (see the module docstring). Raises ValueError naming the
    input when a given shape or sample contradicts the model (rank, or a fixed dimension). ``image_hw`` and
    ``length`` replace the defaults for image and other dynamic dimensions."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    names = {vi.name for vi in inputs}
    for what, given in (("input_shapes", input_shapes), ("sample input", sample)):
        unknown = sorted(set(given or {}) - names)
        if unknown:
            raise ValueError(f"{what} names {unknown}, which are not inputs; inputs are {sorted(names)}")
    meta = _metadata_image_size(model)
    hw = image_hw or ((meta, meta) if meta else (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE))
    named: dict[str, int] = {}
    out = ShapeChoice({})
    for vi in inputs:
        if not vi.type.tensor_type.HasField("shape"):
            if vi.name in (input_shapes or {}) or vi.name in (sample or {}):
                src = (input_shapes or {}).get(vi.name)
                shape = tuple(int(x) for x in (src if src is not None else np.shape(sample[vi.name])))
                out.shapes[vi.name], out.sources[vi.name] = shape, "given" if src is not None else "sample"
                continue
            raise ValueError(f"input {vi.name!r} declares no shape (not even a rank): pass "
                             f"--input-shape {vi.name}=DxDx... (input_shapes={{'{vi.name}': (...)}})")
        dims = declared_dims(vi)
        for what, src, kind in (("input_shapes", (input_shapes or {}).get(vi.name), "given"),
                                ("the sample input", None if sample is None or vi.name not in sample
                                 else np.shape(sample[vi.name]), "sample")):
            if src is None:
                continue
            src = tuple(int(x) for x in src)
            if len(src) != len(dims):
                raise ValueError(f"input {vi.name!r} has rank {len(dims)} ({dims}) but {what} gives {list(src)}")
            bad = [i for i, (d, v) in enumerate(zip(dims, src)) if isinstance(d, int) and d != v]
            if bad:
                i = bad[0]
                raise ValueError(f"input {vi.name!r} dim {i} is fixed to {dims[i]} but {what} gives {src[i]}")
            for d, v in zip(dims, src):
                if isinstance(d, str):
                    named.setdefault(d, v)
            out.shapes[vi.name], out.sources[vi.name] = src, kind
            break
        else:
            if all(isinstance(d, int) for d in dims):
                out.shapes[vi.name], out.sources[vi.name] = tuple(dims), "declared"  # type: ignore[arg-type]
                continue
            axes = _image_axes(dims)
            shape = []
            for i, d in enumerate(dims):
                if isinstance(d, int):
                    shape.append(d)
                elif isinstance(d, str) and d in named:
                    shape.append(named[d])
                else:
                    v = 1 if i == 0 and len(dims) >= 2 else (
                        hw[axes.index(i)] if axes and i in axes else length)
                    shape.append(v)
                    if isinstance(d, str):
                        named[d] = v
            out.shapes[vi.name], out.sources[vi.name] = tuple(shape), "default"
            dims_txt = "x".join("?" if not isinstance(d, int) else str(d) for d in dims)
            out.notes.append(f"input {vi.name!r} [{dims_txt}] is dynamic: planned on {'x'.join(map(str, shape))} "
                             f"(pass --input-shape {vi.name}={'x'.join(map(str, shape))} or a sample input to "
                             "plan on another shape; requests of any shape the model accepts are served)")
    return out


def cost_on_representative_shape(model: onnx.ModelProto, input_shapes: Mapping | None = None,
                                 sample: Mapping | None = None) -> tuple[ShapeChoice, ModelCost]:
    """Cost the model on the first representative shape it accepts; ValueError saying which hint to pass when
    none works. Models with value-dependent control flow are costed on estimates (with a note)."""
    from models.cost import model_cost

    name = model.graph.name or "model"
    candidates = shape_candidates(model, input_shapes, sample)
    first_error: Exception | None = None
    for choice in candidates:
        try:
            return choice, model_cost(model, choice.shapes, sample=sample)
        except ValueError as exc:   # ModelError: the model rejects this shape (a reshape, a concat...)
            first_error = first_error or exc
            if not choice.defaulted:
                break
    dyn = [n for n, s in candidates[0].sources.items() if s == "default"]
    first = candidates[0]
    try:   # shapes that depend on input values (control flow): plan on estimates rather than not at all
        if not _has_control_flow(model):
            raise ValueError("no control flow: the shapes are wrong, not value-dependent")
        cost = model_cost(model, first.shapes, strict=False)
        first.notes.append(f"some tensor shapes of {name!r} could not be determined at "
                           f"{', '.join(f'{n}={chr(120).join(map(str, s))}' for n, s in first.shapes.items())} "
                           f"({str(first_error)[:200]}); the plan's costs are estimates"
                           + ": a sample input (--sample-input) makes them exact")
        return first, cost
    except ValueError:
        pass
    if not dyn:
        raise ValueError(str(first_error)) from None
    tried = "; ".join(", ".join(f"{n}={'x'.join(map(str, c.shapes[n]))}" for n in dyn) for c in candidates)
    raise ValueError(f"its dynamic input(s) {dyn} need a shape the model accepts and none "
                    f"of the defaults works (tried {tried}; first error: {str(first_error)[:300]}). Pass one: "
                    + " ".join(f"--input-shape {n}=..." for n in dyn) + " (Python: input_shapes={...}) or "
                    "--sample-input FILE.npz") from None


def _has_control_flow(model: onnx.ModelProto) -> bool:
    return any(n.op_type in ("If", "Loop", "Scan") for n in model.graph.node)
