"""Texts/s of a bundle's ONNX text tower against the padded-token budget of one run.

    python benchmarks/text_chunk_budget.py --bundle B [--budgets 1,512,1024,4096] [--threads 2]
        [--texts 256]

256 (``--texts``) ChEBI-20 validation descriptions (seed 0) are embedded in requests of 32, each request cut
by ``BundleEmbedder.embed_id_lists`` into length-sorted runs of at most BUDGET padded tokens
(1 = every text alone). Best of two passes per budget, all in this process, so the budgets are
compared on the same machine state. This is how the CPU default (CPU_TEXT_CHUNK_TOKENS) was chosen.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from molret.bundle import load_bundle
from molret.data import chebi20_split, read_pairs
from molret.engine.runtime import BundleEmbedder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data", default=os.environ.get("MOLRET_DATA"))
    parser.add_argument("--budgets", default="1,512,1024,4096")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--texts", type=int, default=256, help="descriptions to embed")
    args = parser.parse_args()
    pairs = read_pairs(chebi20_split(args.data)["validation"])
    n = min(args.texts, len(pairs))
    picks = np.random.default_rng(0).choice(len(pairs), n, replace=False)
    texts = [pairs[i].description for i in picks]
    embedder = BundleEmbedder(load_bundle(args.bundle), threads=args.threads)
    ids = [e.ids for e in embedder.tokenizer.encode_batch(texts)]
    print(f"# {platform.platform()}, {os.cpu_count()} CPUs, bundle {args.bundle}")
    for budget in (int(b) for b in args.budgets.split(",")):
        embedder.max_tokens = budget
        embedder.embed_id_lists(ids[:32])  # warm-up: first shapes
        best = float("inf")
        for _ in range(2):
            started = time.perf_counter()
            for lo in range(0, len(ids), 32):
                embedder.embed_id_lists(ids[lo : lo + 32])
            best = min(best, time.perf_counter() - started)
        print(f"max_tokens {budget:5d}: {len(ids) / best:7.1f} texts/s")


if __name__ == "__main__":
    main()
