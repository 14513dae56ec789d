"""A checkpoint behind an HTTP API (FastAPI under uvicorn, batching requests) and a page to try it."""
from .app import MAX_BODY_BYTES, ServeSettings, create_app
from .predictor import Predictor, load_predictor
from .server import ModelSource, ServerOptions, running, serve

__all__ = ["MAX_BODY_BYTES", "ModelSource", "Predictor", "ServeSettings", "ServerOptions", "create_app", "running",
           "load_predictor", "serve"]
