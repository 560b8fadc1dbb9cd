"""Providers as plug-ins: one module each (``local``, ``base``, ``openai``, ``endpoint``,
``ensemble``) behind the interface of :mod:`.registry`."""

from __future__ import annotations

from tunebench.providers.registry import MODULES, Provider, get_provider, provider_of

__all__ = ["MODULES", "Provider", "get_provider", "provider_of"]
