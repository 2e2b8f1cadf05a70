"""Property-based fuzzing of the native executor with mutated ONNX models and mutated feeds.

Every case runs in a long-lived subprocess (tests/fuzz_worker.py) with a per-case timeout, so a segfault,
an abort or a hang is caught and reported with the case that caused it instead of killing pytest.
Properties: a mutated model or feed either runs, or raises an ops_native.OpsNativeError subclass (or a
ValueError) with a message; when both ops_native and ONNX Runtime run a case, their outputs agree (same
shapes, finite wherever ONNX Runtime's are, equal within tolerance); inputs that would need more than
4 GiB are refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import select
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from models import zoo

from .fuzz_worker import recv, send

REPO = Path(__file__).resolve().parent.parent
CASE_TIMEOUT_S = 60.0      # generous: the machine is shared; a hang is minutes, not seconds
ZOO = {name: zoo.build(name) for name in ("mlp", "transformer", "mobilenetv2")}
ZOO_BYTES = {name: m.SerializeToString() for name, m in ZOO.items()}
SAMPLES = {name: zoo.sample_inputs(m) for name, m in ZOO.items()}
MODEL_NAMES = st.sampled_from(["mlp"] * 5 + ["transformer"] * 4 + ["mobilenetv2"])
ACCEPTED = ("OpsNativeError", "UnsupportedOpError", "InvalidModelError", "InvalidInputError", "ValueError")
FUZZ = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))
# EDGE_AGENT_FUZZ_SCALE=10 runs a deeper campaign by hand; the default keeps the file around a minute.
SCALE = float(os.environ.get("EDGE_AGENT_FUZZ_SCALE", "1"))


# --------------------------------------------------------------------------------------------- harness

class Worker:
    """One fuzz_worker subprocess; restarted after a crash or a hang."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.sent: set[str] = set()      # digests of the models this worker process already holds

    def _start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fuzz_worker", self.engine], cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"})
        hello = self._read(CASE_TIMEOUT_S)
        if hello and hello.get("status") == "unavailable":
            self.proc.wait()
            self.proc = None
            pytest.fail(f"{self.engine} cannot be imported (broken build?): {hello['message']}")
        assert hello and hello.get("status") == "ready", hello

    def _read(self, timeout: float) -> dict | None:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        try:
            return recv(self.proc.stdout)
        except EOFError:
            return {"status": "crash"}

    def _stderr_tail(self) -> str:
        assert self.proc is not None and self.proc.stderr is not None
        try:
            return self.proc.stderr.read()[-3000:].decode(errors="replace")
        except (OSError, ValueError):
            return ""

    def run(self, case: dict, timeout: float = CASE_TIMEOUT_S) -> dict:
        """The worker's answer, or {"status": "crash"|"hang", ...} (the worker is then restarted)."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.proc is not None and self.proc.stdin is not None
        wire = case
        if "model" in case:
            digest = hashlib.sha256(case["model"]).hexdigest()
            if digest in self.sent:
                wire = {**case, "model": None, "model_ref": digest}
            self.sent.add(digest)
        try:
            send(self.proc.stdin, wire)
            reply = self._read(timeout)
        except BrokenPipeError:
            reply = {"status": "crash"}
        if reply is None:
            self.proc.kill()
            self.proc.wait()
            reply = {"status": "hang", "timeout_s": timeout}
        if reply["status"] in ("crash", "hang"):
            self.proc.wait()
            reply.update(returncode=self.proc.returncode, stderr=self._stderr_tail())
            self.proc = None
            self.sent.clear()
            self.restarts += 1
        return reply

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def workers() -> Iterator[dict[str, Worker]]:
    ws = {"native": Worker("native"), "ort": Worker("ort")}
    try:
        yield ws
    finally:
        for w in ws.values():
            w.close()


@dataclasses.dataclass
class Findings:
    """Cases that broke a property, each saved (model + feeds) so it can be replayed by hand."""

    where: Path
    items: list[str] = dataclasses.field(default_factory=list)
    stats: Counter = dataclasses.field(default_factory=Counter)

    def add(self, what: str, case: dict, desc: str, reply: dict) -> None:
        path = self.where / f"case-{len(self.items):03d}.onnx"
        path.write_bytes(case["model"])
        np.savez(path.with_suffix(".npz"), **{k: np.asarray(a) for k, (a, _) in case["feeds"].items()
                                              if not isinstance(a, list)})
        detail = {k: v for k, v in reply.items() if k in ("type", "message", "returncode", "timeout_s")}
        tail = reply.get("stderr") or reply.get("traceback") or ""
        self.items.append(f"{what}: {desc}; feeds {describe_feeds(case)}; {detail}; saved {path}\n"
                          f"{tail[-1500:]}")

    def check(self) -> None:
        assert not self.items, f"{len(self.items)} finding(s):\n\n" + "\n\n".join(self.items)


def describe_feeds(case: dict) -> str:
    parts = []
    for name, (a, tr) in case["feeds"].items():
        arr = np.asarray(a) if not isinstance(a, list) else None
        parts.append(f"{name}: {tr} {'list' if arr is None else f'{arr.dtype}{list(arr.shape)}'}")
    return ", ".join(parts) or "none"


def judge(workers: dict[str, Worker], findings: Findings, case: dict, desc: str, compare: bool = True) -> str:
    """Run a case on ops_native (and ONNX Runtime when ops_native runs it); record what breaks a property."""
    reply = workers["native"].run(case)
    status = reply["status"]
    findings.stats[status] += 1
    if status in ("crash", "hang"):
        findings.add(status.upper(), case, desc, reply)
        return status
    if status == "error":
        findings.stats[f"error_{reply['type']}"] += 1
        if not (reply["native"] or reply["type"] in ACCEPTED) or not reply["message"].strip():
            findings.add(f"unexpected {reply['type']}", case, desc, reply)
        return status
    if not compare:
        return status
    ref = workers["ort"].run(case)
    findings.stats[f"ort_{ref['status']}"] += 1
    if ref["status"] != "ok":
        return status
    for i, (got, want) in enumerate(zip(reply["outputs"], ref["outputs"])):
        if isinstance(got, tuple) or isinstance(want, tuple):
            continue
        problem = compare_outputs(got, want)
        if problem:
            findings.add(f"output {i} differs from ONNX Runtime ({problem})", case, desc, reply)
            break
    else:
        if len(reply["outputs"]) != len(ref["outputs"]):
            findings.add("output count differs from ONNX Runtime", case, desc, reply)
    findings.stats["compared"] += 1
    return status


def compare_outputs(got: np.ndarray, want: np.ndarray) -> str:
    if got.shape != want.shape:
        return f"shape {got.shape} vs {want.shape}"
    if got.dtype != want.dtype:
        return f"dtype {got.dtype} vs {want.dtype}"
    if got.dtype.kind != "f":
        return "" if np.array_equal(got, want) else "values"
    finite = np.isfinite(want)
    if not np.isfinite(got[finite]).all():
        return "non-finite where ONNX Runtime's output is finite"
    if finite.any():
        g, w = got[finite].astype(np.float64), want[finite].astype(np.float64)
        scale = max(1.0, float(np.abs(w).max()))
        err = float(np.abs(g - w).max())
        if err > 1e-3 * scale:
            return f"max abs error {err:.3g} at scale {scale:.3g}"
    return ""


@pytest.fixture
def findings(tmp_path: Path) -> Findings:
    return Findings(tmp_path)


def case_of(model: bytes, feeds: dict[str, tuple[Any, Any]], threads: int = 1) -> dict:
    return {"model": model, "feeds": feeds, "threads": threads}


def plain_feeds(name: str) -> dict[str, tuple[Any, str]]:
    return {k: (v, "plain") for k, v in SAMPLES[name].items()}


# --------------------------------------------------------------------------------------------- models

ATTRS = {  # attribute -> values of the right kind, hostile ones included
    "kernel_shape": st.lists(st.integers(-2, 9) | st.just(1 << 40), max_size=4),
    "strides": st.lists(st.integers(-2, 5) | st.just(1 << 40), max_size=4),
    "dilations": st.lists(st.integers(-2, 5), max_size=4),
    "pads": st.lists(st.integers(-3, 9) | st.just(1 << 40), max_size=8),
    "group": st.integers(-2, 200) | st.just(1 << 40),
    "axis": st.integers(-6, 6) | st.just(1 << 40),
    "perm": st.lists(st.integers(-4, 5), max_size=5) | st.permutations([0, 1, 2, 3]),
    "transA": st.integers(-1, 2), "transB": st.integers(-1, 2),
    "alpha": st.floats(width=32), "beta": st.floats(width=32), "epsilon": st.floats(width=32),
    "keepdims": st.integers(-1, 2), "allowzero": st.integers(-1, 2),
}
UNSUPPORTED = ["Unique", "NonZero", "RandomNormalLike", "RoiAlign", "MaxUnpool", "NotAnOp", "STFT", "DFT"]
MUTATIONS = ["flip", "flip", "truncate", "dup_node", "drop_node", "drop_init", "dup_init", "attr", "attr",
             "attr", "init_dims", "init_dtype", "unsupported", "input_shape", "rewire", "opset", "swap_nodes",
             "shape_values", "shape_values"]
SHAPE_VALUES = st.lists(st.integers(-2, 300) | st.sampled_from([0, -1, 1 << 31, 1 << 40, (1 << 63) - 1]),
                        max_size=6)


def _value_names(g: onnx.GraphProto) -> list[str]:
    names = [i.name for i in g.input] + [i.name for i in g.initializer]
    for n in g.node:
        names += list(n.output)
    return names


@st.composite
def mutated_models(draw: st.DrawFn) -> tuple[str, bytes, str]:
    """(zoo name, serialized mutated model, what was done)."""
    name = draw(MODEL_NAMES)
    how = draw(st.sampled_from(MUTATIONS))
    if how in ("flip", "truncate"):
        buf = bytearray(ZOO_BYTES[name])
        if how == "truncate":
            cut = draw(st.integers(0, len(buf) - 1))
            return name, bytes(buf[:cut]), f"{name} truncated to {cut} bytes"
        # flips in the graph structure (the first bytes and the tail) or anywhere
        spots = draw(st.lists(st.integers(0, 4095) | st.integers(len(buf) - 4096, len(buf) - 1)
                              | st.integers(0, len(buf) - 1), min_size=1, max_size=16))
        for pos in spots:
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        return name, bytes(buf), f"{name} with bits flipped at {sorted(spots)[:16]}"
    m = onnx.ModelProto()
    m.CopyFrom(ZOO[name])
    g = m.graph
    nodes, inits = list(g.node), list(g.initializer)
    if how == "dup_node":
        i = draw(st.integers(0, len(nodes) - 1))
        g.node.insert(draw(st.integers(0, len(nodes))), nodes[i])
        desc = f"node {i} ({nodes[i].op_type}) duplicated"
    elif how == "drop_node":
        i = draw(st.integers(0, len(nodes) - 1))
        del g.node[i]
        desc = f"node {i} ({nodes[i].op_type}) dropped"
    elif how == "swap_nodes":
        i, j = draw(st.integers(0, len(nodes) - 1)), draw(st.integers(0, len(nodes) - 1))
        a, b = onnx.NodeProto(), onnx.NodeProto()
        a.CopyFrom(g.node[i])
        b.CopyFrom(g.node[j])
        g.node[i].CopyFrom(b)
        g.node[j].CopyFrom(a)
        desc = f"nodes {i} and {j} swapped"
    elif how == "drop_init":
        i = draw(st.integers(0, len(inits) - 1))
        del g.initializer[i]
        desc = f"initializer {inits[i].name} dropped"
    elif how == "dup_init":
        i = draw(st.integers(0, len(inits) - 1))
        g.initializer.append(inits[i])
        desc = f"initializer {inits[i].name} duplicated"
    elif how == "attr":
        i = draw(st.integers(0, len(nodes) - 1))
        node = g.node[i]
        own = [a.name for a in node.attribute if a.name in ATTRS]
        key = draw(st.sampled_from(own) if own and draw(st.booleans()) else st.sampled_from(sorted(ATTRS)))
        value = draw(ATTRS[key])
        kept = [a for a in node.attribute if a.name != key]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.append(helper.make_attribute(
            key, value, attr_type=AttributeProto.INTS if isinstance(value, list) else None))
        if draw(st.integers(0, 5)) == 0:   # the right name with the wrong attribute type
            node.attribute[-1].type = draw(st.sampled_from([AttributeProto.FLOAT, AttributeProto.STRING,
                                                            AttributeProto.INTS, AttributeProto.INT]))
        desc = f"node {i} ({node.op_type}) attribute {key}={value!r}"
    elif how == "init_dims":
        i = draw(st.integers(0, len(inits) - 1))
        dims = draw(st.lists(st.integers(0, 300) | st.sampled_from([-1, 1 << 31, 1 << 40]), max_size=4))
        del g.initializer[i].dims[:]
        g.initializer[i].dims.extend(dims)
        desc = f"initializer {inits[i].name} dims {dims}"
    elif how == "init_dtype":
        i = draw(st.integers(0, len(inits) - 1))
        dt = draw(st.integers(0, 25))
        g.initializer[i].data_type = dt
        desc = f"initializer {inits[i].name} data_type {dt}"
    elif how == "unsupported":
        src = draw(st.sampled_from(_value_names(g)))
        op = draw(st.sampled_from(UNSUPPORTED))
        domain = draw(st.sampled_from(["", "", "com.example"]))
        g.node.append(helper.make_node(op, [src], ["fz_extra"], domain=domain))
        if draw(st.booleans()):
            g.output.append(helper.make_tensor_value_info("fz_extra", TensorProto.FLOAT, None))
        if domain:
            m.opset_import.append(helper.make_opsetid(domain, 1))
        desc = f"{domain or 'ai.onnx'}.{op} added on {src}"
    elif how == "input_shape":
        dims = draw(st.lists(st.integers(-1, 300) | st.sampled_from([0, 1 << 40]) | st.just("N"), max_size=5))
        g.input[0].type.tensor_type.shape.Clear()
        for d in dims:
            dim = g.input[0].type.tensor_type.shape.dim.add()
            if isinstance(d, str):
                dim.dim_param = d
            else:
                dim.dim_value = d
        if draw(st.booleans()):
            g.input[0].type.tensor_type.elem_type = draw(st.integers(0, 16))
        desc = f"input declared {g.input[0].type.tensor_type.elem_type}{dims}"
    elif how == "rewire":
        i = draw(st.integers(0, len(nodes) - 1))
        node = g.node[i]
        if not node.input:
            node.input.append("x")
        k = draw(st.integers(0, len(node.input) - 1))
        new = draw(st.sampled_from(_value_names(g)) | st.just("no_such_value"))
        node.input[k] = new
        desc = f"node {i} ({node.op_type}) input {k} rewired to {new}"
    elif how == "shape_values":
        # int64 constants (Reshape targets): hostile values keep the model checker-valid
        shapes = [t for t in g.initializer if t.data_type == TensorProto.INT64]
        if not shapes:
            return name, ZOO_BYTES[name], f"{name}: unchanged (no int64 constant)"
        t = draw(st.sampled_from(shapes))
        values = draw(SHAPE_VALUES)
        t.CopyFrom(numpy_helper.from_array(np.array(values, np.int64), t.name))
        desc = f"int64 constant {t.name} = {values}"
    else:
        v = draw(st.sampled_from([1, 6, 7, 11, 13, 17, 21, 99]))
        for imp in m.opset_import:
            if imp.domain in ("", "ai.onnx"):
                imp.version = v
        desc = f"default opset {v}"
    return name, m.SerializeToString(), f"{name}: {desc}"


@pytest.mark.timeout(600)
def test_mutated_models_run_or_raise_a_clear_error_and_agree_with_onnxruntime_when_they_run(
        workers: dict[str, Worker], findings: Findings) -> None:
    @settings(FUZZ, max_examples=int(170 * SCALE))
    @given(mutated_models())
    def run(mutant: tuple[str, bytes, str]) -> None:
        name, model, desc = mutant
        judge(workers, findings, case_of(model, plain_feeds(name)), desc)

    t0 = time.monotonic()
    run()
    findings.stats["seconds"] = round(time.monotonic() - t0)
    print("mutated models:", dict(findings.stats))
    assert findings.stats["error"] > 0 and findings.stats["ok"] + findings.stats["error"] > 100
    findings.check()


# --------------------------------------------------------------------------------------------- feeds

BROADCAST_HUGE = {  # (model, shape) pairs whose input alone needs more than 4 GiB
    "mlp": [(1 << 23, 256), (1 << 31, 256), (1 << 62, 256)],
    "transformer": [(1 << 18, 64, 128), (1 << 40, 64, 128)],
    "mobilenetv2": [(1 << 15, 3, 128, 128), (1 << 40, 3, 128, 128)],
}


@st.composite
def mutated_feeds(draw: st.DrawFn) -> tuple[str, dict, str, bool]:
    """(zoo name, feeds, what was done, compare with ONNX Runtime)."""
    name = draw(MODEL_NAMES)
    x = SAMPLES[name]["input"]
    how = draw(st.sampled_from(["dtype", "rank", "fixed_dim", "zero", "nan", "batch", "layout", "layout",
                                "missing", "extra", "scalar", "list", "huge"]))
    compare = True
    if how == "dtype":
        dt = draw(st.sampled_from(["float64", "float16", "int32", "int64", "bool", "uint8", "complex64"]))
        feeds, desc = {"input": (x.astype(dt), "plain")}, f"dtype {dt}"
    elif how == "rank":
        shape = draw(st.sampled_from([(x.size,), (1,) + x.shape, x.shape + (1,)]))
        feeds, desc = {"input": (x.reshape(shape), "plain")}, f"rank {len(shape)}"
    elif how == "fixed_dim":
        shape = list(x.shape)
        k = draw(st.integers(1, len(shape) - 1))
        shape[k] = draw(st.sampled_from([1, shape[k] - 1, shape[k] + 1, 2 * shape[k]]))
        feeds, desc = {"input": (np.resize(x, shape), "plain")}, f"shape {shape}"
    elif how == "zero":
        shape = list(x.shape)
        shape[draw(st.integers(0, len(shape) - 1))] = 0
        feeds, desc = {"input": (np.zeros(shape, x.dtype), "plain")}, f"zero-size {shape}"
    elif how == "nan":
        y = x.copy()
        idx = draw(st.lists(st.integers(0, y.size - 1), min_size=1, max_size=8))
        y.flat[idx] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 3.0e38, -3.0e38]))
        feeds, desc = {"input": (y, "plain")}, f"non-finite/huge values at {idx}"
    elif how == "batch":
        n = draw(st.sampled_from([2, 3, 5]))
        y = np.random.default_rng(n).standard_normal((n,) + x.shape[1:]).astype(x.dtype)
        feeds, desc = {"input": (y, "plain")}, f"batch {n}"
    elif how == "layout":
        tr = draw(st.sampled_from(["strided", "fortran", "readonly", "unaligned"]))
        feeds, desc = {"input": (x, tr)}, f"{tr} view"
    elif how == "missing":
        feeds, desc = {}, "no input"
    elif how == "extra":
        feeds, desc = {"input": (x, "plain"), "fz_extra": (x, "plain")}, "extra input"
    elif how == "scalar":
        feeds, desc = {"input": (np.float32(1.5), "plain")}, "scalar"
    elif how == "list":
        feeds, desc = {"input": (x, "list")}, "nested Python list"
    else:
        shape = draw(st.sampled_from(BROADCAST_HUGE[name]))
        feeds, desc, compare = {"input": (x[:1], ("broadcast", shape))}, f"zero-stride view of {shape}", False
    return name, feeds, desc, compare


@pytest.mark.timeout(600)
def test_mutated_feeds_run_or_raise_a_clear_error_and_agree_with_onnxruntime_when_they_run(
        workers: dict[str, Worker], findings: Findings) -> None:
    @settings(FUZZ, max_examples=int(130 * SCALE))
    @given(mutated_feeds())
    def run(mutant: tuple[str, dict, str, bool]) -> None:
        name, feeds, desc, compare = mutant
        judge(workers, findings, case_of(ZOO_BYTES[name], feeds), f"{name}: {desc}", compare=compare)

    run()
    print("mutated feeds:", dict(findings.stats))
    assert findings.stats["ok"] > 20 and findings.stats["error"] > 20
    findings.check()


@pytest.mark.timeout(300)
def test_inputs_that_would_need_more_than_4_gib_are_refused_with_a_clear_error(
        workers: dict[str, Worker], findings: Findings) -> None:
    for name, shapes in BROADCAST_HUGE.items():
        for shape in shapes:
            x = SAMPLES[name]["input"][:1]
            case = case_of(ZOO_BYTES[name], {"input": (x, ("broadcast", shape))})
            status = judge(workers, findings, case, f"{name}: zero-stride view of {shape}", compare=False)
            if status == "ok":
                findings.add("a >4 GiB input was not refused", case, f"{name}: {shape}", {})
    findings.check()


@pytest.mark.timeout(300)
def test_zero_size_batch_and_every_memory_layout_give_onnxruntime_results(
        workers: dict[str, Worker], findings: Findings) -> None:
    for name in ZOO:
        x = SAMPLES[name]["input"]
        for tr in ("plain", "strided", "fortran", "readonly", "unaligned", "list"):
            judge(workers, findings, case_of(ZOO_BYTES[name], {"input": (x, tr)}), f"{name}: {tr}")
        zero = np.zeros((0,) + x.shape[1:], x.dtype)
        judge(workers, findings, case_of(ZOO_BYTES[name], {"input": (zero, "plain")}), f"{name}: batch 0")
    findings.check()


# --------------------------------------------------------------------------------------------- harness

@pytest.mark.timeout(300)
def test_harness_reports_a_segfault_and_a_hang_with_the_case_and_recovers(workers: dict[str, Worker]) -> None:
    w = workers["native"]
    crash = w.run({"selftest": "segfault"})
    assert crash["status"] == "crash" and crash["returncode"] == -11, crash
    hang = w.run({"selftest": "hang"}, timeout=2.0)
    assert hang["status"] == "hang", hang
    ok = w.run(case_of(ZOO_BYTES["mlp"], plain_feeds("mlp")))
    assert ok["status"] == "ok" and ok["outputs"][0].shape == (1, 10)
    with tempfile.TemporaryDirectory() as d:
        f = Findings(Path(d))
        f.add("CRASH", case_of(ZOO_BYTES["mlp"], plain_feeds("mlp")), "selftest", crash)
        with pytest.raises(AssertionError, match="CRASH: selftest"):
            f.check()
