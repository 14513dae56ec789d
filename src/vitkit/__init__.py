"""vitkit: Vision Transformers for image classification, from training to explanation."""
from .allocator import keep_freed_memory
from .errors import VitkitError
from .factory import create_model
from .inference import prepare_for_inference
from .models import count_params, get_model_spec, list_models, register_model
from .weights import load_checkpoint

__version__ = "0.1.0"
__all__ = ["VitkitError", "count_params", "create_model", "get_model_spec", "keep_freed_memory", "list_models",
           "load_checkpoint", "prepare_for_inference", "register_model", "__version__"]
