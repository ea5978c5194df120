"""A Hugging Face hub on 127.0.0.1, serving repos from a folder, so that downloads are tested with no network.

It answers the three requests ``huggingface_hub`` makes to fetch a file: the repo's file tree
(``/api/models/ORG/NAME/tree/REV``), a HEAD of the file (commit, ETag and size headers) and its
GET. A repo is a folder ``root/ORG/NAME`` holding the files as the hub would.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class LocalHub:
    """``with LocalHub(root) as hub:`` serves ``root`` at ``hub.url``; ``hub.requests`` lists the paths asked for.
    ``delay`` seconds before each file's body make a download slow enough for a person (or a test) to watch."""

    def __init__(self, root: Path, delay: float = 0.0):
        self.root, self.requests, self.delay = Path(root), [], delay
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output quiet
                pass

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "LocalHub":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlparse(handler.path).path).strip("/")
        self.requests.append(f"{handler.command} /{path}")
        parts = path.split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "tree":
            return self._tree(handler, self.root / parts[2] / parts[3], body)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._file(handler, self.root / parts[0] / parts[1], "/".join(parts[4:]), body)
        self._send(handler, 404, b'{"error": "not found"}', {"X-Error-Code": "RepoNotFound"}, body)

    def _tree(self, handler, repo: Path, body: bool) -> None:
        if not repo.is_dir():
            return self._send(handler, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"},
                              body)
        files = [{"type": "file", "path": p.relative_to(repo).as_posix(), "size": p.stat().st_size,
                  "oid": hashlib.sha1(p.read_bytes()).hexdigest()} for p in sorted(repo.rglob("*")) if p.is_file()]
        self._send(handler, 200, json.dumps(files).encode(), {"Content-Type": "application/json"}, body)

    def _file(self, handler, repo: Path, name: str, body: bool) -> None:
        path = repo / name
        if not repo.is_dir():
            return self._send(handler, 404, b"Repository not found", {"X-Error-Code": "RepoNotFound"}, body)
        if not path.is_file():
            return self._send(handler, 404, b"Entry not found", {"X-Error-Code": "EntryNotFound",
                                                                 "X-Repo-Commit": COMMIT}, body)
        data = path.read_bytes()
        if body:
            time.sleep(self.delay)
        self._send(handler, 200, data, {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                                        "Content-Type": "application/octet-stream"}, body)

    @staticmethod
    def _send(handler, status: int, data: bytes, headers: dict, body: bool) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if body:
            handler.wfile.write(data)


def save_tiny_dinov2(folder: Path) -> None:
    """A random DINOv2 of 28-pixel inputs and 32 features, saved as transformers saves it, with its preprocessor."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                          image_size=28, patch_size=14)
    Dinov2Model(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": 28, "width": 28}, "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225], "resample": 3, "size": {"shortest_edge": 32}}))
