"""A checkpoint behind a small HTTP API and a page to try it in a browser (standard library only)."""
from .server import MAX_BODY_BYTES, Predictor, make_server

__all__ = ["MAX_BODY_BYTES", "Predictor", "make_server"]
