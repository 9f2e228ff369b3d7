"""LLM judge over an OpenAI-compatible endpoint: the papers' judging prompts, reading a verdict from the
answer's text or log-probabilities, a bounded stream of requests under request and token rate limits, retries
that honour Retry-After, and :class:`OpenAIJudge`."""
from __future__ import annotations

import email.utils
import json
import math
import os
import queue
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timezone
from typing import Any, Callable, Mapping, Sequence

from mfnb.core.progress import progress as progress_bar
from mfnb.core.secrets import redact, register_variable
from mfnb.judges.protocol import (JudgeError, JudgeUnavailableError, Outcome, PairwiseJudge, Triple, _check_nonneg,
                                  _digest)

# The papers' GPT-4 win-rate protocol (DPO, Rafailov et al. 2023, App. C.2; HbAT, Wang et al. 2024,
# Fig. 4, which states it uses the same prompts).  The question and the required two-line answer
# format are kept; the parser reads the last "<label>: A|B" line or a bare final "A"/"B".
_DIALOGUE = (
    "For the following query to a chatbot, which response is more helpful?\n\n"
    "Query: {prompt}\n\n"
    "Response A:\n{response_a}\n\n"
    "Response B:\n{response_b}\n\n"
    "FIRST provide a one-sentence comparison of the two responses and explain which you feel is more "
    "helpful. SECOND, on a new line, state only \"A\" or \"B\" to indicate which response is more "
    "helpful. Your response should use the format:\n"
    "Comparison: <one-sentence comparison and explanation>\n"
    "More helpful: <\"A\" or \"B\">"
)
_SUMMARY = (
    "Which of the following summaries does a better job of summarizing the most important points in "
    "the given forum post, without including unimportant or irrelevant details? A good summary is both "
    "precise and concise.\n\n"
    "Post:\n{prompt}\n\n"
    "Summary A:\n{response_a}\n\n"
    "Summary B:\n{response_b}\n\n"
    "FIRST provide a one-sentence comparison of the two summaries, explaining which you prefer and why. "
    "SECOND, on a new line, state only \"A\" or \"B\" to indicate your choice. Your response should use "
    "the format:\n"
    "Comparison: <one-sentence comparison and explanation>\n"
    "Preferred: <\"A\" or \"B\">"
)
#: Named judging prompts; "dpo"/"hbat" are the dialogue (helpfulness) prompt, *_summary the TL;DR one.
TEMPLATES: dict[str, str] = {
    "dpo": _DIALOGUE,
    "hbat": _DIALOGUE,
    "dpo_summary": _SUMMARY,
    "hbat_summary": _SUMMARY,
}

_LABELLED = re.compile(r"(?:more\s+helpful|preferred|choice|answer|verdict|winner)\s*[:\-]\s*[\W_]*([AB])\b",
                       re.IGNORECASE)
_FIELD = re.compile(r"\{(prompt|response_a|response_b)\}")
_BARE = re.compile(r"^[\W_]*(?:response|summary|option)?\s*([AB])[\W_]*$", re.IGNORECASE)


def parse_verdict(text: str | None) -> str | None:
    """"A", "B" or None from a judge's answer: the last labelled verdict line ("More helpful: A",
    "Preferred: B", ...) or else a last non-empty line that is only the letter (quotes/markdown ok)."""
    if not text:
        return None
    hits = [m.group(1) for m in _LABELLED.finditer(text)]
    hits = [h for h in hits if h in ("A", "B")]  # the letter itself must be upper-case
    if hits:
        return hits[-1]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if lines:
        m = _BARE.match(lines[-1])
        if m and m.group(1) in ("A", "B"):
            return m.group(1)
    return None


# Letter-first variants of the papers' prompts for verdicts read from log-probabilities (as alpaca_eval's
# logprob annotators do): the same question, answered by the letter alone, so the first answer token is it.
_LETTER_DIALOGUE = _DIALOGUE.split("FIRST provide")[0] + (
    "Which response is more helpful? Answer with only the letter \"A\" or \"B\".")
_LETTER_SUMMARY = _SUMMARY.split("FIRST provide")[0] + (
    "Which summary is better? Answer with only the letter \"A\" or \"B\".")
