"""CPU speed and memory: rwkvkit against llama.cpp on the same RWKV-7 weights, in one script.

    python benchmarks/cpu_peers.py                    # random RWKV-7 0.1B-shape weights, 5 interleaved passes
    python benchmarks/cpu_peers.py --quick            # smoke run: 1 pass, short prompt, few tokens
    python benchmarks/cpu_peers.py --shape 0.1b 1.5b  # and the load peak RSS at the 1.5B shape (minutes)

The peer: llama.cpp, built once from the source vendored in the ``llama-cpp-python`` sdist pinned below
(cmake, Release, CPU only, ``-march=native``) into a cache folder outside the repository
(``$RWKVKIT_BENCH_CACHE``, else ``~/.cache/rwkvkit-bench``). Only the shared library ``libllama`` is
built; it is driven through ctypes with the sdist's own bindings (``llama_cpp/llama_cpp.py``, written
for that llama.cpp commit), so token ids go in and greedy token ids come out, no text in between.

One random checkpoint (official ``.pth``, bf16) is written as GGUF at each precision (by rwkvkit's
GGUF writer; ``--gguf-writer llama.cpp``, or where rwkvkit has none, by llama.cpp's own
``convert_hf_to_gguf.py`` and ``llama_model_quantize``) and both run it, each configuration in its own
process (so a peak RSS is its own), in interleaved passes:

    llama.cpp GGUF   f32     bf16    q8_0    q4_0
    rwkvkit          fp32    bf16    int8    q4      (``rwkvkit.load(path, weights=...)``, lean loading)

Measured at batch 1, 2 threads each: prefill tok/s (a 1024-token prompt), decode tok/s (64 greedy
tokens), the decode as a % of its bound (read bandwidth / bytes of weights read per token), and peak
RSS (rwkvkit's process, torch included; llama.cpp's process less its Python host; the conversion to GGUF
runs elsewhere and is in neither). llama.cpp's times are its own (``llama_perf_context``: compute inside
``llama_decode``, loading excluded); rwkvkit's are wall times around its forward calls (argmax
included). Correctness: the greedy tokens of both and their logits after the prompt, each also against
rwkvkit's plain fp32 model (not optimized), so a deviation is attributed to the side that has it.
Printed, and written to ``benchmarks/results/cpu_peers-<date>.md``: medians and per-pass ratios, the
machine's read bandwidth and bf16 matmul peak measured in the same run, its CPU flags, and the targets
(decode >= llama.cpp's and >= 90 % of its bound, prefill >= 1.3x, peak RSS <= 1.2x), each met or missed.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

# Nothing above imports torch: the llama.cpp worker runs this file too, and its peak RSS must be
# llama.cpp's (plus a bare interpreter), not torch's.

LLAMA_CPP_PYTHON = "0.3.36"  # the sdist whose vendored llama.cpp is built
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=ON", "-DGGML_BACKEND_DL=OFF",
    "-DLLAMA_BUILD_COMMON=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_TOOLS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_OPENSSL=OFF",
)  # fmt: skip
# (llama.cpp GGUF type, rwkvkit optimize weights): the precision pairs compared
PAIRS = (("f32", "fp32"), ("bf16", "bf16"), ("q8_0", "int8"), ("q4_0", "q4"))
LOAD_PAIRS = (("q8_0", "int8"), ("q4_0", "q4"))  # the 1.5B load test: quantised loading
LLAMA_FTYPES = {"f32": 0, "q4_0": 2, "q8_0": 7, "bf16": 32}  # enum llama_ftype (include/llama.h)
SHAPES = {"0.1b": "rwkv7-0.1b", "1.5b": "rwkv7-1.5b"}  # rwkvkit presets (L12 C768, L24 C2048)
AGREE_TOKENS = 32  # greedy tokens compared at fp32
# the targets of the issue: rwkvkit / llama.cpp (or / its bound) against these
DECODE_VS_PEER, DECODE_OF_BOUND, PREFILL_VS_PEER, RSS_VS_PEER = 1.0, 0.90, 1.3, 1.2
CPU_FLAGS = (
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
)  # fmt: skip
SIDES = ("llama.cpp", "rwkvkit")


# ---- llama.cpp: the sdist, the build, the bindings ------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("RWKVKIT_BENCH_CACHE") or Path.home() / ".cache" / "rwkvkit-bench")


def changelog_commit(changelog: str, version: str) -> str:
    """The llama.cpp commit a llama-cpp-python release vendors, read from its CHANGELOG section
    (``- feat: update llama.cpp to ggml-org/llama.cpp@0c1e57098``)."""
    _, found, rest = changelog.partition(f"## [{version}]")
    if not found:
        raise ValueError(f"the CHANGELOG has no section for {version}")
    section = rest.split("\n## [", 1)[0]
    match = re.search(r"llama\.cpp@([0-9a-f]{7,40})", section)
    if match is None:
        raise ValueError(f"the CHANGELOG section of {version} names no llama.cpp commit")
    return match.group(1)


def fetch_sdist(cache: Path) -> Path:
    """The llama-cpp-python sdist in the cache, downloaded with pip when absent."""
    sdist = cache / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not sdist.is_file():
        print(f"downloading the llama-cpp-python {LLAMA_CPP_PYTHON} sdist into {cache} ...", flush=True)
        pip = [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={LLAMA_CPP_PYTHON}"]
        subprocess.run([*pip, "--no-deps", "--no-binary", ":all:", "--dest", str(cache)], check=True)
    return sdist


def machine_key() -> str:
    """What a ``-march=native`` build depends on: the processor and its flags, the cmake options."""
    model, flags = cpu_model_and_flags()
    text = "\n".join([model, " ".join(sorted(flags)), *CMAKE_OPTIONS])
    return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class LlamaBuild:
    root: Path  # <cache>/llama.cpp-<commit>: src/ (vendor/llama.cpp), py/llama_cpp (bindings), build/
    commit: str
    build_s: float  # how long the build took (now, or when it was cached)
    cached: bool

    @property
    def lib_dir(self) -> Path:
        return self.root / "build" / "bin"

    @property
    def bindings(self) -> Path:
        return self.root / "py" / "llama_cpp"

    @property
    def src(self) -> Path:
        return self.root / "src"


def _extract(sdist: Path, root: Path) -> None:
    """``vendor/llama.cpp`` -> root/src and the ``llama_cpp`` bindings package -> root/py/llama_cpp."""
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        members = tar.getmembers()
        top = members[0].name.split("/")[0]
        for prefix, dest in (
            (f"{top}/vendor/llama.cpp/", tmp / "src"),
            (f"{top}/llama_cpp/", tmp / "py" / "llama_cpp"),
        ):
            picked = [
                m.replace(name=m.name[len(prefix) :], deep=False)
                for m in members
                if m.name.startswith(prefix) and len(m.name) > len(prefix)
            ]
            tar.extractall(dest, members=picked, filter="data")
    for sub in ("src", "py"):
        shutil.rmtree(root / sub, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        (tmp / sub).rename(root / sub)
    shutil.rmtree(tmp)


def build_llama_cpp(cache: Path, sdist: Path | None, jobs: int) -> LlamaBuild:
    """Build ``libllama`` once per llama.cpp commit and machine; later calls find it and return."""
    sdist = sdist or fetch_sdist(cache)
    with tarfile.open(sdist) as tar:
        log = next(m for m in tar.getmembers() if m.name.count("/") == 1 and m.name.endswith("/CHANGELOG.md"))
        commit = changelog_commit(tar.extractfile(log).read().decode(), LLAMA_CPP_PYTHON)
    root = cache / f"llama.cpp-{commit}"
    if (
        not (root / "src" / "CMakeLists.txt").is_file()
        or not (root / "py" / "llama_cpp" / "llama_cpp.py").is_file()
    ):
        _extract(sdist, root)
    build, key = root / "build", machine_key()
    stamp = build / "rwkvkit-build.json"
    if (build / "bin" / "libllama.so").is_file() and stamp.is_file():
        info = json.loads(stamp.read_text())
        if info.get("machine") == key:
            return LlamaBuild(root, commit, info["seconds"], cached=True)
        print("llama.cpp was built for another processor or with other options: building again", flush=True)
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    logfile = build / "build.log"
    print(
        f"building llama.cpp {commit} (libllama only, {' '.join(CMAKE_OPTIONS[:2])}, -j{jobs}) in {build}; "
        f"log: {logfile} (about 5 min on 2 cores)",
        flush=True,
    )
    t0 = time.perf_counter()
    with open(logfile, "w") as out:
        for cmd in (
            ["cmake", "-S", str(root / "src"), "-B", str(build), *generator, *CMAKE_OPTIONS],
            ["cmake", "--build", str(build), f"-j{jobs}", "--target", "llama"],
        ):
            if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                raise SystemExit(
                    f"llama.cpp build failed ({' '.join(cmd)}); see {logfile}:\n"
                    + logfile.read_text()[-3000:]
                )
    seconds = time.perf_counter() - t0
    stamp.write_text(json.dumps({"machine": key, "seconds": seconds, "jobs": jobs, "options": CMAKE_OPTIONS}))
    return LlamaBuild(root, commit, seconds, cached=False)


def llama_bindings(lib_dir: str, bindings: str):
    """The sdist's ctypes bindings (``llama_cpp.llama_cpp``) on our ``libllama``, without running the
    package's ``__init__`` (which imports the high-level API and its dependencies)."""
    import importlib
    import types

    os.environ["LLAMA_CPP_LIB_PATH"] = lib_dir  # read by llama_cpp.llama_cpp at import
    package = types.ModuleType("llama_cpp")
    package.__path__ = [bindings]
    sys.modules["llama_cpp"] = package
    return importlib.import_module("llama_cpp.llama_cpp")


