"""Local stand-ins for the providers' HTTP APIs, for the real SDK clients to talk to.

:class:`FakeProvider` serves OpenAI's ``POST /v1/chat/completions`` or Anthropic's
``POST /v1/messages`` on 127.0.0.1, answers from a script, and records every request (path,
headers, JSON body, arrival time). Nothing else is faked: the SDKs build, send and parse real
HTTP. A script is a list of :class:`Step` (one per request, in order) or a function from the
request body to a step.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}


@dataclass
class Step:
    """One scripted answer."""

    text: str = ""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    input_tokens: int = 100
    output_tokens: int = 20
    cache_read: int = 0
    cache_write: int = 0
    # Raw bytes to send instead of a well-formed body (malformed answers).
    raw: bytes | None = None
    error_type: str = ""
    delay: float = 0.0


def reply(text: str, **kw: Any) -> Step:
    return Step(text=text, **kw)


def error(status: int, message: str = "", error_type: str = "", **headers: str) -> Step:
    return Step(
        status=status,
        text=message or f"error {status}",
        error_type=error_type,
        headers={k.replace("_", "-"): v for k, v in headers.items()},
    )


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any
    at: float


class FakeProvider:
    def __init__(self, protocol: str, script: list[Step] | Callable[[Any], Step] | None = None):
        assert protocol in PATHS
        self.protocol = protocol
        self.script: list[Step] | Callable[[Any], Step] = script if script is not None else []
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def base_url(self) -> str:
        """What --base-url takes: the OpenAI SDK wants the /v1 prefix, Anthropic's adds it."""
        root = f"http://127.0.0.1:{self.port}"
        return root + "/v1" if self.protocol == "openai" else root

    def __enter__(self) -> FakeProvider:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def bodies(self) -> list[Any]:
        return [r.body for r in self.requests]

    # -- answers --------------------------------------------------------------------------------
    def _next(self, body: Any) -> Step:
        with self._lock:
            if callable(self.script):
                return self.script(body)
            if not self.script:
                return error(500, "the test script has no more answers")
            return self.script.pop(0)

    def _payload(self, step: Step, body: Any) -> bytes:
        model = body.get("model", "?") if isinstance(body, dict) else "?"
        if step.status >= 400:
            if self.protocol == "anthropic":
                err = {
                    "type": "error",
                    "error": {"type": step.error_type or "api_error", "message": step.text},
                }
            else:
                err = {
                    "error": {
                        "message": step.text,
                        "type": step.error_type or "api_error",
                        "code": None,
                    }
                }
            return json.dumps(err).encode()
        if self.protocol == "anthropic":
            usage = {
                "input_tokens": step.input_tokens,
                "output_tokens": step.output_tokens,
                "cache_read_input_tokens": step.cache_read,
                "cache_creation_input_tokens": step.cache_write,
            }
            out = {
                "id": f"msg_{len(self.requests)}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": step.text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": usage,
            }
        else:
            prompt = step.input_tokens + step.cache_read
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": step.output_tokens,
                "total_tokens": prompt + step.output_tokens,
                "prompt_tokens_details": {"cached_tokens": step.cache_read},
            }
            out = {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": step.text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        return json.dumps(out).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                with provider._lock:
                    provider.requests.append(
                        Recorded(
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                            time.monotonic(),
                        )
                    )
                if self.path != PATHS[provider.protocol]:
                    step = error(404, f"no route {self.path}", "not_found_error")
                else:
                    step = provider._next(body)
                if step.delay:
                    time.sleep(step.delay)
                data = step.raw if step.raw is not None else provider._payload(step, body)
                try:
                    self.send_response(step.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in step.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

        return Handler
