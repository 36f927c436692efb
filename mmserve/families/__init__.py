"""Registry of family handlers, keyed by the table's `family` field."""

from __future__ import annotations

from .audio import AudioHandler
from .base import FamilyHandler
from .embedding import EmbeddingHandler
from .omni import OmniHandler
from .text import TextHandler
from .vision import VisionLanguageHandler
from .vqa import VQAHandler

_REGISTRY: dict[str, FamilyHandler] = {}


def register(handler: FamilyHandler) -> FamilyHandler:
    """Add a handler; the last registration for a family wins."""
    _REGISTRY[handler.family] = handler
    return handler


def get_handler(family: str) -> FamilyHandler:
    """The handler of a family. Routes and the manager never branch on the family themselves."""
    if not _REGISTRY:
        _register_builtins()
    return _REGISTRY[family]


def _register_builtins() -> None:
    for handler in (
        TextHandler(),
        EmbeddingHandler(),
        VisionLanguageHandler(),
        VQAHandler(),
        AudioHandler(),
        OmniHandler(),
    ):
        register(handler)
