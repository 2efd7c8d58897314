"""rwkvkit's references against fla's pure-torch ones (fla-core, the flash-linear-attention project).

fla's package ``__init__`` pulls in its Triton kernels, so each reference file is loaded on its own
by path; those files import nothing but torch and einops. Layout: fla ``[B, H, T, D]``, rwkvkit
``[B, T, H, D]``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from rwkvkit.ops import based_chunk, based_naive, wkv6_naive


def _fla_file(relative: str):
    spec = importlib.util.find_spec("fla")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("fla-core is not installed (a dev dependency)")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        pytest.skip(f"this fla-core has no {relative}")
    mod_spec = importlib.util.spec_from_file_location(f"_fla_oracle_{path.stem}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def _bhtd(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2)


@pytest.mark.parametrize("T", [1, 17, 64])
def test_based_matches_fla_naive_parallel_based(T):
    fla = _fla_file("ops/based/naive.py")
    g = torch.Generator().manual_seed(T)
    B, H, D, V = 2, 3, 8, 5
    q, k = (torch.randn(B, T, H, D, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
    ref = _bhtd(fla.naive_parallel_based(_bhtd(q), _bhtd(k), _bhtd(v), use_norm=True))
    # fp64: the same formula (1 + s + s^2 / 2 with s = q.k / sqrt(D), normaliser + 1e-6) in another order
    torch.testing.assert_close(based_naive(q, k, v, eps=1e-6), ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(based_chunk(q, k, v, eps=1e-6, chunk_size=16)[0], ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("T", [1, 9, 40])
def test_wkv6_matches_fla_naive_recurrent_rwkv6(T):
    fla = _fla_file("ops/rwkv6/recurrent_naive.py")
    g = torch.Generator().manual_seed(100 + T)
    B, H, K = 2, 2, 8
    r, k, v = (torch.randn(B, T, H, K, generator=g) for _ in range(3))
    log_w = -torch.exp(torch.randn(B, T, H, K, generator=g) * 0.5)
    u = torch.randn(H, K, generator=g)
    s0 = torch.randn(B, H, K, K, generator=g)
    # fla scales q by K^-0.5 by default; RWKV-6 does not scale r: scale=1
    o_ref, s_ref = fla.naive_recurrent_rwkv6(
        _bhtd(r), _bhtd(k), _bhtd(v), _bhtd(log_w), u, scale=1.0, initial_state=s0, output_final_state=True
    )
    o, s = wkv6_naive(r, log_w, k, v, u, s0)
    # fla's reference runs in fp32: fp32 rounding of T sequential steps
    torch.testing.assert_close(o, _bhtd(o_ref), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=1e-5)
