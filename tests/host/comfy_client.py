"""A small client of ComfyUI's HTTP and websocket API, standard library only.

It talks to one server on 127.0.0.1 as the frontend does: POST /prompt, GET /history,
GET /view, POST /interrupt and /free, and the /ws event stream (JSON text messages and
binary preview frames).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field


class PromptRejected(Exception):
    """POST /prompt answered 400: the graph failed validation. `body` is the parsed response."""

    def __init__(self, body: dict) -> None:
        super().__init__(json.dumps(body)[:2000])
        self.body = body


@dataclass
class Event:
    """One websocket message: `kind` and `data` for JSON messages, `binary` for frames such as previews."""

    received_at: float
    kind: str | None = None
    data: dict = field(default_factory=dict)
    binary: bytes | None = None


class ComfyClient:
    def __init__(self, port: int) -> None:
        self.base_url = f"http://127.0.0.1:{port}"
        self.port = port

    def get_json(self, path: str):
        with urllib.request.urlopen(self.base_url + path, timeout=60) as response:
            return json.load(response)

    def get_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(self.base_url + path, timeout=60) as response:
            return response.read()

    def post_json(self, path: str, body: dict):
        request = urllib.request.Request(
            self.base_url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = response.read()
        return json.loads(payload) if payload else None

    def queue_prompt(self, prompt: dict, client_id: str | None = None, extra_data: dict | None = None) -> str:
        """Queue an API-format graph and return its prompt id; raise PromptRejected on a 400."""
        body = {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex}
        if extra_data:
            body["extra_data"] = extra_data
        try:
            return self.post_json("/prompt", body)["prompt_id"]
        except urllib.error.HTTPError as error:
            if error.code == 400:
                raise PromptRejected(json.loads(error.read() or b"{}")) from error
            raise

    def wait_for_history(self, prompt_id: str, timeout: float = 600.0) -> dict:
        """Poll /history until the prompt has finished (successfully or not) and return its entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get_json(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and _finished(entry):
                return entry
            time.sleep(0.25)
        raise TimeoutError(f"Prompt {prompt_id} did not finish within {timeout:.0f} s.")

    def run(self, prompt: dict, timeout: float = 600.0, extra_data: dict | None = None) -> dict:
        """Queue a graph, wait for it and return its history entry."""
        return self.wait_for_history(self.queue_prompt(prompt, extra_data=extra_data), timeout)

    def output_files(self, entry: dict, kind: str = "images") -> list[bytes]:
        """Download every file of `kind` ("images", "latents") that the prompt's output nodes saved."""
        files = []
        for output in entry.get("outputs", {}).values():
            for saved in output.get(kind, []):
                query = urllib.parse.urlencode(
                    {"filename": saved["filename"], "subfolder": saved["subfolder"], "type": saved["type"]}
                )
                files.append(self.get_bytes(f"/view?{query}"))
        return files

    def interrupt(self) -> None:
        self.post_json("/interrupt", {})

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        self.post_json("/free", {"unload_models": unload_models, "free_memory": free_memory})

    def open_websocket(self, client_id: str) -> WebSocket:
        return WebSocket(self.port, f"/ws?clientId={client_id}")


def _finished(entry: dict) -> bool:
    messages = [message[0] for message in entry["status"].get("messages", [])]
    return any(kind in messages for kind in ("execution_success", "execution_error", "execution_interrupted"))


def status_message(entry: dict, kind: str) -> dict | None:
    """Return the data of the history status message of `kind` (for example execution_error)."""
    for message_kind, data in entry["status"].get("messages", []):
        if message_kind == kind:
            return data
    return None


class WebSocket:
    """A receive-only websocket client (RFC 6455) for ComfyUI's event stream."""

    def __init__(self, port: int, path: str) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.socket.sendall(request.encode())
        self.buffer = b""
        response = self._read_until(b"\r\n\r\n")
        if b" 101 " not in response.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"Websocket upgrade failed: {response[:200]!r}")

    def close(self) -> None:
        self.socket.close()

    def receive(self, timeout: float) -> Event | None:
        """Return the next message, or None if none arrives within `timeout` seconds."""
        self.socket.settimeout(timeout)
        try:
            while True:
                opcode, payload = self._read_frame()
                if opcode == 0x1:
                    message = json.loads(payload)
                    return Event(time.monotonic(), kind=message.get("type"), data=message.get("data") or {})
                if opcode == 0x2:
                    return Event(time.monotonic(), binary=payload)
                if opcode == 0x8:
                    raise ConnectionError("The server closed the websocket.")
                # Ping, pong and continuation frames carry nothing this client needs.
        except TimeoutError:
            return None

    def _read_frame(self) -> tuple[int, bytes]:
        first, second = self._read_exact(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack(">H", self._read_exact(2))
        elif length == 127:
            (length,) = struct.unpack(">Q", self._read_exact(8))
        mask = self._read_exact(4) if second & 0x80 else None
        payload = self._read_exact(length)
        if mask:
            payload = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
        return first & 0x0F, payload

    def _read_exact(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.socket.recv(65536)
            if not chunk:
                raise ConnectionError("The websocket connection ended.")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = self.socket.recv(65536)
            if not chunk:
                raise ConnectionError("The connection ended during the websocket handshake.")
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(marker)
        return head


def png_size(data: bytes) -> tuple[int, int]:
    """Return (width, height) from a PNG file's IHDR chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("Not a PNG file.")
    return struct.unpack(">II", data[16:24])
