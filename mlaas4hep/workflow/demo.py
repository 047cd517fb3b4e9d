"""Synthetic demo data: two small CMS-NanoAOD-like ROOT files, made of random numbers.

:func:`make_demo_files` writes ``GluGluToHToTauTau.root`` and
``VBF_HToTauTau.root``, stand-ins for the reduced CMS Open Data NanoAOD files
of the original recipe (H -> tau tau via gluon fusion and via vector-boson
fusion) that the examples, tests and benchmarks of mlaas4hep use. They carry
those samples' names and schema, not their events. :data:`DEMO_SAMPLES` says
which is the signal (label 1, as the recipe's labels.txt).  Each file holds a TTree ``Events`` with
the same 66 branches: 18 flat ones (counters ``nMuon``, ``nElectron``,
``nTau`` and ``nJet`` included) and 48 jagged ones, 12 per collection.

The data are random but shaped like the real thing: objects sorted by
descending pt, long-tailed multiplicities, and a physics difference between
the samples (VBF events often carry two forward jets with a large rapidity
gap and a large dijet mass) that a small neural network separates with an
AUC of about 0.8, not 1.0.
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import awkward as ak
import numpy as np
import uproot

from mlaas4hep._checks import check_int

__all__ = ["DEMO_SAMPLES", "DemoSample", "make_demo_files"]

logger = logging.getLogger(__name__)

GLUGLU_NAME = "GluGluToHToTauTau.root"
VBF_NAME = "VBF_HToTauTau.root"
TREE_NAME = "Events"


@dataclass(frozen=True)
class DemoSample:
    """One demo file: its name, its label in the recipe's labels.txt, and what it stands for."""

    file_name: str
    label: int
    role: str
    process: str


DEMO_SAMPLES = (
    DemoSample(GLUGLU_NAME, 1, "signal", "H -> tau tau by gluon fusion"),
    DemoSample(VBF_NAME, 0, "background", "H -> tau tau by vector-boson fusion, most events with two forward jets"),
)
"""The demo files in the order :func:`make_demo_files` returns them, labelled as the recipe's labels.txt (1, 0)."""

# Fraction of VBF events with the two forward "tagging" jets; the others look
# like gluon fusion.  This is the main knob that sets how separable they are.
_VBF_TAG_FRACTION = 0.75

# A field generator gets the random generator and the fields made so far
# ("pt", "eta", ... in table order) and returns one value per object.
_Gen = Callable[[np.random.Generator, dict[str, np.ndarray]], np.ndarray]


def _n(k: dict[str, np.ndarray]) -> int:
    return len(k["pt"])


def _expo(scale: float) -> _Gen:
    return lambda rng, k: rng.exponential(scale, _n(k))


def _normal(mu: float, sigma: float) -> _Gen:
    return lambda rng, k: rng.normal(mu, sigma, _n(k))


def _uniform(lo: float, hi: float) -> _Gen:
    return lambda rng, k: rng.uniform(lo, hi, _n(k))


def _flag(p: float) -> _Gen:
    return lambda rng, k: rng.random(_n(k)) < p


def _ints(values: list[int], p: list[float]) -> _Gen:
    return lambda rng, k: rng.choice(np.asarray(values), _n(k), p=p)


def _scaled(base: str, lo: float, hi: float) -> _Gen:
    return lambda rng, k: k[base] * rng.uniform(lo, hi, _n(k))


_CHARGE = _ints([-1, 1], [0.5, 0.5])
_TAU_MODES = [0, 1, 2, 10]

