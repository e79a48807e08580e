"""Both towers in PyTorch on a GPU (CUDA) next to the same machine's CPU: the GPU reference.

A GPU machine here has PyTorch, transformers and torch-geometric but no RDKit, no packaged
MiniLM and no network, and only a small payload travels to it. So the work is split in two:

``prepare`` (here, with RDKit): featurizes and tokenizes real ChEBI-20 validation pairs and
writes a *kit*: the graphs and token ids as arrays, the run's config, and the weights of the
trained head and of the text encoder stored as fp16 (with the word-embedding rows cut to the
tokens the sample uses, ids remapped), so that the kit is ~40 MB instead of ~125 MB.

``measure`` (there, without RDKit): rebuilds the model from the kit with the weights upcast to
fp32 and measures, in one run,

* throughput (items/s) of the text tower and of the molecule tower in three forms (dense padded
  per size bucket as exported; packed as trained; torch-geometric GINEConv, the naive eager
  form) at several batch sizes, on the GPU in fp32 / fp16 / bf16 (autocast) and on the same
  machine's CPU in fp32 (the baseline). Timed from host arrays to host embeddings, so padding,
  collation and transfers count, featurization and tokenization do not (they ran in prepare);
* parity: cosine of every GPU precision against CPU fp32 on the same (fp16-rounded) weights,
  so it measures the arithmetic, not the weight storage.

    python benchmarks/gpu_towers.py prepare --run RUN --data DIR --out KIT [--n 1024]
    python benchmarks/gpu_towers.py measure --kit KIT --json OUT.json [--seconds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from molret.graphs import DEFAULT_BUCKETS, MolGraph, group_by_bucket, pad_graphs
from molret.metrics import cosine_rows
from molret.trainer.config import load_config
from molret.trainer.model import DualEncoder, GraphTensors, PackedGraphs

KIT_FORMAT = "molret-gpu-kit/1"
TEXT_BATCHES = (1, 32, 256)
MOLECULE_BATCHES = (1, 256, 2048)
PARITY_ITEMS = 512


# ---- prepare (needs RDKit and the packaged text encoder) ---------------------------------


def prepare(run: Path, data: Path, out: Path, n: int) -> dict[str, Any]:
    from safetensors.torch import save_file

    from molret.data import read_pairs
    from molret.featurize import featurize_many
    from molret.text import encode, load_tokenizer
    from molret.trainer.run_eval import load_run
    from molret.trainer.text_encoder import resolve_text_encoder

    model = load_run(run, with_text_encoder=True)
    encoder_dir = resolve_text_encoder(model.config.text_encoder)
    pairs = read_pairs(data / "validation.txt")
    graphs, _ = featurize_many(  # as the engine
        [p.smiles for p in pairs], DEFAULT_BUCKETS, keys=model.config.maccs_keys
    )
    kept = [(p, g) for p, g in zip(pairs, graphs, strict=True) if g is not None][:n]
    tokens = encode(load_tokenizer(encoder_dir, model.config.text_max_length),
                    [p.description for p, _ in kept])  # fmt: skip
    used, remapped = np.unique(tokens.input_ids, return_inverse=True)
    remapped = remapped.reshape(tokens.input_ids.shape)

    assert model.text_encoder is not None
    text_state = model.text_encoder.state_dict()
    words = "embeddings.word_embeddings.weight"
    text_state[words] = text_state[words][torch.from_numpy(used)]
    head_state = {k: v for k, v in model.state_dict().items() if not k.startswith("text_encoder.")}
    tensors = {f"text.{k}": v for k, v in text_state.items()}
    tensors.update({f"model.{k}": v for k, v in head_state.items()})
    tensors = {
        k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()
    }

    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "weights.safetensors"))
    text_config = json.loads((encoder_dir / "config.json").read_text())
    text_config["vocab_size"] = int(used.size)
    text_config["pad_token_id"] = int(np.searchsorted(used, text_config.get("pad_token_id", 0)))
    (out / "config.json").write_text(json.dumps(text_config, indent=1))
    shutil.copy(run / "config.yaml", out / "run_config.yaml")
    g = [graph for _, graph in kept]
    np.savez_compressed(
        out / "inputs.npz",
        input_ids=remapped.astype(np.int32),
        attention_mask=tokens.attention_mask.astype(np.int8),
        atom_features=np.concatenate([x.atom_features for x in g]).astype(np.int32),
        bond_features=np.concatenate([x.bond_features for x in g]).astype(np.int8),
        edge_index=np.concatenate([x.edge_index for x in g], axis=1).astype(np.int32),
        n_atoms=np.array([x.n_atoms for x in g], dtype=np.int32),
        n_edges=np.array([x.n_edges for x in g], dtype=np.int32),
        **({"keys": np.stack([x.keys for x in g])} if model.config.maccs_keys else {}),
    )
    info = {
        "format": KIT_FORMAT, "run": str(run), "data": str(data / "validation.txt"),
        "items": len(kept), "text_vocab_rows": int(used.size),
        "prepared": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    (out / "kit.json").write_text(json.dumps(info, indent=1))
    return info


# ---- measure (torch + transformers + torch-geometric, no RDKit) --------------------------


def load_kit(kit: Path) -> tuple[DualEncoder, list[MolGraph], np.ndarray, np.ndarray]:
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    info = json.loads((kit / "kit.json").read_text())
    if info.get("format") != KIT_FORMAT:
        raise SystemExit(f"{kit}: not a {KIT_FORMAT} kit")
    config = load_config(kit / "run_config.yaml")
    encoder = AutoModel.from_config(AutoConfig.from_pretrained(str(kit), local_files_only=True))
    model = DualEncoder(config.model, int(encoder.config.hidden_size), encoder)
    tensors = {k: v.float() if v.is_floating_point() else v
               for k, v in load_file(str(kit / "weights.safetensors")).items()}  # fmt: skip
    encoder.load_state_dict(
        {k[5:]: v for k, v in tensors.items() if k.startswith("text.")}, strict=False
    )
    missing, unexpected = model.load_state_dict(
        {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=False
    )
    missing = [m for m in missing if not m.startswith("text_encoder.")]
    if missing or unexpected:
        raise SystemExit(f"kit weights do not fit: missing {missing}, unexpected {unexpected}")

    arrays = np.load(kit / "inputs.npz")
    atom_end = np.cumsum(arrays["n_atoms"])
    edge_end = np.cumsum(arrays["n_edges"])
    graphs = [
        MolGraph(
            atom_features=arrays["atom_features"][a - na : a].astype(np.int64),
            bond_features=arrays["bond_features"][e - ne : e].astype(np.int64),
            edge_index=arrays["edge_index"][:, e - ne : e].astype(np.int64),
            keys=arrays["keys"][i] if "keys" in arrays else None,
        )
        for i, (a, na, e, ne) in enumerate(
            zip(atom_end, arrays["n_atoms"], edge_end, arrays["n_edges"], strict=True)
        )  # fmt: skip
    ]
    return model.eval(), graphs, arrays["input_ids"], arrays["attention_mask"]


def precision_context(device: str, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    return torch.autocast(device_type=device, dtype=dtype)


def text_fn(
    model: DualEncoder, device: str, precision: str, pad_multiple: int = 1
) -> Callable[[Any], np.ndarray]:
    """``pad_multiple`` > 1 rounds the padded length up, so fewer distinct shapes reach cuBLAS
    and the attention kernels (each new shape can cost a kernel selection on the GPU)."""

    @torch.no_grad()
    def run(batch: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        ids, mask = batch
        longest = int(mask.sum(axis=1).max())  # pad to the longest in this batch, as a server does
        width = min(-(-longest // pad_multiple) * pad_multiple, ids.shape[1])
        ids_t = torch.from_numpy(ids[:, :width].astype(np.int64)).to(device)
        mask_t = torch.from_numpy(mask[:, :width].astype(np.int64)).to(device)
        with precision_context(device, precision):
            out = model.encode_text(ids_t, mask_t).embedding
        return out.float().cpu().numpy()

    return run


def molecule_fn(
    model: DualEncoder, device: str, precision: str, form: str
) -> Callable[[Sequence[MolGraph]], np.ndarray]:
    """``dense``: one padded call per size bucket (the exported graph); ``packed``: one
    disconnected graph (training); ``pyg``: torch-geometric GINEConv over a Batch."""
    pyg = None
    if form == "pyg":
        from molret.trainer.pyg_reference import PygMoleculeEncoder

        pyg = PygMoleculeEncoder(model).to(device).eval()

    @torch.no_grad()
    def run(graphs: Sequence[MolGraph]) -> np.ndarray:
        with precision_context(device, precision):
            if form == "packed":
                packed = PackedGraphs.from_graphs(graphs)
                for name in ("atom_features", "bond_features", "edge_src", "edge_dst"):
                    setattr(packed, name, getattr(packed, name).to(device))
                if packed.molecule_keys is not None:
                    packed.molecule_keys = packed.molecule_keys.to(device)
                return model.encode_molecule(packed).embedding.float().cpu().numpy()
            if form == "pyg":
                assert pyg is not None
                return pyg(pyg.batch(graphs).to(device)).float().cpu().numpy()
            out = np.zeros((len(graphs), model.config.embed_dim), dtype=np.float32)
            for bucket, members in group_by_bucket(graphs, DEFAULT_BUCKETS).items():
                batch = GraphTensors.from_batch(pad_graphs([graphs[i] for i in members], *bucket))
                args = [t.to(device) for t in batch.as_args()]
                keys = None if batch.molecule_keys is None else batch.molecule_keys.to(device)
                emb = model.encode_molecule(GraphTensors(*args, molecule_keys=keys)).embedding
                out[members] = emb.float().cpu().numpy()
            return out

    return run


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def rate(
    fn: Callable[[Any], np.ndarray], batches: Iterator[Any], batch: int, seconds: float, device: str
) -> float:
    """Items/s over consecutive batches after two warm-up calls (kernels, allocator)."""
    for _ in range(2):
        fn(next(batches))
    synchronize(device)
    done, started = 0, time.perf_counter()
    while True:
        fn(next(batches))  # returns host arrays, so each call has finished on the device
        done += batch
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and done >= 3 * batch:
            return done / elapsed


def text_batches(ids: np.ndarray, mask: np.ndarray, batch: int) -> Iterator[Any]:
    """Consecutive slices of the sample in file order (no length sorting), cycled."""
    for start in itertools.cycle(range(0, len(ids), batch)):
        rows = np.arange(start, start + batch) % len(ids)
        yield ids[rows], mask[rows]


def graph_batches(graphs: list[MolGraph], batch: int) -> Iterator[list[MolGraph]]:
    stream = itertools.cycle(graphs)
    while True:
        yield [next(stream) for _ in range(batch)]


def cosine(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    cos = cosine_rows(a, b)
    return {"min": float(cos.min()), "mean": float(cos.mean())}


def settings(devices: Sequence[str]) -> list[tuple[str, str]]:
    rows = [("cpu", "fp32")] if "cpu" in devices else []
    if "cuda" in devices:
        rows += [("cuda", "fp32"), ("cuda", "fp16"), ("cuda", "bf16")]
    return rows


def measure(kit: Path, seconds: float, devices: Sequence[str], cpu_batch_cap: int,
            cpu_forms: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    model, graphs, ids, mask = load_kit(kit)
    rows: list[dict[str, Any]] = []
    parity: dict[str, Any] = {}
    reference: dict[str, np.ndarray] = {}
    n_parity = min(PARITY_ITEMS, len(graphs))
    for device, precision in settings(devices):
        model.to(device)
        jobs: list[tuple[str, str, Callable[[Any], np.ndarray], Callable[[int], Iterator[Any]],
                         tuple[int, ...]]] = [
            ("text", "encoder", text_fn(model, device, precision),
             lambda b: text_batches(ids, mask, b), TEXT_BATCHES),
        ]  # fmt: skip
        if device == "cuda":
            jobs.append(("text", "encoder-pad64", text_fn(model, device, precision, 64),
                         lambda b: text_batches(ids, mask, b), TEXT_BATCHES))  # fmt: skip
        forms = cpu_forms if device == "cpu" else ("dense", "packed", "pyg")
        for form in forms:
            jobs.append(("molecule", form, molecule_fn(model, device, precision, form),
                         lambda b: graph_batches(graphs, b), MOLECULE_BATCHES))  # fmt: skip
        for modality, form, fn, make_batches, sizes in jobs:
            for batch in sizes:
                if device == "cpu" and batch > cpu_batch_cap:
                    continue
                per_s = rate(fn, make_batches(batch), batch, seconds, device)
                row = {"device": device, "precision": precision, "modality": modality,
                       "form": form, "batch": batch, "per_s": round(per_s, 1)}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
        # Parity on the first items: every molecule form against CPU fp32 in the exported form.
        got = {
            "text": np.concatenate([
                text_fn(model, device, precision)((ids[i : i + 64], mask[i : i + 64]))
                for i in range(0, n_parity, 64)
            ]),
            **{f"molecule-{form}": molecule_fn(model, device, precision, form)(graphs[:n_parity])
               for form in ("dense", "packed", "pyg")},
        }  # fmt: skip
        if (device, precision) == ("cpu", "fp32"):
            reference = {"text": got["text"], "molecule": got["molecule-dense"]}
        if reference:
            key = f"{device}-{precision}"
            parity[key] = {m: cosine(v, reference[m.split("-")[0]]) for m, v in got.items()}
            print(json.dumps({"parity": key, **parity[key]}), flush=True)
    baseline = {(r["modality"], r["form"], r["batch"]): r["per_s"]
                for r in rows if r["device"] == "cpu"}  # fmt: skip
    for r in rows:
        base = baseline.get((r["modality"], r["form"], r["batch"]))
        r["vs_cpu_fp32"] = round(r["per_s"] / base, 2) if base else None
    return {"rows": rows, "parity_vs_cpu_fp32": parity, "parity_items": n_parity}


def machine(devices: Sequence[str]) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(), "cpus": os.cpu_count(),
        "cpu_threads": torch.get_num_threads(), "python": sys.version.split()[0],
        "torch": torch.__version__,
    }  # fmt: skip
    if "cuda" in devices:
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="featurize + tokenize a sample, write the kit (RDKit)")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data", type=Path, default=os.environ.get("MOLRET_DATA"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=1024)
    m = sub.add_parser("measure", help="throughput and parity from a kit (no RDKit)")
    m.add_argument("--kit", type=Path, required=True)
    m.add_argument("--json", type=Path, required=True)
    m.add_argument("--seconds", type=float, default=2.0)
    m.add_argument("--devices", default=None, help="cpu,cuda (default: cpu plus cuda if present)")
    m.add_argument(
        "--cpu-batch-cap",
        type=int,
        default=256,
        help="skip larger CPU batches (slow, and the CPU baseline is ORT's job)",
    )
    m.add_argument("--cpu-forms", default="dense,packed,pyg")
    args = parser.parse_args()
    if args.command == "prepare":
        if args.data is None:
            raise SystemExit("needs ChEBI-20: pass --data DIR or set MOLRET_DATA")
        print(json.dumps(prepare(args.run, Path(args.data), args.out, args.n)))
        return 0
    devices = (args.devices or ("cpu,cuda" if torch.cuda.is_available() else "cpu")).split(",")
    started = time.perf_counter()
    report = {
        "benchmark": "gpu_towers", "kit": json.loads((args.kit / "kit.json").read_text()),
        "machine": machine(devices),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **measure(args.kit, args.seconds, devices, args.cpu_batch_cap,
                  args.cpu_forms.split(",")),
    }  # fmt: skip
    report["wall_s"] = round(time.perf_counter() - started, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
