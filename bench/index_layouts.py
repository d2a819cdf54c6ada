"""Index layouts at catalog scale: memory per item, build time, recall@10 against exact
search and search latency, for the shipped IVF-Flat and compressed FAISS layouts.

    python bench/index_layouts.py --items 10000000 [--dim 64] [--queries 1000]
        [--layouts ivf,ivf-fp16,ivf-sq8,PQ32,PQ16] [--nprobe 16,32,64,128,256,512]
        [--out bench/results/index_layouts.json]

The catalog is bench/serving.py's synthetic one (`--items` clustered unit vectors, 50 per
cluster, seed 0) and the queries are its users (the mean of 20-60 items of 1-3
clusters), so these figures and the served index's agree. The layouts ``ivf``,
``ivf-fp16`` and ``ivf-sq8`` are made by ``serving.index.empty_ivf`` as the server makes
them; others are ``IVF{4·√N},{codec}`` (``PQ32``: product codes of 32 bytes). All use the
inner-product metric and the hashtable direct map. The coarse quantizer (k-means on 64
points per list, as the server trains it) is trained and every vector assigned to its
list once, and shared, so the layouts differ only in how they store a vector; a layout's
build time is that shared part plus its own codec training and encoding.

Per layout: build time (as above, adding in 1M-row chunks), bytes
per item (stored: the inverted lists' codes and ids; resident: the process's memory
growth over the build, direct map and allocator slack included, a rougher figure), and per nprobe: recall@10
against exact search (``faiss.knn`` over every vector) and the latency of one query on
one FAISS thread (the server's setting), median and p99 over the queries. The server's
own id maps (a dict and an array of item ids) are measured once, apart.

The pick: the layout with the fewest stored bytes per item that reaches recall@10 >= --target at
some nprobe with a p50 within --max-latency-ratio of IVF-Flat's at the smallest nprobe where
IVF-Flat reaches it (the reference, measured in the same run).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serving import clustered, user_vectors  # noqa: E402
from serving.index import empty_ivf, ivf_lists  # noqa: E402


def rss_bytes() -> int:
    """This process's resident set size, from /proc."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def release() -> None:
    """Hand freed heap memory back to the OS, so the next layout's growth is its own."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def ground_truth(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of each query's k nearest items by exact inner product [nq, k]."""
    _, rows = faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    return rows


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the true k nearest that `found` [nq, k] names."""
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / truth.shape[1]
                          for f, t in zip(found, truth, strict=True)]))


def latencies(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[float]]:
    """Each query searched alone (as a Recommend call does): its labels and milliseconds."""
    found = np.empty((len(queries), k), dtype=np.int64)
    times: list[float] = []
    for n in range(len(queries)):
        start = time.perf_counter()
        _, labels = index.search(queries[n:n + 1], k)
        times.append((time.perf_counter() - start) * 1000)
        found[n] = labels[0]
    return found, times


def id_map_bytes(n: int) -> float:
    """Bytes per item of serving.index.ItemIndex's id maps (item id -> FAISS id dict and
    FAISS id -> item id object array) for ids like bench/serving.py's, measured."""
    before = rss_bytes()
    names = [f"item-{i}" for i in range(n)]
    ids = {name: i for i, name in enumerate(names)}
    items = np.empty(n, dtype=object)
    items[:] = names
    grown = rss_bytes() - before
    del names, ids, items
    release()
    return grown / n


def empty(layout: str, dim: int, nlist: int) -> faiss.Index:
    """The server's index of a kind (``ivf``, ``ivf-fp16``, ``ivf-sq8``), or
    ``IVF{nlist},{codec}`` for another FAISS codec (``PQ32``: 32 bytes per vector)."""
    if layout.startswith("ivf"):
        return empty_ivf(dim, nlist, layout)  # type: ignore[arg-type]
    return faiss.index_factory(dim, f"IVF{nlist},{layout}", faiss.METRIC_INNER_PRODUCT)


