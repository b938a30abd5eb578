"""`eurosat serve` under load: N concurrent clients on loopback, latency, throughput, memory, and the
served throughput against the engine's own batch throughput on the same machine, in one run.

    python benchmarks/serve_load.py --checkpoint models/best.ckpt                  # 16 clients, 2,000 requests
    python benchmarks/serve_load.py --checkpoint models/best.ckpt --files-per-request 8 --views 8
    python benchmarks/serve_load.py --checkpoint CKPT --smoke --out /tmp/serve.json   # tiny numbers (tests)

Each configuration (by default: the micro-batcher as served, and no batching, one image per engine
call) starts `eurosat serve` in its own process on a free loopback port, warms it up, then
``--clients`` threads (one HTTP connection each, kept alive) send ``--requests`` POST /predict
requests of ``--files-per-request`` patches, as fast as the answers come back. It prints p50/p99
latency, images/s served, failed requests (any status but 200), and the server's resident memory
after the warm-up, its peak during the run and at the end (Linux /proc). The engine's own figure is
``Predictor.classify`` on batches of ``--batch-size`` of the same decoded patches, in this process,
with the server stopped: ratio = served images/s / engine images/s.

The patches: 64 x 64 JPEGs of the demo's SYNTHETIC generator for an 8-bit RGB model, else TIFFs of
random values with the model's bands and value type. The clients run on the same cores as the
server (a loopback test measures the service and its client together): run it alone, it prints the
load average before and after, and the CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from eurosat_pipeline.core.dataspec import DataSpec
from eurosat_pipeline.platform.accelerators import cpu_kind

REPO = Path(__file__).resolve().parents[1]


def patches(data: DataSpec, count: int) -> list[tuple[str, bytes]]:
    """``count`` different patch files the model takes: (name, bytes)."""
    if data.is_rgb8:
        from PIL import Image

        from eurosat_pipeline.data.sources.synthetic import synthetic_images

        blobs = [blob for _, _, blob in synthetic_images(max(1, -(-count // len(data.classes))))][:count]
        files = []
        for n, blob in enumerate(blobs):
            buffer = io.BytesIO()
            Image.open(io.BytesIO(blob)).convert("RGB").save(buffer, format="JPEG", quality=95)
            files.append((f"patch-{n}.jpg", buffer.getvalue()))
        return files
    return [(f"patch-{n}.tif", _random_tiff(data, n)) for n in range(count)]


def _random_tiff(data: DataSpec, seed: int) -> bytes:
    import warnings

    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    size = data.patch_size or 64
    top = 255 if data.dtype == "uint8" else 4000
    pixels = np.random.default_rng(seed).integers(0, top, (data.in_chans, size, size)).astype(data.dtype)
    with warnings.catch_warnings(), MemoryFile() as memory:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        profile = {"driver": "GTiff", "width": size, "height": size, "count": data.in_chans, "dtype": data.dtype}
        with memory.open(**profile) as dst:
            dst.write(pixels)
        return memory.read()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """`eurosat serve` in its own process, on a free loopback port."""

    def __init__(self, model: list[str], options: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "eurosat_pipeline.cli.main", "serve", *model, *options]
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - the server's output, closed by stop()
        self.process = subprocess.Popen([*command, "--port", str(self.port)], stdout=self.log, stderr=self.log)

    def wait(self, timeout: float = 180) -> dict[str, Any]:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"eurosat serve exited ({self.process.returncode}):\n{self.log.read()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/health", timeout=5).raise_for_status().json()
            except httpx.HTTPError:
                time.sleep(0.3)
        raise RuntimeError("eurosat serve did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


def load(url: str, files: list[tuple[str, bytes]], clients: int, requests: int, per_request: int) -> dict[str, Any]:
    """``requests`` POST /predict from ``clients`` threads: latencies, failures, wall time."""
    import httpx

    latencies: list[float] = []
    failures: list[str] = []
    next_request = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while True:
                with lock:
                    number = next(next_request, None)
                if number is None:
                    return
                chosen = [files[(number * per_request + i) % len(files)] for i in range(per_request)]
                started = time.perf_counter()
                try:
                    response = http.post("/predict", files=[("files", f) for f in chosen])
                    ok = response.status_code == 200 and len(response.json()["results"]) == per_request
                    problem = None if ok else f"{response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as err:
                    problem = repr(err)
                with lock:
                    latencies.append(time.perf_counter() - started)
                    if problem:
                        failures.append(problem)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"seconds": time.perf_counter() - started, "latencies": latencies, "failures": failures}


def serve_row(name: str, args: argparse.Namespace, model: list[str], options: list[str], files: list) -> dict:
    server = Server(model, [*options, "--views", str(args.views)])
    try:
        health = server.wait()
        # The warm-up is a tenth of the run, the same load: the engine's buffers for its batch sizes settle.
        warm = load(server.url, files, args.clients, max(args.clients, args.requests // 10), args.files_per_request)
        if warm["failures"]:
            raise RuntimeError(f"warm-up failed: {warm['failures'][:3]}")
        start_mb = rss_mb(server.process.pid)
        peak = {"mb": start_mb}
        done = threading.Event()

        def sample() -> None:  # the server's memory through the run, twice a second
            while not done.wait(0.5):
                peak["mb"] = max(peak["mb"], rss_mb(server.process.pid))

        sampler = threading.Thread(target=sample)
        sampler.start()
        run = load(server.url, files, args.clients, args.requests, args.files_per_request)
        done.set()
        sampler.join()
        end_mb = rss_mb(server.process.pid)
        batching = _health(server.url)["batching"]
    finally:
        server.stop()
    latencies = np.array(run["latencies"]) * 1000
    images = args.requests * args.files_per_request
    return {
        "server": name,
        "engine": health["model"]["engine"],
        "clients": args.clients,
        "requests": args.requests,
        "files_per_request": args.files_per_request,
        "failed_requests": len(run["failures"]),
        "failures_seen": run["failures"][:5],
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "images_per_s": images / run["seconds"],
        "images_per_engine_call": batching["images"] / max(batching["engine_calls"], 1),
        "rss_mb_after_warmup": start_mb,
        "rss_mb_peak": peak["mb"],
        "rss_mb_end": end_mb,
    }


def _health(url: str) -> dict[str, Any]:
    import httpx

    return httpx.get(f"{url}/health", timeout=30).json()


def _model_options(args: argparse.Namespace, views: int) -> Any:
    from eurosat_pipeline.inference.options import ModelOptions

    onnx_file = str(args.onnx) if args.onnx else None
    return ModelOptions(str(args.checkpoint), onnx_file, engine=args.engine, views=views, batch_size=args.batch_size)


def engine_images_per_s(args: argparse.Namespace, files: list[tuple[str, bytes]], seconds: float) -> dict:
    """``Predictor.classify`` on batches of the decoded patches, as the server's engine runs them."""
    from eurosat_pipeline.inference.engines import load_predictor
    from eurosat_pipeline.inference.images import read_image_bytes

    predictor = load_predictor(_model_options(args, args.views))
    decoded = [read_image_bytes(raw, name, predictor.data) for name, raw in files]
    batch = np.stack([decoded[i % len(decoded)] for i in range(args.batch_size)])
    predictor.classify(batch)  # warm-up
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or count < 3 * len(batch):
        predictor.classify(batch)
        count += len(batch)
    return {"images_per_s": count / (time.perf_counter() - started), "batch_size": len(batch)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=REPO / "models" / "best.ckpt")
    parser.add_argument("--onnx", type=Path, help="serve this ONNX file instead")
    parser.add_argument("--engine", choices=("auto", "pytorch", "onnxruntime"), default="auto")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--files-per-request", type=int, default=1)
    parser.add_argument("--views", type=int, default=1, help="test-time views (serve's default is 8)")
    parser.add_argument("--batch-size", type=int, default=256, help="the most images per engine call")
    parser.add_argument("--batch-wait-ms", type=float, default=0.0)
    parser.add_argument("--no-compare", action="store_true", help="only the served configuration, not also unbatched")
    parser.add_argument("--out", type=Path, help="JSON file for the figures")
    parser.add_argument("--smoke", action="store_true", help="tiny numbers: checks the script, not the speed")
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.requests = 2, 12
    model = ["--onnx", str(args.onnx)] if args.onnx else ["--checkpoint", str(args.checkpoint)]
    model += ["--engine", args.engine]
    configurations = {
        f"micro-batching (up to {args.batch_size} images, {args.batch_wait_ms:g} ms wait)": [
            "--batch-size",
            str(args.batch_size),
            "--batch-wait-ms",
            str(args.batch_wait_ms),
        ],
        "no batching (one image per engine call)": ["--batch-size", "1", "--batch-wait-ms", "0"],
    }
    if args.no_compare:
        configurations = dict(list(configurations.items())[:1])

    from eurosat_pipeline.inference.engines import load_predictor

    data = load_predictor(_model_options(args, 1)).data
    files = patches(data, 64)
    load_before = os.getloadavg()[0]
    cpu = cpu_kind().describe()
    print(f"load average {load_before:.2f}; {os.cpu_count()} cores: {cpu}")
    rows = [serve_row(name, args, model, options, files) for name, options in configurations.items()]
    engine = engine_images_per_s(args, files, 1.0 if args.smoke else 10.0)
    for row in rows:
        row["engine_images_per_s"] = engine["images_per_s"]
        row["ratio_to_engine"] = row["images_per_s"] / engine["images_per_s"]
    _print_table(rows, engine, args)
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
        "engine": engine,
        "results": rows,
    }
    print(f"load average after {report['load_average_after']:.2f}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    failed = sum(row["failed_requests"] for row in rows)
    return 1 if failed else 0


def _print_table(rows: list[dict[str, Any]], engine: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"{args.clients} clients, {args.requests} requests of {args.files_per_request} patch(es), "
        f"{args.views} view(s); engine alone: {engine['images_per_s']:,.0f} images/s in batches of "
        f"{engine['batch_size']} ({rows[0]['engine']})"
    )
    columns = ("server", "p50", "p99", "images/s", "of the engine's", "images per engine call", "failed")
    print(f"| {' | '.join(columns)} | RSS MB: start, peak, end |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        memory = f"{r['rss_mb_after_warmup']:,.0f}, {r['rss_mb_peak']:,.0f}, {r['rss_mb_end']:,.0f}"
        print(
            f"| {r['server']} | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {r['images_per_s']:,.0f} | "
            f"{r['ratio_to_engine']:.0%} | {r['images_per_engine_call']:.1f} | {r['failed_requests']} | {memory} |",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