#: The same prompts for ``verdict="logprobs"``.
LETTER_TEMPLATES: dict[str, str] = {
    "dpo": _LETTER_DIALOGUE,
    "hbat": _LETTER_DIALOGUE,
    "dpo_summary": _LETTER_SUMMARY,
    "hbat_summary": _LETTER_SUMMARY,
}
_TOKEN_JUNK = " \t\n\"'*`().:_"


@dataclass
class Answer:
    """One judge request's answer: its text, the letter read from it, how, and P(letter A) when logprobs came."""

    text: str | None
    letter: str | None = None
    source: str | None = None          # "logprobs", "text" or None (unparsed)
    p_a: float | None = None           # P("A") / (P("A") + P("B")) of the first answer token
    prompt_tokens: int = 0
    completion_tokens: int = 0


def letter_probability(top: Sequence[tuple[str, float]]) -> float | None:
    """P(A) / (P(A) + P(B)) over the first answer token's top log-probabilities (tokens "A", " A", '"A', ... count
    for A), or None when neither letter is among them."""
    mass = {"A": 0.0, "B": 0.0}
    for token, logprob in top:
        letter = token.strip(_TOKEN_JUNK)
        if letter in mass and logprob is not None and math.isfinite(logprob):
            mass[letter] += math.exp(logprob)
    total = mass["A"] + mass["B"]
    return mass["A"] / total if total > 0 else None


