"""The base of every config class."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Base: unknown keys are errors, so a typo never silently falls back to a default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
