"""The model on ``cuda`` gives the CPU's fp32 logits (skipped without a CUDA device).

A random fp32 model of every version runs a prefill (chunked WKV, ``impl="auto"``: whichever
implementation the tier table picks on each device) and a few one-token decoding steps on both
devices from the same weights and ids. Logits must agree within 1e-4 absolute; the states, whose
entries grow large for RWKV-4 (``aa``, ``bb``), within 1e-4 of their largest entry.

TF32 is switched off for the test (PyTorch's default for matmuls, stated here so that a process-wide
``set_float32_matmul_precision("high")`` cannot loosen it): the comparison is of fp32 arithmetic.
"""

from __future__ import annotations

import copy

import pytest
import torch

from rwkvkit.models.rwkv.init import random_model

from .configs import ONE_PER_VERSION

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

LOGITS_ATOL = 1e-4  # absolute, on fp32 logits (item 6 of issue 18)
STATE_RTOL = 1e-4  # of the state tensor's largest entry


@pytest.fixture
def fp32_matmuls():
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.set_float32_matmul_precision(before[0])
    torch.backends.cudnn.allow_tf32 = before[1]


def assert_state_close(got, want) -> None:
    for name in want.tensors:
        w = want[name]
        scale = max(1.0, float(w.abs().max()))
        torch.testing.assert_close(got[name].cpu(), w, rtol=0, atol=STATE_RTOL * scale, msg=name)


@pytest.mark.parametrize("version", sorted(ONE_PER_VERSION))
def test_cuda_logits_equal_cpu_fp32(version, fp32_matmuls):
    cpu = random_model(ONE_PER_VERSION[version], seed=1)
    gpu = copy.deepcopy(cpu).cuda()
    V = cpu.config.vocab_size
    prompt = torch.randint(0, V, (2, 45), generator=torch.Generator().manual_seed(0))  # 2 sequences
    with torch.inference_mode():
        want, want_state = cpu(prompt)
        got, got_state = gpu(prompt.cuda())
        assert got.device.type == "cuda" and got.dtype == torch.float32
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=LOGITS_ATOL)  # [2, 45, V] fp32
        assert_state_close(got_state, want_state)
        for _ in range(4):  # decoding: the one-token step on both devices, the CPU's greedy ids
            ids = want[:, -1].argmax(-1, keepdim=True)
            want, want_state = cpu(ids, want_state)
            got, got_state = gpu(ids.cuda(), got_state)
            torch.testing.assert_close(got.cpu(), want, rtol=0, atol=LOGITS_ATOL)  # [2, 1, V] fp32
            assert_state_close(got_state, want_state)
