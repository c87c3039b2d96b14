"""The resampled shard reader (``data.loader=resampled``) against the random-access stream
loader, on the same WebDataset shards; and what an exact resume costs it.

1. Throughput: K = 2 views of 64 px (``cifar`` preset) of generated 96×96 JPEG shards, over
   ``--batches`` batches of 256 after one warm-up batch, at 0 and ``--workers`` DataLoader
   workers:
   * ``stream (local files)``: ``StreamBatches`` on the shards indexed for random access;
   * ``resampled (file|http|pipe:cat)``: ``ResampledBatches`` reading the shards in order from
     the local files, from an HTTP server on 127.0.0.1 (a thread of this process), and through
     ``pipe:cat``.
2. Resume: seconds to the first batch of a resampled epoch started at step 0 and at step
   ``steps/2`` (the resumed stream reads, without decoding, the samples of the steps done).

Loopback HTTP measures the reader, not a network. OMP_WAIT_POLICY=PASSIVE; compare ratios.

    python benchmarks/remote_shards.py [--images 4096] [--workers 2] [--out results/remote_shards.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import functools
import http.server
import tempfile
import threading
import time
from pathlib import Path

import torch

from manifold_ssl.data.files import index_shards
from manifold_ssl.data.remote import shard_urls
from manifold_ssl.data.resampled import ResampledBatches
from manifold_ssl.data.stream import Layout, StreamBatches
from manifold_ssl.data.synthetic import write_shards
from manifold_ssl.data.views import MultiViewAugment, dataset_preset
from manifold_ssl.runinfo import run_metadata, write_json

BATCH, SIZE = 256, 64


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def _serve(folder: Path) -> tuple[str, http.server.ThreadingHTTPServer]:
    handler = functools.partial(_Quiet, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}", httpd


def _rate(batches: object, n: int) -> float:
    """Views per second over n batches after one warm-up batch."""
    batches.start_epoch(0, 0)  # type: ignore[attr-defined]
    batches.next_views()  # type: ignore[attr-defined]
    start = time.perf_counter()
    for _ in range(n):
        batches.next_views()  # type: ignore[attr-defined]
    return n * BATCH * 2 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("results/remote_shards.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    aug = MultiViewAugment(dataset_preset("cifar", (0.5,) * 3, (0.25,) * 3, size=SIZE), 2)
    layout = Layout(BATCH, seed=0)
    rows, resume = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "shards"
        last = args.shards - 1
        write_shards(folder, 10, {"train": args.images}, side=96, shards=args.shards)
        pattern = f"{{split}}-{{000000..{last:06d}}}.tar"
        files = index_shards(str(folder / pattern), "train", Path(tmp) / "data")
        base, httpd = _serve(folder)
        sources = {
            "resampled (file)": str(folder / pattern),
            "resampled (http)": f"{base}/{pattern}",
            "resampled (pipe:cat)": f"pipe:cat {folder}/{pattern}",
        }
        for workers in (0, args.workers):
            stream = StreamBatches(files, aug, layout, SIZE, workers, 2, workers > 0)
            rows.append(("stream (local files)", workers, _rate(stream, args.batches)))
            for name, path in sources.items():
                batches = ResampledBatches(
                    shard_urls(path, "train"), files.classes, aug, layout, SIZE,
                    args.images, 8, 512, "raise", workers, 2, workers > 0,
                )  # fmt: skip
                rows.append((name, workers, _rate(batches, args.batches)))
        steps = args.images // BATCH
        batches = ResampledBatches(
            shard_urls(sources["resampled (http)"], "train"), files.classes, aug, layout, SIZE,
            args.images, 8, 512, "raise", 0, 2, False,
        )  # fmt: skip
        for start in (0, steps // 2):
            t = time.perf_counter()
            batches.start_epoch(0, start)
            batches.next_views()
            resume[f"first batch at step {start} of {steps} (s)"] = time.perf_counter() - t
        httpd.shutdown()
    print(f"{'source':<24} {'workers':>7} {'views/s':>9}")
    for name, workers, rate in rows:
        print(f"{name:<24} {workers:>7} {rate:9.0f}")
    for key, value in resume.items():
        print(f"resampled over http, {key}: {value:.2f}")
    write_json(
        Path(__file__).parent / args.out,
        {
            "views_per_second": [{"source": n, "workers": w, "rate": r} for n, w, r in rows],
            "resume": resume,
            "settings": vars(args) | {"out": str(args.out), "batch": BATCH, "size": SIZE},
            "meta": run_metadata(0),
        },
    )


if __name__ == "__main__":
    main()
