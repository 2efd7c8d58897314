"""Run the official ``rwkv`` package (the parity oracle) in its own process.

Used by the parity tests, the demo and the benchmarks. The package picks the RWKV-7 code path
from ``RWKV_V7_ON`` at import time and then cannot run other versions in the same process, so
callers go through :func:`run_official` (a subprocess).

As a script: ``python -m rwkvkit.utils.official CKPT.pth REQUEST.pt OUT.pt`` where the request holds
``tokens`` (list of ints) and ``cut`` (int). The output holds ``seq`` (whole-sequence logits
``[T, V]``), ``tok`` (token-by-token logits ``[T, V]``), ``resume`` (logits of ``tokens[cut:]`` fed
from the state saved after ``tokens[:cut]``) and ``state`` (the final state list).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from rwkvkit.models.rwkv.versions import spec_of


def run_official(
    ckpt: Path, tokens: list[int], cut: int, version: str = "7", strategy: str = "cpu fp32"
) -> dict:
    """Official logits for ``tokens`` (see the module docstring); raises RuntimeError if the package fails."""
    with tempfile.TemporaryDirectory() as d:
        req, out = Path(d) / "req.pt", Path(d) / "out.pt"
        torch.save({"tokens": tokens, "cut": cut, "strategy": strategy}, req)
        env = dict(os.environ, RWKV_JIT_ON="1", RWKV_CUDA_ON="0")
        env.pop("RWKV_V7_ON", None)
        env.update(spec_of(version).official_env)
        proc = subprocess.run(
            [sys.executable, "-m", "rwkvkit.utils.official", str(ckpt), str(req), str(out)],
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"official package failed:\n{proc.stderr[-3000:]}")
        return torch.load(out, weights_only=True)


def _main(ckpt: str, req_path: str, out_path: str) -> None:
    import copy

    from rwkv.model import RWKV  # noqa: PLC0415 - after the environment is set

    req = torch.load(req_path, weights_only=True)
    tokens, cut = req["tokens"], req["cut"]
    name = ckpt[:-4] if ckpt.endswith(".pth") else ckpt
    model = RWKV(name, req["strategy"])
    with torch.no_grad():
        seq, state = model.forward(list(tokens), None, full_output=True)
        tok, st = [], None
        for t in tokens:
            o, st = model.forward([t], st)
            tok.append(o.float().clone())
        _, st = model.forward(list(tokens[:cut]), None)
        st = copy.deepcopy(st)
        resume, _ = model.forward(list(tokens[cut:]), st, full_output=True)
    torch.save(
        {
            "seq": seq.float(),
            "tok": torch.stack(tok),
            "resume": resume.float(),
            "state": [s.float() for s in state],
        },
        out_path,
    )


if __name__ == "__main__":
    _main(*sys.argv[1:4])
