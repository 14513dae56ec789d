"""Fast inference on a CPU: precision, compilation and export behind one call each.

``prepare_for_inference(model, precision=...)`` returns a module that takes float32
images and returns float32 logits whatever runs inside; ``export`` writes ONNX or
TorchScript; ``OnnxClassifier`` runs an ONNX file with the same call signature.
"""
from .export import OnnxClassifier, export
from .prepare import InferenceModel, prepare_for_inference

__all__ = ["InferenceModel", "OnnxClassifier", "export", "prepare_for_inference"]
