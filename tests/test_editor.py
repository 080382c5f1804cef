"""Editor support, tested with a real client: the YAML language server (the engine of VS Code's YAML
extension, and of Neovim's, Helix's and Zed's YAML support) reads the published JSON Schema through
a spec's modeline, completes op names and flags misspelt arguments.

The test speaks the Language Server Protocol to `yaml-language-server --stdio` itself: JSON-RPC
messages framed by `Content-Length` headers. It needs Node.js and the server
(`npm install -g yaml-language-server@1.25.0`; `.ci/run` installs both) and no network: the schema
store is switched off and the schema is a local file.
"""

from __future__ import annotations

import json
import os
import pathlib
import queue
import shutil
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import BLOCK_LIBRARIES, EXAMPLES
from resgraph.resources import schema_path

SERVER = shutil.which("yaml-language-server")
pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or SERVER is None,
    reason="needs Node.js and yaml-language-server (npm install -g yaml-language-server@1.25.0; .ci/run installs them)")

TIMEOUT = 60  # seconds for any one answer; the server answers in milliseconds once started
SETTINGS = {"yaml": {"validate": True, "completion": True, "hover": True, "format": {"enable": False},
                     "schemaStore": {"enable": False, "url": ""}}}


class LanguageServer:
    """A minimal LSP client: requests wait for their answer; the server's notifications are queued
    and its own requests (configuration, capability registration) answered."""

    def __init__(self, command: list[str], root: pathlib.Path) -> None:
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL)
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.notifications: list[dict[str, Any]] = []
        self.last_id = 0
        threading.Thread(target=self._read, daemon=True).start()
        capabilities = {"workspace": {"configuration": True},
                        "textDocument": {"completion": {"completionItem": {"snippetSupport": False}},
                                         "publishDiagnostics": {}}}
        self.request("initialize", {"processId": os.getpid(), "rootUri": root.as_uri(), "capabilities": capabilities})
        self.notify("initialized", {})
        self.notify("workspace/didChangeConfiguration", {"settings": SETTINGS})

    def _read(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        while True:
            headers = {}
            while (line := stream.readline().strip()) != b"":
                name, _, value = line.decode("ascii").partition(":")
                headers[name.lower()] = value.strip()
            if not headers:  # the server closed its output
                self.messages.put(None)
                return
            self.messages.put(json.loads(stream.read(int(headers["content-length"]))))

    def _send(self, message: dict[str, Any]) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        stream = self.process.stdin
        assert stream is not None
        stream.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        stream.flush()

    def _next(self) -> dict[str, Any]:
        message = self.messages.get(timeout=TIMEOUT)
        if message is None:
            raise RuntimeError("yaml-language-server exited")
        if "method" in message and "id" in message:  # a request from the server
            result = None
            if message["method"] == "workspace/configuration":
                result = [SETTINGS.get(item.get("section"), None) for item in message["params"]["items"]]
            self._send({"id": message["id"], "result": result})
        return message

    def request(self, method: str, params: Any) -> Any:
        self.last_id += 1
        self._send({"id": self.last_id, "method": method, "params": params})
        while True:
            message = self._next()
            if message.get("id") == self.last_id and "method" not in message:
                assert "error" not in message, message["error"]
                return message.get("result")
            if "method" in message and "id" not in message:
                self.notifications.append(message)

    def notify(self, method: str, params: Any) -> None:
        self._send({"method": method, "params": params})

    def open(self, path: pathlib.Path, text: str) -> list[dict[str, Any]]:
        """Open a document and return the diagnostics the server publishes for it."""
        uri = path.as_uri()
        self.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "yaml", "version": 1,
                                                              "text": text}})
        while True:
            for message in self.notifications:
                if message["method"] == "textDocument/publishDiagnostics" and message["params"]["uri"] == uri:
                    self.notifications.remove(message)
                    return message["params"]["diagnostics"]
            message = self._next()
            if "method" in message and "id" not in message:
                self.notifications.append(message)

    def complete(self, path: pathlib.Path, line: int, character: int) -> list[str]:
        result = self.request("textDocument/completion", {"textDocument": {"uri": path.as_uri()},
                                                          "position": {"line": line, "character": character}})
        items = result["items"] if isinstance(result, dict) else result or []
        return [item["label"] for item in items]

    def close(self) -> None:
        self.request("shutdown", None)
        self.notify("exit", None)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LanguageServer]:
    client = LanguageServer([str(SERVER), "--stdio"], tmp_path_factory.mktemp("editor"))
    yield client
    client.close()


MODELINE = f"# yaml-language-server: $schema={schema_path()}\n"  # what `resgraph schema --path` prints
SPEC = """\
resgraph: 1
name: Net
inputs:
  x: [3, 32, 32]
layers:
  - conv: {op: Conv2d, out_channels: 8, kernel_size: 3, paddin: 1}
  - relu: {op: ReLU}
  - conv2:
      op: Con
      out_channels: 8
      kernel_size: 3
"""


def position(text: str, marker: str) -> tuple[int, int]:
    """(line, character) just after the one occurrence of `marker` in `text`."""
    assert text.count(marker) == 1
    before = text[:text.index(marker) + len(marker)]
    return before.count("\n"), len(before) - before.rfind("\n") - 1


def test_a_misspelt_argument_is_flagged_where_it_is(server: LanguageServer, tmp_path: pathlib.Path) -> None:
    text = MODELINE + SPEC
    (diagnostic,) = server.open(tmp_path / "net.yaml", text)
    line, end = position(text, "paddin")
    assert diagnostic["range"] == {"start": {"line": line, "character": end - len("paddin")},
                                   "end": {"line": line, "character": end}}
    assert diagnostic["message"] == "Property paddin is not allowed." and diagnostic["severity"] == 1
    assert "padding" in diagnostic["data"]["properties"]  # the arguments Conv2d does take


def test_completion_offers_op_names(server: LanguageServer, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "complete.yaml"
    text = MODELINE + SPEC
    server.open(path, text)
    labels = server.complete(path, *position(text, "\n      op: Con"))
    assert {"Conv1d", "Conv2d", "Conv3d", "ConvTranspose2d"} <= set(labels)
    assert all(label.startswith("Con") for label in labels)


def test_completion_offers_an_ops_arguments(server: LanguageServer, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "arguments.yaml"
    text = MODELINE + SPEC.replace("op: Con\n", "op: Conv2d\n").replace("out_channels: 8\n      kernel_size: 3", "kern")
    server.open(path, text)
    labels = server.complete(path, *position(text, "\n      kern"))
    assert "kernel_size" in labels and "in_channels" not in labels  # input sizes are inferred, never written


def test_a_block_library_is_checked_as_one(server: LanguageServer, tmp_path: pathlib.Path) -> None:
    library = ("resgraph: 1\nblocks:\n  pair:\n    params: {width: required}\n    layers:\n"
               "      - fc: {op: Linear, out_feature: 4}\n")
    diagnostics = server.open(tmp_path / "library.yaml", MODELINE + library)
    # the library's own mistakes, and no "Missing property name" as if it were a spec
    assert sorted(d["message"] for d in diagnostics) == ['Missing property "out_features".',
                                                         "Property out_feature is not allowed."]


@pytest.mark.parametrize("name", [*sorted(p.name for p in EXAMPLES.glob("*.yaml")), *BLOCK_LIBRARIES])
def test_every_example_is_clean_in_the_editor(server: LanguageServer, name: str) -> None:
    path = EXAMPLES / name  # its own modeline names the repository's copy of the schema, relative to the file
    assert server.open(path, path.read_text()) == []
