"""sdrt: a Stable Diffusion inference runtime on exported ONNX / TensorRT engines."""

from sdrt.errors import ConfigError, ModelFolderError, SdrtError

__version__ = "0.1.0"

__all__ = ["ConfigError", "ModelFolderError", "SdrtError", "__version__"]
