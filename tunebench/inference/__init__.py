"""Inference: predictions for a split (local LoRA, base model, or an OpenAI-compatible endpoint)
and an OpenAI-compatible server for a fine-tuned run (:mod:`tunebench.inference.serve`).

``predict`` is imported eagerly: the submodule of the same name would otherwise replace the
package attribute with the module the first time it is imported. (torch and transformers are
only imported when generation starts.)
"""

from __future__ import annotations

from tunebench.inference.predict import predict

__all__ = ["predict"]
