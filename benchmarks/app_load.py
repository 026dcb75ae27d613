"""Loopback load test of the web app: several concurrent gradio_client users, bounded in count and time.

    python -m benchmarks.app_load [--clients 4] [--requests 2]

Launches the app in-process on 127.0.0.1 (a free port), then each client submits small denoising jobs at once.
Reports: every request answered (none lost), the queue ranks the clients were told, latency, and the server
process's resident memory before and after (it should stay flat: no per-request leak).
"""

from __future__ import annotations

import argparse
import threading
import time
import warnings

import numpy as np

from benchmarks.common import table, write_results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=2, help="per client")
    ap.add_argument("--timeout", type=float, default=600, help="seconds for the whole test")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    import psutil
    import skimage.data
    from gradio_client import Client, handle_file

    from app import app as webapp
    from restore.io import write_image

    img = webapp.OUT_ROOT / "load_input.png"
    write_image(img, skimage.data.astronaut()[100:164, 150:214].astype(np.float32) / 255)
    demo = webapp.launch(host="127.0.0.1", port=None, block=False)
    proc = psutil.Process()
    rss = [proc.memory_info().rss / 2**20]
    results, ranks, errors = [], [], []
    deadline = time.time() + args.timeout

    def user(i):
        client = Client(demo.local_url, verbose=False)
        for k in range(args.requests):
            t0 = time.time()
            job = client.submit(handle_file(str(img)), True, "denoise", 25, 2, 19, 4, "random pixels", 0.5, 0.3,
                                None, "langevin", "wavelet", 2, i * 100 + k, None, '{"iterations": 40}', "none",
                                api_name="/restore")
            while not job.done() and time.time() < deadline:
                st = job.status()
                if st.rank is not None:
                    ranks.append(st.rank)
                time.sleep(0.05)
            try:
                job.result(timeout=max(1, deadline - time.time()))
                results.append(time.time() - t0)
            except Exception as exc:  # counted, not raised: the test reports lost requests
                errors.append(f"client {i} request {k}: {type(exc).__name__}: {exc}")
            rss.append(proc.memory_info().rss / 2**20)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(args.clients)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1, deadline - time.time()))
    demo.close()
    total = args.clients * args.requests
    row = {"clients": args.clients, "requests": total, "answered": len(results), "lost": total - len(results),
           "max_queue_rank_seen": max(ranks) if ranks else None, "mean_latency_s": float(np.mean(results)) if results
           else None, "wall_s": time.time() - t0, "rss_start_MiB": rss[0], "rss_after_first_round_MiB": rss[min(
               args.clients, len(rss) - 1)], "rss_end_MiB": rss[-1]}
    print(table([row], list(row)))
    for e in errors:
        print(e)
    path = write_results("app_load", {"rows": [row], "errors": errors})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
