"""Explain a Vision Transformer: where it attends, and what its embeddings learned.

* :func:`attention_rollout`, :func:`class_attention`, :func:`attention_maps`: per-image
  attention, captured with :func:`record_attention` (hooks live only inside the block).
* :func:`mean_attention_distance`: how far each head looks, per layer (ViT Fig. 7 right);
  :func:`window_attention_distance` the same inside a Swin's windows.
* :func:`filter_components`, :func:`pos_embed_similarity`: the embedding layers (Fig. 7 left, centre).
* :func:`explain_images`, :func:`attention_distance_figure`: PNGs and a self-contained HTML report;
  :func:`explain_reconstructions` the same for an MAE (what it redraws of masked images).
"""
from .attention import attention_maps, attention_rollout, class_attention, record_attention, rollout
from .distance import attention_distance, mean_attention_distance, patch_distances
from .embeddings import filter_components, pos_embed_similarity
from .pipeline import attention_distance_figure, explain_images, explain_reconstructions, model_figures
from .windows import window_attention_distance

__all__ = ["attention_distance", "attention_distance_figure", "attention_maps", "attention_rollout",
           "class_attention", "explain_images", "explain_reconstructions", "filter_components", "mean_attention_distance", "model_figures",
           "patch_distances", "pos_embed_similarity", "record_attention", "rollout", "window_attention_distance"]
