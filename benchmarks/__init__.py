"""Side-by-side measurements of edge-agent against ONNX Runtime and raw MQTT (not tests).

Run them all with ``python -m benchmarks`` (``--quick`` for smaller sizes, ``--json out.json`` to keep
the numbers), or a subset by name: ``python -m benchmarks transport pipeline``. Every figure is reported
beside a baseline measured in the same run, as a ratio, because absolute numbers on a shared 2-core
machine say little on their own.
"""
