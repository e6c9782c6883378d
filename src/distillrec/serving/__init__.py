"""Serving a student outside the pipeline: the release folder, its Python API and the HTTP service.

`distillrec.load(folder)` (recommender.py) reads a release folder (`release` stage) or a saved
student folder and needs nothing else of the pipeline: no params.yaml, DVC, teacher or language
model. With the ONNX backend it does not even import torch. `distillrec serve` (server.py) puts
the same object behind FastAPI with micro-batching (batcher.py).
"""