def parse_system_info(text: str) -> list[str]:
    """The features llama.cpp reports as on, from ``llama_print_system_info()``
    (``"CPU : SSE3 = 1 | AVX = 1 | AMX_INT8 = 0 | ..."`` -> ``["SSE3", "AVX"]``)."""
    return [m.group(1) for m in re.finditer(r"([A-Za-z0-9_]+) = 1\b", text)]


# ---- the GGUF files -------------------------------------------------------------------------------


def write_gguf(ckpt: Path, dtype: str, writer: str, llama: LlamaBuild, work: Path) -> Path:
    """The one step that makes a GGUF file (``dtype``: f32, bf16, q8_0, q4_0) from ``ckpt``."""
    dst = work / f"{ckpt.stem}-{writer}-{dtype}.gguf"
    if writer == "rwkvkit":
        from rwkvkit.formats import convert

        convert(ckpt, dst, to="gguf", dtype=dtype)
    else:
        llama_cpp_convert(ckpt, dst, dtype, llama, work)
    return dst


def llama_cpp_convert(ckpt: Path, dst: Path, dtype: str, llama: LlamaBuild, work: Path) -> None:
    """llama.cpp's own conversion: rwkvkit writes the fla HF folder that ``convert_hf_to_gguf.py``
    reads (at f32), and ``llama_model_quantize`` (llama-quantize's function) makes the other types."""
    f32 = dst.with_name(f"{ckpt.stem}-llama.cpp-f32.gguf")
    if dtype == "f32" or not f32.is_file():
        from rwkvkit.formats import convert
        from rwkvkit.tokenizer import world_vocab_path

        hf_dir = work / f"{ckpt.stem}-hf"
        shutil.rmtree(hf_dir, ignore_errors=True)
        convert(ckpt, hf_dir, to="hf", dtype="fp32")
        shutil.copy(world_vocab_path(), hf_dir)  # the converter reads the World vocabulary from the folder
        env = dict(os.environ, PYTHONPATH=str(llama.src / "gguf-py"))
        cmd = [sys.executable, str(llama.src / "convert_hf_to_gguf.py"), str(hf_dir), "--outtype", "f32",
               "--outfile", str(f32)]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        shutil.rmtree(hf_dir)
        if proc.returncode != 0:
            raise RuntimeError(f"convert_hf_to_gguf.py failed:\n{proc.stderr[-3000:]}")
    if dtype != "f32":
        run_worker({"kind": "quantize", "lib_dir": str(llama.lib_dir), "bindings": str(llama.bindings),
                    "src": str(f32), "dst": str(dst), "ftype": LLAMA_FTYPES[dtype]})  # fmt: skip


def gguf_weight_bytes(path: Path) -> int:
    """Bytes of the tensors a llama.cpp decoding step reads: all but ``token_embd`` (one row of it)."""
    from gguf import GGUFReader

    return sum(int(t.n_bytes) for t in GGUFReader(path).tensors if t.name != "token_embd.weight")


