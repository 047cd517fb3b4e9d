"""The float32 check of preprocess.json's numbers: what a consumer's float32 arithmetic adds, not float32 itself."""

from __future__ import annotations

import numpy as np
import pytest

from mlaas4hep import ParameterError
from mlaas4hep.deploy import layout
from mlaas4hep.deploy.layout import PRECISION, _var_info
from mlaas4hep.specs.values import BranchSpec


def spec_of(name: str, x: np.ndarray) -> BranchSpec:
    mean = float(x.mean())
    m2 = float(((x - mean) ** 2).sum())
    return BranchSpec(
        name, "flat", str(x.dtype), count=x.size, min=float(x.min()), max=float(x.max()), mean=mean, m2=m2
    )


def consumer_error(spec: BranchSpec, x: np.ndarray, normalization: str) -> float:
    """Largest |float32 consumer - float32(mlaas4hep's float64)| over ``x``, beyond one float32 rounding of it."""
    info = _var_info(spec, normalization, 0.0)
    exact = (x.astype(np.float64) - info.median) * info.norm_factor
    consumer = (x.astype(np.float32) - np.float32(info.median)) * np.float32(info.norm_factor)
    return float(np.max(np.abs(consumer - exact.astype(np.float32)) - np.abs(exact) * 2.0**-23))


def test_a_standardized_branch_with_a_long_tail_is_exported() -> None:
    """MET-like: exponential of mean 40 with a tail to 1000; float32 loses nothing that float32 inputs keep."""
    rng = np.random.default_rng(0)
    x = rng.exponential(40.0, 100_000).astype(np.float32)
    x[:10] = np.linspace(600, 1000, 10)
    spec = spec_of("MET_pt", x)
    for normalization in ("standard", "minmax", None):
        assert consumer_error(spec, x, normalization) <= PRECISION  # what a consumer gets indeed
        info = _var_info(spec, normalization, 0.0)
        assert layout.cancellation_error(spec, info.median, info.norm_factor) <= PRECISION
    unnormalized = spec_of("E", rng.exponential(1e6, 1000))  # no offset: float32 cancels nothing
    assert layout.cancellation_error(unnormalized, 0.0, 1.0) == 0.0


def test_a_large_offset_over_a_small_spread_is_refused() -> None:
    """A timestamp: 1.7e9 over a range of 100, whichever normalization; a consumer's float32 is off by ~1."""
    x = (1_700_000_000 + np.arange(100)).astype(np.int64)
    spec = spec_of("timestamp", x)
    for normalization in ("standard", "minmax"):
        with pytest.raises(ParameterError, match=r"branch 'timestamp' holds values up to 1\.7e\+09.* off by up to"):
            _var_info(spec, normalization, 0.0)
    offset, scale = float(x.min()), 1 / 99
    consumer = (x.astype(np.float32) - np.float32(offset)) * np.float32(scale)
    assert np.max(np.abs(consumer - (x - offset) * scale)) > 0.1  # the error the check foresees
    assert layout.cancellation_error(spec, offset, scale) > 0.1