def build(layout: str, dim: int, nlist: int, centroids: np.ndarray, sample: np.ndarray,
          vectors: np.ndarray, lists: np.ndarray) -> tuple[faiss.Index, dict[str, float]]:
    """`layout` around the shared centroids, holding every row of `vectors`, whose lists
    (`lists` [n], the nearest centroid of each) are assigned once for every layout."""
    before = rss_bytes()
    start = time.perf_counter()
    index = empty(layout, dim, nlist)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    ivf.quantizer.add(centroids)  # trained: IndexIVF.train skips the quantizer, trains the codec
    index.train(sample)
    trained = time.perf_counter() - start
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    chunk = 1_000_000
    for first in tqdm(range(0, len(vectors), chunk), desc=f"{layout} add", unit="M rows"):
        rows = np.ascontiguousarray(vectors[first:first + chunk])
        ids = np.arange(first, first + len(rows), dtype=np.int64)
        assigned = np.ascontiguousarray(lists[first:first + len(rows)])
        ivf.add_core(len(rows), faiss.swig_ptr(rows), faiss.swig_ptr(ids), faiss.swig_ptr(assigned))
    built = time.perf_counter() - start
    codes = sum(ivf.invlists.list_size(n) for n in range(nlist)) * ivf.code_size
    return index, {
        "train_codec_s": round(trained, 2),
        "encode_add_s": round(built - trained, 2),
        "code_bytes_per_item": ivf.code_size,
        "codes_mb": round(codes / 2**20, 1),
        "stored_bytes_per_item": ivf.code_size + 8,  # its codes and its id in the inverted lists
        "resident_mb": round((rss_bytes() - before) / 2**20, 1),
        "resident_bytes_per_item": round((rss_bytes() - before) / len(vectors), 1),
    }


def reference_point(layouts: dict[str, Any], target: float) -> tuple[int, dict[str, float]] | None:
    """IVF-Flat's (the shipped layout's) smallest nprobe reaching `target` recall, and its
    figures there; its largest nprobe measured when none does."""
    flat = layouts.get("ivf", {}).get("nprobe", {})
    if not flat:
        return None
    ordered = sorted(flat.items(), key=lambda kv: int(kv[0]))
    for nprobe, point in ordered:
        if point["recall@10"] >= target:
            return int(nprobe), point
    return int(ordered[-1][0]), ordered[-1][1]