def checkpoint(shape: str, cache: Path) -> Path:
    """The random official-format bf16 checkpoint of ``shape`` in the cache (written once, seed 0)."""
    ckpt = cache / "models" / f"{SHAPES[shape]}-random.pth"
    if not ckpt.is_file():
        import torch

        from rwkvkit.models.rwkv.config import RWKVConfig
        from rwkvkit.models.rwkv.init import random_checkpoint

        t0 = time.perf_counter()
        print(
            f"writing a random {SHAPES[shape]} checkpoint (bf16, official format) at {ckpt} ...", flush=True
        )
        random_checkpoint(
            RWKVConfig.from_name(SHAPES[shape]), ckpt.with_suffix(".partial"), 0, torch.bfloat16
        )
        ckpt.with_suffix(".partial").rename(ckpt)
        print(f"  written in {time.perf_counter() - t0:.0f} s", flush=True)
    return ckpt


# ---- workers (each in its own process) ------------------------------------------------------------


def _proc_status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def _peak_rss_mb() -> float:
    # rwkvkit.utils.perf.peak_rss_mb (VmHWM; see there why not ru_maxrss), without importing torch into
    # the llama.cpp worker
    return _proc_status_mb("VmHWM")


def llama_worker(spec: dict) -> dict:
    """Load a GGUF, prefill the prompt, decode greedily; llama.cpp's own timings and this process's
    peak RSS, less the interpreter's (the host is Python rather than a C program)."""
    interpreter_mb = _peak_rss_mb()
    ll = llama_bindings(spec["lib_dir"], spec["bindings"])
    ll.llama_backend_init()
    prompt, n_decode = spec["prompt"], spec["decode"]
    t0 = time.perf_counter()
    model = ll.llama_model_load_from_file(spec["gguf"].encode(), ll.llama_model_default_params())
    if not model:
        raise RuntimeError(f"llama.cpp could not load {spec['gguf']} (its log is above)")
    cp = ll.llama_context_default_params()
    cp.n_ctx = len(prompt) + n_decode + 16
    cp.n_batch = max(len(prompt), 16)  # the whole prompt in one llama_decode call (ubatch: default 512)
    cp.n_seq_max = 1
    cp.n_threads = cp.n_threads_batch = spec["threads"]
    cp.no_perf = False
    ctx = ll.llama_init_from_model(model, cp)
    if not ctx:
        raise RuntimeError("llama_init_from_model failed (its log is above)")
    load_s = time.perf_counter() - t0
    n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(model))
    greedy = ll.llama_sampler_init_greedy()

    def decode(tokens: list[int]) -> int:
        ids = (ll.llama_token * len(tokens))(*tokens)
        rc = ll.llama_decode(ctx, ll.llama_batch_get_one(ids, len(tokens)))
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        return ll.llama_sampler_sample(greedy, ctx, -1)  # argmax of the last logits (synchronises)

    tok = decode(prompt)  # warm-up as llama-bench's (the whole prompt, then steps), then a clean state
    for _ in range(3):
        tok = decode([tok])
    ll.llama_memory_clear(ll.llama_get_memory(ctx), True)
    ll.llama_perf_context_reset(ctx)

    t0 = time.perf_counter()
    tok = decode(prompt)
    prefill_wall = time.perf_counter() - t0
    if spec.get("logits"):
        ptr = ctypes.cast(ll.llama_get_logits_ith(ctx, -1), ctypes.c_void_p).value
        Path(spec["logits"]).write_bytes(ctypes.string_at(ptr, 4 * n_vocab))
    tokens = [tok]
    t0 = time.perf_counter()
    for _ in range(n_decode):
        tok = decode([tok])
        tokens.append(tok)
    decode_wall = time.perf_counter() - t0
    perf = ll.llama_perf_context(ctx)
    out = {
        "prefill_tok_s": perf.n_p_eval / (perf.t_p_eval_ms / 1e3),
        "decode_tok_s": perf.n_eval / (perf.t_eval_ms / 1e3),
        "prefill_wall_tok_s": len(prompt) / prefill_wall,
        "decode_wall_tok_s": n_decode / decode_wall,
        "n_p_eval": perf.n_p_eval,
        "n_eval": perf.n_eval,
        "tokens": tokens,
        "load_s": load_s,
        "process_peak_rss_mb": _peak_rss_mb(),
        "rss_end_mb": _proc_status_mb("VmRSS") - interpreter_mb,
        "interpreter_rss_mb": interpreter_mb,
        "system_info": ll.llama_print_system_info().decode(),
    }
    out["peak_rss_mb"] = out["process_peak_rss_mb"] - interpreter_mb
    ll.llama_sampler_free(greedy)
    ll.llama_free(ctx)
    ll.llama_model_free(model)
    return out


def rwkvkit_worker(spec: dict) -> dict:
    """Load the checkpoint into the fast path (``rwkvkit.load(path, weights=...)``, the lean loader),
    prefill the prompt, decode greedily;
    wall times, and the peak RSS of this process (torch included: rwkvkit needs it)."""
    import torch

    torch.set_num_threads(spec["threads"])
    import rwkvkit
    from rwkvkit.utils.perf import peak_rss_mb, rss_mb, weight_bytes_read

    imports_mb = peak_rss_mb()
    prompt, n_decode = torch.tensor([spec["prompt"]]), spec["decode"]
    t0 = time.perf_counter()
    # built one tensor at a time from the mapped file: never a wider copy of the weights in memory
    model = rwkvkit.load(spec["model"], weights=spec["weights"])
    load_s, load_mb = time.perf_counter() - t0, rss_mb()
    with torch.inference_mode():
        logits, state = model(prompt, full_output=False)  # warm-up as llama.cpp's (kernels, thread pool)
        tok = logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(3):
            logits, state = model(tok, state)
            tok = logits[:, -1].argmax(-1, keepdim=True)

        t0 = time.perf_counter()
        logits, state = model(prompt, full_output=False)
        tok = logits[:, -1].argmax(-1, keepdim=True)
        prefill_s = time.perf_counter() - t0
        if spec.get("logits"):
            Path(spec["logits"]).write_bytes(logits[0, -1].float().contiguous().numpy().tobytes())
        tokens = [tok]
        t0 = time.perf_counter()
        for _ in range(n_decode):
            logits, state = model(tok, state)
            tok = logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(tok)
        decode_s = time.perf_counter() - t0
    return {
        "prefill_tok_s": prompt.shape[1] / prefill_s,
        "decode_tok_s": n_decode / decode_s,
        "tokens": [int(t) for t in tokens],
        "load_s": load_s,
        "peak_rss_mb": peak_rss_mb(),
        "imports_rss_mb": imports_mb,
        "rss_after_load_mb": load_mb,
        "rss_end_mb": rss_mb(),
        "weight_bytes_per_token": weight_bytes_read(model),
    }


