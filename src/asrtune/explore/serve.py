"""``asrtune explore --serve``: the page and its audio over HTTP on localhost, for a page on a remote machine.

The page refers to its clips by paths relative to itself (``../data/test/a.wav``), so the server's root
is the deepest folder holding the page and every clip, and each file keeps its path below it. Only the
page and the clips it plays are served (with byte ranges, which media elements ask for); any other path
is 404, so the root's other files stay private. It binds 127.0.0.1: reach it from another machine
through an SSH tunnel (``ssh -L PORT:127.0.0.1:PORT host``).
"""

from __future__ import annotations

import mimetypes
import os
import posixpath
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from asrtune.errors import AsrtuneError

__all__ = ["PageServer", "start_server"]

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class PageServer:
    """A running server; ``url`` opens the page, ``close()`` stops it."""

    def __init__(self, httpd: ThreadingHTTPServer, page_path: str):
        self.httpd = httpd
        self.url = f"http://127.0.0.1:{httpd.server_address[1]}/{quote(page_path)}"
        self.thread = threading.Thread(target=httpd.serve_forever, daemon=True)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(files: dict[str, Path]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args) -> None:
            pass  # quiet: the terminal keeps the URL

        def do_GET(self) -> None:
            path = files.get(posixpath.normpath(unquote(urlsplit(self.path).path)))
            if path is None or not path.is_file():
                self.send_error(404)
                return
            size = path.stat().st_size
            start, end = 0, size - 1
            match = _RANGE.match(self.headers.get("Range", ""))
            if match and size:
                first, last = match.groups()
                start, end = (size - int(last), size - 1) if not first else (int(first), int(last or end))
                start, end = max(start, 0), min(end, size - 1)
                if start > end:
                    self.send_error(416)
                    return
            self.send_response(206 if match else 200)
            kind = (
                "text/html; charset=utf-8" if path.suffix == ".html" else mimetypes.guess_type(path.name)[0]
            )
            self.send_header("Content-Type", kind or "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start + 1 if size else 0))
            if match:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            with path.open("rb") as handle:
                handle.seek(start)
                self.wfile.write(handle.read(end - start + 1) if size else b"")

    return Handler


def start_server(page: Path, audio: list[str], *, port: int = 8000) -> PageServer:
    """Serve ``page`` and its ``audio`` files on 127.0.0.1 (``port`` 0: any free one), in a thread.

    Raises:
        AsrtuneError: the port is not one, or cannot be bound.
    """
    if not 0 <= port <= 65535:
        raise AsrtuneError(f"--port {port}: a port is 0 (any free one) to 65535")
    paths = [Path(page).resolve(), *(Path(a).resolve() for a in audio)]
    root = Path(os.path.commonpath([p.parent for p in paths]))
    files = {"/" + p.relative_to(root).as_posix(): p for p in paths}
    try:
        httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(files))
    except OSError as error:
        raise AsrtuneError(
            f"cannot serve on 127.0.0.1:{port}: {error.strerror or error} (try --port 0)"
        ) from error
    server = PageServer(httpd, paths[0].relative_to(root).as_posix())
    server.thread.start()
    return server
