"""The redis-py releases some Redis tests need (imported only by tests that need redis-py)."""

from __future__ import annotations

import pytest

from promptstate.stores.redis import _old_cluster_client

__all__ = ["needs_cluster_redis_py"]

#: For the tests of what redis-py before 8.1 gets wrong on a Cluster (RedisStore warns of it;
#: see ``_CLUSTER_REDIS_PY``): skipped there, with the reason.
needs_cluster_redis_py = pytest.mark.skipif(
    _old_cluster_client(),
    reason="RedisStore's Cluster support needs redis-py >= 8.1 (older releases lose the "
    "connection of a command cancelled mid-send and do not ride out a failover; the store "
    "warns of it)",
)