def reference_worker(spec: dict) -> dict:
    """rwkvkit's plain model in fp32 (not optimized; the path the test suite holds to the naive
    operators): the logits after the prompt and the greedy tokens, to tell which side deviates."""
    import torch

    torch.set_num_threads(spec["threads"])
    import rwkvkit

    model = rwkvkit.load(spec["model"], dtype=torch.float32).eval()
    with torch.inference_mode():
        logits, state = model(torch.tensor([spec["prompt"]]))
        Path(spec["logits"]).write_bytes(logits[0, -1].contiguous().numpy().tobytes())
        tok = logits[:, -1].argmax(-1, keepdim=True)
        tokens = [int(tok)]
        for _ in range(spec["decode"]):
            logits, state = model(tok, state)
            tok = logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(int(tok))
    return {"tokens": tokens}


def quantize_worker(spec: dict) -> dict:
    ll = llama_bindings(spec["lib_dir"], spec["bindings"])
    params = ll.llama_model_quantize_default_params()
    params.ftype = spec["ftype"]
    rc = ll.llama_model_quantize(spec["src"].encode(), spec["dst"].encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc}")
    return {"dst": spec["dst"]}


WORKERS = {
    "llama.cpp": llama_worker,
    "rwkvkit": rwkvkit_worker,
    "reference": reference_worker,
    "quantize": quantize_worker,
}


class WorkerError(RuntimeError):
    pass