def pick(layouts: dict[str, Any], target: float, max_ratio: float) -> dict[str, Any] | None:
    """The fewest stored bytes per item (codes and id) reaching `target` recall at a p50
    latency within `max_ratio` of IVF-Flat's where IVF-Flat first reaches it; with the
    smallest such nprobe."""
    reference = reference_point(layouts, target)
    limit = reference[1]["p50_ms"] * max_ratio if reference else math.inf
    best: dict[str, Any] | None = None
    for codec, layout in layouts.items():
        for nprobe, point in sorted(layout["nprobe"].items(), key=lambda kv: int(kv[0])):
            if point["recall@10"] >= target and point["p50_ms"] <= limit:
                if best is None or layout["stored_bytes_per_item"] < best["stored_bytes_per_item"]:
                    best = {"layout": codec, "nprobe": int(nprobe), **point,
                            "stored_bytes_per_item": layout["stored_bytes_per_item"]}
                break
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--layouts", default="ivf,ivf-fp16,ivf-sq8,PQ32,PQ16")
    parser.add_argument("--nprobe", default="16,32,64,128,256,512")
    parser.add_argument("--threads", type=int, default=2, help="FAISS threads for training and adding")
    parser.add_argument("--target", type=float, default=0.95, help="recall@10 a picked layout reaches")
    parser.add_argument("--max-latency-ratio", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/index_layouts.json")
    args = parser.parse_args()
    started = time.perf_counter()
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)

    print(f"generating {args.items:,} clustered {args.dim}-d vectors ...", flush=True)
    vectors, clusters = clustered(rng, args.items, max(1, args.items // 50), args.dim)
    queries, _ = user_vectors(np.random.default_rng(1), vectors, clusters, args.queries)
    del clusters
    t0 = time.perf_counter()
    truth = ground_truth(vectors, queries, 10)
    exact_s = time.perf_counter() - t0
    print(f"exact top-10 of {args.queries} queries: {exact_s:.1f} s", flush=True)

    nlist = ivf_lists(args.items)
    sample_rows = np.sort(rng.choice(args.items, size=min(args.items, 64 * nlist), replace=False))
    sample = np.ascontiguousarray(vectors[sample_rows])
    t0 = time.perf_counter()
    kmeans = faiss.Kmeans(args.dim, nlist, niter=25, spherical=False, seed=1234)  # IndexIVF.train's
    kmeans.train(sample)
    quantizer_s = time.perf_counter() - t0
    print(f"coarse quantizer: {nlist} lists on {len(sample):,} points in {quantizer_s:.1f} s", flush=True)
    t0 = time.perf_counter()
    lists = np.empty(args.items, dtype=np.int64)
    for first in tqdm(range(0, args.items, 1_000_000), desc="assign lists", unit="M rows"):
        _, nearest = kmeans.index.search(np.ascontiguousarray(vectors[first:first + 1_000_000]), 1)
        lists[first:first + len(nearest)] = nearest[:, 0]
    assign_s = time.perf_counter() - t0
    print(f"lists assigned in {assign_s:.1f} s", flush=True)

    # The exact reference's latency: a flat scan of every vector, one thread, a few queries.
    faiss.omp_set_num_threads(1)
    exact_times = []
    for n in range(min(20, args.queries)):
        t0 = time.perf_counter()
        faiss.knn(queries[n:n + 1], vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)
        exact_times.append((time.perf_counter() - t0) * 1000)

    layouts: dict[str, Any] = {}
    probes = [int(p) for p in args.nprobe.split(",")]
    for codec in args.layouts.split(","):
        faiss.omp_set_num_threads(args.threads)
        index, figures = build(codec, args.dim, nlist, kmeans.centroids, sample, vectors, lists)
        figures["build_s"] = round(quantizer_s + assign_s + figures["train_codec_s"] + figures["encode_add_s"], 1)
        faiss.omp_set_num_threads(1)
        ivf = faiss.extract_index_ivf(index)
        points = {}
        for nprobe in probes:
            ivf.nprobe = nprobe
            found, times = latencies(index, queries, 10)
            points[str(nprobe)] = {
                "recall@10": round(recall(found, truth), 4),
                "p50_ms": round(statistics.median(times), 3),
                "p99_ms": round(float(np.percentile(times, 99)), 3),
            }
            print(f"{codec:<8} nprobe {nprobe:>4}: recall@10 {points[str(nprobe)]['recall@10']:.4f}"
                  f"  p50 {points[str(nprobe)]['p50_ms']:.3f} ms  p99 {points[str(nprobe)]['p99_ms']:.3f} ms",
                  flush=True)
        layouts[codec] = {**figures, "nprobe": points}
        print(f"{codec}: {figures}", flush=True)
        del index, ivf
        release()

    id_bytes = id_map_bytes(args.items)
    chosen = pick(layouts, args.target, args.max_latency_ratio)
    summary = {
        "items": args.items, "dim": args.dim, "queries": args.queries, "nlist": nlist,
        "raw_vectors_mb": round(args.items * args.dim * 4 / 2**20, 1),
        "coarse_quantizer_s": round(quantizer_s, 1), "assign_lists_s": round(assign_s, 1),
        "exact": {"p50_ms": round(statistics.median(exact_times), 1),
                  "ground_truth_s": round(exact_s, 1)},
        "id_maps_bytes_per_item": round(id_bytes, 1),
        "layouts": layouts,
        "reference": (None if (ref := reference_point(layouts, args.target)) is None
                      else {"layout": "ivf", "nprobe": ref[0], **ref[1]}),
        "pick": chosen,
        "setup": {
            "command": "python " + " ".join(sys.argv),
            "threads_build": args.threads, "threads_search": 1,
            "target_recall@10": args.target, "max_latency_ratio": args.max_latency_ratio,
            "faiss": faiss.__version__, "machine": platform.processor() or platform.machine(),
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "run_s": round(time.perf_counter() - started, 1),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "layouts"}, indent=2))


if __name__ == "__main__":
    main()
