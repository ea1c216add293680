"""Model-loading benchmark: Swell's loader against its peers and the hardware, cold and warm.

    flock /tmp/swell-bench.lock .venv/bin/python bench/load.py --sizes 2,8 --rounds 3 --remote-mb 1024

Part 1 loads the same generated safetensors files with every loader, each case in a fresh process
(so peak RSS is the case's own), cold (page cache dropped for the file: posix_fadvise DONTNEED, checked
with fincore) and warm. Each round runs every case once and measures the limits again: fio's best of
a few deep-queued O_DIRECT reads (cold), a memcpy into already-touched memory (warm), and how fast the
machine hands out the file's size of new memory. Rates are medians over rounds; each ratio is taken
within a round, then its median. Part 2 starts 4 processes that load one remote file through a
bandwidth-limited HTTP origin on loopback, via the node cache and then each streaming its own copy, and
counts the origin's bytes and the time until all four are loaded. Every loaded tensor is materialised
the same way: one byte of every page is summed.

With `--device cuda`, part 1 loads to the GPU (the warm limit is then a pinned host-to-device copy):

    .venv/bin/python bench/load.py --device cuda --sizes 2,8 --rounds 1 --remote-mb 0
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
LOADERS = (
    "swell",
    "swell-read",
    "safetensors",
    "safetensors-clone",
    "runai",
    "fastsafetensors",
    "plain-read",
)
Run = dict[str, Any]  # one case's figures, as printed
PACKAGES = {"runai": "runai_model_streamer", "fastsafetensors": "fastsafetensors"}  # optional peers
SHAPES = [
    (4096, 4096, "BF16"),
    (11008, 4096, "BF16"),
    (4096, 11008, "BF16"),
    (4096, "F32"),
    (32000, 4096, "BF16"),
]


# -- files ------------------------------------------------------------------------------------------


def generate(path: Path, size_bytes: int) -> None:
    """A safetensors file of about `size_bytes` with transformer-like shapes and random bits."""
    import numpy as np

    entries: dict[str, dict[str, object]] = {}
    offset, layer = 0, 0
    while offset < size_bytes:
        for shape in SHAPES:
            if offset >= size_bytes:
                break
            dims, dtype = [int(d) for d in shape[:-1]], str(shape[-1])
            nbytes = int(np.prod(dims)) * (2 if dtype == "BF16" else 4)
            name = f"model.layers.{layer}.w{len(entries)}"
            entries[name] = {"dtype": dtype, "shape": list(dims), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        layer += 1
    header = json.dumps(entries).encode()
    header += b" " * (-len(header) % 8)
    block = np.random.default_rng(0).integers(0, 256, 64 << 20, dtype=np.uint8).tobytes()
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        left = offset
        while left:
            piece = block[: min(left, len(block))]
            f.write(piece)
            left -= len(piece)
    os.replace(tmp, path)


def drop_cache(path: Path) -> float:
    """Drop the file's pages; returns the fraction still resident (fincore), 0.0 when it worked."""
    from swell.data.readers import drop_page_cache

    drop_page_cache(path)
    try:
        out = subprocess.run(["fincore", "-bn", "-o", "RES", str(path)], capture_output=True, text=True)
        return int(out.stdout.split()[0]) / path.stat().st_size
    except (OSError, ValueError, IndexError):
        return float("nan")


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


# -- one case, in its own process -------------------------------------------------------------------


def touch(tensors: dict) -> int:  # type: ignore[type-arg]
    """Materialise every page of every tensor (one byte per 4 KiB page); on a GPU, wait for the copies."""
    import torch

    if any(t.is_cuda for t in tensors.values()):
        torch.cuda.synchronize()
        if not all(t.is_cuda for t in tensors.values()):
            raise SystemExit("a loader left tensors off the GPU")
        return 0
    total = 0
    for t in tensors.values():
        if t.numel():
            flat = t.reshape(-1).view(torch.uint8)
            total += int(flat[::4096].sum())
    return total