def run_worker(spec: dict, timeout: float = 3600) -> dict:
    """Run one worker in a fresh process; its result is the last line of its stdout (JSON)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise WorkerError(f"no result after {timeout:.0f} s") from None
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise WorkerError(lines[-1] if lines else f"exit status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- what the runs mean: medians, ratios, agreement, targets (pure functions) ----------------------


def agreement(a: list[int], b: list[int], n: int = AGREE_TOKENS) -> dict:
    """How far two greedy continuations agree: equal positions among the first ``n``, and the
    first position where they differ (None if none does)."""
    a, b = a[:n], b[:n]
    n = min(len(a), len(b))
    first = next((i for i in range(n) if a[i] != b[i]), None)
    return {"compared": n, "equal": sum(x == y for x, y in zip(a, b)), "first_difference": first}


def summarize(
    runs: dict[str, dict[str, list[dict]]], bytes_per_token: dict[str, dict[str, int]], bw: float
) -> dict:
    """Per precision pair: the medians of each side, the per-pass ratios rwkvkit / llama.cpp (runs of
    the same pass), and each side's decode as a fraction of its bound (``bw`` / bytes per token).

    ``runs[pair][side]`` is a list of worker results, each with its ``pass`` index.
    """
    out = {}
    for pair, sides in runs.items():
        row: dict = {}
        for side in SIDES:
            rs = sides.get(side, [])
            if not rs:
                continue
            med = {
                k: statistics.median(r[k] for r in rs)
                for k in ("prefill_tok_s", "decode_tok_s", "peak_rss_mb")
            }
            nbytes = bytes_per_token.get(pair, {}).get(side)
            med["weight_bytes_per_token"] = nbytes
            med["of_bound"] = med["decode_tok_s"] * nbytes / bw if nbytes else None
            row[side] = med
        if all(s in row for s in SIDES):
            by_pass = {s: {r["pass"]: r for r in sides[s]} for s in SIDES}
            common = sorted(set(by_pass["llama.cpp"]) & set(by_pass["rwkvkit"]))
            row["ratios"] = {
                k: [by_pass["rwkvkit"][p][k] / by_pass["llama.cpp"][p][k] for p in common]
                for k in ("prefill_tok_s", "decode_tok_s", "peak_rss_mb")
                if all(by_pass["llama.cpp"][p][k] > 0 for p in common)
            }
            row["ratio"] = {k: statistics.median(v) for k, v in row["ratios"].items() if v}
            # contention only slows a run down: the best of the passes estimates an idle machine's speed
            row["best_ratio"] = {
                k: max(r[k] for r in sides["rwkvkit"]) / max(r[k] for r in sides["llama.cpp"])
                for k in ("prefill_tok_s", "decode_tok_s")
            }
        out[pair] = row
    return out


@dataclass(frozen=True)
class Target:
    name: str
    measured: float | None  # None: not measured (a side was skipped)
    goal: float
    at_least: bool  # True: measured >= goal is met; False: measured <= goal is met
    unit: str = "x"

    @property
    def status(self) -> str:
        if self.measured is None:
            return "not measured"
        met = self.measured >= self.goal if self.at_least else self.measured <= self.goal
        return "met" if met else "missed"

    def _fmt(self, v: float) -> str:
        return f"{100 * v:.0f}%" if self.unit == "%" else f"{v:.2f}x"

    def measured_text(self) -> str:
        return "-" if self.measured is None else self._fmt(self.measured)

    def goal_text(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self._fmt(self.goal)}"

    def line(self) -> str:
        return f"{self.name}: {self.measured_text()} (target {self.goal_text()}): {self.status}"


def evaluate_targets(summary: dict, load: dict | None = None) -> list[Target]:
    """The issue's targets, per precision pair: decode >= llama.cpp's and >= 90 % of its bound, prefill
    >= 1.3x llama.cpp's, peak RSS <= 1.2x llama.cpp's; and for the 1.5B load test, peak RSS <= 1.2x."""
    targets = []
    for pair, row in summary.items():
        ratio = row.get("ratio", {})
        bound = row.get("rwkvkit", {}).get("of_bound")
        targets += [
            Target(f"{pair} decode vs llama.cpp", ratio.get("decode_tok_s"), DECODE_VS_PEER, True),
            Target(f"{pair} decode vs its bandwidth bound", bound, DECODE_OF_BOUND, True, "%"),
            Target(f"{pair} prefill vs llama.cpp", ratio.get("prefill_tok_s"), PREFILL_VS_PEER, True),
            Target(f"{pair} peak RSS vs llama.cpp", ratio.get("peak_rss_mb"), RSS_VS_PEER, False),
        ]
    for pair, row in (load or {}).items():
        both = all(s in row for s in SIDES)
        measured = row["rwkvkit"]["peak_rss_mb"] / row["llama.cpp"]["peak_rss_mb"] if both else None
        targets.append(Target(f"1.5B {pair} load peak RSS vs llama.cpp", measured, RSS_VS_PEER, False))
    return targets


def _cell(v: float | None, spec: str) -> str:
    """``format(v, spec)``, or a dash as wide as the number would be."""
    return format(v, spec) if v is not None else "-".rjust(int(spec.split(".")[0] or 0))


def format_table(summary: dict) -> list[str]:
    """One row per precision pair: each side's medians and x = the median of the per-pass ratios
    rwkvkit / llama.cpp."""
    groups = (
        ("prefill tok/s", "prefill_tok_s", ".0f", True),
        ("decode tok/s", "decode_tok_s", ".1f", True),
        ("% of bound", "of_bound", ".0%", False),
        ("peak RSS MB", "peak_rss_mb", ".0f", True),
    )
    top = f"{'':18}" + "".join(f" | {name:^{27 if x else 20}}" for name, _, _, x in groups)
    sub = f"{'llama.cpp/rwkvkit':18}" + "".join(
        f" | {'llama.cpp':>10}{'rwkvkit':>10}" + (f"{'x':>7}" if x else "") for *_, x in groups
    )
    lines = [top, sub, "-" * len(sub)]
    for pair, row in summary.items():
        line = f"{pair:18}"
        for _, key, spec, x in groups:
            ll, rk = row.get("llama.cpp", {}).get(key), row.get("rwkvkit", {}).get(key)
            line += f" | {_cell(ll, '10' + spec)}{_cell(rk, '10' + spec)}"
            if x:
                line += _cell(row.get("ratio", {}).get(key), "7.2f")
        lines.append(line)
    return lines


# ---- the measurements ------------------------------------------------------------------------------


def cpu_model_and_flags() -> tuple[str, set[str]]:
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return model, flags


def prompt_ids(n: int, vocab: int, seed: int = 0) -> list[int]:
    """``n`` random token ids in [1, vocab) (0 is llama.cpp's ``<s>`` control token in RWKV vocabularies)."""
    rng = random.Random(seed)
    return [rng.randrange(1, vocab) for _ in range(n)]


def run_speed(args, llama: LlamaBuild, work: Path, writer: str, pairs: list[tuple[str, str]]) -> dict:
    """Prefill, decode and peak RSS at the 0.1B shape, ``args.passes`` interleaved passes."""
    from rwkvkit.formats import describe

    ckpt = checkpoint("0.1b", args.cache)
    vocab = describe(ckpt)["config"].vocab_size
    prompt = prompt_ids(args.prompt, vocab)
    ggufs, skipped = {}, {}
    for gg, rk in pairs:
        t0 = time.perf_counter()
        try:
            ggufs[gg] = write_gguf(ckpt, gg, writer, llama, work)
        except Exception as e:  # noqa: BLE001 - a precision the writer lacks is reported, the rest run
            skipped[f"{gg}/{rk}", "llama.cpp"] = f"no GGUF: {type(e).__name__}: {e}"
            print(f"  {gg}: GGUF not written ({type(e).__name__}: {e})", flush=True)
            continue
        size = ggufs[gg].stat().st_size / 2**20
        print(
            f"  {gg}: {ggufs[gg].name} written ({size:.0f} MiB, {time.perf_counter() - t0:.0f} s)", flush=True
        )
    runs: dict[str, dict[str, list[dict]]] = {f"{gg}/{rk}": {} for gg, rk in pairs}
    bytes_per_token = {f"{gg}/{rk}": {} for gg, rk in pairs}
    for gg, path in ggufs.items():
        bytes_per_token[f"{gg}/{dict(pairs)[gg]}"]["llama.cpp"] = gguf_weight_bytes(path)
    common = {"prompt": prompt, "decode": args.decode, "threads": args.threads}
    for stale in work.glob("logits-*.f32"):
        stale.unlink()
    t0 = time.perf_counter()
    reference_file = str(work / "logits-reference.f32")
    try:
        reference = run_worker(dict(common, kind="reference", model=str(ckpt), logits=reference_file,
                                    decode=min(args.decode, AGREE_TOKENS - 1)))  # fmt: skip
        print(f"  reference (rwkvkit's plain fp32 model): {time.perf_counter() - t0:.0f} s", flush=True)
    except WorkerError as e:
        reference = {"tokens": None}
        skipped["reference", "rwkvkit"] = str(e)
        print(f"  reference (rwkvkit's plain fp32 model): failed: {e}", flush=True)
    for p in range(args.passes):
        for gg, rk in pairs:
            pair = f"{gg}/{rk}"
            order = SIDES if p % 2 == 0 else SIDES[::-1]  # alternate who runs first
            for side in order:
                if (pair, side) in skipped:
                    continue
                spec = dict(common, kind=side)
                if side == "llama.cpp":
                    spec.update(gguf=str(ggufs[gg]), lib_dir=str(llama.lib_dir), bindings=str(llama.bindings))
                else:
                    spec.update(model=str(ckpt), weights=rk)
                if p == 0:
                    spec["logits"] = str(work / f"logits-{side}-{gg}.f32")
                load = os.getloadavg()[0]  # other work on the machine: runs below it are comparable
                try:
                    r = run_worker(spec)
                except WorkerError as e:
                    skipped[pair, side] = str(e)
                    print(f"  pass {p + 1} {pair} {side}: skipped: {e}", flush=True)
                    continue
                r["pass"], r["loadavg"] = p, load
                runs[pair].setdefault(side, []).append(r)
                if side == "rwkvkit":
                    bytes_per_token[pair]["rwkvkit"] = r.pop("weight_bytes_per_token")
                print(
                    f"  pass {p + 1} {pair:10} {side:9}: prefill {r['prefill_tok_s']:6.0f} tok/s, decode "
                    f"{r['decode_tok_s']:5.1f} tok/s, peak RSS {r['peak_rss_mb']:5.0f} MB (load average "
                    f"{load:.1f})",
                    flush=True,
                )
    return {
        "checkpoint": str(ckpt),
        "prompt_tokens": len(prompt),
        "decode_tokens": args.decode,
        "runs": runs,
        "bytes_per_token": bytes_per_token,
        "reference_tokens": reference["tokens"],
        "skipped": {f"{pair} {side}": why for (pair, side), why in skipped.items()},
        "gguf": {gg: {"file": str(path), "bytes": path.stat().st_size} for gg, path in ggufs.items()},
    }


def compare_outputs(speed: dict, work: Path, pairs: list[tuple[str, str]]) -> dict[str, dict]:
    """Per pair and per comparison (llama.cpp vs rwkvkit, each vs the reference = rwkvkit's plain fp32
    model): the greedy agreement of the first pass's tokens and the relative RMS difference of the logits
    after the prompt."""
    import torch

    from rwkvkit.utils.testing import rel_rms

    def logits(name: str) -> torch.Tensor | None:
        path = work / f"logits-{name}.f32"
        return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.float32) if path.is_file() else None

    out = {}
    for gg, rk in pairs:
        pair = f"{gg}/{rk}"
        runs = speed["runs"][pair]
        first = {s: next((r for r in runs.get(s, []) if r["pass"] == 0), None) for s in SIDES}
        tokens = {s: r and r["tokens"] for s, r in first.items()} | {"reference": speed["reference_tokens"]}
        values = {"llama.cpp": logits(f"llama.cpp-{gg}"), "rwkvkit": logits(f"rwkvkit-{gg}")}
        values["reference"] = logits("reference")
        row = {}
        for a, b in (("llama.cpp", "rwkvkit"), ("llama.cpp", "reference"), ("rwkvkit", "reference")):
            if tokens[a] and tokens[b]:
                row[f"{a} vs {b}"] = agreement(tokens[a], tokens[b])
                if values[a] is not None and values[b] is not None:
                    row[f"{a} vs {b}"]["logits_rel_rms"] = rel_rms(values[b], values[a])
        out[pair] = row
    return out


