"""Detection: the model file, the compiled scorer, path contributions and the anomaly score."""

from engine.detect.model import Model, ModelFileError, default_model_path, load_model, save_model

__all__ = ["Model", "ModelFileError", "default_model_path", "load_model", "save_model"]
