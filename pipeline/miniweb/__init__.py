"""The mini-web: a generated sample web (archives, images, eval sets, ground truth) served on 127.0.0.1."""
from pipeline.miniweb.generate import MiniWeb, generate_miniweb, serve_miniweb

__all__ = ["MiniWeb", "generate_miniweb", "serve_miniweb"]
