"""promptstate: async conversation state for LLM applications.

Everything public is importable from here; see the API reference for each name.
"""

import logging as _logging

from promptstate.backup import ImportResult, export_states, import_states
from promptstate.exceptions import (
    ClosedError,
    ConflictError,
    CorruptStateError,
    DecryptionError,
    GuardrailError,
    InvalidKeyError,
    LeaseLostError,
    NotFoundError,
    PromptPackError,
    PromptStateError,
    ProviderError,
    SessionBusyError,
    StoreAuthError,
    StoreUnavailableError,
    ValidationError,
)
from promptstate.locks import SupportsLease
from promptstate.pipeline import ExecutionContext, ExecutionResult, Pipeline
from promptstate.providers import (
    AnthropicProvider,
    Chunk,
    Completion,
    MockProvider,
    OpenAIProvider,
    Provider,
)
from promptstate.sdk import (
    Conversation,
    ConversationConfig,
    ConversationManager,
    PromptPack,
    Response,
    load_pack,
)
from promptstate.serialization import SCHEMA_VERSION, decode_state, encode_state
from promptstate.stores import (
    CachedStore,
    LeasingStore,
    MemoryStore,
    PostgresStore,
    SQLiteStore,
    Store,
    open_store,
)
from promptstate.tokens import HeuristicTokenCounter, TiktokenCounter, TokenCounter
from promptstate.tools import Tool, tool
from promptstate.truncation import (
    SlidingWindow,
    Summarize,
    TimeWindow,
    TokenBudget,
    truncate_messages,
)
from promptstate.types import (
    AudioPart,
    FilePart,
    ImagePart,
    Message,
    Part,
    ReasoningPart,
    SessionInfo,
    SessionPage,
    State,
    TextPart,
    ToolCall,
    Usage,
)
from promptstate.validators import Guardrails, Validator, ValidatorRegistry, Violation

TYPE_CHECKING = False
if TYPE_CHECKING:
    from promptstate.stores.encrypted import EncryptedStore
    from promptstate.stores.redis import RedisStore

__version__ = "0.1.0"

# The library's loggers are silent until the application configures logging (docs/logging.md).
_logging.getLogger("promptstate").addHandler(_logging.NullHandler())

__all__ = [
    "AnthropicProvider",
    "AudioPart",
    "CachedStore",
    "Chunk",
    "ClosedError",
    "Completion",
    "ConflictError",
    "Conversation",
    "ConversationConfig",
    "ConversationManager",
    "CorruptStateError",
    "DecryptionError",
    "EncryptedStore",
    "ExecutionContext",
    "ExecutionResult",
    "FilePart",
    "GuardrailError",
    "Guardrails",
    "HeuristicTokenCounter",
    "ImagePart",
    "ImportResult",
    "InvalidKeyError",
    "LeaseLostError",
    "LeasingStore",
    "MemoryStore",
    "Message",
    "MockProvider",
    "NotFoundError",
    "OpenAIProvider",
    "Part",
    "Pipeline",
    "PostgresStore",
    "PromptPack",
    "PromptPackError",
    "PromptStateError",
    "Provider",
    "ProviderError",
    "ReasoningPart",
    "RedisStore",
    "Response",
    "SCHEMA_VERSION",
    "SQLiteStore",
    "SessionBusyError",
    "SessionInfo",
    "SessionPage",
    "SlidingWindow",
    "State",
    "Store",
    "StoreAuthError",
    "StoreUnavailableError",
    "Summarize",
    "SupportsLease",
    "TextPart",
    "TiktokenCounter",
    "TimeWindow",
    "TokenBudget",
    "TokenCounter",
    "Tool",
    "ToolCall",
    "Usage",
    "ValidationError",
    "Validator",
    "ValidatorRegistry",
    "Violation",
    "__version__",
    "decode_state",
    "encode_state",
    "export_states",
    "import_states",
    "load_pack",
    "open_store",
    "tool",
    "truncate_messages",
]


def __getattr__(name: str) -> object:
    # Stores whose driver is an optional extra are imported on first use (PEP 562), so that
    # ``import promptstate`` works without them.
    if name == "RedisStore":
        from promptstate.stores.redis import RedisStore

        return RedisStore
    if name == "EncryptedStore":  # needs the cryptography package (promptstate[crypto])
        from promptstate.stores.encrypted import EncryptedStore

        return EncryptedStore
    raise AttributeError(f"module 'promptstate' has no attribute {name!r}")
