"""Stages as standalone ONNX models: each holds its compute nodes, clones of the constants they read (and
the subgraphs computing them) and copies of its initializers, with the original opset and IR version."""

from __future__ import annotations

import onnx
from onnx import helper, shape_inference

from models.graph import tensor_types, with_static_shapes
from models.partition import Plan, PlanError
from models.structure import stage_io, structure


class _Extractor:
    """Builds standalone stage models; caches graph structure and symbolic shapes across stages."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.st = structure(model)
        try:
            sym = shape_inference.infer_shapes(model, data_prop=True)
        except Exception:  # inference is a nicety here; fall back to declared types
            sym = model
        self.types = tensor_types(sym)
        self._static_types: dict | None = None
        self.inits = {t.name: t for t in model.graph.initializer}
        self.sparse = {t.values.name: t for t in model.graph.sparse_initializer}

    def _value_info(self, name: str) -> onnx.ValueInfoProto:
        t = self.types.get(name)
        if t is None or t[1] is None:
            if self._static_types is None:
                self._static_types = tensor_types(with_static_shapes(self.model, strict=False))
            s = self._static_types.get(name)
            if s is None and t is None:
                raise PlanError(f"cannot determine the type of tensor {name!r} crossing a stage boundary")
            dtype = t[0] if t is not None else s[0]
            shape: list | None = [None] * len(s[1]) if s is not None and s[1] is not None else None
        else:
            dtype, shape = t[0], list(t[1])
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dtype), shape)

    def extract(self, plan: Plan, index: int, check: bool = True) -> onnx.ModelProto:
        st = self.st
        if not 0 <= index < len(plan.stages):
            raise PlanError(f"stage index {index} out of range: plan has {len(plan.stages)} stages")
        if plan.node_count and plan.node_count != len(st.nodes):
            raise PlanError(
                f"plan for {plan.model_name!r} was made for {plan.node_count} nodes, this model has {len(st.nodes)}"
            )
        stage = plan.stages[index]
        members = [j for j, pos in enumerate(st.anchors) if stage.node_start <= pos < stage.node_end]
        if not members:
            raise PlanError(f"stage {index} [{stage.node_start}, {stage.node_end}) holds no compute nodes")
        a, b = members[0], members[-1] + 1
        if index == len(plan.stages) - 1:
            b = st.n
        ins, outs = stage_io(st, a, b)
        if set(ins) != set(stage.inputs) or set(outs) != set(stage.outputs):
            raise PlanError(
                f"plan stage {index} does not match model {plan.model_name!r}: expected inputs {ins} "
                f"outputs {outs}, plan says inputs {stage.inputs} outputs {stage.outputs}"
            )
        anchor_nodes = [st.nodes[st.anchors[j]] for j in range(a, b)]
        read: dict[str, None] = {}
        for j in range(a, b):
            read.update(dict.fromkeys(st.anchor_reads[j]))
        read.update(dict.fromkeys(t for t in stage.outputs if t in st.weights))
        consts = sorted({p for t in read if t in st.const_node for p in st.const_deps[st.const_node[t]]})
        for p in consts:   # initializers the constant chains read
            read.update(dict.fromkeys(x for x in st.nodes[p].input if x))
        nodes = [st.nodes[p] for p in consts] + anchor_nodes
        inits = [self.inits[t] for t in read if t in self.inits]
        inputs = [self._value_info(t) for t in stage.inputs]
        if self.model.ir_version < 4:
            # IR 3 requires every initializer to be listed as a graph input too (an overridable default);
            # the stage keeps the model's IR version, so its initializers are listed, after the real inputs
            inputs += [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in inits]
        g = helper.make_graph(
            nodes,
            f"{self.model.graph.name or 'model'}_stage{index}",
            inputs,
            [self._value_info(t) for t in stage.outputs],
            initializer=inits,
            sparse_initializer=[self.sparse[t] for t in read if t in self.sparse],
        )
        m = onnx.ModelProto()
        m.ir_version = self.model.ir_version
        m.opset_import.extend(self.model.opset_import)
        m.producer_name = self.model.producer_name or "edge-agent"
        m.producer_version = self.model.producer_version
        m.domain = self.model.domain
        m.model_version = self.model.model_version
        m.functions.extend(self.model.functions)
        m.metadata_props.extend(self.model.metadata_props)
        for key, value in (
            ("edge_agent.stage", f"{index}/{len(plan.stages)}"),
            ("edge_agent.model", plan.model_name),
        ):
            p = m.metadata_props.add()
            p.key, p.value = key, value
        m.graph.CopyFrom(g)
        if check:
            try:
                onnx.checker.check_model(m)
            except Exception as exc:
                raise PlanError(
                    f"stage {index} of {plan.model_name!r} is not a valid ONNX model: {exc}"
                ) from exc
        return m


def extract_stage(model: onnx.ModelProto, plan: Plan, index: int) -> onnx.ModelProto:
    """Stage ``index`` of ``plan`` as a standalone ONNX model.

    Its graph inputs are ``stage.inputs`` and its graph outputs ``stage.outputs`` (typed, dynamic dims
    kept symbolic); it holds its compute nodes, clones of the Constant nodes they read and copies of
    the initializers they use, with the original opset and IR version.
    """
    return _Extractor(model).extract(plan, index)


def split_model(model: onnx.ModelProto, plan: Plan) -> list[onnx.ModelProto]:
    """All stages of ``plan`` as standalone ONNX models (see :func:`extract_stage`)."""
    ex = _Extractor(model)
    return [ex.extract(plan, i) for i in range(len(plan.stages))]
