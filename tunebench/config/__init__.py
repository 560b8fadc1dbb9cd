"""Configuration schemas: one experiment (:mod:`.experiment`) and a study of several
(:mod:`.study`), validated by pydantic with unknown keys refused; :mod:`.reference` renders
every key's documentation for ``tunebench config`` and the README."""

from __future__ import annotations

from tunebench.config.experiment import *  # noqa: F403
from tunebench.config.experiment import __all__ as _experiment_all

__all__ = list(_experiment_all)
