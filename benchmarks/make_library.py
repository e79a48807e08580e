"""A deterministic, drug-like compound library of any size, recombined from ChEBI-20 fragments.

    python benchmarks/make_library.py --n N --seed S --out FILE.smi
        [--data DIR] [--workers W] [--sources M]

Writes ``N`` lines ``SMILES<TAB>GEN000000123``: valid RDKit molecules, unique by InChIKey,
canonical SMILES as RDKit writes them after a parse. The same ``--n``, ``--seed``, data and
RDKit version give the same file byte for byte, whatever ``--workers`` is, and a smaller ``--n``
gives a prefix of a larger one.

How:

1. **Fragments.** Every ChEBI-20 molecule (train + validation, ``--data`` or MOLRET_DATA, else
   ``../shared/data/chebi20`` beside the checkout) is cut at its BRICS bonds
   (``BRICS.BreakBRICSBonds``; ring bonds are never cut). A fragment is kept when it has 1-4
   attachment points, 1-30 heavy atoms of C, N, O, S, P, F, Cl, Br, I only, no net charge, no
   isotope labels and no radicals. The set is de-duplicated by canonical SMILES and sorted, so it
   does not depend on the order in which it was made.
2. **Recombination.** Chunk ``i`` makes ``CHUNK_ATTEMPTS`` attempts with
   ``numpy.random.default_rng([seed, i])``: start from a uniformly drawn fragment, then 1-5 times
   pick one of its open attachment points and join it to a uniformly drawn compatible attachment
   point of another fragment (BRICS environment pairs from ``BRICS.reactionDefs``, with their
   single or double bond) until a drawn heavy-atom target (12-45) is reached. Open attachment
   points left at the end become hydrogens. At least one join is required, so no output is a
   ChEBI fragment on its own.
3. **Filters.** Sanitisable, one component, 10-60 heavy atoms, MW 150-700, net charge 0,
   at most 15 rotatable bonds, 6 H-bond donors and 12 acceptors. The canonical SMILES is parsed
   again (what every reader of the file will do) and its InChIKey computed from that parse.
4. **Merge.** Chunks run in worker processes but are merged strictly in chunk order with one
   global InChIKey set, and the first ``N`` survivors are written, so the worker count only
   changes the speed.

Uniform draws over ~10k distinct fragments (all of ChEBI-20) and their compatible partners
give a combinatorial space many orders of magnitude above 10^6; the duplicate rate is printed
(0.06% of valid molecules at 20k).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rdkit import Chem, RDLogger, rdBase
from rdkit.Chem import BRICS, Descriptors, rdMolDescriptors

from molret.data import chebi20_split, read_pairs

CHUNK_ATTEMPTS = 1000
SOURCE_CHUNK = 2000
ALLOWED_ELEMENTS = frozenset({6, 7, 8, 9, 15, 16, 17, 35, 53})
FRAGMENT_MAX_HEAVY = 30
FRAGMENT_MAX_ATTACHMENTS = 4
SOURCE_MAX_HEAVY = 100
MIN_HEAVY, MAX_HEAVY = 10, 60
MIN_MW, MAX_MW = 150.0, 700.0
MAX_ROTATABLE, MAX_HBD, MAX_HBA = 15, 6, 12
TARGET_HEAVY = (12, 46)  # drawn with rng.integers(lo, hi): 12..45
MAX_JOINS = 5


def default_data_dir() -> Path:
    env = os.environ.get("MOLRET_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chebi20"


def source_smiles(data_dir: Path, limit: int | None = None) -> list[str]:
    """SMILES of ChEBI-20 train then validation, in file order."""
    splits = chebi20_split(data_dir)
    smiles = [p.smiles for name in ("train", "validation") for p in read_pairs(splits[name])]
    return smiles[:limit] if limit is not None else smiles


# ---- 1. fragments ----------------------------------------------------------------------------


def _fragment_ok(fragment: Chem.Mol) -> bool:
    attachments = heavy = charge = 0
    for atom in fragment.GetAtoms():
        number = atom.GetAtomicNum()
        if number == 0:
            attachments += 1
            continue
        if number not in ALLOWED_ELEMENTS or atom.GetIsotope() or atom.GetNumRadicalElectrons():
            return False
        heavy += 1
        charge += atom.GetFormalCharge()
    return (
        1 <= attachments <= FRAGMENT_MAX_ATTACHMENTS
        and 1 <= heavy <= FRAGMENT_MAX_HEAVY
        and charge == 0
    )


def fragments_of(smiles: Sequence[str]) -> set[str]:
    """Canonical SMILES of the usable BRICS fragments of ``smiles`` (with [n*] attachments)."""
    found: set[str] = set()
    with rdBase.BlockLogs():
        for text in smiles:
            mol = Chem.MolFromSmiles(text)
            if mol is None or mol.GetNumHeavyAtoms() > SOURCE_MAX_HEAVY:
                continue
            broken = BRICS.BreakBRICSBonds(mol)
            for fragment in Chem.GetMolFrags(broken, asMols=True, sanitizeFrags=False):
                if _fragment_ok(fragment):
                    found.add(Chem.MolToSmiles(fragment))
    return found


# ---- 2./3. recombination in a worker ---------------------------------------------------------


def _compatible_labels() -> dict[int, list[tuple[int, Chem.BondType]]]:
    """BRICS label -> [(partner label, bond type)], both directions, sorted."""
    pairs: dict[int, set[tuple[int, str]]] = {}
    for group in BRICS.reactionDefs:
        for left, right, bond in group:
            a, b = int(left.rstrip("ab")), int(right.rstrip("ab"))
            pairs.setdefault(a, set()).add((b, bond))
            pairs.setdefault(b, set()).add((a, bond))
    types = {"-": Chem.BondType.SINGLE, "=": Chem.BondType.DOUBLE}
    return {
        label: [(p, types[bond]) for p, bond in sorted(found)] for label, found in pairs.items()
    }


class Recombiner:
    """Everything a worker needs: parsed fragments, their attachment points and, per BRICS
    label, every compatible attachment point of every fragment."""

    def __init__(self, fragment_smiles: Sequence[str]) -> None:
        self.fragments: list[Chem.Mol] = []
        self.heavy: list[int] = []
        # attachments[f] = [(dummy atom, atom it hangs on, label, bond order), ...]
        self.attachments: list[list[tuple[int, int, int, int]]] = []
        entries: dict[int, list[tuple[int, int]]] = {}
        with rdBase.BlockLogs():
            for text in fragment_smiles:
                mol = Chem.MolFromSmiles(text)
                if mol is None:
                    continue
                index = len(self.fragments)
                points = []
                for atom in mol.GetAtoms():
                    if atom.GetAtomicNum() == 0:
                        (bond,) = atom.GetBonds()
                        neighbour = bond.GetOtherAtomIdx(atom.GetIdx())
                        order = int(bond.GetBondTypeAsDouble())
                        points.append((atom.GetIdx(), neighbour, atom.GetIsotope(), order))
                for slot, point in enumerate(points):
                    entries.setdefault(point[2], []).append((index, slot))
                self.fragments.append(mol)
                self.heavy.append(mol.GetNumAtoms() - len(points))
                self.attachments.append(points)
        # options[label] = (fragment ids, attachment slots, bond types) over compatible labels
        self.options: dict[int, tuple[np.ndarray, np.ndarray, list[Chem.BondType]]] = {}
        for label, partners in _compatible_labels().items():
            frag_ids: list[int] = []
            slots: list[int] = []
            bonds: list[Chem.BondType] = []
            for partner, bond in partners:
                for fragment, slot in entries.get(partner, []):
                    frag_ids.append(fragment)
                    slots.append(slot)
                    bonds.append(bond)
            if frag_ids:
                self.options[label] = (np.asarray(frag_ids), np.asarray(slots), bonds)

    def attempt(self, rng: np.random.Generator) -> Chem.Mol | None:
        """One random molecule (sanitized, attachments capped) or None.

        Attachment points are tracked by index through each join (``CombineMols`` appends the
        fragment's atoms; removing the two dummies shifts the indices above them down), which
        avoids rescanning the atoms after every step.
        """
        start = int(rng.integers(len(self.fragments)))
        mol = Chem.RWMol(self.fragments[start])
        points = list(self.attachments[start])
        heavy = self.heavy[start]
        target = int(rng.integers(*TARGET_HEAVY))
        joins = 0
        for _ in range(MAX_JOINS):
            if not points or (joins and heavy >= target):
                break
            slot = int(rng.integers(len(points)))
            dummy, neighbour, label, _ = points[slot]
            option = self.options.get(label)
            if option is None:
                continue
            frag_ids, frag_slots, bonds = option
            pick = int(rng.integers(len(frag_ids)))
            fragment = int(frag_ids[pick])
            if heavy + self.heavy[fragment] > MAX_HEAVY:
                continue
            theirs = self.attachments[fragment]
            their_slot = int(frag_slots[pick])
            their_dummy, their_neighbour, _, _ = theirs[their_slot]
            offset = mol.GetNumAtoms()
            mol = Chem.RWMol(Chem.CombineMols(mol, self.fragments[fragment]))
            mol.AddBond(neighbour, offset + their_neighbour, bonds[pick])
            high, low = offset + their_dummy, dummy
            mol.RemoveAtom(high)
            mol.RemoveAtom(low)

            def moved(i: int, high: int = high, low: int = low) -> int:
                return i - (i > high) - (i > low)

            points = [
                (moved(d), moved(n), lab, o) for i, (d, n, lab, o) in enumerate(points) if i != slot
            ] + [
                (moved(offset + d), moved(offset + n), lab, o)
                for i, (d, n, lab, o) in enumerate(theirs)
                if i != their_slot
            ]
            heavy += self.heavy[fragment]
            joins += 1
        if not joins or not MIN_HEAVY <= heavy <= MAX_HEAVY:
            return None
        # Open attachment points become hydrogens on the atom they hang on (explicit, so an
        # aromatic [nH] or a heteroatom keeps a valid valence).
        for _, neighbour, _, order in points:
            atom = mol.GetAtomWithIdx(neighbour)
            atom.SetNumExplicitHs(atom.GetNumExplicitHs() + order)
        if points:
            mol.BeginBatchEdit()
            for dummy, _, _, _ in points:
                mol.RemoveAtom(dummy)
            mol.CommitBatchEdit()
        try:
            Chem.SanitizeMol(mol)
        except Exception:  # valence or aromaticity broken by a join: a failed attempt
            return None
        return mol


def accept(mol: Chem.Mol) -> tuple[str, str] | None:
    """(canonical SMILES, InChIKey) of a drug-like molecule, from a re-parse, else None."""
    if not MIN_MW <= Descriptors.MolWt(mol) <= MAX_MW:
        return None
    if (
        rdMolDescriptors.CalcNumRotatableBonds(mol) > MAX_ROTATABLE
        or rdMolDescriptors.CalcNumHBD(mol) > MAX_HBD
        or rdMolDescriptors.CalcNumHBA(mol) > MAX_HBA
    ):
        return None
    text = Chem.MolToSmiles(mol)
    parsed = Chem.MolFromSmiles(text) if "." not in text else None
    if parsed is None:
        return None
    if not MIN_HEAVY <= parsed.GetNumHeavyAtoms() <= MAX_HEAVY or Chem.GetFormalCharge(parsed):
        return None
    try:
        inchikey = Chem.MolToInchiKey(parsed)
    except Exception:
        return None
    if not inchikey:
        return None
    return Chem.MolToSmiles(parsed), inchikey


_RECOMBINER: Recombiner | None = None


def _init_worker(fragment_smiles: Sequence[str]) -> None:
    global _RECOMBINER
    RDLogger.DisableLog("rdApp.*")
    _RECOMBINER = Recombiner(fragment_smiles)


def make_chunk(seed: int, chunk: int) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Chunk ``chunk``'s molecules (unique within the chunk, in order) and its counts."""
    assert _RECOMBINER is not None, "call _init_worker first"
    rng = np.random.default_rng([seed, chunk])
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    counts = {"attempts": CHUNK_ATTEMPTS, "failed": 0, "filtered": 0, "duplicates": 0}
    with rdBase.BlockLogs():
        for _ in range(CHUNK_ATTEMPTS):
            mol = _RECOMBINER.attempt(rng)
            if mol is None:
                counts["failed"] += 1
                continue
            found = accept(mol)
            if found is None:
                counts["filtered"] += 1
            elif found[1] in seen:
                counts["duplicates"] += 1
            else:
                seen.add(found[1])
                out.append(found)
    return out, counts


# ---- 4. driver -------------------------------------------------------------------------------


class _Inline:
    def __init__(self, fragment_smiles: Sequence[str]) -> None:
        _init_worker(fragment_smiles)

    def submit(self, fn: Any, *args: Any) -> Any:
        return fn(*args)

    @staticmethod
    def get(handle: Any) -> Any:
        return handle

    def close(self) -> None:
        pass


class _Pool:
    def __init__(self, workers: int, initargs: tuple[Any, ...] | None = None) -> None:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if initargs is None:
            self._pool = context.Pool(workers)
        else:
            self._pool = context.Pool(workers, initializer=_init_worker, initargs=initargs)

    def submit(self, fn: Any, *args: Any) -> Any:
        return self._pool.apply_async(fn, args)

    @staticmethod
    def get(handle: Any) -> Any:
        return handle.get()

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()


def fragment_pool(smiles: Sequence[str], workers: int) -> list[str]:
    chunks = [smiles[i : i + SOURCE_CHUNK] for i in range(0, len(smiles), SOURCE_CHUNK)]
    found: set[str] = set()
    if workers > 1:
        pool = _Pool(workers)
        try:
            for part in [pool.submit(fragments_of, chunk) for chunk in chunks]:
                found |= pool.get(part)
        finally:
            pool.close()
    else:
        for chunk in chunks:
            found |= fragments_of(chunk)
    return sorted(found)


def generate(
    n: int, seed: int, fragment_smiles: Sequence[str], workers: int, counts: dict[str, int]
) -> Iterator[tuple[str, str]]:
    """The first ``n`` globally unique molecules, chunk by chunk in order."""
    runner: _Inline | _Pool = (
        _Pool(workers, (list(fragment_smiles),)) if workers > 1 else _Inline(fragment_smiles)
    )
    seen: set[str] = set()
    produced = 0
    pending: deque[Any] = deque()
    chunk = 0
    try:
        while produced < n:
            while len(pending) < 2 * workers:
                pending.append(runner.submit(make_chunk, seed, chunk))
                chunk += 1
            molecules, chunk_counts = runner.get(pending.popleft())
            for key, value in chunk_counts.items():
                counts[key] = counts.get(key, 0) + value
            counts["chunks"] = counts.get("chunks", 0) + 1
            for smiles, inchikey in molecules:
                if inchikey in seen:
                    counts["duplicates"] += 1
                    continue
                seen.add(inchikey)
                yield smiles, inchikey
                produced += 1
                if produced >= n:
                    break
    finally:
        runner.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, required=True, help="molecules to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="output .smi file")
    parser.add_argument("--data", type=Path, default=None, help="ChEBI-20 folder")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--sources",
        type=int,
        default=None,
        help="fragment only the first M ChEBI-20 molecules (default: all; part of the output's "
        "identity like --seed)",
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.workers < 1 or args.seed < 0:
        parser.error("need --n >= 1, --workers >= 1 and --seed >= 0")

    started = time.perf_counter()
    smiles = source_smiles(args.data or default_data_dir(), args.sources)
    fragments = fragment_pool(smiles, args.workers)
    fragment_seconds = time.perf_counter() - started
    print(
        f"{len(fragments)} fragments from {len(smiles)} ChEBI-20 molecules in "
        f"{fragment_seconds:.1f} s",
        flush=True,
    )

    counts: dict[str, int] = {"duplicates": 0}
    tmp = args.out.with_name(args.out.name + ".tmp")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    generate_started = time.perf_counter()
    written = 0
    with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
        for smiles_text, _ in generate(args.n, args.seed, fragments, args.workers, counts):
            handle.write(f"{smiles_text}\tGEN{written:09d}\n")
            written += 1
    os.replace(tmp, args.out)
    seconds = time.perf_counter() - generate_started
    total = time.perf_counter() - started
    attempts = max(counts.get("attempts", 0), 1)
    valid = attempts - counts.get("failed", 0) - counts.get("filtered", 0)
    print(
        f"wrote {written} molecules to {args.out}: {seconds:.1f} s generating "
        f"({written / seconds:.0f} molecules/s with {args.workers} workers), {total:.1f} s total; "
        f"{attempts} attempts: {counts.get('failed', 0)} failed assembly, "
        f"{counts.get('filtered', 0)} filtered, {counts['duplicates']} duplicates "
        f"({100 * counts['duplicates'] / max(valid, 1):.2f}% of valid)",
        flush=True,
    )
    return 0 if written == args.n else 1


if __name__ == "__main__":
    sys.exit(main())
