"""A small NanoAOD-like file with many collections, for the tests of the collections layout.

Real CMS NanoAOD is not at hand offline; this one has its shape: a tree
``Events`` with the event identifiers, flat branches (``MET_pt``, ``PV_npvs``,
a trigger bit, ``genWeight``) and the collections Jet, Muon, Electron, Photon,
Tau, FatJet and GenPart, each counted by ``n<Collection>`` and stored pt-descending,
written with ``uproot.recreate`` + ``mktree`` as NanoAOD's ``Jet_pt``, ``Jet_eta``, ...
Also: ``Photon`` has one branch only, ``IsoTrack`` is empty in every event,
``px``/``py`` are jagged branches without a common prefix that share their
counts, and ``PSWeight`` is a fixed-size array (``float[4]``: four features).
"""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import uproot

__all__ = ["COLLECTIONS", "ID", "write_nanoaod"]

ID = 1_000_000  # uid = file_id * ID + entry

F4, I4 = np.float32, np.int32
COLLECTIONS: dict[str, tuple[float, dict[str, type]]] = {
    # name: (mean multiplicity, fields after pt)
    "Jet": (3.0, {"eta": F4, "phi": F4, "mass": F4, "btagDeepFlavB": F4, "jetId": I4}),
    "Muon": (1.0, {"eta": F4, "phi": F4, "charge": I4, "tightId": np.bool_}),
    "Electron": (0.6, {"eta": F4, "cutBased": I4}),
    "Photon": (0.8, {}),  # a collection of one branch
    "Tau": (0.9, {"eta": F4, "decayMode": I4}),
    "FatJet": (0.4, {"msoftdrop": F4}),
    "GenPart": (6.0, {"eta": F4, "pdgId": I4, "statusFlags": np.int16}),
    "IsoTrack": (0.0, {"eta": F4}),  # empty in every event
}


def _collection(rng: np.random.Generator, counts: np.ndarray, fields: dict[str, type], shift: float) -> ak.Array:
    """Records of ``counts[i]`` objects per event, pt-descending."""
    total = int(counts.sum())
    event = np.repeat(np.arange(len(counts)), counts)
    pt = (5 + rng.exponential(30.0 + shift, total)).astype(np.float32)
    order = np.lexsort((-pt, event))
    values = {"pt": pt[order]}
    for name, dtype in fields.items():
        if dtype is np.bool_:
            values[name] = rng.random(total) < 0.7
        elif np.dtype(dtype).kind == "i":
            values[name] = rng.integers(-3, 12, total).astype(dtype)
        else:
            values[name] = rng.normal(0.0, 2.0, total).astype(dtype)
    return ak.unflatten(ak.zip(values), counts)


def write_nanoaod(path: Path, n: int, *, seed: int, file_id: int = 0, basket: int = 0) -> Path:
    """Write ``n`` NanoAOD-like events into ``path`` (tree ``Events``); ``uid`` numbers them across files."""
    rng = np.random.default_rng(seed)
    data: dict[str, object] = {
        "uid": (file_id * ID + np.arange(n)).astype(np.int64),
        "run": np.ones(n, np.uint32),
        "luminosityBlock": np.full(n, 7, np.uint32),
        "event": np.arange(1, n + 1, dtype=np.uint64),
        "MET_pt": (rng.exponential(30.0, n) + 8 * file_id).astype(np.float32),
        "PV_npvs": rng.poisson(20, n).astype(np.int32),
        "HLT_IsoMu24": rng.random(n) < 0.4,
        "genWeight": rng.normal(1.0, 0.2, n).astype(np.float32),
    }
    for name, (mean, fields) in COLLECTIONS.items():
        counts = rng.poisson(mean, n)
        if mean:
            counts[rng.random(n) < 0.01] += 6  # a rare tail
        data[name] = _collection(rng, counts, fields, 10.0 * file_id)
    hits = rng.poisson(2.0, n)
    data["px"] = ak.unflatten(rng.normal(0, 1, int(hits.sum())).astype(np.float32), hits)
    data["py"] = ak.unflatten(rng.normal(0, 1, int(hits.sum())).astype(np.float32), hits)
    data["PSWeight"] = rng.random((n, 4)).astype(np.float32)
    types = {
        k: v.type.content if isinstance(v, ak.Array) else np.dtype((v.dtype, v.shape[1:]))  # type: ignore[attr-defined]
        for k, v in data.items()
    }
    with uproot.recreate(path) as f:
        tree = f.mktree("Events", types)
        step = basket or n
        for start in range(0, n, step):
            tree.extend({k: v[start : start + step] for k, v in data.items()})  # type: ignore[index]
    return path