def _importer(loader: str, device: str):  # type: ignore[no-untyped-def]
    """Import the loader's package outside the timed region; return a function path -> tensors.

    For a GPU, each loader does what its users do: swell, safetensors and fastsafetensors load to the
    device themselves; runai streams to the host and each tensor is moved as it comes (vLLM's way);
    the plain read moves its one buffer.
    """
    import torch

    if loader.startswith("swell"):
        from swell.data import load_safetensors

        mode = "read" if loader == "swell-read" else "auto"
        return lambda path: load_safetensors(path, device, mode=mode)
    if loader.startswith("safetensors"):
        from safetensors.torch import load_file

        if loader == "safetensors-clone":  # private memory, like the loaders that copy
            return lambda path: {k: t.clone() for k, t in load_file(path).items()}
        return lambda path: load_file(path, device=device)
    if loader == "runai":
        from runai_model_streamer import SafetensorsStreamer

        def runai(path: Path) -> dict:  # type: ignore[type-arg]
            with SafetensorsStreamer() as streamer:
                streamer.stream_file(str(path))
                tensors = {k: t.to(device) for k, t in streamer.get_tensors()}
                touch(tensors)
                return tensors

        return runai
    if loader == "fastsafetensors":
        from fastsafetensors import fastsafe_open

        def fast(path: Path) -> dict:  # type: ignore[type-arg]
            with fastsafe_open(filenames=[str(path)], device=device, nogds=True) as f:
                return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)

        return fast
    if loader == "plain-read":

        def plain(path: Path) -> dict:  # type: ignore[type-arg]
            buf = torch.empty(path.stat().st_size, dtype=torch.uint8)
            view, done = buf.numpy().data, 0
            with open(path, "rb", buffering=0) as f:
                while done < len(view):  # one read(2) returns at most about 2 GiB
                    done += f.readinto(view[done : done + (1 << 30)]) or len(view)
            return {"all": buf.to(device)}

        return plain
    raise SystemExit(f"unknown loader {loader}")


def run_case(loader: str, path: Path, device: str) -> dict[str, float]:
    load = _importer(loader, device)
    start = time.perf_counter()
    tensors = load(path)
    touch(tensors)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "gbps": path.stat().st_size / seconds / 1e9, "peak_rss": peak_rss()}


def fresh_memory(size: int) -> float:
    """How fast this machine hands out `size` bytes of new memory, touched by every core at once.

    Every loader that returns the file's bytes needs that much new memory (private memory for the
    copying loaders, page cache for the mapping ones), so on a VM where first touch is slow this, not
    the disk, can be the ceiling.
    """
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from swell.data.readers import aligned_buffer

    pages = np.frombuffer(aligned_buffer(size), dtype=np.uint8)  # the memory swell's loader reads into
    step = 64 << 20

    def touch(a: int) -> None:
        pages[a : a + step : 4096] = 1  # numpy drops the GIL in the loop

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(touch, range(0, size, step)))
    return size / (time.perf_counter() - start) / 1e9


def peak_rss() -> int:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited through exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def in_subprocess(loader: str, path: Path, device: str = "cpu") -> Run:
    cmd = [sys.executable, __file__, "--case", loader, "--file", str(path), "--device", device]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- limits -----------------------------------------------------------------------------------------


FIO_QUEUES = (("8M", 16), ("16M", 64), ("32M", 64))  # (block, depth): the best one is the limit


def fio_limit(path: Path) -> float | None:
    """The disk's limit for `path`: the best of deep-queued O_DIRECT reads at a few depths.

    On the development VM the rate grows with the bytes in flight up to about 1 GiB, so one fixed
    queue (QD16 of 8 MiB) is not a ceiling: loaders beat it.
    """
    if not shutil.which("fio"):
        return None
    best = 0.0
    for bs, depth in FIO_QUEUES:
        drop_cache(path)
        cmd = [
            "fio", "--name=limit", f"--filename={path}", "--rw=read", f"--bs={bs}", "--direct=1",
            "--ioengine=libaio", f"--iodepth={depth}", "--numjobs=1", "--output-format=json",
            "--readonly", f"--size={path.stat().st_size}",
        ]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        best = max(best, json.loads(out.stdout)["jobs"][0]["read"]["bw_bytes"] / 1e9)
    return best


def memcpy_limit(size: int = 1 << 30, rounds: int = 5) -> float:
    import numpy as np

    src, dst = np.ones(size, dtype=np.uint8), np.ones(size, dtype=np.uint8)
    best = 0.0
    for _ in range(rounds):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = max(best, size / (time.perf_counter() - t) / 1e9)
    return best


