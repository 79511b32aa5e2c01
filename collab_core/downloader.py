"""NVFlare Fox's downloader names (``nvflare.fox.sys.downloader``), for programs that stream large
models: ``Downloader(...).add_tensors(...) / add_arrays(...) / add_file(...)`` make a reference the
program sends in a call or result, and ``download_tensors / download_arrays / download_file`` on the
other side return ``(error, object)``.

collab needs no side channel for this: its wire format already sends arrays and tensors as
out-of-band buffers in chunks, without a message size cap, so a reference here carries the data
itself and the download hands it back. Programs keep working unchanged; new code passes tensors as
arguments and results directly.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

#: the key that marks a reference (a plain dict, so it crosses the wire like any other value)
REF_KEY = "__collab_download__"


class Downloader:
    """Makes references to tensors, arrays and files. ``num_receivers`` and ``timeout`` are
    accepted for compatibility: the data travels inside the reference."""

    def __init__(self, num_receivers: int = 1, timeout: float = 5.0, **_: Any):
        self.num_receivers = num_receivers
        self.timeout = timeout

    def add_tensors(self, tensors: Any, max_chunk_size: int = 0) -> dict[str, Any]:
        return {REF_KEY: "tensors", "data": tensors}

    def add_arrays(self, arrays: Any, max_chunk_size: int = 0) -> dict[str, Any]:
        return {REF_KEY: "arrays", "data": arrays}

    def add_file(self, file_name: str, file_downloaded_cb: Callable[..., Any] | None = None,
                 **cb_kwargs: Any) -> dict[str, Any]:
        """A reference holding the file's bytes (read now); ``file_downloaded_cb(receiver, status,
        file_name, **cb_kwargs)`` is called once the reference is made, as no receiver fetches it."""
        with open(file_name, "rb") as f:
            data = f.read()
        if file_downloaded_cb is not None:
            file_downloaded_cb("*", "ok", file_name, **cb_kwargs)
        return {REF_KEY: "file", "data": data, "name": os.path.basename(file_name)}


def _take(ref: Any, kind: str) -> tuple[str | None, Any]:
    if isinstance(ref, dict) and ref.get(REF_KEY) == kind:
        return None, ref.get("data")
    got = ref.get(REF_KEY) if isinstance(ref, dict) else type(ref).__name__
    return f"not a reference to {kind} (made by Downloader.add_{kind}): got {got!r}", None


def download_tensors(ref: Any, per_request_timeout: float = 5.0,
                     tensors_received_cb: Callable[..., Any] | None = None, **cb_kwargs: Any):
    """``(None, tensors)``, or ``(error text, None)`` for something that is not such a reference."""
    err, data = _take(ref, "tensors")
    if err is None and tensors_received_cb is not None:
        tensors_received_cb(data, **cb_kwargs)
    return err, data


def download_arrays(ref: Any, per_request_timeout: float = 5.0,
                    arrays_received_cb: Callable[..., Any] | None = None, **cb_kwargs: Any):
    err, data = _take(ref, "arrays")
    if err is None and arrays_received_cb is not None:
        arrays_received_cb(data, **cb_kwargs)
    return err, data


def download_file(ref: Any, per_request_timeout: float = 5.0) -> tuple[str | None, str | None]:
    """``(None, path)`` of a new temporary file with the referenced bytes (the caller owns it)."""
    err, data = _take(ref, "file")
    if err is not None:
        return err, None
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return f"a file reference holds bytes, got {type(data).__name__}", None
    name = os.path.basename(str(ref.get("name") or "download"))  # a peer's name: no path in it
    fd, path = tempfile.mkstemp(prefix="collab-download-", suffix=f"-{name}")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return None, path
