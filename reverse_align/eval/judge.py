"""An LLM judge of answers (§4.1: gpt-4o-mini), any model on an OpenAI-compatible endpoint.

Asked once per (model, question, reference, response): every verdict is kept in
``<REVERSE_ALIGN_CACHE>/judge/`` (one small JSON file each, written atomically),
so a rerun or a second run over the same responses sends no request. A response
cut off inside the thinking is wrong without asking (grading.TRUNCATED); the
judge sees only the attempt after the answer marker, never the thinking.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from reverse_align.errors import UserError

OFFLINE = "math-verify"
PROMPT = (
    "You are grading an answer to a question. Compare the final answer of the response with the reference "
    "answer; they match if they are mathematically or semantically equivalent (for a multiple-choice "
    "question: the same option).\n\nQuestion:\n{question}\n\nReference answer: {reference}\n\n"
    "Response:\n{response}\n\nDoes the response's final answer match the reference answer? "
    'Reply with exactly "Yes" or "No".'
)
CONCURRENCY = 8


def cache_root() -> Path:
    from reverse_align.models import cache_dir

    return cache_dir() / "judge"


class Judge:
    def __init__(self, model: str, base_url: str = "", api_key: str = ""):
        self.model = model
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL", "")
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY", "")
        if not self._api_key:
            raise UserError(f"--judge {model}: needs an API key (OPENAI_API_KEY or --api_key); or --judge {OFFLINE}")
        self._client = None
        self.requests = 0  # sent by this judge (cache hits send none)

    def _key(self, prompt: str) -> str:
        return hashlib.sha256(json.dumps([self.model, prompt]).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return cache_root() / key[:2] / f"{key}.json"

    def _ask(self, prompt: str) -> str:
        import openai

        if self._client is None:
            self._client = openai.OpenAI(api_key=self._api_key, base_url=self.base_url or None, timeout=120)
        try:
            reply = self._client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=8
            )
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as exc:
            raise UserError(f"--judge {self.model}: the endpoint refused the request ({type(exc).__name__})") from None
        self.requests += 1
        return reply.choices[0].message.content or ""

    def verdict(self, question: str, reference: str, response: str) -> bool:
        prompt = PROMPT.format(question=question, reference=reference, response=response)
        path = self._path(self._key(prompt))
        if path.is_file():
            return json.loads(path.read_text())["match"]
        reply = self._ask(prompt)
        match = reply.strip().strip('."*').lower().startswith("yes")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps({"model": self.model, "match": match, "reply": reply}))
        os.replace(partial, path)
        return match

    def verdicts(self, items: list[tuple[str, str, str]]) -> list[bool]:
        """(question, reference, response) triples, judged CONCURRENCY at a time, in order."""
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            return list(pool.map(lambda item: self.verdict(*item), items))
