"""Loopback load test of the web app: many concurrent gradio_client users against its bounded queue.

    python -m benchmarks.app_load [--clients 20] [--requests 300] [--size 32] [--solver pmrf]

Starts the app in a child process on 127.0.0.1 (a free port, the app's own queue settings: at most QUEUE_SIZE jobs
waiting, one solve at a time), sends ``--warmup`` requests (they load the model), then ``--clients`` users submit
``--requests`` small denoising jobs in all, at once, each user one after another (after a refusal it waits
``--backoff`` seconds, as a polite client would). Every request must end in a result or a clear "queue is full"
refusal: the table counts answered + refused = requests, and any lost (no answer in time) or failed (another error).
Memory: the server process's resident set after the warm-up (start), once half the requests have an outcome (mid), at
the end, and after every 10 answered requests. The first answers also serve the clients' new sessions, so the
server's steady state is judged from the 10th answer on (``rss_growth_after_10_MiB``: end minus that). Kept small
(tiny images, a fast solver with few samples) so the run takes a few minutes on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import warnings

import numpy as np

from benchmarks.common import REPO, table, write_results

COLUMNS = ["clients", "requests", "queue_size", "answered", "refused_queue_full", "failed", "lost",
           "max_queue_rank_seen", "mean_latency_s", "p95_latency_s", "max_refusal_s", "wall_s",
           "rss_before_warmup_MiB", "rss_start_MiB", "rss_mid_MiB", "rss_end_MiB", "rss_growth_MiB",
           "rss_after_10_answered_MiB", "rss_growth_after_10_MiB", "rss_max_after_10_MiB"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(port: int, queue_size: int | None) -> subprocess.Popen:
    """The app in a child process (its memory is then the server's alone, not the clients')."""
    size = "" if queue_size is None else f", queue_size={int(queue_size)}"
    code = f"from app.app import launch; launch(port={port}{size})"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the app did not start:\n{proc.stderr.read()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the app did not answer within 180 s")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--requests", type=int, default=300, help="in all, shared out among the clients")
    ap.add_argument("--size", type=int, default=32, help="side of the square test image, pixels")
    ap.add_argument("--solver", default="pmrf")
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--options", default='{"flow_steps": 2}', help="solver options, JSON")
    ap.add_argument("--queue-size", type=int, default=None, help="default: the app's own (app.app.QUEUE_SIZE)")
    ap.add_argument("--backoff", type=float, default=1.0, help="seconds a refused client waits before its next request")
    ap.add_argument("--warmup", type=int, default=2, help="requests before the test (not counted)")
    ap.add_argument("--timeout", type=float, default=1500, help="seconds for the whole test")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    import psutil
    import skimage.data
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from app import app as webapp
    from restore.io import write_image

    webapp.OUT_ROOT.mkdir(parents=True, exist_ok=True)
    img = webapp.OUT_ROOT / f"load_input_{args.size}.png"
    write_image(img, skimage.data.astronaut()[100:100 + args.size, 150:150 + args.size].astype(np.float32) / 255)
    port = _free_port()
    server = _serve(port, args.queue_size)
    proc = psutil.Process(server.pid)
    rss = lambda: proc.memory_info().rss / 2**20  # noqa: E731
    queue_size = args.queue_size or webapp.QUEUE_SIZE
    url = f"http://127.0.0.1:{port}/"

    def request(client, seed):
        return client.submit(handle_file(str(img)), True, "denoise", 25, 2, 19, 4, "random pixels", 0.5, 0.3, None,
                             args.solver, None, args.samples, seed, None, args.options, "none", api_name="/restore")

    try:
        rss_before = rss()
        warm = Client(url, verbose=False)
        for k in range(args.warmup):  # loads the model, warms the kernels: not counted
            request(warm, k).result(timeout=300)
        clients = [Client(url, verbose=False) for _ in range(args.clients)]
        rss_start = rss()
        outcomes, latencies, refusal_s, ranks, errors, mid, trace = [], [], [], [], [], [], []
        lock = threading.Lock()
        deadline = time.time() + args.timeout
        share = [args.requests // args.clients + (i < args.requests % args.clients) for i in range(args.clients)]

        def record(kind, i, k, seconds, message=""):
            with lock:
                outcomes.append(kind)
                if kind == "answered":
                    latencies.append(seconds)
                elif kind == "refused":
                    refusal_s.append(seconds)
                else:
                    errors.append(f"client {i} request {k}: {message}")
                if len(outcomes) == args.requests // 2:
                    mid.append(rss())
                if kind == "answered" and len(latencies) % 10 == 0:  # memory against work done
                    trace.append([len(latencies), round(rss(), 1)])

        def user(i):
            for k in range(share[i]):
                if time.time() > deadline:
                    return  # the rest count as lost
                t0 = time.time()
                try:
                    job = request(clients[i], 1000 * i + k)
                    while not job.done() and time.time() < deadline:
                        st = job.status()
                        if st.rank is not None:
                            with lock:
                                ranks.append(st.rank)
                        time.sleep(0.05)
                    job.result(timeout=max(1, deadline - time.time()))
                    record("answered", i, k, time.time() - t0)
                except Exception as exc:  # noqa: BLE001  (every outcome is counted, none raised)
                    text = f"{type(exc).__name__}: {exc}"
                    if "queue is full" in text.lower():
                        record("refused", i, k, time.time() - t0)
                        time.sleep(args.backoff)
                    else:
                        record("failed", i, k, time.time() - t0, text if not isinstance(exc, AppError) else str(exc))

        threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(args.clients)]
        t0 = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(1, deadline - time.time()))
        wall = time.time() - t0
        rss_end = rss()
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    n = {k: outcomes.count(k) for k in ("answered", "refused", "failed")}
    row = {"clients": args.clients, "requests": args.requests, "queue_size": queue_size, "answered": n["answered"],
           "refused_queue_full": n["refused"], "failed": n["failed"], "lost": args.requests - len(outcomes),
           "max_queue_rank_seen": max(ranks) if ranks else None,
           "mean_latency_s": float(np.mean(latencies)) if latencies else None,
           "p95_latency_s": float(np.percentile(latencies, 95)) if latencies else None,
           "max_refusal_s": float(max(refusal_s)) if refusal_s else None, "wall_s": wall,
           "rss_before_warmup_MiB": rss_before, "rss_start_MiB": rss_start, "rss_mid_MiB": mid[0] if mid else None,
           "rss_end_MiB": rss_end, "rss_growth_MiB": rss_end - rss_start,
           # the first answers also warm up the 20 new sessions and the server's threads: growth after them is what
           # a long-running server would see per request
           "rss_after_10_answered_MiB": trace[0][1] if trace else None,
           "rss_growth_after_10_MiB": rss_end - trace[0][1] if trace else None,
           "rss_max_after_10_MiB": max(m for _, m in trace) if trace else None}
    print(table([row], COLUMNS))
    for e in errors[:20]:
        print(e)
    settings = {"image": f"{args.size}x{args.size}", "task": "denoise 25/255 (simulated)", "solver": args.solver,
                "samples": args.samples, "options": json.loads(args.options), "backoff_s": args.backoff,
                "warmup_requests": args.warmup}
    print("RSS (MiB) after every 10 answered requests:", " ".join(f"{n}:{m:.0f}" for n, m in trace))
    path = write_results("app_load", {"settings": settings, "rows": [row], "rss_by_answered_MiB": trace,
                                      "errors": errors})
    print(f"wrote {path}")
    return row


if __name__ == "__main__":
    main()