def run_load(args, llama: LlamaBuild, work: Path, writer: str) -> dict:
    """Peak RSS of loading the 1.5B shape: rwkvkit from the bf16 .pth into int8/q4, llama.cpp from
    q8_0/q4_0 GGUF files; each then prefills 8 tokens and decodes 1 (so mmap'd weights are touched)."""
    from rwkvkit.formats import describe

    t_start = time.perf_counter()
    ckpt = checkpoint("1.5b", args.cache)
    prompt = prompt_ids(8, describe(ckpt)["config"].vocab_size)
    common = {"prompt": prompt, "decode": 1, "threads": args.threads}
    out: dict = {"checkpoint": str(ckpt), "checkpoint_bytes": ckpt.stat().st_size, "pairs": {}}
    for gg, rk in LOAD_PAIRS:
        row = out["pairs"][f"{gg}/{rk}"] = {}
        t0 = time.perf_counter()
        try:
            gguf = write_gguf(ckpt, gg, writer, llama, work)
            print(
                f"  1.5B {gg}: GGUF written ({gguf.stat().st_size / 2**20:.0f} MiB, "
                f"{time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
            specs = {
                "llama.cpp": dict(
                    common,
                    kind="llama.cpp",
                    gguf=str(gguf),
                    lib_dir=str(llama.lib_dir),
                    bindings=str(llama.bindings),
                )
            }
        except Exception as e:  # noqa: BLE001
            row["skipped llama.cpp"] = f"no GGUF: {type(e).__name__}: {e}"
            specs = {}
        specs["rwkvkit"] = dict(common, kind="rwkvkit", model=str(ckpt), weights=rk)
        for side, spec in specs.items():
            try:
                r = run_worker(spec)
            except WorkerError as e:
                row[f"skipped {side}"] = str(e)
                print(f"  1.5B {gg}/{rk} {side}: skipped: {e}", flush=True)
                continue
            row[side] = {
                k: r[k] for k in ("peak_rss_mb", "load_s", "system_info", "rss_after_load_mb") if k in r
            }
            print(
                f"  1.5B {gg}/{rk} {side:9}: peak RSS {r['peak_rss_mb']:6.0f} MB, loaded in "
                f"{r['load_s']:.1f} s",
                flush=True,
            )
    for gguf in work.glob(f"{ckpt.stem}-*.gguf"):
        gguf.unlink()  # GBs each: not kept in the cache
    out["seconds"] = time.perf_counter() - t_start
    return out


# ---- the report --------------------------------------------------------------------------------------


def report_lines(res: dict, targets: list[Target]) -> list[str]:
    """Everything printed after the runs (and written, in a code block, to the results file)."""
    m, ll = res["machine"], res["llama_cpp"]
    lines = [
        f"machine: {m['cpu']}, {m['cpus']} CPUs, flags: {' '.join(m['flags']) or '-'}; torch CPU capability "
        f"{m['torch_cpu_capability']}",
        f"ceilings (the higher of before/after the runs): read bandwidth "
        f"{m['read_bandwidth'] / 1e9:.1f} GB/s, bf16 matmul peak {m['bf16_matmul_peak'] / 1e9:.0f} GFLOP/s",
        f"llama.cpp {ll['commit']} (vendored by llama-cpp-python {LLAMA_CPP_PYTHON}), "
        f"{'cached build' if ll['cached'] else 'built now'} (the build took {ll['build_s']:.0f} s at "
        f"-j{res['args']['jobs']}); CPU features it reports on: {' '.join(ll.get('features', [])) or '-'}",
        f"GGUF files written by {res['gguf_writer']}; {res['args']['threads']} threads each side",
    ]
    speed = res.get("speed")
    runs = (speed or {}).get("runs", {})
    loads = [r["loadavg"] for sides in runs.values() for rs in sides.values() for r in rs]
    if speed:
        if loads and max(loads) > m["cpus"]:
            warning = (f"WARNING: other work shared the CPUs (load average up to {max(loads):.1f} on "
                       f"{m['cpus']} CPUs): the speed ratios and speed targets below are unreliable; peak "
                       "RSS and agreement are not affected")  # fmt: skip
            lines += ["", warning]
        lines += [
            "",
            f"RWKV-7 0.1B shape (random weights), batch 1, prompt {speed['prompt_tokens']} tokens, "
            f"{speed['decode_tokens']} greedy tokens decoded; medians of {res['args']['passes']} interleaved "
            "pass(es); x = median of the per-pass ratios rwkvkit / llama.cpp",
            *format_table(res["summary"]),
            "times: llama.cpp's own llama_perf_context (compute inside llama_decode, loading excluded); "
            "rwkvkit: wall time of its forward calls and argmax",
            "% of bound: decode tok/s x bytes of weights read per token / read bandwidth",
            "peak RSS: rwkvkit's process (torch included); llama.cpp's process less its Python host "
            f"({_interpreter_mb(speed):.0f} MB before llama.cpp was loaded); no conversion in either",
            "",
            "per-pass ratios rwkvkit / llama.cpp, and the ratio of the best of the passes of each side (a "
            "shared machine only slows runs down: the best estimates an idle machine's ratio):",
        ]
        for pair, row in res["summary"].items():
            for key, name in (("decode_tok_s", "decode"), ("prefill_tok_s", "prefill")):
                if row.get("ratios", {}).get(key):
                    per_pass = " ".join(f"{v:6.2f}" for v in row["ratios"][key])
                    lines.append(f"  {pair:10} {name:8}{per_pass}   best {row['best_ratio'][key]:.2f}")
        if loads:
            lines.append(
                f"load average (1 min) before the runs: {min(loads):.1f} to {max(loads):.1f} on "
                f"{res['machine']['cpus']} CPUs (above the CPU count, other work shared the cores)"
            )
        lines += ["", "MB of weights read per decoded token, llama.cpp / rwkvkit:"]
        for pair, nbytes in speed["bytes_per_token"].items():
            ll_mb, rk_mb = (nbytes.get(s) and nbytes[s] / 1e6 for s in SIDES)
            lines.append(f"  {pair:10} {_cell(ll_mb, '7.1f')} / {_cell(rk_mb, '7.1f')}")
        lines += [
            "",
            f"greedy agreement (equal / compared among the first {AGREE_TOKENS} tokens after the prompt) and "
            "rel. RMS difference of the logits after the prompt; reference = rwkvkit's plain fp32 model (not "
            "optimized); the fp32 row is the correctness check, the others show quantisation error:",
        ]
        names = ("llama.cpp vs rwkvkit", "llama.cpp vs reference", "rwkvkit vs reference")
        lines.append(f"  {'':10}" + "".join(f" | {n:^24}" for n in names))
        for pair, row in res["outputs"].items():
            cells = []
            for n in names:
                c = row.get(n)
                cells.append(
                    "-".center(24)
                    if c is None
                    else f"{c['equal']:>5}/{c['compared']:<3} {_cell(c.get('logits_rel_rms'), '.1e'):>14}"
                )
            lines.append(f"  {pair:10}" + "".join(f" | {c}" for c in cells))
        lines += [f"skipped {what}: {why}" for what, why in speed["skipped"].items()]
    load = res.get("load")
    if load:
        lines += [
            "",
            f"RWKV-7 1.5B shape, peak RSS of loading (rwkvkit from the bf16 .pth, "
            f"{load['checkpoint_bytes'] / 2**30:.2f} GiB; llama.cpp from its GGUF; then an 8-token prompt "
            f"and 1 decoded token); this part took {load['seconds']:.0f} s:",
        ]
        for pair, row in load["pairs"].items():
            ll_run, rk_run = row.get("llama.cpp"), row.get("rwkvkit")
            x = rk_run["peak_rss_mb"] / ll_run["peak_rss_mb"] if ll_run and rk_run else None
            lines.append(
                f"  {pair:10} llama.cpp {_cell(ll_run and ll_run['peak_rss_mb'], '6.0f')} MB, rwkvkit "
                f"{_cell(rk_run and rk_run['peak_rss_mb'], '6.0f')} MB (after loading "
                f"{_cell(rk_run and rk_run['rss_after_load_mb'], '.0f')} MB, in "
                f"{_cell(rk_run and rk_run['load_s'], '.0f')} s), x {_cell(x, '4.2f')}"
            )
            lines += [f"    {k}: {v}" for k, v in row.items() if k.startswith("skipped")]
    lines += ["", "targets:", *(f"  {t.line()}" for t in targets)]
    if loads and max(loads) > m["cpus"]:
        lines.append("  (speed targets from runs on a shared machine: see the WARNING above)")
    return lines


def _interpreter_mb(speed: dict) -> float:
    rs = [r for sides in speed["runs"].values() for r in sides.get("llama.cpp", [])]
    return statistics.median(r["interpreter_rss_mb"] for r in rs) if rs else 0.0


def _without_tokens(res: dict) -> dict:
    if "speed" not in res:
        return res
    speed = {k: v for k, v in res["speed"].items() if k != "reference_tokens"}
    speed["runs"] = {
        pair: {side: [{k: v for k, v in r.items() if k not in ("tokens", "system_info")} for r in rs]
               for side, rs in sides.items()}
        for pair, sides in speed["runs"].items()
    }  # fmt: skip
    return {**res, "speed": speed}


def write_results(path: Path, res: dict, lines: list[str], targets: list[Target]) -> None:
    """The results file: the printed report, the targets as a table, and the raw results as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = "\n".join(f"| {t.name} | {t.measured_text()} | {t.goal_text()} | {t.status} |" for t in targets)
    text = "\n".join(
        [
            f"# rwkvkit vs llama.cpp on CPU ({res['date']})",
            "",
            f"Command: `{res['command']}` (rwkvkit {res['rwkvkit_commit']}, torch {res['torch']}).",
            "",
            "```",
            *lines,
            "```",
            "",
            "| target | measured | goal | status |",
            "|---|---|---|---|",
            rows,
            "",
            "Raw results (every run of every pass; the greedy tokens are left out, the agreement above "
            "counts them):",
            "",
            "```json",
            json.dumps(_without_tokens(res), indent=1, default=str),
            "```",
            "",
        ]
    )
    path.write_text(text)


# ---- driver ------------------------------------------------------------------------------------------


def _git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument(
        "--passes", type=int, default=5, help="interleaved passes over all configurations (default 5)"
    )
    p.add_argument("--prompt", type=int, default=1024, help="prompt tokens for prefill (default 1024)")
    p.add_argument("--decode", type=int, default=64, help="greedy tokens decoded per run (default 64)")
    p.add_argument("--threads", type=int, default=2, help="threads for each side (default 2)")
    p.add_argument(
        "--precisions",
        nargs="+",
        choices=[rk for _, rk in PAIRS],
        default=[rk for _, rk in PAIRS],
        help="rwkvkit weight precisions to compare, each against its llama.cpp GGUF type "
        "(fp32:f32 bf16:bf16 int8:q8_0 q4:q4_0; default all)",
    )
    p.add_argument(
        "--shape",
        nargs="+",
        choices=list(SHAPES),
        default=["0.1b"],
        help="0.1b: speed, agreement and peak RSS at the RWKV-7 0.1B shape (default); 1.5b: load "
        "peak RSS at the 1.5B shape for int8/q4 (writes a 3 GB checkpoint and GGUFs once; "
        "several minutes; the time is printed)",
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 1 pass, 128-token prompt, 16 decoded tokens"
    )
    p.add_argument(
        "--gguf-writer",
        choices=["auto", "rwkvkit", "llama.cpp"],
        default="auto",
        help="who writes the GGUF files: rwkvkit (rwkvkit.formats.convert to='gguf'), llama.cpp "
        "(its convert_hf_to_gguf.py + llama_model_quantize), auto: rwkvkit where it has a "
        "GGUF writer, else llama.cpp (default auto)",
    )
    p.add_argument(
        "--cache",
        type=Path,
        default=cache_dir(),
        help="cache for the sdist, the llama.cpp build, checkpoints and GGUF files "
        "(default $RWKVKIT_BENCH_CACHE or ~/.cache/rwkvkit-bench)",
    )
    p.add_argument(
        "--sdist",
        type=Path,
        help=f"a llama-cpp-python {LLAMA_CPP_PYTHON} sdist already downloaded "
        "(default: downloaded into the cache with pip when absent)",
    )
    p.add_argument("--jobs", type=int, default=2, help="parallel jobs for the llama.cpp build (default 2)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results",
        help="folder of the results file cpu_peers-<date>.md (default benchmarks/results)",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(WORKERS[spec["kind"]](spec)))
        return
    if args.quick:
        args.passes, args.prompt, args.decode = 1, 128, 16
    t_start = time.perf_counter()
    work = args.cache / "work"
    work.mkdir(parents=True, exist_ok=True)
    llama = build_llama_cpp(args.cache, args.sdist, args.jobs)
    print(
        f"llama.cpp {llama.commit}: {'cached' if llama.cached else 'built'} in {llama.root} "
        f"(build took {llama.build_s:.0f} s)",
        flush=True,
    )

    import importlib.util

    import torch

    from rwkvkit.utils.perf import machine_ceilings

    writer = args.gguf_writer
    if writer == "auto":
        writer = "rwkvkit" if importlib.util.find_spec("rwkvkit.formats.gguf") else "llama.cpp"
        if writer == "llama.cpp":
            print(
                "rwkvkit has no GGUF writer (rwkvkit.formats.gguf) yet: the GGUF files are llama.cpp's own "
                "conversion",
                flush=True,
            )
    bw_before, peak_before = machine_ceilings()
    print(
        f"read bandwidth {bw_before / 1e9:.1f} GB/s, bf16 matmul peak {peak_before / 1e9:.0f} GFLOP/s "
        "(measured now)",
        flush=True,
    )
    cpu, flags = cpu_model_and_flags()
    pairs = [(gg, rk) for gg, rk in PAIRS if rk in args.precisions]
    res: dict = {
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["python", "benchmarks/cpu_peers.py", *sys.argv[1:]]),
        "rwkvkit_commit": _git_commit(),
        "torch": torch.__version__,
        "gguf_writer": writer,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "worker"},
        "llama_cpp": {
            "commit": llama.commit,
            "build_s": llama.build_s,
            "cached": llama.cached,
            "cmake": CMAKE_OPTIONS,
            "timing": "llama_perf_context (t_p_eval_ms, t_eval_ms)",
        },
    }
    if "0.1b" in args.shape:
        print(
            f"RWKV-7 0.1B shape: {args.passes} pass(es), prompt {args.prompt}, decode {args.decode}",
            flush=True,
        )
        res["speed"] = run_speed(args, llama, work, writer, pairs)
    if "1.5b" in args.shape:
        print("RWKV-7 1.5B shape: load peak RSS (int8/q4)", flush=True)
        res["load"] = run_load(args, llama, work, writer)
    bw_after, peak_after = machine_ceilings()
    # the higher of before/after: the stricter bound for "% of bound" (the machine is shared)
    bw, peak = max(bw_before, bw_after), max(peak_before, peak_after)
    res["machine"] = {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "flags": [f for f in CPU_FLAGS if f in flags],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "read_bandwidth": bw,
        "bf16_matmul_peak": peak,
        "measured": {"before": [bw_before, peak_before], "after": [bw_after, peak_after]},
    }
    speed = res.get("speed")
    llama_runs = [r for sides in (speed or {}).get("runs", {}).values() for r in sides.get("llama.cpp", [])]
    llama_runs += [
        row["llama.cpp"] for row in res.get("load", {}).get("pairs", {}).values() if "llama.cpp" in row
    ]
    res["llama_cpp"]["features"] = parse_system_info(llama_runs[0]["system_info"] if llama_runs else "")
    if speed:
        res["summary"] = summarize(speed["runs"], speed["bytes_per_token"], bw)
        res["outputs"] = compare_outputs(speed, work, pairs)
    targets = evaluate_targets(res.get("summary", {}), res.get("load", {}).get("pairs"))
    res["targets"] = [dict(vars(t), status=t.status) for t in targets]
    res["seconds"] = time.perf_counter() - t_start
    lines = report_lines(res, targets)
    print()
    print("\n".join(lines))
    tag = ("" if args.shape == ["0.1b"] else "-" + "-".join(args.shape)) + ("-quick" if args.quick else "")
    out = args.out / f"cpu_peers-{res['date']}{tag}.md"
    write_results(out, res, lines, targets)
    print(f"\nwritten: {out} (whole run {res['seconds'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
