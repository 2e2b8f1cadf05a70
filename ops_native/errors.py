"""The errors ops_native raises to its users; every one is an OpsNativeError."""

from __future__ import annotations


class OpsNativeError(RuntimeError):
    """Base class of every error raised by ops_native's executor."""


class UnsupportedOpError(OpsNativeError):
    """The model uses an op (or op variant) the executor cannot run."""


class InvalidModelError(OpsNativeError):
    """The model cannot be loaded: malformed bytes, checker failure, missing initializer, bad attribute."""


class InvalidInputError(OpsNativeError):
    """run() got inputs that do not match the model: unknown/missing name, dtype, rank or fixed dim."""
