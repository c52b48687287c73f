"""Model providers: the seam (:class:`Provider`) and the bundled implementations."""

from promptstate.providers.base import Chunk, Completion, Provider

__all__ = ["Chunk", "Completion", "Provider"]
