"""ONNX backend node conformance of the ops_native executor.

Every node test case the installed ``onnx`` package generates (``collect_testcases``) whose ops are all in
``ops_native.supported_ops()`` runs through InferenceSession and must match the expected outputs with the
case's own rtol/atol (the ONNX backend runner's defaults: rtol 1e-3, atol 1e-7) and dtype. Cases of a
claimed op that fail on purpose are listed in EXCLUDED with the reason.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import ops_native

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from onnx.backend.test.case.node import collect_testcases

    _ALL_CASES = collect_testcases(None)

# case name -> why it is not expected to pass
EXCLUDED: dict[str, str] = {
    "test_batchnorm_example_training_mode": "training mode (batch statistics, random dropout masks) is not an inference feature",
    "test_batchnorm_epsilon_training_mode": "training mode (batch statistics, random dropout masks) is not an inference feature",
    "test_cast_FLOAT_to_BFLOAT16": "Cast with element type bfloat16: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_BFLOAT16_to_FLOAT": "Cast with element type bfloat16: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT_to_FLOAT8E4M3FN": "Cast with element type float8_e4m3fn: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT16_to_FLOAT8E4M3FN": "Cast with element type float8_e4m3fn: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT_to_FLOAT8E4M3FNUZ": "Cast with element type float8_e4m3fnuz: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT16_to_FLOAT8E4M3FNUZ": "Cast with element type float8_e4m3fnuz: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT8E4M3FN_to_FLOAT": "Cast with element type float8_e4m3fn: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT8E4M3FN_to_FLOAT16": "Cast with element type float8_e4m3fn: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT8E4M3FNUZ_to_FLOAT": "Cast with element type float8_e4m3fnuz: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT8E4M3FNUZ_to_FLOAT16": "Cast with element type float8_e4m3fnuz: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT_to_FLOAT8E5M2": "Cast with element type float8_e5m2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT16_to_FLOAT8E5M2": "Cast with element type float8_e5m2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT_to_FLOAT8E5M2FNUZ": "Cast with element type float8_e5m2fnuz: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT16_to_FLOAT8E5M2FNUZ": "Cast with element type float8_e5m2fnuz: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT8E5M2_to_FLOAT": "Cast with element type float8_e5m2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT8E5M2_to_FLOAT16": "Cast with element type float8_e5m2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT8E5M2FNUZ_to_FLOAT": "Cast with element type float8_e5m2fnuz: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT8E5M2FNUZ_to_FLOAT16": "Cast with element type float8_e5m2fnuz: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT_to_UINT4": "Cast with element type uint4: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT16_to_UINT4": "Cast with element type uint4: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT_to_INT4": "Cast with element type int4: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT16_to_INT4": "Cast with element type int4: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_UINT4_to_FLOAT": "Cast with element type uint4: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_UINT4_to_FLOAT16": "Cast with element type uint4: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_UINT4_to_UINT8": "Cast with element type uint4: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_INT4_to_FLOAT": "Cast with element type int4: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_INT4_to_FLOAT16": "Cast with element type int4: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_INT4_to_INT8": "Cast with element type int4: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT4E2M1_to_FLOAT": "Cast with element type float4_e2m1fn: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT4E2M1_to_FLOAT16": "Cast with element type float4_e2m1fn: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT_to_FLOAT4E2M1": "Cast with element type float4_e2m1fn: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT16_to_FLOAT4E2M1": "Cast with element type float4_e2m1fn: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT_to_UINT2": "Cast with element type uint2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT16_to_UINT2": "Cast with element type uint2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT_to_INT2": "Cast with element type int2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_FLOAT16_to_INT2": "Cast with element type int2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_UINT2_to_FLOAT": "Cast with element type uint2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_UINT2_to_FLOAT16": "Cast with element type uint2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_UINT2_to_UINT8": "Cast with element type uint2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_INT2_to_FLOAT": "Cast with element type int2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_INT2_to_FLOAT16": "Cast with element type int2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_INT2_to_INT8": "Cast with element type int2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_no_saturate_FLOAT_to_FLOAT8E4M3FN": "Cast with element type float8_e4m3fn: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_no_saturate_FLOAT_to_FLOAT8E4M3FNUZ": "Cast with element type float8_e4m3fnuz: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_no_saturate_FLOAT_to_FLOAT8E5M2": "Cast with element type float8_e5m2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_no_saturate_FLOAT_to_FLOAT8E5M2FNUZ": "Cast with element type float8_e5m2fnuz: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_no_saturate_FLOAT16_to_FLOAT8E4M3FN": "Cast with element type float8_e4m3fn: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_no_saturate_FLOAT16_to_FLOAT8E4M3FNUZ": "Cast with element type float8_e4m3fnuz: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_no_saturate_FLOAT16_to_FLOAT8E5M2": "Cast with element type float8_e5m2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_no_saturate_FLOAT16_to_FLOAT8E5M2FNUZ": "Cast with element type float8_e5m2fnuz: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_e8m0_FLOAT_to_FLOAT8E8M0": "Cast with element type float8_e8m0fnu: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_e8m0_FLOAT16_to_FLOAT8E8M0": "Cast with element type float8_e8m0fnu: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_e8m0_FLOAT8E8M0_to_FLOAT": "Cast with element type float8_e8m0fnu: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_cast_e8m0_FLOAT8E8M0_to_FLOAT16": "Cast with element type float8_e8m0fnu: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT_to_BFLOAT16_expanded": "Cast with element type bfloat16: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_BFLOAT16_to_FLOAT_expanded": "Cast with element type bfloat16: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT_to_FLOAT8E4M3FN_expanded": "Cast with element type float8_e4m3fn: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT16_to_FLOAT8E4M3FN_expanded": "Cast with element type float8_e4m3fn: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT_to_FLOAT8E4M3FNUZ_expanded": "Cast with element type float8_e4m3fnuz: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT16_to_FLOAT8E4M3FNUZ_expanded": "Cast with element type float8_e4m3fnuz: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT8E4M3FN_to_FLOAT_expanded": "Cast with element type float8_e4m3fn: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT8E4M3FN_to_FLOAT16_expanded": "Cast with element type float8_e4m3fn: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT8E4M3FNUZ_to_FLOAT_expanded": "Cast with element type float8_e4m3fnuz: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT8E4M3FNUZ_to_FLOAT16_expanded": "Cast with element type float8_e4m3fnuz: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT_to_FLOAT8E5M2_expanded": "Cast with element type float8_e5m2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT16_to_FLOAT8E5M2_expanded": "Cast with element type float8_e5m2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT_to_FLOAT8E5M2FNUZ_expanded": "Cast with element type float8_e5m2fnuz: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT16_to_FLOAT8E5M2FNUZ_expanded": "Cast with element type float8_e5m2fnuz: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT8E5M2_to_FLOAT_expanded": "Cast with element type float8_e5m2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT8E5M2_to_FLOAT16_expanded": "Cast with element type float8_e5m2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT8E5M2FNUZ_to_FLOAT_expanded": "Cast with element type float8_e5m2fnuz: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT8E5M2FNUZ_to_FLOAT16_expanded": "Cast with element type float8_e5m2fnuz: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT_to_UINT4_expanded": "Cast with element type uint4: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT16_to_UINT4_expanded": "Cast with element type uint4: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT_to_INT4_expanded": "Cast with element type int4: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT16_to_INT4_expanded": "Cast with element type int4: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_UINT4_to_FLOAT_expanded": "Cast with element type uint4: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_UINT4_to_FLOAT16_expanded": "Cast with element type uint4: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_UINT4_to_UINT8_expanded": "Cast with element type uint4: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_INT4_to_FLOAT_expanded": "Cast with element type int4: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_INT4_to_FLOAT16_expanded": "Cast with element type int4: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_INT4_to_INT8_expanded": "Cast with element type int4: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT4E2M1_to_FLOAT_expanded": "Cast with element type float4_e2m1fn: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT4E2M1_to_FLOAT16_expanded": "Cast with element type float4_e2m1fn: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT_to_FLOAT4E2M1_expanded": "Cast with element type float4_e2m1fn: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT16_to_FLOAT4E2M1_expanded": "Cast with element type float4_e2m1fn: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT_to_UINT2_expanded": "Cast with element type uint2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT16_to_UINT2_expanded": "Cast with element type uint2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT_to_INT2_expanded": "Cast with element type int2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_FLOAT16_to_INT2_expanded": "Cast with element type int2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_UINT2_to_FLOAT_expanded": "Cast with element type uint2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_UINT2_to_FLOAT16_expanded": "Cast with element type uint2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_UINT2_to_UINT8_expanded": "Cast with element type uint2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_INT2_to_FLOAT_expanded": "Cast with element type int2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_INT2_to_FLOAT16_expanded": "Cast with element type int2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_INT2_to_INT8_expanded": "Cast with element type int2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_no_saturate_FLOAT_to_FLOAT8E4M3FN_expanded": "Cast with element type float8_e4m3fn: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_no_saturate_FLOAT_to_FLOAT8E4M3FNUZ_expanded": "Cast with element type float8_e4m3fnuz: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_no_saturate_FLOAT_to_FLOAT8E5M2_expanded": "Cast with element type float8_e5m2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_no_saturate_FLOAT_to_FLOAT8E5M2FNUZ_expanded": "Cast with element type float8_e5m2fnuz: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_no_saturate_FLOAT16_to_FLOAT8E4M3FN_expanded": "Cast with element type float8_e4m3fn: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_no_saturate_FLOAT16_to_FLOAT8E4M3FNUZ_expanded": "Cast with element type float8_e4m3fnuz: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_no_saturate_FLOAT16_to_FLOAT8E5M2_expanded": "Cast with element type float8_e5m2: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_castlike_no_saturate_FLOAT16_to_FLOAT8E5M2FNUZ_expanded": "Cast with element type float8_e5m2fnuz: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_dequantizelinear_e4m3fn": "float8 / 4-bit / 2-bit / float4 quantised type: quantised ops are uint8 / int8 (int32 for DequantizeLinear)",
    "test_dequantizelinear_e4m3fn_float16": "float8 input and float16 scale: quantised ops are uint8 / int8 (int32 for DequantizeLinear) with float32 scales",
    "test_dequantizelinear_e4m3fn_zero_point": "float8 / 4-bit / 2-bit / float4 quantised type: quantised ops are uint8 / int8 (int32 for DequantizeLinear)",
    "test_dequantizelinear_e5m2": "float8 / 4-bit / 2-bit / float4 quantised type: quantised ops are uint8 / int8 (int32 for DequantizeLinear)",
    "test_dequantizelinear_uint16": "16-bit quantised type: quantised ops are uint8 / int8 (int32 for DequantizeLinear)",
    "test_dequantizelinear_int16": "16-bit quantised type: quantised ops are uint8 / int8 (int32 for DequantizeLinear)",
    "test_dequantizelinear_uint4": "float8 / 4-bit / 2-bit / float4 quantised type: quantised ops are uint8 / int8 (int32 for DequantizeLinear)",
    "test_dequantizelinear_int4": "float8 / 4-bit / 2-bit / float4 quantised type: quantised ops are uint8 / int8 (int32 for DequantizeLinear)",
    "test_dequantizelinear_uint2": "float8 / 4-bit / 2-bit / float4 quantised type: quantised ops are uint8 / int8 (int32 for DequantizeLinear)",
    "test_dequantizelinear_int2": "float8 / 4-bit / 2-bit / float4 quantised type: quantised ops are uint8 / int8 (int32 for DequantizeLinear)",
    "test_dequantizelinear_float4e2m1": "float8 / 4-bit / 2-bit / float4 quantised type: quantised ops are uint8 / int8 (int32 for DequantizeLinear)",
    "test_dequantizelinear_blocked": "blocked quantisation (block_size): only per-tensor and per-axis scales are supported",
    "test_qlinearmatmul_2D_uint8_float16": "float16 scales: quantised ops take float32 scales only",
    "test_qlinearmatmul_3D_uint8_float16": "float16 scales: quantised ops take float32 scales only",
    "test_qlinearmatmul_2D_int8_float16": "float16 scales: quantised ops take float32 scales only",
    "test_qlinearmatmul_3D_int8_float16": "float16 scales: quantised ops take float32 scales only",
    "test_quantizelinear_e4m3fn": "float8 / 4-bit / 2-bit / float4 quantised type: quantised ops are uint8 / int8 (int32 for DequantizeLinear)",
    "test_quantizelinear_e5m2": "float8 / 4-bit / 2-bit / float4 quantised type: quantised ops are uint8 / int8 (int32 for DequantizeLinear)",
    "test_quantizelinear_uint16": "16-bit quantised type: quantised ops are uint8 / int8 (int32 for DequantizeLinear)",
    "test_quantizelinear_int16": "16-bit quantised type: quantised ops are uint8 / int8 (int32 for DequantizeLinear)",
    "test_quantizelinear_uint4": "float8 / 4-bit / 2-bit / float4 quantised type: quantised ops are uint8 / int8 (int32 for DequantizeLinear)",
    "test_quantizelinear_int4": "float8 / 4-bit / 2-bit / float4 quantised type: quantised ops are uint8 / int8 (int32 for DequantizeLinear)",
    "test_quantizelinear_uint2": "float8 / 4-bit / 2-bit / float4 quantised type: quantised ops are uint8 / int8 (int32 for DequantizeLinear)",
    "test_quantizelinear_int2": "float8 / 4-bit / 2-bit / float4 quantised type: quantised ops are uint8 / int8 (int32 for DequantizeLinear)",
    "test_quantizelinear_float4e2m1": "float8 / 4-bit / 2-bit / float4 quantised type: quantised ops are uint8 / int8 (int32 for DequantizeLinear)",
    "test_quantizelinear_blocked_asymmetric": "blocked quantisation (block_size): only per-tensor and per-axis scales are supported",
    "test_quantizelinear_blocked_symmetric": "blocked quantisation (block_size): only per-tensor and per-axis scales are supported",
    "test_convtranspose_3d": "3-D ConvTranspose: the native kernel is 2-D (1-D as H=1) only",
    "test_training_dropout_default": "training mode (batch statistics, random dropout masks) is not an inference feature",
    "test_training_dropout_default_mask": "training mode (batch statistics, random dropout masks) is not an inference feature",
    "test_training_dropout": "training mode (batch statistics, random dropout masks) is not an inference feature",
    "test_training_dropout_mask": "training mode (batch statistics, random dropout masks) is not an inference feature",
    "test_training_dropout_zero_ratio": "training mode (batch statistics, random dropout masks) is not an inference feature",
    "test_training_dropout_zero_ratio_mask": "training mode (batch statistics, random dropout masks) is not an inference feature",
    "test_maxpool_with_argmax_2d_precomputed_pads": "MaxPool Indices (argmax) output is not implemented",
    "test_maxpool_with_argmax_2d_precomputed_strides": "MaxPool Indices (argmax) output is not implemented",
    "test_resize_tf_crop_and_resize": "Resize tf_crop_and_resize (ROI input) is not implemented",
    "test_resize_tf_crop_and_resize_extrapolation_value": "Resize tf_crop_and_resize (ROI input) is not implemented",
    "test_resize_downsample_scales_linear_antialias": "Resize antialias=1 is not implemented",
    "test_resize_downsample_sizes_linear_antialias": "Resize antialias=1 is not implemented",
    "test_resize_downsample_scales_cubic_antialias": "Resize antialias=1 is not implemented",
    "test_resize_downsample_sizes_cubic_antialias": "Resize antialias=1 is not implemented",
    "test_resize_tf_crop_and_resize_axes_2_3": "Resize tf_crop_and_resize (ROI input) is not implemented",
    "test_resize_tf_crop_and_resize_axes_3_2": "Resize tf_crop_and_resize (ROI input) is not implemented",
    "test_identity_sequence": "sequence / optional values are not tensors: not supported",
    "test_identity_opt": "sequence / optional values are not tensors: not supported",
    "test_einsum_batch_matmul_bfloat16": "Einsum on bfloat16: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_einsum_sum_bfloat16": "Einsum on bfloat16: float8/float4/int4/int2/uint2/bfloat16 are not supported",
    "test_scan_sum": "Scan-8 (batch axis, sequence_lens input) is not supported; Scan from opset 9 is",
    "test_if_seq": "sequence / optional values are not tensors: not supported (a branch builds a sequence)",
    "test_if_opt": "sequence / optional values are not tensors: not supported (a branch builds an optional)",
    "test_loop13_seq": "sequence / optional values are not tensors: not supported (the body carries a sequence)",
    "test_loop16_seq_none": "sequence / optional values are not tensors: not supported (the body carries an optional)",
    "test_range_bfloat16_type_positive_delta_expanded": "Cast with element type bfloat16: float8/float4/int4/int2/uint2/bfloat16 are not supported",
}


def _case_ops(case) -> set[str]:  # noqa: ANN001 - onnx TestCase
    ops = set()
    for n in case.model.graph.node:
        ops.add(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}")
    return ops


def _select() -> list:
    supported = set(ops_native.supported_ops())
    return [c for c in _ALL_CASES if c.kind == "node" and _case_ops(c) <= supported]


CASES = _select()
_RESULTS: dict[str, bool] = {}


def _to_array(x: object) -> np.ndarray:
    if isinstance(x, onnx.TensorProto):
        return numpy_helper.to_array(x)
    return np.asarray(x)


def run_case(case) -> None:  # noqa: ANN001 - onnx TestCase
    """Run one backend case through InferenceSession; raise AssertionError on a mismatch."""
    sess = ops_native.InferenceSession(case.model, threads=1)
    names = [i.name for i in sess.get_inputs()]
    for inputs, expected in case.data_sets:
        feeds = {n: _to_array(x) for n, x in zip(names, inputs)}
        got = sess.run(None, feeds)
        assert len(got) == len(expected), f"{len(got)} outputs, expected {len(expected)}"
        for k, (g, e) in enumerate(zip(got, expected)):
            e = _to_array(e)
            assert g.dtype == e.dtype, f"output {k}: dtype {g.dtype}, expected {e.dtype}"
            assert g.shape == e.shape, f"output {k}: shape {g.shape}, expected {e.shape}"
            if e.dtype.kind in "fc":
                np.testing.assert_allclose(g, e, rtol=case.rtol, atol=case.atol, err_msg=f"output {k}")
            else:
                np.testing.assert_array_equal(g, e, err_msg=f"output {k}")


RUN_CASES = [c for c in CASES if c.name not in EXCLUDED]


@pytest.mark.parametrize("case", RUN_CASES, ids=[c.name for c in RUN_CASES])
def test_node_case_matches_onnx_expected_outputs(case) -> None:  # noqa: ANN001
    ok = False
    try:
        run_case(case)
        ok = True
    finally:
        _RESULTS[case.name] = ok


def test_every_excluded_case_is_still_refused_or_wrong() -> None:
    """Exclusions are not skips: each is run and must still fail (unsupported feature, clear error), so an
    exclusion that is no longer needed is noticed and the list stays honest."""
    stale = []
    for case in CASES:
        if case.name not in EXCLUDED:
            continue
        try:
            run_case(case)
        except Exception:  # noqa: BLE001 - refusing or mismatching is what an exclusion documents
            continue
        stale.append(case.name)
    assert not stale, f"these excluded cases now pass; remove them from EXCLUDED: {stale}"


def test_conformance_summary_counts_selected_cases(capsys: pytest.CaptureFixture) -> None:
    """Prints 'conformance: N/M cases passed' over the cases this session ran (runs last in this file)."""
    assert len(CASES) > 300, f"only {len(CASES)} backend cases selected"
    ran = len(_RESULTS)
    passed = sum(_RESULTS.values())
    with capsys.disabled():
        print(f"\nconformance: {passed}/{ran} cases passed ({len(CASES)} selected, {len(EXCLUDED)} excluded, "
              f"{len(_ALL_CASES)} generated)")
    assert passed == ran
