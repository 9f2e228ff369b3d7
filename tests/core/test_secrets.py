"""Secrets never reach an error message, a log line, a cache or an executed notebook: the OpenAI judge
against local servers that echo the key (HTTP 401), answer invalid JSON, or hang."""
from __future__ import annotations

import logging
import re
import time

import pytest
from misbehaving_endpoint import KEY, Endpoint

from mfnb.core.secrets import redact, register_value
from mfnb.judges import CachedJudge, JudgeError, JudgeUnavailableError, OpenAIJudge


@pytest.fixture
def endpoint(request, monkeypatch):
    monkeypatch.setenv("MFNB_SECRETS_TEST_KEY", KEY)
    server = Endpoint(request.param)
    yield server
    server.close()


def judge(url, **kwargs):
    kwargs = {"max_retries": 0, "backoff": 0.0, "progress": False, "concurrency": 1, **kwargs}
    return OpenAIJudge("judge-model", base_url=url, api_key_env="MFNB_SECRETS_TEST_KEY", **kwargs)


def test_redact_masks_known_values_and_key_like_tokens(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "plain-value-without-prefix-42")
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok_0123456789abcdef")
    register_value("registered-secret-value")
    text = ("auth Bearer abc.def-ghi, key sk-live-0123456789abcdefXYZ, plain-value-without-prefix-42, "
            "tok_0123456789abcdef, hf_ABCDEFGHIJKLMNOPQRST and registered-secret-value; task-manager sk-learn")
    out = redact(text)
    for secret in ("abc.def-ghi", "sk-live-0123456789abcdefXYZ", "plain-value-without-prefix-42",
                   "tok_0123456789abcdef", "hf_ABCDEFGHIJKLMNOPQRST", "registered-secret-value"):
        assert secret not in out
    assert out.startswith("auth Bearer ***, key sk-***, ***, ***, hf_*** and ***;")
    assert out.endswith("task-manager sk-learn")  # ordinary words stay
    monkeypatch.setenv("SHORT_TOKEN", "yes")
    assert redact("yes, 1 2 3") == "yes, 1 2 3"  # values too short to be keys are not masked


@pytest.mark.parametrize("endpoint", ["echo401"], indirect=True)
def test_key_echoed_on_401_never_reaches_message_log_or_cache(endpoint, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "verdicts.sqlite"
    cached = CachedJudge(judge(endpoint.url), path)
    with pytest.raises(JudgeError) as err:
        cached.compare(["q"], ["good"], ["meh"])
    message = str(err.value)
    assert "refused the request: HTTP 401" in message and endpoint.url in message and "judge-model" in message
    assert "Incorrect API key provided: Bearer ***" in message
    assert KEY not in message and KEY not in repr(err.value) and err.value.__cause__ is None
    assert KEY not in caplog.text
    cached.close()
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert blob and KEY.encode() not in blob


@pytest.mark.parametrize("endpoint", ["echo500"], indirect=True)
def test_key_echoed_by_a_failing_endpoint_is_masked_after_retries(endpoint):
    with pytest.raises(JudgeUnavailableError) as err:
        judge(endpoint.url, max_retries=2).compare(["q"], ["good"], ["meh"])
    # both orders of the pair are asked concurrently, each tried 1 + max_retries times
    assert endpoint.requests == 2 * 3 and "after 3 attempt(s)" in str(err.value)
    assert KEY not in str(err.value) and "Bearer ***" in str(err.value)


@pytest.mark.parametrize("endpoint", ["invalid_json"], indirect=True)
def test_invalid_json_is_retried_then_names_the_endpoint(endpoint):
    j = judge(endpoint.url, max_retries=2)
    with pytest.raises(JudgeUnavailableError) as err:
        j.compare(["q"], ["good"], ["meh"])
    message = str(err.value)
    assert endpoint.requests == 2 * 3 and j.stats.retries == 2 * 2  # both orders, concurrently
    assert re.search(rf"{re.escape(endpoint.url)} \(model 'judge-model'\) gave no usable answer after 3 attempt",
                     message)
    assert "not valid JSON" in message and KEY not in message


@pytest.mark.parametrize("endpoint", ["hang"], indirect=True)
def test_total_wait_per_request_is_bounded_and_stated(endpoint):
    j = judge(endpoint.url, max_retries=5, timeout=0.3, max_wait_s=1.0, backoff=0.1)
    start = time.perf_counter()
    with pytest.raises(JudgeUnavailableError) as err:
        j.compare(["q"], ["good"], ["meh"])
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0  # one request of two (both orders) fails the batch; each is bounded by max_wait_s
    message = str(err.value)
    assert "within max_wait_s=1 s per request (timeout=0.3 s per attempt" in message
    assert "APITimeoutError" in message and endpoint.url in message
    with pytest.raises(ValueError, match="max_wait_s must be a number of seconds > 0"):
        judge(endpoint.url, max_wait_s=0)
