"""What verifying a checkpoint costs: rwkvkit's checksums against sha256 and the machine's memory bandwidth.

Writes a random RWKV-7 checkpoint of the 1.5B shape (L24 C2048, vocabulary 65536, bf16, about
3 GB) as an rwkvkit ``.safetensors`` (xxh3-128 per tensor in its metadata) and as an official
``.pth`` (a ``torch.save`` zip, CRC32 per record), then measures, best of ``--repeat`` runs after a
warm-up (the files are in the page cache, as on a second load):

* the machine's memory read bandwidth (summing a 1 GiB buffer) and the rate of sha256, the hash
  people would reach for (what the Hugging Face hub records), over the same bytes;
* verifying the safetensors file's tensors (xxh3-128) and the .pth zip's records (CRC32);
* ``rwkvkit.load(path, verify=False)`` against ``verify=True`` (the default), whole loads.

It prints GB/s and the ratios (verification as a share of the load, xxh3 against sha256 and
against the read bandwidth), never absolute times alone.

    python benchmarks/verify.py [--shape 1.5b|0.1b] [--repeat 3] [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from rwkvkit.utils.perf import best_time

SHAPES = {"1.5b": (24, 2048), "0.1b": (12, 768)}  # (n_layer, n_embd), vocabulary 65536


def random_checkpoint(n_layer: int, n_embd: int) -> dict[str, torch.Tensor]:
    from rwkvkit.formats import blinkdl
    from rwkvkit.models.rwkv.config import RWKVConfig
    from rwkvkit.training.config import default_lora_ranks

    config = RWKVConfig(version="7", n_layer=n_layer, n_embd=n_embd, vocab_size=65536, head_size=64,
                        **default_lora_ranks("7", n_embd))  # fmt: skip
    g = torch.Generator().manual_seed(0)
    return {
        k: (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16)
        for k, s in blinkdl.expected_shapes(config).items()
    }


def hash_times(path: Path, repeat: int) -> tuple[float, float]:
    """(sha256 of every tensor's bytes, rwkvkit's verification of the file's tensors), in seconds."""
    from rwkvkit.formats import native
    from rwkvkit.utils.integrity import verify_tensors

    tensors, meta = native.read_safetensors(path, verify=False)
    views = [t.reshape(-1).view(torch.uint8).numpy() for t in tensors.values()]

    def sha256_all() -> None:
        for v in views:
            hashlib.sha256(v).digest()

    return best_time(sha256_all, repeat), best_time(lambda: verify_tensors(tensors, meta, path), repeat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1.5b", help="model shape (default 1.5b)")
    ap.add_argument(
        "--repeat", type=int, default=3, help="timed runs per figure, after a warm-up (default 3)"
    )
    ap.add_argument(
        "--dir", default=None, help="where to write the checkpoints (default: a temporary folder)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the written checkpoints")
    args = ap.parse_args()

    import rwkvkit
    from rwkvkit.formats import save
    from rwkvkit.utils.integrity import check_zip_crc
    from rwkvkit.utils.perf import read_bandwidth

    folder = Path(args.dir or tempfile.mkdtemp(prefix="rwkvkit-verify-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
              f"torch {torch.__version__}")  # fmt: skip
        n_layer, n_embd = SHAPES[args.shape]
        sd = random_checkpoint(n_layer, n_embd)
        nbytes = sum(t.numel() * t.element_size() for t in sd.values())
        n_params = sum(t.numel() for t in sd.values())
        print(f"model: RWKV-7 L{n_layer} C{n_embd}, {n_params / 1e9:.2f} B parameters, bf16, "
              f"{nbytes / 1e9:.2f} GB of tensors")  # fmt: skip
        st_path, pth_path = folder / "model.safetensors", folder / "model.pth"
        save(sd, st_path)
        save(sd, pth_path, "blinkdl")
        del sd

        bandwidth = read_bandwidth()
        t_sha, t_xxh = hash_times(st_path, args.repeat)
        t_crc = best_time(lambda: check_zip_crc(pth_path), args.repeat)
        t_load_off = best_time(lambda: rwkvkit.load(st_path, verify=False), args.repeat)
        t_load_on = best_time(lambda: rwkvkit.load(st_path), args.repeat)
        t_pth_off = best_time(lambda: rwkvkit.load(pth_path, verify=False), args.repeat)
        t_pth_on = best_time(lambda: rwkvkit.load(pth_path), args.repeat)

        gb = nbytes / 1e9
        rows = [
            ("memory read bandwidth (sum of 1 GiB)", None, bandwidth / 1e9),
            ("sha256 of every tensor (one core)", t_sha, gb / t_sha),
            ("xxh3-128 verification (.safetensors)", t_xxh, gb / t_xxh),
            ("CRC32 verification (.pth zip)", t_crc, gb / t_crc),
        ]
        print(f"\n{'':42s} {'seconds':>8s} {'GB/s':>7s}")
        for name, t, rate in rows:
            print(f"{name:42s} {'' if t is None else f'{t:8.3f}':>8s} {rate:7.2f}")
        print(f"\n{'load':42s} {'verify off':>10s} {'verify on':>10s} {'overhead':>9s}")
        for name, off, on in [("rwkvkit.load(.safetensors)", t_load_off, t_load_on),
                              ("rwkvkit.load(.pth)", t_pth_off, t_pth_on)]:  # fmt: skip
            print(f"{name:42s} {off:10.3f} {on:10.3f} {100 * (on / off - 1):8.1f}%")
        bw = bandwidth / 1e9
        print(f"\nratios: xxh3 verification runs at {gb / t_xxh / bw:.2f}x the read bandwidth and "
              f"{t_sha / t_xxh:.1f}x the speed of sha256; CRC32 at {gb / t_crc / bw:.2f}x the "
              "read bandwidth")  # fmt: skip
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(folder, ignore_errors=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
