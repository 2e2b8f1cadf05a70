"""The real-model corpus and the extra zoo models: installed, valid, and running on ONNX Runtime.

Only what holds today is checked: corpus models load, pass the checker and run in ORT at both
representative shapes; the zoo extras run in ORT and their dynamic dims work. Whether ops_native
runs them (and matches ORT) is measured in docs/corpus.md, not asserted here.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models import corpus, zoo_extra

_ENTRIES = corpus.entries()


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3  # the light models carry unused initializers ORT warns about
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def test_corpus_covers_light_models_and_eight_packaged_models_of_five_families() -> None:
    light = [e for e in _ENTRIES if e.package == "onnx"]
    packaged = [e for e in _ENTRIES if e.package != "onnx"]
    assert len(light) == 9
    assert len(packaged) >= 8 and len({e.package for e in packaged}) >= 5
    assert len({e.family.split(" (")[0] for e in packaged}) >= 5
    assert len({e.name for e in _ENTRIES}) == len(_ENTRIES)
    assert all(e.license and e.version for e in _ENTRIES)


def test_missing_package_gives_a_clear_reason() -> None:
    fake = corpus.Entry("nope", "x", "no-such-package-edge-agent", "1.0", "MIT", "x/model.onnx", (), False)
    reason = corpus.unavailable_reason(fake)
    assert reason is not None and "no-such-package-edge-agent" in reason and "not installed" in reason
    assert not corpus.available(fake)
    with pytest.raises(ImportError, match="not installed"):
        corpus.load(fake)


@pytest.mark.parametrize("entry", _ENTRIES, ids=[e.name for e in _ENTRIES])
def test_corpus_entry_is_installed_valid_and_runs_in_ort_at_both_shapes(entry: corpus.Entry) -> None:
    assert corpus.available(entry), corpus.unavailable_reason(entry)
    model = corpus.load(entry)
    onnx.checker.check_model(model)
    sess = _session(model)
    assert {i.name for i in sess.get_inputs()} == {s.name for s in entry.inputs}
    for k in (0, 1):
        feeds = corpus.sample_inputs(entry, k)
        assert [tuple(v.shape) for v in feeds.values()] == [s.shapes[k] for s in entry.inputs]
        outs = sess.run(None, feeds)
        assert outs and all(np.isfinite(o).all() for o in outs if o.dtype.kind == "f")


def test_sample_inputs_are_deterministic_and_in_range() -> None:
    e = corpus.get("ppocr_v4_rec")
    a, b = corpus.sample_inputs(e, 1, seed=3)["x"], corpus.sample_inputs(e, 1, seed=3)["x"]
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and -1.0 <= a.min() and a.max() <= 1.0
    ids = corpus.sample_inputs(corpus.get("minilm_l3_paraphrase"), 1)
    assert ids["input_ids"].dtype == np.int64 and (ids["input_ids"][:, 0] == 101).all()
    assert ids["attention_mask"][0].all() and not ids["attention_mask"][1:].all()


@pytest.fixture(scope="module")
def extras() -> dict[str, onnx.ModelProto]:
    return {name: zoo_extra.build(name) for name in zoo_extra.names()}


def test_zoo_extra_has_the_missing_families() -> None:
    assert {"yolo_silu", "crnn_bilstm", "gru_kws", "unet", "vit"} <= set(zoo_extra.names())


@pytest.mark.parametrize("name", zoo_extra.names())
def test_zoo_extra_model_is_valid_and_runs_in_ort_with_dynamic_dims(extras: dict, name: str) -> None:
    model = extras[name]
    onnx.checker.check_model(model, full_check=True)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    s0, s1 = zoo_extra.SHAPES[name]
    assert s0 != s1 and all(isinstance(d, str) for d, a, b in zip(dims, s0, s1) if a != b)
    sess = _session(model)
    outs = [sess.run(None, zoo_extra.sample_inputs(name, k))[0] for k in (0, 1)]
    for out, shape in zip(outs, (s0, s1)):
        assert np.isfinite(out).all() and out.shape[1 if name.startswith("crnn_bilstm") else 0] == shape[0]
    assert outs[0].shape != outs[1].shape
    if name in ("yolo_silu", "unet"):  # outputs follow H x W: anchors per stride, or the full mask
        (h0, w0), (h1, w1) = s0[2:], s1[2:]
        if name == "unet":
            assert outs[0].shape[2:] == (h0, w0) and outs[1].shape[2:] == (h1, w1)
        else:
            assert [o.shape[2] for o in outs] == [sum((h // s) * (w // s) for s in (8, 16, 32)) for h, w in
                                                  ((h0, w0), (h1, w1))]


def test_zoo_extra_build_is_deterministic(extras: dict) -> None:
    assert zoo_extra.build("gru_kws").SerializeToString() == extras["gru_kws"].SerializeToString()
    assert zoo_extra.build("gru_kws", seed=1).SerializeToString() != extras["gru_kws"].SerializeToString()
    with pytest.raises(ValueError, match="unknown"):
        zoo_extra.build("nope")