def h2d_limit(device: str, size: int = 1 << 30, rounds: int = 5) -> float:
    """Host-to-device copies from pinned memory: the warm limit of loading to a GPU."""
    import torch

    src = torch.ones(size, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(size, dtype=torch.uint8, device=device)
    best = 0.0
    for _ in range(rounds):
        torch.cuda.synchronize(device)
        t = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize(device)
        best = max(best, size / (time.perf_counter() - t) / 1e9)
    return best


# -- part 2: four processes, one remote origin ---------------------------------------------------------


def _remote_worker(url: str, cache_dir: str | None, go: object, done: object) -> None:
    import torch  # noqa: F401  (the clock starts once every process has imported torch, as a replica has)

    from swell.data import load_safetensors
    from swell.data.cache import NodeCache

    go.wait()  # type: ignore[attr-defined]
    tensors = load_safetensors(url, cache=NodeCache(cache_dir) if cache_dir else None)
    touch(tensors)
    done.put(time.time())  # type: ignore[attr-defined]


def remote_part(size_mb: int, rate: float, procs: int = 4) -> dict[str, float]:
    """`procs` processes load one file through one link of `rate` bytes/s: through one node cache, and
    each streaming its own copy (what loaders without a shared cache do), in the same run."""
    import multiprocessing as mp

    sys.path.insert(0, str(ROOT))
    from tests.data.servers import range_server

    path = OUT / f"remote-{size_mb}mb.safetensors"
    if not path.exists():
        generate(path, size_mb * 1_000_000)
    ctx = mp.get_context("spawn")
    out: dict[str, float] = {
        "dataset_bytes": path.stat().st_size,
        "origin_limit_seconds": path.stat().st_size / rate,
    }
    for case in ("node_cache", "no_cache"):
        with (
            tempfile.TemporaryDirectory(dir=OUT) as cache_dir,
            range_server(OUT, rate=rate) as (url, counter),
        ):
            go, done = ctx.Barrier(procs + 1), ctx.Queue()
            args = (f"{url}/{path.name}", cache_dir if case == "node_cache" else None, go, done)
            workers = [ctx.Process(target=_remote_worker, args=args) for _ in range(procs)]
            for w in workers:
                w.start()
            go.wait()
            start = time.time()
            ends = [done.get(timeout=3600) for _ in workers]
            for w in workers:
                w.join()
            out[f"{case}_origin_bytes"] = counter.bytes
            out[f"{case}_seconds_all_loaded"] = max(ends) - start
    out["speedup"] = out["no_cache_seconds_all_loaded"] / out["node_cache_seconds_all_loaded"]
    return out


# -- report -----------------------------------------------------------------------------------------


def installed(loaders: list[str]) -> list[str]:
    """The loaders whose package is importable; a missing optional peer is skipped, and said so."""
    import importlib.util

    out = []
    for loader in loaders:
        package = PACKAGES.get(loader)
        if package and importlib.util.find_spec(package) is None:
            print(f"skipping {loader}: {package} is not installed", file=sys.stderr, flush=True)
            continue
        out.append(loader)
    return out


def part1(sizes: list[float], loaders: list[str], rounds: int, device: str = "cpu") -> list[Run]:
    """Every case once per round, the limits measured again in each round.

    Rounds, rather than one case repeated, so that the machine's drift (the development VM's disk
    moves by 2x within minutes) reaches every loader alike, and ratios compare runs of one round.
    """
    runs: list[Run] = []
    loaders = installed(loaders)
    if device != "cpu":  # a clone on the host says nothing about loading to a GPU
        loaders = [loader for loader in loaders if loader != "safetensors-clone"]
    for gb in sizes:
        path = OUT / f"model-{gb:g}gb.safetensors"
        if not path.exists():
            generate(path, int(gb * 1e9))
        for round_ in range(rounds):
            limits = {
                "cold": fio_limit(path),
                "warm": memcpy_limit() if device == "cpu" else h2d_limit(device),
            }
            memory = in_subprocess("fresh-memory", path)["gbps"]
            for loader in loaders:
                for mode in ("cold", "warm"):
                    if mode == "cold":
                        resident = drop_cache(path)
                    else:
                        warm(path)
                        resident = 0.0
                    run = in_subprocess(loader, path, device) | {"resident": resident}
                    run |= {"size_gb": gb, "round": round_, "loader": loader, "mode": mode}
                    runs.append(run | {"limit_gbps": limits[mode], "memory_gbps": memory})
                    print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    return runs


PEERS = ("safetensors", "runai", "fastsafetensors")


def ratios(runs: list[Run]) -> list[Run]:
    """Each run with its rate over the limits and over each peer's rate in the same round."""
    rate = {(r["size_gb"], r["mode"], r["round"], r["loader"]): r["gbps"] for r in runs}
    out = []
    for r in runs:
        peers = {peer: rate.get((r["size_gb"], r["mode"], r["round"], peer)) for peer in PEERS}
        against = {"limit": r["limit_gbps"], "memory": r["memory_gbps"], **peers}
        out.append(r | {f"x_{k}": r["gbps"] / v if v else None for k, v in against.items()})
    return out


def summary(runs: list[Run]) -> list[Run]:
    """Per case: the median rate over rounds, and the median of each ratio taken within a round."""
    cases: dict[tuple[object, ...], list[Run]] = {}
    for r in ratios(runs):
        cases.setdefault((r["size_gb"], r["mode"], r["loader"]), []).append(r)
    rows = []
    for (size, mode, loader), mine in cases.items():
        row: Run = {"size_gb": size, "mode": mode, "loader": loader}
        row["gbps"] = statistics.median(r["gbps"] for r in mine)
        for key in ("x_limit", "x_memory", *(f"x_{peer}" for peer in PEERS)):
            values = [r[key] for r in mine if r[key] is not None]
            row[key] = statistics.median(values) if values else None
        rows.append(row | {"peak_rss": max(r["peak_rss"] for r in mine)})
    return rows


def table(rows: list[Run]) -> str:
    lines = [
        "| file | mode | loader | GB/s | x limit | x new memory | x safetensors | x runai "
        "| x fastsafetensors | peak RSS (GB) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        figures = [r[k] for k in ("x_limit", "x_memory", *(f"x_{peer}" for peer in PEERS))]
        cells = " | ".join(f"{x:.2f}" if x else "-" for x in figures)
        lines.append(
            f"| {r['size_gb']:g} GB | {r['mode']} | {r['loader']} | {r['gbps']:.2f} | {cells} | "
            f"{r['peak_rss'] / 1e9:.2f} |"
        )
    return "\n".join(lines)


def limits(runs: list[Run], device: str = "cpu") -> str:
    warm = "memcpy into touched memory" if device == "cpu" else "pinned host-to-device copy"
    lines = []
    for size in dict.fromkeys(r["size_gb"] for r in runs):
        of = [r for r in runs if r["size_gb"] == size and r["loader"] == runs[0]["loader"]]
        for name, mode, key in (
            ("cold: fio, best queue", "cold", "limit_gbps"),
            (f"warm: {warm}", "warm", "limit_gbps"),
            ("new memory, every core", "cold", "memory_gbps"),
        ):
            values = [r[key] for r in of if r["mode"] == mode]
            shown = ", ".join(f"{v:.2f}" if v else "not measured" for v in values)
            lines.append(f"{size:g} GB, {name}: {shown} GB/s (by round)")
    return "\n".join(lines)


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--sizes", default="2,8", help="file sizes in GB, comma-separated")
    parser.add_argument("--loaders", default=",".join(LOADERS))
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every case; medians are kept")
    parser.add_argument("--remote-mb", type=int, default=1024, help="part 2 file size (0: skip)")
    parser.add_argument("--rate-mbps", type=float, default=200.0, help="part 2 origin bandwidth, MB/s")
    parser.add_argument("--device", default="cpu", help="where tensors go: cpu, or cuda[:N] (part 1)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device != "cpu":
        import torch

        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: CUDA is not available on this machine")
    if args.case == "fresh-memory":
        print(json.dumps({"gbps": fresh_memory(args.file.stat().st_size)}))
        return
    if args.case:
        print(json.dumps(run_case(args.case, args.file, args.device)))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    sizes = [float(s) for s in args.sizes.split(",") if s]
    runs = part1(sizes, args.loaders.split(","), args.rounds, args.device)
    print(table(summary(runs)))
    print(limits(runs, args.device))
    if args.remote_mb:
        remote = remote_part(args.remote_mb, args.rate_mbps * 1e6)
        print(json.dumps(remote))


if __name__ == "__main__":
    main()
