"""A scripted OpenAI-compatible chat-completions server for judge tests (stdlib only).

Each test scripts the replies: a list of Reply (used in order, the last one repeats) or a function
Request -> Reply. The server counts requests and in-flight peaks so tests can assert retries,
ledger hits and concurrency bounds over real HTTP on 127.0.0.1.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclass
class Reply:
    content: str = "\\boxed{-1}"
    status: int = 200
    headers: dict = field(default_factory=dict)
    body: str | None = None  # a raw body instead of a completion
    delay_s: float = 0.0  # wait before answering (cut short when the server stops)
    drop: bool = False  # close the connection without any response
    prompt_tokens: int = 100
    completion_tokens: int = 10
    reasoning: str | None = None  # a reasoning server's separate reasoning_content
    drip_s: float = 0.0  # send the body one byte (a stream: one event) at a time, this long apart
    cut: bool = False  # send half the body (a stream: half its events), then close (cut mid-body)
    stream: bool = True  # stream when the request asks to (False: a server that ignores `stream`)
    chunk_chars: int = 4  # a streamed reply's text per event (about one token)
    stream_error: str | None = None  # end the stream with an `error` event (as vLLM reports an engine failure)
    token_s: float = 0.0  # a slow critic: seconds per event generated (not streamed: all of them, then the body)


@dataclass
class Request:
    index: int
    path: str
    headers: dict
    body: dict

    @property
    def prompt(self) -> str:
        """The last user turn (the critic prompt; a system turn comes before it)."""
        return [m for m in self.body["messages"] if m.get("role") == "user"][-1]["content"]


Script = Callable[[Request], Reply]


class FakeOpenAIServer:
    def __init__(self, script: Script | list[Reply] | None = None, port: int = 0):
        self.requests: list[Request] = []
        self.model_lists = 0  # GET /models served
        self.served = ["critic"]  # the model ids GET /models lists
        self.require_key: str | None = None  # when set, any other Authorization gets a 401
        self.max_in_flight = 0
        self.connections: set[tuple] = set()  # client (host, port) pairs: kept-alive ones repeat
        self._in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._killed = False
        self._open: set = set()  # open client connections (a kill closes them)
        self.set_script(script)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with server._lock:
                    server._open.add(self.connection)

            def finish(self) -> None:
                try:
                    super().finish()
                except OSError:
                    pass
                finally:
                    with server._lock:
                        server._open.discard(self.connection)

            def do_GET(self) -> None:
                with server._lock:
                    server.model_lists += 1
                if server.require_key and self.headers.get("Authorization") != f"Bearer {server.require_key}":
                    self._send(401, json.dumps({"error": "invalid key"}), {})
                    return
                models = [{"id": name, "object": "model"} for name in server.served]
                self._send(200, json.dumps({"object": "list", "data": models}), {})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    server.connections.add(self.client_address)
                    request = Request(len(server.requests), self.path, dict(self.headers), body)
                    server.requests.append(request)
                    server._in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server._in_flight)
                try:
                    reply = server._script(request)
                    if reply.delay_s:
                        server._stopping.wait(reply.delay_s)
                    if reply.drop or server._killed:
                        self.close_connection = True
                        return
                    if body.get("stream") and reply.stream and reply.body is None and reply.status == 200:
                        self._send_stream(reply, body)
                        return
                    if reply.token_s and server._stopping.wait(reply.token_s * len(_stream_events(reply, body))):
                        return
                    text = reply.body if reply.body is not None else json.dumps(_completion(reply, body))
                    self._send(reply.status, text, reply.headers, reply)
                finally:
                    with server._lock:
                        server._in_flight -= 1

            def _send(self, status: int, text: str, headers: dict, reply: Reply | None = None) -> None:
                data = text.encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, str(v))
                self.end_headers()
                try:
                    if reply is not None and reply.cut:
                        self.wfile.write(data[:len(data) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                    elif reply is not None and reply.drip_s:
                        for i in range(len(data)):
                            self.wfile.write(data[i:i + 1])
                            self.wfile.flush()
                            if server._stopping.wait(reply.drip_s):
                                break
                    else:
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): fine

            def _send_stream(self, reply: Reply, request_body: dict) -> None:
                """Server-sent events over chunked encoding (the connection stays alive), as vLLM sends them."""
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                for k, v in reply.headers.items():
                    self.send_header(k, str(v))
                self.end_headers()
                events = _stream_events(reply, request_body)
                if reply.cut:
                    events = events[:len(events) // 2]
                try:
                    for event in events:
                        data = f"data: {event}\n\n".encode("utf-8")
                        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                        self.wfile.flush()
                        if (reply.drip_s or reply.token_s) and server._stopping.wait(reply.drip_s or reply.token_s):
                            break
                    if reply.cut:
                        self.close_connection = True
                        return
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (timeout): fine

        self._httpd = _Server(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    def set_script(self, script: Script | list[Reply] | None) -> None:
        if script is None:
            script = [Reply()]
        if isinstance(script, list):
            replies = list(script)
            self._script = lambda req: replies[min(req.index, len(replies) - 1)]
        else:
            self._script = script

    def count(self, text: str) -> int:
        """Requests whose prompt contains `text`."""
        with self._lock:
            return sum(text in r.prompt for r in self.requests)

    def __enter__(self) -> "FakeOpenAIServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def kill(self) -> None:
        """Stop as a killed server process does: nothing more is answered, every open connection
        (kept-alive ones included) is closed, and the port refuses connections until a new server binds it."""
        import socket
        self._killed = True
        with self._lock:
            open_now = list(self._open)
        for conn in open_now:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.__exit__()


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # many clients connect at once (requests in flight); the default 5 drops SYNs
    allow_reuse_address = True  # a restarted server binds the port its predecessor left


def _completion(reply: Reply, request_body: dict) -> dict:
    message = {"role": "assistant", "content": reply.content}
    if reply.reasoning is not None:
        message["reasoning_content"] = reply.reasoning
    return {
        "id": "chatcmpl-fake", "object": "chat.completion", "model": request_body.get("model", "fake"),
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                  "total_tokens": reply.prompt_tokens + reply.completion_tokens},
    }


def _stream_events(reply: Reply, request_body: dict) -> list[str]:
    """The reply as a stream: reasoning then content in `chunk_chars` pieces, the finish reason, the
    usage chunk (when the request asked for it), [DONE]."""
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": request_body.get("model", "fake")}

    def chunk(delta: dict, finish: str | None = None) -> str:
        return json.dumps({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    n = max(1, reply.chunk_chars)
    events = [chunk({"role": "assistant", "content": ""})]
    for field_name, text in (("reasoning_content", reply.reasoning or ""), ("content", reply.content)):
        events += [chunk({field_name: text[i:i + n]}) for i in range(0, len(text), n)]
    if reply.stream_error is not None:
        return events + [json.dumps({"error": {"message": reply.stream_error, "type": "InternalServerError",
                                               "code": 500}}), "[DONE]"]
    events.append(chunk({}, "stop"))
    if (request_body.get("stream_options") or {}).get("include_usage"):
        events.append(json.dumps({**base, "choices": [], "usage": {
            "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens}}))
    return events + ["[DONE]"]


def free_port() -> int:
    """A port nothing listens on (bound then released)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
