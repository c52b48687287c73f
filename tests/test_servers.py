"""The throwaway servers the fixtures fall back to really start, answer and stop."""

from __future__ import annotations

import pytest

from tests.servers import PostgresProcess, RedisProcess, postgres_answers, redis_answers


def test_throwaway_redis_starts_and_stops() -> None:
    with RedisProcess() as server:
        assert redis_answers(server.url)
        server.stop()
        assert not redis_answers(server.url)
        server.start()
        assert redis_answers(server.url)


@pytest.mark.slow
def test_throwaway_postgres_starts_and_stops() -> None:
    with PostgresProcess() as server:
        assert postgres_answers(server.dsn)
        server.stop()
        assert not postgres_answers(server.dsn)
