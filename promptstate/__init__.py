"""promptstate: async conversation state for LLM applications.

Everything public is importable from here; see the API reference for each name.
"""

from promptstate.exceptions import (
    ClosedError,
    ConflictError,
    CorruptStateError,
    InvalidKeyError,
    NotFoundError,
    PromptPackError,
    PromptStateError,
    ProviderError,
    SessionBusyError,
    StoreUnavailableError,
    ValidationError,
)
from promptstate.serialization import SCHEMA_VERSION, decode_state, encode_state
from promptstate.stores import MemoryStore, Store, open_store
from promptstate.tokens import HeuristicTokenCounter, TokenCounter
from promptstate.types import Message, State, ToolCall, Usage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from promptstate.stores.redis import RedisStore

__version__ = "0.1.0"

__all__ = [
    "ClosedError",
    "ConflictError",
    "CorruptStateError",
    "HeuristicTokenCounter",
    "InvalidKeyError",
    "MemoryStore",
    "Message",
    "NotFoundError",
    "PromptPackError",
    "PromptStateError",
    "ProviderError",
    "RedisStore",
    "SCHEMA_VERSION",
    "SessionBusyError",
    "State",
    "Store",
    "StoreUnavailableError",
    "TokenCounter",
    "ToolCall",
    "Usage",
    "ValidationError",
    "__version__",
    "decode_state",
    "encode_state",
    "open_store",
]


def __getattr__(name: str) -> object:
    # Stores whose driver is an optional extra are imported on first use (PEP 562), so that
    # ``import promptstate`` works without them.
    if name == "RedisStore":
        from promptstate.stores.redis import RedisStore

        return RedisStore
    raise AttributeError(f"module 'promptstate' has no attribute {name!r}")
