"""Convolution layers of MobileNetV2, ResNet, VGG and YOLO: the native core vs ONNX Runtime, 1 and 2 threads.

    python -m benchmarks.bench_conv [--quick] [--blocked] [--json out.json]

Each layer is one Conv (+ its activation, which both sides fuse: Clip(0, 6) for MobileNetV2, Relu for
ResNet and VGG, SiLU = Sigmoid + Mul for YOLO) with constant weights. Timing as in bench_gemm: best run of alternating blocks. "speed" =
ORT ms / ours ms (> 1: we are faster); "%peak" is per core against the measured FMA peak (bench_gemm).
--blocked runs ours with NCHWc8 input and output where the plan allows it (as inside a model after the
layout pass); ORT still gets the NCHW model, so its time includes its own reorders to and from NCHWc.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from benchmarks.bench_gemm import best_pair_ms, ort_session, peak_gflops_per_core
from benchmarks.common import fmt, fmt_ratio, parser, table, write_json
from ops_native import _core as core

# name, (C, H, W), OC, kernel, stride, group, activation
LAYERS = [
    ("mbv2 expand 1x1 16->96 @112", (16, 112, 112), 96, 1, 1, 1, "relu6"),
    ("mbv2 expand 1x1 24->144 @56", (24, 56, 56), 144, 1, 1, 1, "relu6"),
    ("mbv2 expand 1x1 96->576 @14", (96, 14, 14), 576, 1, 1, 1, "relu6"),
    ("mbv2 project 1x1 144->24 @56", (144, 56, 56), 24, 1, 1, 1, "none"),
    ("mbv2 project 1x1 576->96 @14", (576, 14, 14), 96, 1, 1, 1, "none"),
    ("mbv2 dw 3x3 s1 144 @56", (144, 56, 56), 144, 3, 1, 144, "relu6"),
    ("mbv2 dw 3x3 s1 576 @14", (576, 14, 14), 576, 3, 1, 576, "relu6"),
    ("mbv2 dw 3x3 s2 96 @112", (96, 112, 112), 96, 3, 2, 96, "relu6"),
    ("mbv2 dw 3x3 s2 144 @56", (144, 56, 56), 144, 3, 2, 144, "relu6"),
    ("mbv2 stem 3x3 s2 3->32 @224", (3, 224, 224), 32, 3, 2, 1, "relu6"),
    ("resnet stem 7x7 s2 3->64 @224", (3, 224, 224), 64, 7, 2, 1, "relu"),
    ("resnet 3x3 64 @56", (64, 56, 56), 64, 3, 1, 1, "relu"),
    ("resnet 3x3 128 @28", (128, 28, 28), 128, 3, 1, 1, "relu"),
    ("resnet 3x3 256 @14", (256, 14, 14), 256, 3, 1, 1, "relu"),
    ("resnet 3x3 s2 128->256 @28", (128, 28, 28), 256, 3, 2, 1, "relu"),
    ("resnet 3x3 512 @7", (512, 7, 7), 512, 3, 1, 1, "relu"),
    # wide rows (OW >= 28, the row kernel): VGG / U-Net stages and YOLO-style SiLU layers
    ("vgg 3x3 64 @224", (64, 224, 224), 64, 3, 1, 1, "relu"),
    ("vgg 3x3 128 @112", (128, 112, 112), 128, 3, 1, 1, "relu"),
    ("vgg 3x3 256 @56", (256, 56, 56), 256, 3, 1, 1, "relu"),
    ("unet 3x3 128 @56", (128, 56, 56), 128, 3, 1, 1, "relu"),
    ("resnet 3x3 256 @28", (256, 28, 28), 256, 3, 1, 1, "relu"),
    ("yolo 3x3 32 @208 silu", (32, 208, 208), 32, 3, 1, 1, "silu"),
    ("yolo 3x3 48 @104 silu", (48, 104, 104), 48, 3, 1, 1, "silu"),
    ("yolo 3x3 64 @104 silu", (64, 104, 104), 64, 3, 1, 1, "silu"),
    ("yolo 3x3 s2 32->64 @208 silu", (32, 208, 208), 64, 3, 2, 1, "silu"),
    ("resnet 1x1 2048->512 @7", (2048, 7, 7), 512, 1, 1, 1, "relu"),
    # PP-OCRv4 det (1x3x640x640): the two 96->24 3x3 layers at 160x160 are ~half of its FLOPs
    ("ppocr stem 3x3 s2 3->16 @640", (3, 640, 640), 16, 3, 2, 1, "none"),
    ("ppocr 3x3 96->24 @160", (96, 160, 160), 24, 3, 1, 1, "none"),
    ("ppocr 3x3 96->24 @80", (96, 80, 80), 24, 3, 1, 1, "none"),
    ("ppocr 3x3 96->24 @40", (96, 40, 40), 24, 3, 1, 1, "none"),
    ("ppocr 1x1 16->32 @320", (16, 320, 320), 32, 1, 1, 1, "none"),
    ("ppocr dw 3x3 s1 16 @320", (16, 320, 320), 16, 3, 1, 16, "none"),
    ("ppocr dw 3x3 s2 32 @320", (32, 320, 320), 32, 3, 2, 32, "none"),
    ("ppocr dw 3x3 s1 48 @160", (48, 160, 160), 48, 3, 1, 48, "none"),
    ("ppocr dw 5x5 s1 192 @40", (192, 40, 40), 192, 5, 1, 192, "none"),
    ("ppocr dw 5x5 s1 384 @20", (384, 20, 20), 384, 5, 1, 384, "none"),
    # grouped convs: ShuffleNet v1 (4 groups of 34 / 68 / 136: groups start inside 8-channel blocks),
    # ResNeXt (32 groups of 4 / 8), and 1x1 convs at small maps with many channels
    ("shufflenet g4 1x1 24->112 @56", (24, 56, 56), 112, 1, 1, 4, "relu"),
    ("shufflenet g4 1x1 136 @28", (136, 28, 28), 136, 1, 1, 4, "relu"),
    ("shufflenet g4 1x1 272 @14", (272, 14, 14), 272, 1, 1, 4, "relu"),
    ("shufflenet g4 1x1 544 @7", (544, 7, 7), 544, 1, 1, 4, "relu"),
    ("resnext g32 3x3 128 @56", (128, 56, 56), 128, 3, 1, 32, "relu"),
    ("resnext g32 3x3 256 @28", (256, 28, 28), 256, 3, 1, 32, "relu"),
    ("resnext g32 3x3 s2 512 @28", (512, 28, 28), 512, 3, 2, 32, "relu"),
    ("densenet 1x1 512->128 @14", (512, 14, 14), 128, 1, 1, 1, "relu"),
    ("densenet 1x1 1024->128 @7", (1024, 7, 7), 128, 1, 1, 1, "relu"),
]
QUICK = {"mbv2 expand 1x1 24->144 @56", "mbv2 project 1x1 576->96 @14", "mbv2 dw 3x3 s1 144 @56",
         "mbv2 dw 3x3 s2 144 @56", "resnet 3x3 64 @56", "resnet 3x3 256 @14"}


def conv_model(w: np.ndarray, b: np.ndarray, x_shape: tuple, stride: int, pad: int, group: int,
               act: str) -> bytes:
    """Conv (+ Clip(0, 6), Relu, or SiLU as Sigmoid + Mul) with constant weights."""
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c" if act != "none" else "y"], strides=[stride] * 2,
                              pads=[pad] * 4, group=group)]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
    if act == "relu6":
        inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"),
                  numpy_helper.from_array(np.array(6, np.float32), "hi")]
        nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"]))
    elif act == "relu":
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    elif act == "silu":
        nodes += [helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["c", "s"], ["y"])]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def to_nchwc8(x: np.ndarray) -> np.ndarray:
    """[N, C, H, W] -> [N, ceil(C/8), H, W, 8], pad channels zero."""
    n, c, h, w = x.shape
    cb = -(-c // 8)
    xp = np.zeros((n, cb * 8, h, w), np.float32)
    xp[:, :c] = x
    return np.ascontiguousarray(xp.reshape(n, cb, 8, h, w).transpose(0, 1, 3, 4, 2))


def from_nchwc8(y: np.ndarray, c: int) -> np.ndarray:
    """[N, C/8, H, W, 8] -> [N, c, H, W]."""
    n, cb, h, w, _ = y.shape
    return y.transpose(0, 1, 4, 2, 3).reshape(n, cb * 8, h, w)[:, :c]


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the conv-layer comparison and print the table; returns the rows."""
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=None, help="seconds per measurement (default 1.0, quick 0.3)")
    p.add_argument("--only", default="", help="run only the layers whose name contains this text")
    p.add_argument("--blocked", action="store_true", help="ours reads and writes NCHWc8 where the plan allows")
    args = p.parse_args(argv)
    budget = args.budget or (0.3 if args.quick else 1.0)
    rng = np.random.default_rng(0)
    rows, records = [], []
    peak = peak_gflops_per_core()
    for name, (c, h, w_), oc, k, stride, group, act in LAYERS:
        if (args.quick and name not in QUICK) or args.only not in name:
            continue
        pad = k // 2
        x = rng.standard_normal((1, c, h, w_), dtype=np.float32)
        w = rng.standard_normal((oc, c // group, k, k), dtype=np.float32) / np.float32(np.sqrt(c // group * k * k))
        b = rng.standard_normal(oc, dtype=np.float32)
        ours_act = {"relu6": "clip", "relu": "relu", "silu": "silu"}.get(act, "none")
        geo = {"strides": (stride, stride), "pads": (pad,) * 4, "group": group}
        lay = {"in_layout": "nchw", "out_layout": "nchw"}
        if args.blocked:
            for il in ("nchwc8", "nchw"):
                if core.conv_layout_ok(w.shape, in_layout=il, out_layout="nchwc8", **geo):
                    lay = {"in_layout": il, "out_layout": "nchwc8"}
                    break
        conv = core.Conv2d(w, b, act=ours_act, act_alpha=0.0, act_beta=6.0, **geo, **lay)
        model = conv_model(w, b, x.shape, stride, pad, group, act)
        xo = to_nchwc8(x) if lay["in_layout"] == "nchwc8" else x
        out = np.empty(conv.output_shape(xo.shape), np.float32)
        oh, ow = out.shape[2:4]
        flops = 2.0 * oc * oh * ow * (c // group) * k * k
        for threads in (1, 2):
            sess = ort_session(model, threads)
            feed = {"x": x}
            ref = sess.run(None, feed)[0]
            got = conv.run(xo, out=out, threads=threads)
            got = from_nchwc8(got, oc) if lay["out_layout"] == "nchwc8" else got
            np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)
            ours_ms, ort_ms = best_pair_ms(partial(conv.run, xo, out=out, threads=threads),
                                           partial(sess.run, None, feed), budget)
            gflops = flops / (ours_ms * 1e-3) / 1e9
            pct = 100.0 * gflops / (peak * threads)
            speed = ort_ms / ours_ms
            rows.append([name, conv.path + (" c8" if lay["out_layout"] == "nchwc8" else ""), threads, fmt(ours_ms), fmt(ort_ms), fmt_ratio(speed), fmt(gflops),
                         f"{pct:.0f}%"])
            records.append({"layer": name, "path": conv.path, "threads": threads, "ours_ms": ours_ms,
                            "ort_ms": ort_ms, "speed_vs_ort": speed, "gflops": gflops, "pct_peak": pct})
    table(f"Conv layers ops_native ({core.isa()}) vs ONNX Runtime {ort.__version__}",
          ["layer", "path", "threads", "ours ms", "ORT ms", "speed (ORT/ours)", "GFLOP/s", "%peak"], rows,
          caption=f"best run of alternating blocks; %peak vs {peak:.0f} GFLOP/s per core ({core.isa()} FMA loop)")
    result = {"isa": core.isa(), "peak_gflops_per_core": peak, "blocked": args.blocked, "conv": records}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
