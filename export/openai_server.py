"""The OpenAI-compatible chat API that `unlearn serve` gives the runtimes llama.cpp's server does not cover (ONNX,
Hugging Face), over export/chat.py's ChatSession, and the request check put in front of llama.cpp's server too.
A malformed request is answered 400 with OpenAI's error body, naming the field.

No `from __future__ import annotations` here: FastAPI reads the handlers' annotations (Request) at runtime."""
import json
import threading
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

ROLES = ("system", "user", "assistant")
MAX_TOKENS_DEFAULT = 256


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def error_body(message: str, param: str | None = None, kind: str = "invalid_request_error") -> dict:
    """An error as OpenAI's API answers it (what its clients parse into an APIError)."""
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def bad_request_response(body: bytes):
    """A 400 response with an OpenAI error body when a chat request is malformed, else None."""
    try:
        parse_request(json.loads(body or b"null"))
    except json.JSONDecodeError:
        return JSONResponse(error_body("the request body is not JSON"), status_code=400)
    except BadRequest as exc:
        return JSONResponse(error_body(str(exc), exc.param), status_code=400)
    return None


def parse_request(body) -> dict:
    """The chat request's settings, checked; anything wrong is a BadRequest naming the field."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list of {role, content}", "messages")
    checked = [_message(m, i) for i, m in enumerate(messages)]
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = MAX_TOKENS_DEFAULT if max_tokens is None else max_tokens
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest("'max_tokens' must be a positive integer", "max_tokens")
    temperature = body.get("temperature", 1.0)
    if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise BadRequest("'temperature' must be a number from 0 to 2", "temperature")
    if body.get("n", 1) != 1:
        raise BadRequest("only n=1 is supported", "n")
    return {"messages": checked, "max_tokens": max_tokens, "temperature": float(temperature),
            "seed": int(body.get("seed") or 0), "stream": bool(body.get("stream"))}


def _message(message, index: int) -> dict:
    where = f"messages[{index}]"
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise BadRequest(f"{where}.role must be one of {', '.join(ROLES)}", f"{where}.role")
    content = message.get("content")
    if isinstance(content, list):   # content parts: only text
        if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            raise BadRequest(f"{where}.content: only text parts are supported", f"{where}.content")
        content = "".join(p.get("text", "") for p in content)
    if not isinstance(content, str):
        raise BadRequest(f"{where}.content must be a string", f"{where}.content")
    return {"role": message["role"], "content": content}


def openai_app(session, model_name: str):
    """A FastAPI app answering /v1/chat/completions from a ChatSession (export/chat.py)."""
    app = FastAPI(title=f"unlearn serve: {model_name}")
    busy = threading.Lock()    # one runner, one KV cache: one generation at a time

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "unlearning-studio"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await request.body()
        refusal = bad_request_response(body)
        if refusal is not None:
            return refusal
        settings = parse_request(json.loads(body))
        completion = Completion(session, model_name, busy, settings)
        if settings["stream"]:
            return StreamingResponse(completion.events(), media_type="text/event-stream")
        return JSONResponse(completion.whole())

    return app


class Completion:
    """One chat completion, whole or as server-sent events in OpenAI's chunk format."""

    def __init__(self, session, model: str, busy: threading.Lock, settings: dict):
        self.session, self.model, self.busy, self.settings = session, model, busy, settings
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

    def _pieces(self):
        s = self.settings
        with self.busy:
            yield from self.session.answer(s["messages"], s["max_tokens"], s["temperature"], s["seed"])
            self.last = dict(self.session.last)

    def whole(self) -> dict:
        text = "".join(self._pieces())
        last = self.last
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": last["finish_reason"]}],
                "usage": {"prompt_tokens": last["prompt_tokens"], "completion_tokens": last["completion_tokens"],
                          "total_tokens": last["prompt_tokens"] + last["completion_tokens"]}}

    def _chunk(self, delta: dict, finish: str | None = None) -> str:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(chunk)}\n\n"

    def events(self):
        yield self._chunk({"role": "assistant", "content": ""})
        for piece in self._pieces():
            yield self._chunk({"content": piece})
        yield self._chunk({}, self.last["finish_reason"])
        yield "data: [DONE]\n\n"


def check_requests_first(app) -> None:
    """Answer a malformed chat request with 400 and an OpenAI error body before llama-cpp-python's route sees it
    (its error handler turns a request that fails validation into a 500)."""
    @app.middleware("http")
    async def refuse_bad_chat_requests(request: Request, call_next):
        if request.method == "POST" and request.url.path.endswith("/chat/completions"):
            refusal = bad_request_response(await request.body())
            if refusal is not None:
                return refusal
        return await call_next(request)
