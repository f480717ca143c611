"""A local S3-protocol server (moto) on loopback: try ``s3://`` stores, test and benchmark them.

:func:`start_s3_server` runs moto's ``ThreadedMotoServer`` bound to 127.0.0.1 on a free port,
in its own process (its request handling then shares no GIL with the stages that read and
write the store), and returns the process and the endpoint URL. Point s3fs at it with
``AWS_ENDPOINT_URL=<endpoint>`` (and any dummy ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``)
or ``storage_options={"client_kwargs": {"endpoint_url": endpoint}}``. moto keeps objects in
memory: stop the process and they are gone.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from jetscan.core.errors import StorageError

__all__ = ["start_s3_server"]

_SERVER = (
    "import logging, time; logging.disable(logging.INFO)\n"
    "from moto.server import ThreadedMotoServer\n"
    "s = ThreadedMotoServer(ip_address='127.0.0.1', port={port}, verbose=False); s.start()\n"
    "time.sleep(86400)\n"
)


def start_s3_server(timeout_s: float = 60.0) -> tuple[subprocess.Popen, str]:
    """(process, ``http://127.0.0.1:PORT``) of a moto S3 server that accepts connections; stop
    it with ``process.kill()``. A StorageError when it does not start within ``timeout_s``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER.format(port=port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    proc.kill()
    err = (proc.communicate()[1] or b"").decode(errors="replace").strip().splitlines()
    raise StorageError(
        f"the local S3 server (moto) did not start on 127.0.0.1:{port} within {timeout_s:g} s"
        + (f": {err[-1]}" if err else "") + "; is moto[server] installed (pip install 'moto[server]')?"
    )
