"""A stand-in simulator server for tests of ``zerosearch.serving``.

    python fake_server.py --port N [--host H] [--mode ok|exit|never] [--delay S]
                          [--pid-file F] [--child-pid-file F] [--ignore-term] [--env-file F]

ok: after ``--delay`` seconds, answers /health, /v1/models and /v1/completions (echoing
the prompt). exit: prints an error and exits 3. never: listens but /health answers 503.
``--pid-file``: writes its own pid there. ``--child-pid-file``: spawns a sleeping child
(same process group) and writes its pid there. ``--ignore-term``: ignores SIGTERM (only
SIGKILL stops it). ``--env-file``: writes its CUDA_VISIBLE_DEVICES there (JSON; null if unset).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=["ok", "exit", "never"], default="ok")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--pid-file")
    ap.add_argument("--child-pid-file")
    ap.add_argument("--ignore-term", action="store_true")
    ap.add_argument("--env-file")
    args = ap.parse_args()

    print(f"fake server pid {os.getpid()} starting", flush=True)
    if args.pid_file:
        with open(args.pid_file, "w") as f:
            f.write(str(os.getpid()))
    if args.env_file:
        with open(args.env_file, "w") as f:
            json.dump({"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}, f)
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.mode == "exit":
        print("FATAL: fake model weights not found", file=sys.stderr, flush=True)
        sys.exit(3)
    if args.child_pid_file:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open(args.child_pid_file, "w") as f:
            f.write(str(child.pid))
    time.sleep(args.delay)
    healthy = args.mode == "ok"

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            if not healthy:
                self._send(503, {"status": "loading"})
            elif self.path == "/health":
                self._send(200, {"status": "ok"})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
            else:
                self._send(404, {"detail": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if healthy and self.path == "/v1/completions":
                self._send(200, {"choices": [{"index": 0, "text": f"echo: {body.get('prompt')}"}]})
            else:
                self._send(503 if not healthy else 404, {"detail": "unavailable"})

        def log_message(self, fmt: str, *a: object) -> None:
            print(fmt % a, flush=True)

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"listening on {args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
