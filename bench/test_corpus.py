"""Loading a big corpus through the streamed path (rnnfast.data.stream): wall time and peak memory of
the first load (tokenize + cache) and of a cached load (memory map), character level, d2l
preprocessing. The corpus is generated at bench time (the bundled texts repeated, with some
multi-byte UTF-8 and CRLF lines), RNNFAST_BENCH_CORPUS_MB megabytes (default 200); nothing is
committed. Each load runs in a fresh interpreter so its peak RSS is its own; the time recorded in
extra_info excludes interpreter start and `import torch`. Group 'corpus load <MB>MB'."""
import json
import os
import subprocess
import sys

import pytest

from rnnfast.data import corpus_path

MB = int(os.environ.get("RNNFAST_BENCH_CORPUS_MB", "200"))

_LOAD = r"""
import json, resource, sys, time
import torch
from rnnfast.data import load_corpus
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
ids, vocab = load_corpus(sys.argv[1], "char")
s = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": s, "peak_rss_mb": peak / 1024, "rss_after_import_mb": base / 1024,
                  "tokens": ids.numel(), "dtype": str(ids.dtype), "vocab": len(vocab)}))
"""


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory):
    unit = (corpus_path("timemachine").read_bytes()
            + "naïve café — “quoted” 日本語\r\n".encode("utf-8")
            + corpus_path("war_of_the_worlds").read_bytes())
    path = tmp_path_factory.mktemp("corpus") / f"generated-{MB}MB.txt"
    with open(path, "wb") as f:
        for _ in range(-(-MB * 2**20 // len(unit))):
            f.write(unit)
    return path


def _load(path, cache):
    env = dict(os.environ, RNNFAST_CACHE=str(cache))
    out = subprocess.run([sys.executable, "-c", _LOAD, str(path)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("phase", ["cold", "cached"])
def test_corpus_load(benchmark, big_corpus, tmp_path, phase):
    cache = tmp_path / "cache"
    if phase == "cached":
        _load(big_corpus, cache)  # the first load fills the cache
    results = []

    def once():
        if phase == "cold" and cache.exists():
            import shutil
            shutil.rmtree(cache)
        results.append(_load(big_corpus, cache))

    benchmark.group = f"corpus load {MB}MB"
    benchmark.pedantic(once, rounds=1, iterations=1)
    r = results[-1]
    benchmark.extra_info.update(r, megabytes=big_corpus.stat().st_size / 2**20,
                                mb_per_s=big_corpus.stat().st_size / 2**20 / r["seconds"], phase=phase)
