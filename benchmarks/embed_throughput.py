"""Embedding throughput: the exported towers against PyTorch eager, in one run.

    python benchmarks/embed_throughput.py --bundle B [--bundle-int8 B8] [--run RUN]
        [--data DIR] [--seconds S] --json OUT.json

Towers section: embeddings/s at batch 1 and batch 256, for texts and molecules, for
  * ORT fp32 (the bundle) and ORT int8 (``--bundle-int8``), through ``BundleEmbedder``
    (tokenize / featurize + pad to the bucket + ONNX Runtime), and
  * PyTorch eager (``--run``, needs the train extra): the same weights, texts through
    transformers, molecules through torch-geometric's GINEConv over a ``Batch``, including
    featurization / tokenization too, so every row measures SMILES or text in, vector out.
Inputs are real ChEBI-20 validation texts and SMILES (``--data`` or MOLRET_DATA), cycled.
Each cell runs for about ``--seconds`` (at least one batch) after one warm-up batch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from molret.bundle import load_bundle
from molret.data import read_pairs
from molret.engine.runtime import BundleEmbedder

BATCH_SIZES = (1, 256)


def machine() -> str:
    return f"{platform.platform()}, {platform.processor() or 'cpu'}, {os.cpu_count()} CPUs"


def load_inputs(data: Path | None, n: int = 2048) -> tuple[list[str], list[str]]:
    folder = data or (Path(os.environ["MOLRET_DATA"]) if "MOLRET_DATA" in os.environ else None)
    if folder is None or not (folder / "validation.txt").is_file():
        raise SystemExit("needs ChEBI-20: pass --data DIR or set MOLRET_DATA")
    pairs = read_pairs(folder / "validation.txt")[:n]
    return [p.description for p in pairs], [p.smiles for p in pairs]


def rate(
    embed: Callable[[Sequence[str]], Any], items: list[str], batch: int, seconds: float
) -> float:
    """Items per second of ``embed`` on consecutive batches of ``items`` (cycled)."""
    stream = itertools.cycle(items)
    embed([next(stream) for _ in range(batch)])  # warm-up (session init, allocator)
    done, started = 0, time.perf_counter()
    while True:
        embed([next(stream) for _ in range(batch)])
        done += batch
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return done / elapsed


def ort_backend(path: Path, threads: int) -> dict[str, Callable[[Sequence[str]], Any]]:
    embedder = BundleEmbedder(load_bundle(path), threads=threads, max_batch=256)
    return {"text": embedder.embed_texts, "molecule": embedder.embed_smiles}


def torch_backend(run: Path, threads: int) -> dict[str, Callable[[Sequence[str]], Any]]:
    import torch

    from molret.featurize import featurize_many
    from molret.text import encode, load_tokenizer
    from molret.trainer.pyg_reference import PygMoleculeEncoder
    from molret.trainer.run_eval import load_run
    from molret.trainer.text_encoder import resolve_text_encoder

    torch.set_num_threads(threads)
    model = load_run(run, with_text_encoder=True)
    pyg = PygMoleculeEncoder(model).eval()
    tokenizer = load_tokenizer(
        resolve_text_encoder(model.config.text_encoder), model.config.text_max_length
    )

    @torch.no_grad()
    def text(texts: Sequence[str]) -> Any:
        tokens = encode(tokenizer, texts)
        ids = torch.from_numpy(tokens.input_ids)
        return model.encode_text(ids, torch.from_numpy(tokens.attention_mask)).embedding

    def molecule(smiles: Sequence[str]) -> Any:
        graphs, _ = featurize_many(smiles)
        return pyg(pyg.batch([g for g in graphs if g is not None]))

    return {"text": text, "molecule": molecule}


def towers_section(args: argparse.Namespace) -> dict[str, Any]:
    texts, smiles = load_inputs(args.data)
    inputs = {"text": texts, "molecule": smiles}
    backends: dict[str, dict[str, Callable[[Sequence[str]], Any]]] = {}
    if args.run:
        backends["pytorch-eager"] = torch_backend(args.run, args.threads)
    backends["ort-fp32"] = ort_backend(args.bundle, args.threads)
    if args.bundle_int8:
        backends["ort-int8"] = ort_backend(args.bundle_int8, args.threads)
    rows = []
    for name, fns in backends.items():
        for modality, batch in itertools.product(("text", "molecule"), BATCH_SIZES):
            per_s = rate(fns[modality], inputs[modality], batch, args.seconds)
            rows.append(
                {"backend": name, "modality": modality, "batch": batch, "per_s": round(per_s, 1)}
            )
            print(f"{name:<14} {modality:<9} batch {batch:>3}: {per_s:9.1f} /s", flush=True)
    baseline = {(r["modality"], r["batch"]): r["per_s"] for r in rows if r["backend"] == "ort-fp32"}
    for r in rows:
        r["vs_ort_fp32"] = round(r["per_s"] / baseline[(r["modality"], r["batch"])], 2)
    return {"rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="fp32 bundle")
    parser.add_argument("--bundle-int8", type=Path, default=None)
    parser.add_argument("--run", type=Path, default=None, help="training run (PyTorch baseline)")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "threads": args.threads,
        "towers": towers_section(args),
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
