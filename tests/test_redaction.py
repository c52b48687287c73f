"""promptstate.redaction: the one module that hides secrets, and the places that use it."""

from __future__ import annotations

import logging
import pickle

import pytest

from promptstate import AnthropicProvider, Message, OpenAIProvider, ProviderError, ValidationError
from promptstate.redaction import MASK, Secret, redact, scrub, url_secrets
from tests.providers.loopback import LoopbackServer, json_reply

# -- redact: URLs and DSNs --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@host:6379/0", "redis://:***@host:6379/0"),
        ("postgresql://me:hunter2@db/app", "postgresql://me:***@db/app"),
        ("postgresql://me:p%40ss@db/app", "postgresql://me:***@db/app"),
        ("redis:/:hunter2@host", "redis:/:***@host"),  # too malformed for urlsplit
        (
            "postgresql://db/app?user=me&password=hunter2",
            "postgresql://db/app?user=me&password=***",
        ),
        ("host=db user=me password=hunter2 dbname=app", "host=db user=me password=*** dbname=app"),
        ("host=db PWD = 'hunter 2' dbname=app", "host=db PWD = *** dbname=app"),
        ("redis://host:6379/0", "redis://host:6379/0"),  # nothing to hide
        ("sqlite:///relative/path.db", "sqlite:///relative/path.db"),
    ],
)
def test_redact_hides_a_password_wherever_it_is_written(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_redact_leaves_what_is_not_a_string_and_refuses_what_it_cannot_parse() -> None:
    assert redact(None) is None
    assert redact(42) == 42
    assert redact("http://[::1:hunter2@host/") == "<unparsable URL>"


# -- scrub and url_secrets: known values out of foreign text ----------------------------------


def test_url_secrets_gives_the_password_as_written_and_decoded() -> None:
    assert url_secrets("postgresql://me:hunter2@db/app") == ("hunter2",)
    assert url_secrets("postgresql://me:p%40ss@db/app") == ("p%40ss", "p@ss")
    assert url_secrets("postgresql://me@db/app") == ()
    assert url_secrets("redis://:@host") == ()
    assert url_secrets("http://[::1/") == ()


def test_scrub_hides_every_secret_given_longest_first() -> None:
    text = "auth failed for key sk-abc (prefix sk-a) via p@ss and p%40ss"
    scrubbed = scrub(text, "sk-a", Secret("sk-abc"), None, "", *url_secrets("x://u:p%40ss@h"))
    assert scrubbed == "auth failed for key *** (prefix ***) via *** and ***"
    assert scrub("nothing secret here") == "nothing secret here"


# -- Secret: a value that never shows itself ---------------------------------------------------


def test_a_secret_does_not_show_itself() -> None:
    secret = Secret("sk-hidden")
    for shown in (repr(secret), str(secret), f"{secret}", f"{secret!r}", repr([secret])):
        assert "sk-hidden" not in shown
        assert MASK in shown
    assert secret.reveal() == "sk-hidden"
    assert secret
    assert not Secret("")
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(secret)


# -- where it is used --------------------------------------------------------------------------

KEY = "sk-test-SECRET-0123456789abcdef"
PROXY_PASSWORD = "pr0xy-hunter2"


@pytest.mark.anyio
@pytest.mark.parametrize("cls", [OpenAIProvider, AnthropicProvider])
async def test_a_provider_error_echoing_the_key_and_proxy_password_shows_neither(
    cls: type[OpenAIProvider] | type[AnthropicProvider], caplog: pytest.LogCaptureFixture
) -> None:
    server = LoopbackServer()
    await server.start()
    base_url = server.url.replace("http://", f"http://proxy:{PROXY_PASSWORD}@")
    echo = {"error": {"message": f"bad key {KEY} for proxy:{PROXY_PASSWORD}", "type": "x"}}
    server.queue(json_reply(500, echo), json_reply(401, echo))
    provider = cls("m", api_key=KEY, base_url=base_url, max_retries=1)
    try:
        assert PROXY_PASSWORD not in repr(provider)
        keyword = cls("m", api_key=KEY, base_url=f"{server.url}/v1?password={PROXY_PASSWORD}")
        assert repr(keyword).endswith("/v1?password=***')")
        await keyword.aclose()
        with (
            caplog.at_level(logging.INFO, logger="promptstate"),
            pytest.raises(ProviderError) as info,
        ):
            await provider.complete([Message("user", "hi")])
    finally:
        await provider.aclose()
        await server.close()
    assert info.value.status_code == 401
    assert len(server.requests) == 2  # the 500 was retried, and its text logged
    shown = [str(info.value), *(r.getMessage() for r in caplog.records)]
    assert any("bad key ***" in text for text in shown[1:]), shown
    for text in shown:
        assert KEY not in text
        assert PROXY_PASSWORD not in text


def test_store_url_errors_hide_the_password() -> None:
    from promptstate import open_store

    with pytest.raises(ValidationError) as info:
        open_store("redis://:hunter2@localhost:6379/0?ttl=soon")
    assert "hunter2" not in str(info.value)
    assert "redis://:***@localhost:6379/0?ttl=soon" in str(info.value)


@pytest.mark.anyio
async def test_a_postgres_opening_error_hides_the_password_also_percent_decoded() -> None:
    pytest.importorskip("asyncpg")
    from promptstate import PostgresStore

    # asyncpg echoes a bad option's value decoded; here the value is the password itself.
    dsn = "postgresql://me:p%40ss-word@127.0.0.1:1/db?target_session_attrs=p%40ss-word"
    store = PostgresStore.from_dsn(dsn)
    with pytest.raises(ValidationError, match="target_session_attrs") as info:
        await store.count("k")
    await store.aclose()
    assert "p@ss-word" not in str(info.value)
    assert "p%40ss-word" not in str(info.value)
    assert "'***'" in str(info.value)
