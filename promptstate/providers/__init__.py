"""Model providers: the seam (:class:`Provider`) and the bundled implementations."""

from promptstate.providers.base import Chunk, Completion, Provider
from promptstate.providers.mock import MockProvider

__all__ = ["Chunk", "Completion", "MockProvider", "Provider"]
