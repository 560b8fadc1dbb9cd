"""Inference: local generation (:mod:`.predict`, :mod:`.local`), requests to
OpenAI-compatible servers (:mod:`.endpoint`), execution-guided selection (:mod:`.select`) and an
OpenAI-compatible server for a finished run (:mod:`.serve`). Which of them a run uses is its
provider's choice (:mod:`tunebench.providers`)."""
