"""Talking to an OpenAI-compatible teacher: endpoint and key, retries, the spend cap.

The ``openai`` client runs with ``max_retries=0``: retries happen here, so that
``Retry-After`` pauses every worker (a 429 is about the account, not the
request) and every attempt counts against ``invert.max_requests``.

Retried: 429, 408, 409, 5xx, timeouts, dropped connections, a 200 whose body
is not a completion. Not retried: 401/403/404 (wrong key, endpoint or model:
the run stops with a one-line error) and other 4xx (that item is rejected
as ``request_refused``).

The API key only ever goes to the client constructor: error messages are built
from status codes and server messages, and :func:`redact` scrubs the key from
any text that leaves this module, in case a server echoes it.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

from reverse_align.config import InvertConfig
from reverse_align.data.teacher_parse import Answer
from reverse_align.errors import UserError

DEEPSEEK_BASE_URL = "https://api.deepseek.com"
# A Retry-After longer than this is a server bug or an outage: wait this long, then try again.
MAX_RETRY_AFTER_SECONDS = 3600.0
RETRYABLE_STATUS = {408, 409, 429}


@dataclass(frozen=True)
class Endpoint:
    base_url: str | None  # None = the openai client's default (api.openai.com)
    api_key: str = field(repr=False)


def resolve_endpoint(cfg: InvertConfig, api_key: str = "") -> Endpoint:
    """``--base_url`` / ``OPENAI_BASE_URL``; ``--api_key`` / ``OPENAI_API_KEY`` / ``DEEPSEEK_API_KEY``.

    A DeepSeek endpoint prefers ``DEEPSEEK_API_KEY``; with only that key set and
    no endpoint given, the endpoint is DeepSeek's.
    """
    base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL") or None
    openai_key = os.environ.get("OPENAI_API_KEY", "")
    deepseek_key = os.environ.get("DEEPSEEK_API_KEY", "")
    if base_url is None and deepseek_key and not openai_key and not api_key:
        base_url = DEEPSEEK_BASE_URL
    is_deepseek = bool(base_url) and "deepseek" in (urlparse(base_url).hostname or "")
    keys = [api_key, deepseek_key, openai_key] if is_deepseek else [api_key, openai_key, deepseek_key]
    key = next((k for k in keys if k), "")
    if not key:
        raise UserError(
            f"teacher {cfg.teacher!r}: no API key; pass --api_key or set OPENAI_API_KEY or DEEPSEEK_API_KEY "
            "(a local server without authentication accepts any value)"
        )
    return Endpoint(base_url=base_url, api_key=key)


def redact(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


class SpendCapReached(Exception):
    """invert.max_requests or invert.max_tokens_total is used up: no new request is sent."""

    def __init__(self, requests: int):
        super().__init__("spend cap reached")
        self.requests = requests  # attempts this request had already made


class RetriesExhausted(Exception):
    def __init__(self, what: str, requests: int):
        super().__init__(what)
        self.what = what
        self.requests = requests


class RequestRefused(Exception):
    """The server refused this one request (a 4xx other than auth/not-found/rate-limit)."""

    def __init__(self, status: int, message: str, requests: int):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.requests = requests


@dataclass
class Usage:
    """What this run has spent, journal included, and the caps it must stay under."""

    max_requests: int = 0
    max_tokens_total: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0

    def spend_cap_reached(self) -> bool:
        if self.max_requests and self.requests >= self.max_requests:
            return True
        return bool(self.max_tokens_total and self.prompt_tokens + self.completion_tokens >= self.max_tokens_total)


@dataclass(frozen=True)
class Reply:
    answer: Answer
    prompt_tokens: int
    completion_tokens: int
    model: str
    requests: int  # attempts this reply took (1 = no retry)


def retry_after_seconds(headers) -> float | None:
    """``retry-after-ms`` (OpenAI), ``Retry-After`` in seconds or as an HTTP date."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _message_text(message) -> tuple[str, str, str]:
    """(content, reasoning, refusal); reasoning from ``reasoning_content`` or ``reasoning``."""
    extra = getattr(message, "model_extra", None) or {}
    reasoning = getattr(message, "reasoning_content", None) or extra.get("reasoning_content")
    reasoning = reasoning or extra.get("reasoning") or ""
    return message.content or "", reasoning if isinstance(reasoning, str) else "", message.refusal or ""