# Collection -> field -> (dtype, generator) for the fields after pt, eta, phi,
# mass (float32, made by _kinematics; so is a None generator's field).
# 12 fields per collection, 48 jagged branches in all.
_EXTRA_FIELDS: dict[str, dict[str, tuple[type, _Gen | None]]] = {
    "Muon": {
        "charge": (np.int32, _CHARGE),
        "pfRelIso03_all": (np.float32, _expo(0.08)),
        "pfRelIso04_all": (np.float32, _scaled("pfRelIso03_all", 1.0, 1.6)),
        "dxy": (np.float32, _normal(0.0, 0.004)),
        "dxyErr": (np.float32, _expo(0.002)),
        "dz": (np.float32, _normal(0.0, 0.01)),
        "dzErr": (np.float32, _expo(0.003)),
        "tightId": (np.bool_, _flag(0.85)),
    },
    "Electron": {
        "charge": (np.int32, _CHARGE),
        "pfRelIso03_all": (np.float32, _expo(0.1)),
        "dxy": (np.float32, _normal(0.0, 0.006)),
        "dxyErr": (np.float32, _expo(0.003)),
        "dz": (np.float32, _normal(0.0, 0.015)),
        "dzErr": (np.float32, _expo(0.004)),
        "cutBased": (np.int32, _ints([0, 1, 2, 3, 4], [0.3, 0.1, 0.2, 0.2, 0.2])),
        "convVeto": (np.bool_, _flag(0.92)),
    },
    "Tau": {
        "charge": (np.int32, _CHARGE),
        "decayMode": (np.int32, None),
        "relIso_all": (np.float32, _expo(0.15)),
        "dxy": (np.float32, _normal(0.0, 0.01)),
        "dz": (np.float32, _normal(0.0, 0.02)),
        "idDecayMode": (np.bool_, _flag(0.9)),
        "idIsoTight": (np.bool_, _flag(0.55)),
        "idAntiMuTight": (np.bool_, _flag(0.8)),
    },
    "Jet": {
        "btag": (np.float32, lambda rng, k: rng.beta(0.5, 3.0, _n(k))),
        "puId": (np.bool_, lambda rng, k: (k["pt"] > 30) | (rng.random(_n(k)) < 0.6)),
        "area": (np.float32, _normal(0.5, 0.03)),
        "chHEF": (np.float32, _uniform(0.0, 0.9)),
        "neHEF": (np.float32, _uniform(0.0, 0.5)),
        "qgl": (np.float32, _uniform(0.0, 1.0)),
        "nConstituents": (np.int32, lambda rng, k: 2 + rng.poisson(k["pt"] / 4)),
        "hadronFlavour": (np.int32, _ints([0, 4, 5], [0.85, 0.1, 0.05])),
    },
}

# Multiplicity per collection: Poisson core, and with probability p_tail a
# "busy" event with a count uniform in [lo, hi].  hi is the maximum length,
# reached for n_events >~ 50k; it sets the number of padded features
# (18 + 12 * (32 + 29 + 36 + 50) = 1,782).
_MULTIPLICITY: dict[str, tuple[float, float, int, int]] = {
    #          mean  p_tail  lo  hi
    "Muon": (1.1, 2e-3, 6, 32),
    "Electron": (0.35, 2e-3, 5, 29),
    "Tau": (1.4, 2e-3, 6, 36),
    "Jet": (1.3, 3e-3, 10, 50),
}
# Tagged VBF events have the two tagging jets plus Poisson(this) others.
_VBF_EXTRA_JETS = 0.6

# Acceptance |eta| per collection.
_ETA_MAX = {"Muon": 2.4, "Electron": 2.5, "Tau": 2.3, "Jet": 4.7}

_HLT = [
    "HLT_IsoMu24",
    "HLT_IsoMu24_eta2p1",
    "HLT_IsoMu17_eta2p1_LooseIsoPFTau20",
    "HLT_IsoMu17_eta2p1_LooseIsoPFTau20_SingleL1",
]


def _counts(rng: np.random.Generator, name: str, n: int) -> np.ndarray:
    """Long-tailed multiplicity of collection ``name`` for ``n`` events."""
    mean, p_tail, lo, hi = _MULTIPLICITY[name]
    counts = rng.poisson(mean, n)
    busy = rng.random(n) < p_tail
    counts[busy] = rng.integers(lo, hi + 1, busy.sum())
    return np.minimum(counts, hi)


def _kinematics(rng: np.random.Generator, name: str, pos: np.ndarray, tagged: np.ndarray) -> dict[str, np.ndarray]:
    """pt, eta, phi, mass of the objects (unsorted).

    ``pos`` is each object's index inside its event; ``tagged`` says whether
    its event is a VBF event with tagging jets.  The first muon and tau of an
    event are the (harder, central) Higgs decay products.
    """
    n, eta_max = len(pos), _ETA_MAX[name]
    hard = pos == 0
    k: dict[str, np.ndarray] = {}
    if name == "Jet":
        tag = tagged & (pos < 2)
        pt = 20 + rng.exponential(np.where(tag, 35.0, 22.0))
        sign = np.where(pos % 2 == 0, 1.0, -1.0) * rng.choice([-1.0, 1.0], n)
        eta = np.where(tag, sign * rng.normal(2.6, 0.9, n), rng.normal(0, 1.7, n))
        mass = pt * rng.uniform(0.05, 0.2, n)
    else:
        scale = {"Muon": 14.0, "Electron": 12.0, "Tau": 16.0}[name]
        pt = np.where(hard, 18 + rng.exponential(scale, n), 3 + rng.exponential(6, n))
        eta = np.where(hard, rng.normal(0, 1.1, n), rng.uniform(-eta_max, eta_max, n))
        if name == "Tau":
            k["decayMode"] = rng.choice(_TAU_MODES, n, p=[0.3, 0.45, 0.05, 0.2])
            mass = np.where(k["decayMode"] == 0, 0.1396, rng.uniform(0.3, 1.5, n))
        else:
            mass = np.full(n, 0.10566 if name == "Muon" else 0.000511)
    k["pt"] = pt
    k["eta"] = np.clip(eta, -eta_max, eta_max)
    k["phi"] = rng.uniform(-np.pi, np.pi, n)
    k["mass"] = mass
    return k


