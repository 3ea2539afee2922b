"""docker's plain progress lines (``<short id>: Pushed``), written whole from any thread."""

from __future__ import annotations

import threading
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        if self._stream is None:
            return
        with self._lock:
            self._stream.write(text + "\n")
            self._stream.flush()

    def item(self, short: str, status: str) -> None:
        self.line(f"{short}: {status}")