class TeacherClient:
    """One AsyncOpenAI client shared by all workers, with the run's spend accounting."""

    def __init__(self, cfg: InvertConfig, endpoint: Endpoint, usage: Usage):
        import openai

        self.cfg = cfg
        self.usage = usage
        self._secret = endpoint.api_key
        self._base_url = endpoint.base_url or "the OpenAI API"
        self._client = openai.AsyncOpenAI(
            base_url=endpoint.base_url, api_key=endpoint.api_key, max_retries=0, timeout=cfg.timeout
        )
        self._paused_until = 0.0
        # OpenAI reasoning models refuse max_tokens; switched once on their 400.
        self._tokens_param = "max_tokens"

    async def close(self) -> None:
        await self._client.close()

    def _backoff(self, attempt: int) -> float:
        # Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2^attempt)].
        return random.uniform(0, min(self.cfg.retry_max_delay, self.cfg.retry_base_delay * 2**attempt))

    async def _wait_for_pause(self) -> None:
        while (delay := self._paused_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)

    async def complete(self, prompt: str) -> Reply:
        """One chat completion with retries; raises SpendCapReached, RetriesExhausted, RequestRefused."""
        import openai

        requests = 0
        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            await self._wait_for_pause()
            if self.usage.spend_cap_reached():
                raise SpendCapReached(requests)
            self.usage.requests += 1
            requests += 1
            if attempt:
                self.usage.retries += 1
            delay = None
            tokens_param = self._tokens_param
            try:
                response = await self._client.chat.completions.create(
                    model=self.cfg.teacher,
                    messages=[{"role": "user", "content": prompt}],
                    temperature=self.cfg.temperature,
                    **{tokens_param: self.cfg.max_completion_tokens},
                )
                if not getattr(response, "choices", None):
                    raise ValueError("response without choices")
                choice = response.choices[0]
                content, reasoning, refusal = _message_text(choice.message)
            except openai.APIStatusError as exc:
                status = exc.status_code
                raw_message = _server_message(exc)
                message = redact(raw_message, self._secret)
                if status in (401, 403):
                    raise UserError(f"teacher at {self._base_url} refused the API key (HTTP {status}): {message}") from None
                if status == 404:
                    raise UserError(
                        f"teacher at {self._base_url}: HTTP 404 for model {self.cfg.teacher!r} "
                        f"(wrong --base_url or --teacher?): {message}"
                    ) from None
                if status == 400 and tokens_param == "max_tokens" and "max_completion_tokens" in raw_message:
                    self._tokens_param = "max_completion_tokens"
                    continue
                if status not in RETRYABLE_STATUS and status < 500:
                    raise RequestRefused(status, message[:500], requests) from None
                last = f"HTTP {status}"
                delay = retry_after_seconds(exc.response.headers)
                if delay is not None:
                    delay = min(delay, MAX_RETRY_AFTER_SECONDS)
                    if status == 429:  # the account is rate limited: every worker waits
                        self._paused_until = max(self._paused_until, time.monotonic() + delay)
            except openai.APITimeoutError:
                last = "timeout"
            except openai.APIConnectionError:
                last = "connection error"
            except (openai.APIResponseValidationError, ValueError, AttributeError, TypeError):
                last = "malformed response body"
            else:
                usage = getattr(response, "usage", None)
                prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
                completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
                self.usage.prompt_tokens += prompt_tokens
                self.usage.completion_tokens += completion_tokens
                answer = Answer(content=content, reasoning=reasoning, finish_reason=choice.finish_reason or "", refusal=refusal)
                return Reply(answer, prompt_tokens, completion_tokens, getattr(response, "model", "") or "", requests)
            if attempt < self.cfg.max_retries:
                await asyncio.sleep(self._backoff(attempt) if delay is None else delay + random.uniform(0, 0.1 * delay))
        raise RetriesExhausted(f"{last} after {requests} requests", requests)


def _server_message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return str(getattr(exc, "message", "") or type(exc).__name__)