def _collection(rng: np.random.Generator, name: str, counts: np.ndarray, tagged: np.ndarray) -> ak.Array:
    """One jagged collection as an awkward array of records, pt-descending."""
    starts = np.cumsum(counts) - counts
    event = np.repeat(np.arange(len(counts)), counts)
    pos = np.arange(event.size) - starts[event]
    k = _kinematics(rng, name, pos, tagged[event])
    fields = {f: k[f].astype(np.float32) for f in ("pt", "eta", "phi", "mass")}
    for field, (dtype, gen) in _EXTRA_FIELDS[name].items():
        if gen is not None:
            k[field] = gen(rng, k)
        fields[field] = np.asarray(k[field]).astype(dtype)
    order = np.lexsort((-fields["pt"], event))  # by event, then pt descending
    flat = ak.zip({f: v[order] for f, v in fields.items()})
    return ak.unflatten(flat, counts)


def _leading(coll: ak.Array, field: str) -> np.ndarray:
    """Field of the leading object of each event, 0 where there is none."""
    leading: np.ndarray = ak.to_numpy(ak.fill_none(ak.firsts(coll[field]), 0.0))
    return leading


def _events(rng: np.random.Generator, n: int, vbf: bool) -> dict[str, Any]:
    """All branches of one sample, flat ones as NumPy, collections as awkward."""
    # Identifiers come from one fixed range for both samples: no label leak.
    event = np.sort(rng.choice(10**9, n, replace=False) + 1).astype(np.uint64)
    out: dict[str, Any] = {
        "run": np.ones(n, np.uint32),
        "luminosityBlock": (1 + (event - 1) // 5000).astype(np.uint32),
        "event": event,
        "PV_npvs": (1 + rng.poisson(17, n)).astype(np.int32),
        "PV_x": rng.normal(0.07, 0.01, n).astype(np.float32),
        "PV_y": rng.normal(0.06, 0.01, n).astype(np.float32),
        "PV_z": rng.normal(0.0, 5.0, n).astype(np.float32),
    }
    tagged = np.zeros(n, bool)
    if vbf:
        tagged = rng.random(n) < _VBF_TAG_FRACTION
    for name in _EXTRA_FIELDS:
        counts = _counts(rng, name, n)
        if name == "Jet":
            vbf_jets = 2 + rng.poisson(_VBF_EXTRA_JETS, tagged.sum())
            counts[tagged] = np.maximum(counts[tagged], vbf_jets)
        out[name] = _collection(rng, name, counts, tagged)
    sum_pt = sum(ak.to_numpy(ak.sum(out[c]["pt"], axis=1)) for c in _EXTRA_FIELDS)
    out["MET_pt"] = (rng.exponential(25.0, n) + 5).astype(np.float32)
    out["MET_phi"] = rng.uniform(-np.pi, np.pi, n).astype(np.float32)
    out["MET_sumEt"] = (150 + sum_pt + rng.exponential(200.0, n)).astype(np.float32)
    mu_pt, mu_eta = _leading(out["Muon"], "pt"), np.abs(_leading(out["Muon"], "eta"))
    tau_pt = _leading(out["Tau"], "pt")
    ok = rng.random((len(_HLT), n)) < 0.92  # trigger efficiency
    mu_tau = (mu_pt > 17) & (mu_eta < 2.1) & (tau_pt > 20)
    cuts = [mu_pt > 24, (mu_pt > 24) & (mu_eta < 2.1), mu_tau, mu_tau & (rng.random(n) < 0.8)]
    for i, (name, cut) in enumerate(zip(_HLT, cuts, strict=True)):
        out[name] = cut & ok[i]
    return out


def _write(path: pathlib.Path, data: dict[str, Any], step: int) -> None:
    """Write ``data`` into the TTree ``Events`` of ``path``, ``step`` events per basket."""
    types = {k: (v.type.content if isinstance(v, ak.Array) else v.dtype) for k, v in data.items()}
    n = len(data["event"])
    tmp = path.with_name(path.name + ".tmp")  # readers never see a half-written file
    try:
        with uproot.recreate(tmp) as f:
            tree = f.mktree(TREE_NAME, types)
            for start in range(0, n, step):
                tree.extend({k: v[start : start + step] for k, v in data.items()})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def make_demo_files(
    directory: str | os.PathLike[str],
    n_events: int = 100_000,
    *,
    seed: int = 42,
    overwrite: bool = True,
    step: int = 10_000,
) -> list[pathlib.Path]:
    """Write the two demo ROOT files and return their paths.

    Parameters
    ----------
    directory : str or os.PathLike
        Where to write; created if missing.
    n_events : int, default 100_000
        Events in ``GluGluToHToTauTau.root``.  ``VBF_HToTauTau.root`` gets
        ``n_events + n_events * 3 // 100`` events (3 % more, like the real
        files), e.g. 100,000 and 103,000.
    seed : int, default 42
        Seed of :func:`numpy.random.default_rng`; each file gets its own
        sub-seed (``numpy.random.SeedSequence(seed).spawn(2)``).  Same seed,
        same files.
    overwrite : bool, default True
        If False and both files exist, return them as they are.
    step : int, default 10_000
        Events per ``TTree.extend`` call, hence per basket.

    Returns
    -------
    list of pathlib.Path
        ``[GluGluToHToTauTau.root, VBF_HToTauTau.root]`` (labels 1 and 0 in
        the demo).

    Raises
    ------
    ValueError
        (:class:`mlaas4hep.errors.ParameterError`) if ``n_events`` or
        ``step`` is not a positive integer.

    Notes
    -----
    Tree ``Events``, 66 branches, identical types in both files:

    * 18 flat: ``run`` (uint32), ``luminosityBlock`` (uint32), ``event``
      (uint64, unique, drawn from the same range in both files),
      ``PV_npvs`` (int32), ``PV_x/y/z``, ``MET_pt``, ``MET_phi``,
      ``MET_sumEt`` (float32), four bool HLT flags and the int32 counters
      ``nMuon``, ``nElectron``, ``nTau``, ``nJet``;
    * 48 jagged, 12 per collection ``Muon``, ``Electron``, ``Tau``, ``Jet``:
      ``pt``, ``eta``, ``phi``, ``mass`` (float32) plus the fields of
      ``_EXTRA_FIELDS`` (e.g. ``Jet_btag``, ``Tau_decayMode``,
      ``Muon_tightId``), sorted by descending pt in each event.

    Multiplicities are Poisson with a rare tail of busy events.  Padding each
    collection to its maximum length gives, measured with the default seed,
    maximum lengths Muon 32, Electron 29, Tau 36, Jet 50, i.e.
    18 + 12 * 147 = 1,782 features in each file for n_events = 100,000 (and
    250,000); for n_events = 20,000 the gluon-fusion file reaches Jet 46 only
    (1,734 features) and the VBF file 1,782.

    Physics: leptons (the Higgs decay products) have the same distributions in
    both files; 75 % of the VBF events have two forward tagging jets in opposite
    hemispheres (large |delta eta_jj| and dijet mass) and more jets overall.
    The small Keras network of the examples (inputs: flat branches but the
    identifiers, jagged ones cut/padded to 10) reaches an AUC of about 0.79;
    boosted trees about 0.85.  ``run``, ``luminosityBlock`` and ``event``
    carry no information on the sample.
    """
    n_events, step = check_int(n_events, "n_events"), check_int(step, "step")
    directory = pathlib.Path(directory)
    paths = [directory / GLUGLU_NAME, directory / VBF_NAME]
    if not overwrite and all(p.is_file() for p in paths):
        logger.debug("demo files already in %s, not rewritten", directory)
        return paths
    directory.mkdir(parents=True, exist_ok=True)
    sizes = [int(n_events), int(n_events) + int(n_events) * 3 // 100]
    sub_seeds = np.random.SeedSequence(seed).spawn(2)
    for path, size, vbf, sub in zip(paths, sizes, (False, True), sub_seeds, strict=True):
        _write(path, _events(np.random.default_rng(sub), size, vbf), step)
        logger.debug("wrote %s (%d events)", path, size)
    return paths
