"""The trainable multi-label image classifier: data, training, calibration, evaluation,
ONNX export, serving backends and the on-disk model registry.

Modules that need torch (arch, train, export, torch_scorer) import it themselves; the serving
path (preprocess, card, onnx_scorer, registry, shadow, evaluate) runs without it.
"""
