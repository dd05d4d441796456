"""A loopback OpenAI Chat Completions server playing a DeepSeek-R1-like teacher.

Real HTTP on 127.0.0.1 (stdlib ``ThreadingHTTPServer``, HTTP/1.1 keep-alive),
so the real ``openai`` client, its connection pool and timeouts are exercised.
It answers the two invert templates correctly for the synthetic world: step 1
returns the exact reverse question (``synthetic.reverse_question``), step 2
solves it (``synthetic.solve``) with a step-by-step trace, so every accepted
reverse can be checked by recomputation.

Behaviours are scripted per item and step (``script``), or for every request
(``default``): ``ok`` (reasoning in ``reasoning_content``), ``think`` (inside
``<think>`` tags), ``plain`` (no reasoning), ``429`` (with ``Retry-After``),
``500``, ``400``, ``stall`` (no response for ``stall_seconds``), ``drop``
(connection closed without a response), ``malformed`` (prose without the
New Question/New Answer markers), ``same_question``, ``no_boxed``,
``truncated`` (finish_reason length), ``long_reasoning`` (a correct solution whose
reasoning is the usual one repeated 100 times), ``bad_json`` (a 200 that is not JSON).
It also plays an answer judge (reverse_align/eval/judge.py's prompt): "Yes" when
the reference answer appears in the judged response, else "No".

Every request is recorded (item, step, behaviour, times, whether the full
response was written), so tests can count what was asked twice.

Standalone (for bench/ and manual runs): ``python tests/fake_teacher.py --latency 0.1``
prints the base URL and serves until killed; ``GET <base_url>/requests`` returns the log.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reverse_align.data import synthetic  # noqa: E402

REVERSE = "reverse"
SOLUTION = "solution"
# A judge request (reverse_align/eval/judge.py): "Yes" when the reference answer appears in the response.
JUDGE = "judge"
JUDGE_OPENING = "You are grading an answer"


@dataclass
class Request:
    item: str  # the forward question of the synthetic problem this request is about
    step: str  # "reverse" or "solution"
    behaviour: str
    started: float
    finished: float = 0.0
    answered: bool = False  # a complete 200 response was written
    authorization: str = ""


@dataclass
class FakeTeacher:
    latency: float = 0.0
    default: str = "ok"
    stall_seconds: float = 5.0
    retry_after: str = "1"
    api_key: str = ""  # when set, other keys get a 401
    # Like OpenAI's reasoning models: a 400 for max_tokens, which they replaced by max_completion_tokens.
    refuse_max_tokens: bool = False
    # The model named in each completion; empty = the requested one (as an endpoint serving that name does).
    served_model: str = ""
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self):
        self._script: dict[tuple[str, str], deque] = defaultdict(deque)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- scripting ------------------------------------------------------------------

    def script(self, question: str, step: str, *behaviours: str) -> None:
        """The next requests for (forward question, step) behave like this, in order."""
        with self._lock:
            self._script[(item_key(question), step)].extend(behaviours)

    def _next_behaviour(self, item: str, step: str) -> str:
        with self._lock:
            queue = self._script.get((item, step))
            return queue.popleft() if queue else self.default

    # -- counting -------------------------------------------------------------------

    def count(self, item: str | None = None, step: str | None = None, answered: bool | None = None) -> int:
        key = item_key(item) if item else None
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (key is None or r.item == key) and (step is None or r.step == step) and (answered is None or r.answered == answered)
            )

    def per_step(self, since: float = 0.0, answered_only: bool = False) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = defaultdict(int)
        with self._lock:
            for r in self.requests:
                if r.started >= since and (r.answered or not answered_only):
                    counts[(r.item, r.step)] += 1
        return dict(counts)

    # -- serving --------------------------------------------------------------------

    def start(self, port: int = 0) -> "FakeTeacher":
        handler = type("Handler", (_Handler,), {"teacher": self})
        self._server = _Server(("127.0.0.1", port), handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> "FakeTeacher":
        return self.start() if self._server is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- answering ------------------------------------------------------------------

    def respond(self, step: str, question: str, behaviour: str) -> tuple[str, str, str]:
        """(content, reasoning, finish_reason) of a normal-looking answer under ``behaviour``."""
        try:
            direction, problem = synthetic.parse_question(question)
        except ValueError:
            direction, problem = None, None
        if step == REVERSE:
            reasoning = "The answer is the final number; turning it around, the start becomes the unknown."
            if behaviour == "malformed":
                return "What a wonderful question! Reflection is key to learning.", reasoning, "stop"
            if behaviour == "same_question":
                return f"- New Question: {question}\n- New Answer: {problem.result if problem else 0}", reasoning, "stop"
            if problem is None:
                return "I cannot reverse this.", reasoning, "stop"
            content = (
                "Here is the reflective exercise.\n\n"
                f"**New Question:** {synthetic.reverse_question(problem)}\n\n"
                f"**New Answer:** The starting number is \\boxed{{{problem.start}}}."
            )
            return content, reasoning, "stop"
        if problem is None:
            return "This is not a question I know.", "", "stop"
        answer = synthetic.solve(question)
        steps = []
        values = problem.values()
        if direction == synthetic.REVERSE:
            for i in range(len(problem.ops) - 1, -1, -1):
                op, operand = problem.ops[i]
                steps.append(synthetic.fact(values[i + 1], synthetic._UNDO[op], operand))
        else:
            steps = [synthetic.fact(values[i], op, n) for i, (op, n) in enumerate(problem.ops)]
        reasoning = "Undo each operation from the last one.\n" + "\n".join(steps)
        if behaviour == "no_boxed":
            return f"The starting number is {answer}.", reasoning, "stop"
        if behaviour == "truncated":
            return "The starting number is", reasoning, "length"
        if behaviour == "long_reasoning":
            reasoning = "\n".join([reasoning] * 100)
        return f"The starting number is \\boxed{{{answer}}}.", reasoning, "stop"


def judge_reply(prompt: str) -> str:
    reference = prompt.split("Reference answer: ", 1)[1].split("\n", 1)[0].strip()
    response = prompt.split("Response:\n", 1)[1].rsplit("\n\nDoes the response", 1)[0]
    return "Yes" if reference and reference in response else "No"


def item_key(question: str) -> str:
    """Both steps of one item map to its forward question."""
    try:
        _, problem = synthetic.parse_question(question)
    except ValueError:
        return question
    return synthetic.forward_question(problem)


def _prompt_question(prompt: str, step: str) -> str:
    start = prompt.find("- Question: ")
    if start < 0:
        return prompt
    start += len("- Question: ")
    end = prompt.find("\n- Answer:", start) if step == REVERSE else prompt.find("\n", start)
    return prompt[start : end if end >= 0 else None].strip()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the listen backlog: 32+ clients connect at once

    def handle_error(self, request, client_address) -> None:
        # A client killed mid-request (the SIGKILL tests) resets its connections: expected, not news.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    teacher: FakeTeacher
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send_json(self, status: int, payload, headers: dict | None = None) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_GET(self) -> None:
        """``GET /requests``: the request log, for a server running in another process (bench/)."""
        if self.path.rstrip("/").endswith("/requests"):
            with self.teacher._lock:
                rows = [vars(r) | {"authorization": ""} for r in self.teacher.requests]
            self._send_json(200, rows)
        else:
            self._send_json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        teacher = self.teacher
        length = int(self.headers.get("Content-Length", 0))
        try:
            body = json.loads(self.rfile.read(length))
            prompt = body["messages"][-1]["content"]
        except (ValueError, KeyError, IndexError, TypeError):  # a client killed while sending
            self.close_connection = True
            return
        step = JUDGE if prompt.startswith(JUDGE_OPENING) else REVERSE if "New Question" in prompt else SOLUTION
        question = prompt if step == JUDGE else _prompt_question(prompt, step)
        item = item_key(question)
        behaviour = teacher._next_behaviour(item, step)
        record = Request(item, step, behaviour, time.time(), authorization=self.headers.get("Authorization", ""))
        with teacher._lock:
            teacher.requests.append(record)
        try:
            self._answer(teacher, body, prompt, step, question, behaviour, record)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            record.finished = time.time()

    def _answer(self, teacher, body, prompt, step, question, behaviour, record) -> None:
        if teacher.api_key and self.headers.get("Authorization") != f"Bearer {teacher.api_key}":
            # Like the real APIs: the message never repeats the key.
            self._send_json(401, {"error": {"message": "Authentication Fails (invalid api key)", "type": "authentication_error"}})
            return
        if teacher.latency:
            time.sleep(teacher.latency)
        if teacher.refuse_max_tokens and "max_tokens" in body:
            message = "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."
            self._send_json(400, {"error": {"message": message, "type": "invalid_request_error", "param": "max_tokens"}})
            record.behaviour = "400 max_tokens"
            return
        if behaviour == "429":
            self._send_json(429, {"error": {"message": "Rate limit reached", "type": "rate_limit"}}, {"Retry-After": teacher.retry_after})
            return
        if behaviour == "500":
            self._send_json(500, {"error": {"message": "internal error", "type": "server_error"}})
            return
        if behaviour == "400":
            self._send_json(400, {"error": {"message": "This model's maximum context length is exceeded", "type": "invalid_request_error"}})
            return
        if behaviour == "stall":
            time.sleep(teacher.stall_seconds)
            self.close_connection = True
            return
        if behaviour == "drop":
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if behaviour == "bad_json":
            self._send_json(200, b"<html>upstream gateway hiccup</html>")
            return
        if step == JUDGE:
            content, reasoning, finish_reason = judge_reply(prompt), "", "stop"
        else:
            content, reasoning, finish_reason = teacher.respond(step, question, behaviour)
        message = {"role": "assistant", "content": content}
        if behaviour == "think":
            message["content"] = f"<think>\n{reasoning}\n</think>\n\n{content}"
        elif behaviour != "plain":
            message["reasoning_content"] = reasoning
        prompt_tokens = len(prompt.split())
        completion_tokens = len(content.split()) + len(reasoning.split())
        self._send_json(
            200,
            {
                "id": f"chatcmpl-{len(teacher.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": teacher.served_model or body.get("model", "fake-r1"),
                "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )
        record.answered = True


def main() -> None:
    parser = argparse.ArgumentParser(description="loopback Chat Completions server (fake R1 teacher)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--default", default="ok")
    args = parser.parse_args()
    teacher = FakeTeacher(latency=args.latency, default=args.default).start(args.port)
    print(teacher.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        teacher.stop()


if __name__ == "__main__":
    main()