class _RateLimiter:
    """At most ``per_minute`` units (requests, or tokens) started per minute, spread evenly, across threads: a start
    waits until the units started before it have had their share of the minute.  ``correct`` settles an estimate
    once the true count is known (a request's estimated tokens against the usage its answer reports)."""

    def __init__(self, per_minute: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.seconds_per_unit = 60.0 / per_minute if per_minute else 0.0
        self._clock, self._sleep = clock, sleep
        self._next = -math.inf
        self._lock = threading.Lock()

    def wait(self, units: float = 1.0) -> float:
        """Block until ``units`` may start; the seconds waited."""
        if not self.seconds_per_unit:
            return 0.0
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + units * self.seconds_per_unit
        if start > now:
            self._sleep(start - now)
        return start - now

    def correct(self, units: float) -> None:
        """Charge ``units`` more (or, negative, give them back) for a start already made."""
        if self.seconds_per_unit:
            with self._lock:
                self._next += units * self.seconds_per_unit


#: statuses whose Retry-After the judge honours (too many requests, service unavailable)
_RETRY_AFTER_STATUSES = (429, 503)


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The wait an endpoint asks for: ``retry-after-ms``, or ``Retry-After`` in seconds or as an HTTP date (compared
    with ``now``, seconds since the epoch); None when it names none.  Never negative."""
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        try:
            seconds = float(value) * scale
        except (TypeError, ValueError):
            continue
        if math.isfinite(seconds):
            return max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(headers.get("retry-after"))
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": UTC by RFC 5322
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _asked_wait(err: Exception) -> float | None:
    """Retry-After of a 429/503 answer, else None (the judge's own backoff applies)."""
    if getattr(err, "status_code", None) not in _RETRY_AFTER_STATUSES:
        return None
    return retry_after_seconds(getattr(getattr(err, "response", None), "headers", None) or {})


class OpenAIJudge(PairwiseJudge):
    """An LLM judge behind any OpenAI-compatible chat-completions endpoint.

    Each pair is asked in both orders (a as "A", then b as "A"): agreeing answers give win/lose,
    disagreeing ones a tie, an unparseable answer FAILED (never a loss).  ``verdict="text"`` parses the
    papers' two-line answer; ``verdict="logprobs"`` asks the same question answered by the letter alone
    (:data:`LETTER_TEMPLATES`) and reads the first answer token's log-probabilities (P(A) vs P(B), as
    alpaca_eval's logprob annotators do), falling back to the answer's text when the endpoint returns no
    logprobs; :meth:`examine` reports each order's letter, how it was read and the preference probability.

    Requests stream ``concurrency`` at a time: a new one starts as soon as one finishes, so a slow answer
    holds up no other.  At most ``rate_limit`` requests and ``tokens_per_minute`` tokens start per minute,
    each spread evenly (a request's tokens are estimated before it is sent, as its characters / 4 plus
    ``max_tokens``, and corrected by the usage its answer reports).  ``batch_size`` pairs reach a cache
    together, as soon as all of them are judged.  API/connection errors, timeouts, 5xx/429 answers and
    bodies that are not JSON are retried ``max_retries`` times, waiting ``backoff * 2**attempt`` seconds,
    or as long as a 429/503 answer's ``Retry-After`` asks; one request waits at most ``max_wait_s`` over
    all its attempts (waits for the judge's own rate limits aside).  A 429/503 that says when to come back
    (Retry-After) is pacing, not a failure: it is not one of the ``max_retries``, and ``max_wait_s`` bounds
    it.  When the endpoint stays down, no new
    pair is started, the pairs whose answers arrived are kept (a cached judge stores them), the rest are
    not invented, and :class:`JudgeUnavailableError` names the endpoint and how many were kept: a rerun
    asks only for the missing ones.  Rate limits, ``concurrency`` and ``batch_size`` change no verdict, so
    they are not part of the judge's identity (its cache key).

    Tokens are counted from each answer's ``usage`` and priced with ``input_price`` / ``output_price``
    (dollars per million tokens) into ``stats.dollars``; with ``progress``, a call of more than one batch
    shows a bar with the calls, tokens and dollars so far.  The API key is read from ``$api_key_env`` when
    the first request is sent, and is never part of the judge's repr, identity, cache or results; every
    message the judge raises passes through :func:`mfnb.core.secrets.redact`.  ``prompt_template``: a key
    of :data:`TEMPLATES` or a custom string with ``{prompt}``, ``{response_a}`` and ``{response_b}``.
    ``cost_per_call`` is per request.
    """

    batch_size = 16
    progress = True

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 prompt_template: str = "dpo", max_retries: int = 5, backoff: float = 1.0,
                 temperature: float = 0.0, timeout: float = 60.0, cost_per_call: float = 0.0,
                 max_tokens: int | None = None, concurrency: int = 4, batch_size: int | None = None,
                 seed: int = 0, progress: bool | None = None, max_wait_s: float = 120.0,
                 verdict: str = "text", top_logprobs: int = 5, rate_limit: float | None = None,
                 input_price: float = 0.0, output_price: float = 0.0,
                 tokens_per_minute: float | None = None):
        super().__init__(seed=seed, cost_per_call=cost_per_call, batch_size=batch_size, progress=progress)
        if not isinstance(model, str) or not model:
            raise ValueError(f"OpenAIJudge: model must be a non-empty string, got {model!r}")
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        if not isinstance(api_key_env, str) or not api_key_env:
            raise ValueError(f"OpenAIJudge: api_key_env must name an environment variable, got {api_key_env!r}")
        self.api_key_env = api_key_env
        register_variable(api_key_env)
        if verdict not in ("text", "logprobs"):
            raise ValueError(f"OpenAIJudge: verdict must be 'text' or 'logprobs', got {verdict!r}")
        self.verdict = verdict
        named = LETTER_TEMPLATES if verdict == "logprobs" else TEMPLATES
        if prompt_template in named:
            self.template_name, self.template = prompt_template, named[prompt_template]
        elif isinstance(prompt_template, str) and all(f"{{{k}}}" in prompt_template
                                                      for k in ("prompt", "response_a", "response_b")):
            self.template_name, self.template = "custom", prompt_template
        else:
            raise ValueError(f"OpenAIJudge: prompt_template must be one of {sorted(TEMPLATES)} or a string with "
                             f"{{prompt}}, {{response_a}} and {{response_b}}, got {prompt_template!r:.80}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"OpenAIJudge: max_retries must be an int >= 0, got {max_retries!r}")
        self.max_retries = max_retries
        self.backoff = _check_nonneg("OpenAIJudge", "backoff", backoff)
        self.temperature = _check_nonneg("OpenAIJudge", "temperature", temperature)
        self.timeout = _check_nonneg("OpenAIJudge", "timeout", timeout)
        if isinstance(max_wait_s, bool) or not isinstance(max_wait_s, (int, float)) or not max_wait_s > 0:
            raise ValueError(f"OpenAIJudge: max_wait_s must be a number of seconds > 0, got {max_wait_s!r}")
        self.max_wait_s = float(max_wait_s)
        if max_tokens is None and verdict == "logprobs":
            max_tokens = 1
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
            raise ValueError(f"OpenAIJudge: max_tokens must be a positive int or None, got {max_tokens!r}")
        self.max_tokens = max_tokens
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"OpenAIJudge: concurrency must be a positive int, got {concurrency!r}")
        self.concurrency = concurrency
        if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int) or not 1 <= top_logprobs <= 20:
            raise ValueError(f"OpenAIJudge: top_logprobs must be an int in 1..20, got {top_logprobs!r}")
        self.top_logprobs = top_logprobs
        if rate_limit is not None and (isinstance(rate_limit, bool) or not isinstance(rate_limit, (int, float))
                                       or not rate_limit > 0):
            raise ValueError(f"OpenAIJudge: rate_limit must be requests per minute > 0 or None, got {rate_limit!r}")
        self.rate_limit = rate_limit
        if tokens_per_minute is not None and (isinstance(tokens_per_minute, bool)
                                              or not isinstance(tokens_per_minute, (int, float))
                                              or not tokens_per_minute > 0):
            raise ValueError(f"OpenAIJudge: tokens_per_minute must be a number > 0 or None, got {tokens_per_minute!r}")
        self.tokens_per_minute = tokens_per_minute
        self.input_price = _check_nonneg("OpenAIJudge", "input_price", input_price)
        self.output_price = _check_nonneg("OpenAIJudge", "output_price", output_price)
        self._limiter = _RateLimiter(rate_limit)
        self._token_limiter = _RateLimiter(tokens_per_minute)
        self._client = None

    def _params(self) -> dict[str, Any]:
        params = {"model": self.model, "base_url": self.base_url, "template": self.template_name,
                  "template_hash": _digest(self.template, size=8).hex(), "temperature": self.temperature,
                  "max_tokens": self.max_tokens}
        if self.verdict != "text":  # text-mode identities stay as they were (their cached verdicts stay valid)
            params.update(verdict=self.verdict, top_logprobs=self.top_logprobs)
        return params

    @property
    def order_symmetric(self) -> bool:
        return True

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"] = None  # the client holds the key
        state.pop("_lock", None)
        state.pop("_limiter", None)
        state.pop("_token_limiter", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("tokens_per_minute", None)  # pickled before the field existed
        self._lock = threading.Lock()
        self._limiter = _RateLimiter(self.rate_limit)
        self._token_limiter = _RateLimiter(self.tokens_per_minute)

    def _where(self) -> str:
        return f"endpoint {self.base_url} (model {self.model!r})"

    def client(self):
        if self._client is None:
            import openai

            key = os.environ.get(self.api_key_env)
            if not key:
                raise JudgeError(redact(f"OpenAIJudge: environment variable {self.api_key_env} is not set; the API "
                                        f"key for {self._where()} is read from the environment only"))
            self._client = openai.OpenAI(api_key=key, base_url=self.base_url, timeout=self.timeout, max_retries=0)
        return self._client

    def check_access(self, field: str = "judge") -> None:
        """Ask the endpoint for its model list (no tokens spent) so that a refused key or an endpoint out of reach
        stops a notebook before any sampling or training, naming the params ``field``; an endpoint that has no
        model list (HTTP 404/405) is taken as reachable."""
        import openai

        try:
            self.client().models.list()
        except JudgeError as err:
            raise JudgeError(f"{field}.api_key_env: {err}") from None
        except openai.APIStatusError as err:
            if err.status_code in (401, 403):
                raise JudgeError(redact(f"{field}: {self._where()} refused the key in ${self.api_key_env} "
                                        f"(HTTP {err.status_code}: {err.message}); set the right key in "
                                        f"{self.api_key_env} or name another variable in {field}.api_key_env")) from None
            if err.status_code not in (404, 405):
                raise JudgeError(redact(f"{field}: {self._where()} answered HTTP {err.status_code} to a model list "
                                        f"request: {err.message}")) from None
        except openai.APIConnectionError as err:
            raise JudgeUnavailableError(redact(f"{field}.base_url: {self._where()} cannot be reached ({err}); check "
                                               f"the URL and that the server is up")) from None

    def _request(self, text: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": self.model, "temperature": self.temperature,
                                  "messages": [{"role": "user", "content": text}]}
        if self.max_tokens is not None:
            kwargs["max_tokens"] = self.max_tokens
        if self.verdict == "logprobs":
            kwargs.update(logprobs=True, top_logprobs=self.top_logprobs)
        return kwargs

    def _answer(self, response) -> Answer:
        usage = getattr(response, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", 0) or 0
        completion_tokens = getattr(usage, "completion_tokens", 0) or 0
        choices = getattr(response, "choices", None) or []
        message = choices[0].message if choices else None
        text = (getattr(message, "content", None) if message else None) or None
        answer = Answer(text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        if self.verdict == "logprobs" and choices:
            content = getattr(getattr(choices[0], "logprobs", None), "content", None) or []
            for position in content:  # the first token that is not blank carries the verdict
                if not (position.token or "").strip():
                    continue
                top = [(t.token, t.logprob) for t in (position.top_logprobs or [])] or [(position.token, position.logprob)]
                answer.p_a = letter_probability(top)
                break
            if answer.p_a is not None:
                answer.letter, answer.source = ("A" if answer.p_a >= 0.5 else "B"), "logprobs"
        if answer.letter is None:
            letter = parse_verdict(text)
            if letter is not None:
                answer.letter, answer.source = letter, "text"
        return answer

    def _estimated_tokens(self, text: str) -> int:
        """Tokens a request will cost, before it is sent: its characters / 4 and the answer's budget."""
        return math.ceil(len(text) / 4) + (self.max_tokens or 0)

    def _ask(self, text: str) -> Answer | None:
        """One chat completion with retries, all within ``max_wait_s`` (the judge's own rate limits aside); the
        answer, or None when the endpoint answered with something that is not a chat completion (a failed
        judgement).  A 429/503 answer's Retry-After replaces the backoff before the next attempt; one that asks
        for longer than is left gives up at once."""
        import openai

        client = self.client()
        kwargs = self._request(text)
        estimate = self._estimated_tokens(text)
        deadline = time.monotonic() + self.max_wait_s
        last: str = "no attempt made"
        attempts = failures = 0
        asked: float | None = None  # the wait the last answer asked for (Retry-After)
        while True:
            if attempts:
                pause = asked if asked is not None else self.backoff * 2 ** (failures - 1)
                if pause >= deadline - time.monotonic():
                    if asked is not None:
                        last += f" (it asked to retry after {asked:g} s, past max_wait_s)"
                    break
                time.sleep(pause)
            deadline += self._limiter.wait() + self._token_limiter.wait(estimate)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if attempts:
                with self._lock:
                    self.stats.retries += 1
            attempts += 1
            asked = None
            try:
                response = client.chat.completions.create(**kwargs, timeout=min(self.timeout, left))
            except openai.APIResponseValidationError:
                return None  # the endpoint answered, but not with a chat completion: a failed judgement
            except json.JSONDecodeError as err:
                last = f"the answer is not valid JSON ({err})"
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as err:
                last, asked = f"{type(err).__name__}: {err}", _asked_wait(err)
            except openai.APIStatusError as err:
                if not (err.status_code in (408, 409, 429) or err.status_code >= 500):
                    hint = (f"; check the key in ${self.api_key_env}" if err.status_code in (401, 403) else "")
                    raise JudgeError(redact(f"OpenAIJudge: {self._where()} refused the request: HTTP "
                                            f"{err.status_code}: {err.message}{hint}")) from None
                last, asked = f"{type(err).__name__}: {err}", _asked_wait(err)
            else:
                if not isinstance(response, (str, bytes)):
                    return self._counted(self._answer(response), estimate)
                last = f"the answer is not a chat completion: {str(response)[:200]!r}"  # an HTML page, a proxy
            # a paced refusal (429/503 with Retry-After: the endpoint says when) is no failure; max_wait_s bounds it
            if asked is None:
                failures += 1
                if failures > self.max_retries:
                    break
        raise JudgeUnavailableError(redact(
            f"OpenAIJudge: {self._where()} gave no usable answer after {attempts} attempt(s) within "
            f"max_wait_s={self.max_wait_s:g} s per request (timeout={self.timeout:g} s per attempt, "
            f"max_retries={self.max_retries}); last error: {last}"))

    def _counted(self, answer: Answer, estimate: float) -> Answer:
        """``answer`` counted: calls, tokens, dollars, and the tokens-per-minute limiter's estimate corrected."""
        self._count_calls(1, answer.prompt_tokens, answer.completion_tokens)
        with self._lock:
            self.stats.dollars += (answer.prompt_tokens * self.input_price
                                   + answer.completion_tokens * self.output_price) / 1e6
        if answer.prompt_tokens or answer.completion_tokens:
            self._token_limiter.correct(answer.prompt_tokens + answer.completion_tokens - estimate)
        return answer

    def render(self, prompt: str, response_a: str, response_b: str) -> str:
        """The judging prompt with the pair filled in (one pass: braces in the texts stay as they are); the
        prompt as the judge's query view shows it."""
        values = {"prompt": self.query(prompt), "response_a": response_a, "response_b": response_b}
        return _FIELD.sub(lambda m: values[m.group(1)], self.template)

    def _stream(self, count: int, text_of: Callable[[int], str],
                on_answer: Callable[[int, Answer | None], None]) -> str | None:
        """Ask requests 0 .. count-1 in order (the two orders of pair i are 2i and 2i+1), ``concurrency`` at a time:
        a new one starts as soon as one finishes, so no slow answer holds up the others.  ``on_answer(j, answer)``
        runs in this thread as each answer arrives (None: not a chat completion).  After a request gives up, no new
        pair starts (the other order of a pair already started still goes, so a pair is asked whole) and the
        outage's message is returned once the requests in flight are done; any other error stops every new
        request and is raised then."""
        if not count:
            return None
        self.client()  # fail fast on a missing key
        finished: queue.SimpleQueue = queue.SimpleQueue()

        def ask(j: int) -> None:
            try:
                finished.put((j, self._ask(text_of(j)), None))
            except BaseException as err:  # noqa: BLE001 - handed to the calling thread, which decides
                finished.put((j, None, err))

        outage: str | None = None
        error: BaseException | None = None
        started = in_flight = 0
        with ThreadPoolExecutor(max_workers=min(self.concurrency, count)) as pool:
            while True:
                while (started < count and in_flight < self.concurrency and error is None
                       and (outage is None or started % 2 == 1)):
                    pool.submit(ask, started)
                    started, in_flight = started + 1, in_flight + 1
                if not in_flight:
                    break
                j, answer, err = finished.get()
                in_flight -= 1
                if err is None:
                    on_answer(j, answer)
                elif isinstance(err, JudgeUnavailableError):
                    outage = outage or str(err)
                else:
                    error = error or err
        if error is not None:
            raise error
        return outage

    def _answers(self, texts: Sequence[str]) -> tuple[list[Answer | None], str | None]:
        """Answers in order (None: unusable or never asked) and the outage that stopped the rest, if any."""
        answers: list[Answer | None] = [None] * len(texts)
        outage = self._stream(len(texts), texts.__getitem__, answers.__setitem__)
        return answers, outage

    @staticmethod
    def _combine(ab: Answer | None, ba: Answer | None) -> Outcome:
        la, lb = (ab.letter if ab else None), (ba.letter if ba else None)
        if la is None or lb is None:
            return Outcome.FAILED
        if la == "A" and lb == "B":
            return Outcome.WIN
        if la == "B" and lb == "A":
            return Outcome.LOSE
        return Outcome.TIE  # the answer followed the position, not the response

    def _judge_presented(self, batch: Sequence[Triple]) -> list[Outcome]:
        return self._run(batch)

    def _progress(self, pairs: int):
        """A bar over pairs that shows calls, tokens and dollars so far; off for a call of one batch or less."""
        return progress_bar(total=pairs, desc=f"{type(self).__name__} pairs", unit="pair", leave=False,
                            disable=not (self.progress and pairs > self.batch_size))

    def _show(self, bar) -> None:
        if not bar.disable:
            stats = self.stats
            bar.set_postfix(calls=stats.calls, tokens=stats.prompt_tokens + stats.completion_tokens,
                            dollars=f"{stats.dollars:.4f}", refresh=False)
        bar.update()

    def _run(self, shown: Sequence[Triple], on_batch=None) -> list[Outcome]:
        """Every pair asked in both orders through one stream of requests (no batch waits for another); each batch
        of ``batch_size`` pairs goes to ``on_batch`` (a cache) as soon as all its pairs are judged.  When the
        endpoint goes down, the batches' finished pairs are handed over too (the others as FAILED, which a cache
        does not store) and then :class:`JudgeUnavailableError` says how many were kept."""
        shown, size = list(shown), self.batch_size
        verdicts = [Outcome.FAILED] * len(shown)
        answers: dict[int, Answer | None] = {}
        waiting = [len(shown[s:s + size]) for s in range(0, len(shown), size)]  # pairs each batch still lacks
        judged = [0] * len(waiting)
        bar = self._progress(len(shown))

        def hand_over(b: int) -> None:
            waiting[b] = 0
            if on_batch is not None:
                on_batch(shown[b * size:(b + 1) * size], verdicts[b * size:(b + 1) * size])

        def text_of(j: int) -> str:
            p, a, b = shown[j // 2]
            return self.render(p, a, b) if j % 2 == 0 else self.render(p, b, a)

        def on_answer(j: int, answer: Answer | None) -> None:
            answers[j] = answer
            i = j // 2
            if 2 * i not in answers or 2 * i + 1 not in answers:
                return
            verdicts[i] = self._combine(answers.pop(2 * i), answers.pop(2 * i + 1))
            self.stats.pairs += 1
            self.stats.failures += int(verdicts[i] is Outcome.FAILED)
            self._show(bar)
            b = i // size
            judged[b] += 1
            waiting[b] -= 1
            if not waiting[b]:
                hand_over(b)

        try:
            outage = self._stream(2 * len(shown), text_of, on_answer)
        finally:
            bar.close()
            for b in range(len(waiting)):
                if waiting[b] and judged[b]:
                    hand_over(b)
        if outage is not None:
            kept = sum(v is not Outcome.FAILED for v in verdicts)
            raise JudgeUnavailableError(redact(
                f"{outage}. Of the {len(shown)} pairs to judge, {kept} were judged and kept (a cached judge stored "
                f"them); the others were not judged, none was counted as a loss, and a rerun asks only for what is "
                f"missing"))
        return verdicts

    def examine(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> list[dict[str, Any]]:
        """Per pair, both orders as asked (no shuffling, no cache): each order's letter, whether it was read
        from log-probabilities or text, P(A), the verdict for ``first`` and, with logprobs, P(first is
        better) = mean of P(A | first shown first) and P(B | first shown second)."""
        texts = []
        for p, a, b in zip(prompts, first, second):
            texts += [self.render(p, a, b), self.render(p, b, a)]
        answers, outage = self._answers(texts)
        if outage is not None:
            raise JudgeUnavailableError(outage)
        rows = []
        for i in range(len(texts) // 2):
            ab, ba = answers[2 * i], answers[2 * i + 1]
            probs = [x for x in ((ab.p_a if ab else None), (1 - ba.p_a if ba and ba.p_a is not None else None))
                     if x is not None]
            rows.append({"letter_ab": ab.letter if ab else None, "source_ab": ab.source if ab else None,
                         "letter_ba": ba.letter if ba else None, "source_ba": ba.source if ba else None,
                         "p_first": sum(probs) / len(probs) if len(probs) == 2 else None,
                         "verdict": self._combine(ab, ba).value,
                         "text_ab": ab.text if ab else None, "text_ba": ba.text if ba else None})
        return rows
