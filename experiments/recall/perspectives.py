"""Multiple temporal perspectives: fine-tuning a frozen byte-level RWKV-4 on a shifted domain.

    python experiments/recall/perspectives.py [--pretrain-steps 400] [--steps 60] [--seeds 0 1 2]
    python experiments/recall/perspectives.py --report

The CPU version of docs/seed-systems.md#perspectives-experiment (Dumitru et al., arXiv 2402.02625). A byte-level
RWKV-4 (L4, d128, official init) is pretrained on the first half of ``pydoc_data.topics`` (English
prose about Python), then frozen, and fine-tuned on a shifted domain, the Python standard library's
own top-level ``*.py`` files (sorted by name; every 10th file held out for validation). Three arms:

* (i) nothing: the pretrained model as is;
* (ii) only the trained ``time_mix_*`` vectors (``train_only_time_mix``, P = 1);
* (iii) ``MultiPerspectiveRWKV`` with P = 4 perspectives (their own mixes, noise-broken symmetry)
  plus ``W_c``; every base weight frozen.

(ii) and (iii) take the same steps on the same batches (same tokens), Adam as in the paper
(betas 0.9/0.999, eps 1e-8, clip 1) with the learning rate decayed linearly to a third. Validation
loss (nats and bits per byte) is measured on held-out stdlib files, and on the held-out second half of
the pydoc text (the pretraining domain: does fine-tuning forget it?).

Results append to ``results/perspectives.jsonl`` (finished (arm, seed) pairs of the same base model
and settings are skipped on a rerun); the pretrained model is cached in
``results/perspectives_base.safetensors`` (not committed: 3.6 MB; re-pretrained if missing). The
report writes ``perspectives.md``, ``perspectives.csv`` and ``perspectives.png`` beside this script.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import sys
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "vision"))
from _common import command_line, machine  # noqa: E402

sys.path.insert(0, str(HERE))
from _train import log_command, logged_commands  # noqa: E402

RESULTS = HERE / "results" / "perspectives.jsonl"
COMMANDS = HERE / "results" / "perspectives_commands.txt"
BASE = HERE / "results" / "perspectives_base.safetensors"
ARMS = {"i": "(i) nothing", "ii": "(ii) time_mix only, P=1", "iii": "(iii) P=4 perspectives + W_c"}
LN2 = math.log(2)
# How the default fine-tuning lr was chosen: short runs with --pilot (both arms, seed 0, same base model);
# the report lists them, and arm (ii) alone decided, so as not to favour (iii).


# ----------------------------------------------------------------------------------------------
# data: bytes as uint8 tensors


def pydoc_halves() -> tuple[torch.Tensor, torch.Tensor]:
    """``pydoc_data.topics`` (topics sorted by name, concatenated) as bytes, cut in two halves."""
    from pydoc_data.topics import topics

    data = "".join(topics[k] for k in sorted(topics)).encode()
    t = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return t[: len(t) // 2], t[len(t) // 2 :]


def stdlib_split(max_bytes: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The stdlib's top-level ``*.py`` files, sorted; every 10th held out. Returns (train, val, val files)."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    train, val = bytearray(), bytearray()
    for i, f in enumerate(files):
        (val if i % 10 == 9 else train).extend(f.read_bytes())
    as_t = lambda b: torch.frombuffer(b[:max_bytes], dtype=torch.uint8)  # noqa: E731
    return as_t(train), as_t(val), [f.name for i, f in enumerate(files) if i % 10 == 9]


def batches(data: torch.Tensor, steps: int, batch: int, T: int, seed: int):
    """``steps`` batches of random windows ``[batch, T + 1]`` (long), from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        start = torch.randint(0, len(data) - T - 1, (batch,), generator=g)
        yield torch.stack([data[s : s + T + 1] for s in start.tolist()]).long()


def val_windows(data: torch.Tensor, n: int, T: int) -> torch.Tensor:
    """``n`` evenly spaced windows ``[n, T + 1]`` of ``data`` (the same every run)."""
    starts = torch.linspace(0, len(data) - T - 2, n).long().tolist()
    return torch.stack([data[s : s + T + 1] for s in starts]).long()


@torch.no_grad()
def val_loss(model, windows: torch.Tensor, batch: int = 16) -> float:
    """Mean next-byte cross-entropy (nats) over every position of the windows, each from a fresh state."""
    model.eval()
    total = 0.0
    for i in range(0, len(windows), batch):
        w = windows[i : i + batch]
        logits, _ = model(w[:, :-1])
        total += F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten(), reduction="sum").item()
    return total / windows[:, 1:].numel()


# ----------------------------------------------------------------------------------------------
# pretraining and fine-tuning


def pretrain(args, text: torch.Tensor, val: torch.Tensor) -> dict:
    from rwkvkit.formats import save
    from rwkvkit.models.rwkv.config import RWKVConfig
    from rwkvkit.models.rwkv.model import RWKV
    from rwkvkit.training.init import official_init_

    cfg = RWKVConfig(version="4", n_layer=args.layers, n_embd=args.dim, vocab_size=256)
    model = official_init_(RWKV(cfg), seed=args.pretrain_seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.pretrain_lr, betas=(0.9, 0.99), weight_decay=0.0)
    warm = 50
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / args.pretrain_steps)))
    )  # fmt: skip
    print(f"== pretraining {model.num_params():,} parameters, {args.pretrain_steps} steps", flush=True)
    t0 = time.perf_counter()
    model.train()
    for step, xy in enumerate(batches(text, args.pretrain_steps, args.batch, args.ctx, args.pretrain_seed)):
        logits, _ = model(xy[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), xy[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.pretrain_steps - 1:
            print(f"   step {step}: loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    seconds = time.perf_counter() - t0
    BASE.parent.mkdir(parents=True, exist_ok=True)
    save(model, BASE)
    nats = val_loss(model, val)
    print(f"   pydoc held-out half: {nats:.3f} nats/byte ({seconds:.0f} s)", flush=True)
    return {"arm": "pretrain", "base": file_hash(BASE), "params": model.num_params(),
            "steps": args.pretrain_steps, "tokens": args.pretrain_steps * args.batch * args.ctx,
            "lr": args.pretrain_lr, "seconds": round(seconds, 1), "pydoc_nats": nats}  # fmt: skip


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def load_base():
    from rwkvkit.formats import load

    return load(BASE, dtype=torch.float32)


def finetune(args, arm: str, seed: int, train: torch.Tensor, val: torch.Tensor) -> tuple[object, dict]:
    """Fine-tune a fresh copy of the base model in arm ``ii`` or ``iii``; returns (model, result)."""
    from rwkvkit.models.rwkv.perspectives import MultiPerspectiveRWKV, train_only_time_mix

    base = load_base()
    base_params = base.num_params()
    if arm == "ii":
        model, params = base, train_only_time_mix(base)
        added = 0
    else:
        model = MultiPerspectiveRWKV(base, args.perspectives, noise=args.noise, seed=seed)
        params, added = model.trainable_parameters(), model.added_parameters()
    opt = torch.optim.Adam(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - (2 / 3) * s / args.steps)  # lr -> lr / 3
    curve = [(0, val_loss(model, val))]
    t0, t_eval = time.perf_counter(), 0.0
    # the same batches for (ii) and (iii) at a given seed: same tokens, same order
    for step, xy in enumerate(batches(train, args.steps, args.batch, args.ctx, 1000 + seed), start=1):
        model.train()
        logits, _ = model(xy[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), xy[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % args.eval_every == 0 or step == args.steps:
            te = time.perf_counter()
            curve.append((step, val_loss(model, val)))
            t_eval += time.perf_counter() - te
            print(f"   step {step}: train {loss.item():.3f}, val {curve[-1][1]:.4f} nats/byte", flush=True)
    trainable = sum(p.numel() for p in params)
    row = {"arm": arm, "seed": seed, "steps": args.steps, "tokens": args.steps * args.batch * args.ctx,
           "lr": args.lr, "trainable": trainable, "added": added, "base_params": base_params,
           "trainable_fraction": trainable / base_params, "added_fraction": added / base_params,
           "train_seconds": round(time.perf_counter() - t0 - t_eval, 1), "curve": curve}  # fmt: skip
    return model, row


@torch.no_grad()
def alpha_snippet(model, text: torch.Tensor, n: int) -> dict:
    """Alpha ``[T, P]`` of the perspectives model over the first ``n`` bytes of ``text``."""
    snippet = text[:n].long()[None]
    model.eval()
    _, _, alpha = model(snippet, return_alpha=True)
    a = alpha[0]  # [T, P]
    return {"snippet": bytes(snippet[0].tolist()).decode("utf-8", "replace"),
            "alpha": [[round(x, 4) for x in row] for row in a.tolist()]}  # fmt: skip


def run(args) -> None:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    log_command(COMMANDS, command_line())  # the report cites the runs' commands
    pre_train, pre_val = pydoc_halves()
    ft_train, ft_val, val_files = stdlib_split(args.max_bytes)
    val = val_windows(ft_val, args.val_windows, args.val_len)
    pydoc_val = val_windows(pre_val, args.val_windows, args.val_len)
    print(f"pydoc {len(pre_train):,} + {len(pre_val):,} bytes; stdlib train {len(ft_train):,}, val "
          f"{len(ft_val):,} bytes ({len(val_files)} files); validation {val.numel():,} bytes", flush=True)  # fmt: skip

    rows = [json.loads(line) for line in RESULTS.open()] if RESULTS.is_file() else []
    if not BASE.is_file():
        row = pretrain(args, pre_train, pydoc_val)
        row.update(layers=args.layers, dim=args.dim, batch=args.batch, ctx=args.ctx)
        append(row)
        rows.append(row)
    if args.pretrain_only:
        return
    base_id = file_hash(BASE)
    if not any(r["arm"] == "pretrain" and r["base"] == base_id for r in rows):
        raise SystemExit(
            f"{BASE} is not the model of any pretrain row in {RESULTS}; delete it to re-pretrain"
        )
    settings = {"base": base_id, "steps": args.steps, "lr": args.lr, "batch": args.batch, "ctx": args.ctx,
                "P": args.perspectives, "noise": args.noise, "val_windows": args.val_windows,
                "val_len": args.val_len, "pilot": bool(args.pilot)}  # fmt: skip
    done = {(r["arm"], r.get("seed")) for r in rows
            if all(r.get(k, False if k == "pilot" else None) == v for k, v in settings.items())}  # fmt: skip

    if ("i", None) not in done:
        base = load_base()
        t0 = time.perf_counter()
        row = {"arm": "i", "seed": None, **settings, "trainable": 0, "added": 0,
               "base_params": base.num_params(), "trainable_fraction": 0.0, "added_fraction": 0.0,
               "val_nats": val_loss(base, val), "pydoc_nats": val_loss(base, pydoc_val),
               "eval_seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
        print(f"== (i) nothing: val {row['val_nats']:.4f} nats/byte", flush=True)
        append(row)
    for seed in args.seeds:
        for arm in ("ii", "iii"):
            if (arm, seed) in done:
                continue
            print(f"== {ARMS[arm]}, seed {seed}", flush=True)
            model, row = finetune(args, arm, seed, ft_train, val)
            row.update(settings, val_nats=row["curve"][-1][1], pydoc_nats=val_loss(model, pydoc_val))
            if arm == "iii":
                row.update(alpha_snippet(model, ft_val[args.snippet_at :], args.snippet))
                a = torch.tensor(row["alpha"])
                print(f"   alpha over the snippet: mean {a.mean(0).tolist()}, std over tokens "
                      f"{a.std(0).tolist()}", flush=True)  # fmt: skip
            append(row)


def append(row: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")


# ----------------------------------------------------------------------------------------------
# report


def report() -> None:
    rows = [json.loads(line) for line in RESULTS.open()]
    pre = [r for r in rows if r["arm"] == "pretrain"][-1]  # the latest base model
    rows = [r for r in rows if r.get("base") == pre["base"] and r["arm"] != "pretrain"]
    pilot = [r for r in rows if r.get("pilot")]
    rows = [r for r in rows if not r.get("pilot")]
    latest = rows[-1]  # the settings of the latest run
    keys = ("steps", "lr", "batch", "ctx", "P", "noise", "val_windows", "val_len")
    rows = [r for r in rows if all(r.get(k) == latest.get(k) for k in keys)]
    by_arm = {a: [r for r in rows if r["arm"] == a] for a in ARMS}

    flat = [{k: v for k, v in r.items() if k not in ("curve", "alpha", "snippet")} for r in rows]
    with open(HERE / "perspectives.csv", "w", newline="") as f:
        names = list(dict.fromkeys(k for r in flat for k in r))
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        w.writerows(flat)

    def stat(rs: list[dict], key: str, scale: float = 1.0) -> str:
        v = torch.tensor([r[key] * scale for r in rs], dtype=torch.float64)
        return f"{v.mean():.4f}" if len(v) == 1 else f"{v.mean():.4f} ± {v.std():.4f}"

    r0 = by_arm["i"][0]
    cmds = logged_commands(COMMANDS)
    commands = " then ".join(f"`{c}`" for c in cmds)
    if not cmds or command_line() != cmds[-1]:  # a run writes its report itself: cite it once
        commands += f", report by `{command_line()}`"
    md = ["# Multiple temporal perspectives: fine-tuning a frozen byte-level RWKV-4 on a shifted domain", "",
          f"Base: RWKV-4, L{pre['layers']}, d{pre['dim']}, bytes (V = 256), {pre['params']:,} parameters, official "
          f"init, pretrained {pre['steps']} steps x {pre['batch']} x {pre['ctx']} bytes "
          f"({pre['tokens']:,} bytes, {pre['seconds']:.0f} s) on the first half of `pydoc_data.topics`; "
          f"held-out second half: {pre['pydoc_nats']:.4f} nats/byte. Then frozen.", "",
          f"Fine-tuning domain: the standard library's top-level `*.py` files (every 10th file held out). "
          f"(ii) and (iii): {latest['steps']} steps of the same {latest['batch']} x {latest['ctx']}-byte "
          f"batches ({latest['steps'] * latest['batch'] * latest['ctx']:,} bytes), Adam lr {latest['lr']:g} "
          f"decayed linearly to a third, clip 1; (iii) has P = {latest['P']}, noise std {latest['noise']:g} "
          f"on perspectives 1..{latest['P'] - 1}, W_c ~ N(0, 0.01); the lr is the best of arm (ii) in the pilot table below. "
          f"Validation: {latest['val_windows']} "
          f"windows of {latest['val_len']} bytes of the held-out files (stdlib) and of the held-out pydoc "
          f"half (pydoc, the pretraining domain), each window from a fresh state. Mean ± std over seeds "
          f"{sorted({r['seed'] for r in rows if r['seed'] is not None})} (the seed sets the batches, the "
          "noise and W_c).", "",
          f"Produced by {commands}, on {machine()}, Python {sys.version.split()[0]}.", "",
          "| arm | trainable params | added params (fraction of base) | stdlib val nats/byte | stdlib bits/byte "
          "| pydoc val nats/byte | fine-tune s (no eval) |",
          "|---|---|---|---|---|---|---|"]  # fmt: skip
    for arm, name in ARMS.items():
        rs = by_arm[arm]
        if not rs:
            continue
        r = rs[0]
        secs = "-" if arm == "i" else f"{sum(r['train_seconds'] for r in rs) / len(rs):.0f}"
        md.append(f"| {name} | {r['trainable']:,} ({100 * r['trainable_fraction']:.2f}%) | {r['added']:,} "
                  f"({100 * r['added_fraction']:.2f}%) | {stat(rs, 'val_nats')} | {stat(rs, 'val_nats', 1 / LN2)} "
                  f"| {stat(rs, 'pydoc_nats')} | {secs} |")  # fmt: skip
    md += [
        "",
        "Per seed (stdlib val nats/byte):",
        "",
        "| seed | (ii) | (iii) | (iii) - (ii) |",
        "|---|---|---|---|",
    ]
    for seed in sorted({r["seed"] for r in rows if r["seed"] is not None}):
        ii = [r["val_nats"] for r in by_arm["ii"] if r["seed"] == seed]
        iii = [r["val_nats"] for r in by_arm["iii"] if r["seed"] == seed]
        if ii and iii:
            md.append(f"| {seed} | {ii[0]:.4f} | {iii[0]:.4f} | {iii[0] - ii[0]:+.4f} |")
    if by_arm["ii"] and by_arm["iii"]:
        mean = lambda arm, key: sum(r[key] for r in by_arm[arm]) / len(by_arm[arm])  # noqa: E731
        forget = ", ".join(f"{ARMS[a].split(' ')[0]} {mean(a, 'pydoc_nats'):.4f}" for a in ("ii", "iii"))
        md += ["", f"Notes: (iii) trains {by_arm['iii'][0]['trainable'] / by_arm['ii'][0]['trainable']:.1f}x "
               f"the parameters of (ii) and runs P = {latest['P']} copies of the network: a fine-tuning run "
               f"took {mean('iii', 'train_seconds'):.0f} s against {mean('ii', 'train_seconds'):.0f} s. The "
               f"comparison is at equal steps and tokens, not equal compute. Pretraining domain (pydoc) "
               f"after fine-tuning: {forget} nats/byte, against {r0['pydoc_nats']:.4f} for (i)."]  # fmt: skip
    alphas = [torch.tensor(r["alpha"]) for r in by_arm["iii"]]
    if alphas:
        a = alphas[0]
        md += ["", f"Alpha of (iii), seed {by_arm['iii'][0]['seed']}, over {len(a)} held-out bytes: mean per "
               f"perspective {', '.join(f'{x:.3f}' for x in a.mean(0).tolist())}; std over tokens "
               f"{', '.join(f'{x:.3f}' for x in a.std(0).tolist())}; max alpha per token ranges "
               f"{a.max(1).values.min():.3f} to {a.max(1).values.max():.3f}; {(a.max(1).values > 0.9).float().mean():.0%} "
               f"of the bytes give one perspective more than 0.9 (see the lower panel of the plot)."]  # fmt: skip
    if pilot:
        lrs = sorted({r["lr"] for r in pilot})
        md += ["", f"Learning-rate pilot (`--pilot`: {pilot[0]['steps']} steps, seed 0; stdlib val nats/byte; "
               f"arm (ii) alone picks the lr):", "", "| lr | (ii) | (iii) |", "|---|---|---|"]  # fmt: skip
        for lr in lrs:
            cell = {a: [r["val_nats"] for r in pilot if r["arm"] == a and r["lr"] == lr] for a in ("ii", "iii")}
            md.append(f"| {lr:g} | " + " | ".join(f"{v[-1]:.4f}" if v else "-" for v in cell.values()) + " |")
    (HERE / "perspectives.md").write_text("\n".join(md) + "\n")
    plot(r0, by_arm)
    print(f"wrote {HERE / 'perspectives.md'}, perspectives.csv, perspectives.png")


def plot(r0: dict, by_arm: dict[str, list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(2, 1, figsize=(10, 7.5), gridspec_kw={"height_ratios": [3, 2]})
    ax.axhline(r0["val_nats"], color="k", ls="--", label=ARMS["i"])
    for arm, color in (("ii", "tab:blue"), ("iii", "tab:red")):
        for j, r in enumerate(by_arm[arm]):
            steps, vals = zip(*r["curve"], strict=True)
            ax.plot(steps, vals, color=color, alpha=0.8, marker=".",
                    label=f"{ARMS[arm]}" if j == 0 else None)  # fmt: skip
    ax.set_xlabel("fine-tuning step (same batches for (ii) and (iii); one line per seed)")
    ax.set_ylabel("stdlib val loss (nats/byte)")
    ax.set_title("Fine-tuning a frozen byte-level RWKV-4 on stdlib source")
    ax.grid(alpha=0.3)
    ax.legend()
    if by_arm["iii"]:
        r = by_arm["iii"][0]
        a = torch.tensor(r["alpha"]).T  # [P, T]
        im = bx.imshow(a, aspect="auto", cmap="viridis", interpolation="nearest")
        chars = ["⏎" if c == "\n" else ("·" if c == " " else c) for c in r["snippet"]]
        bx.set_xticks(range(len(chars)), chars, fontsize=6, family="monospace")
        bx.set_yticks(range(a.shape[0]), [f"persp. {i}" for i in range(a.shape[0])], fontsize=8)
        bx.set_title(f"alpha of (iii) (seed {r['seed']}) per byte of held-out stdlib text", fontsize=9)
        fig.colorbar(im, ax=bx, fraction=0.03)
    fig.tight_layout()
    fig.savefig(HERE / "perspectives.png", dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4, help="base model layers (default 4)")
    p.add_argument("--dim", type=int, default=128, help="base model width d_model (default 128)")
    p.add_argument("--pretrain-steps", type=int, default=400, help="pretraining steps (default 400)")
    p.add_argument(
        "--pretrain-lr", type=float, default=2e-3, help="pretraining peak lr, cosine decay (default 2e-3)"
    )
    p.add_argument(
        "--pretrain-seed", type=int, default=0, help="seed of the init and pretraining batches (default 0)"
    )
    p.add_argument("--steps", type=int, default=60, help="fine-tuning steps of (ii) and (iii) (default 60)")
    p.add_argument(
        "--lr",
        type=float,
        default=0.1,
        help="fine-tuning lr, decayed linearly to a third (default 0.1, chosen with --pilot)",
    )
    p.add_argument("--batch", type=int, default=16, help="sequences per batch (default 16)")
    p.add_argument("--ctx", type=int, default=128, help="bytes per training sequence (default 128)")
    p.add_argument("--perspectives", type=int, default=4, help="P of arm (iii) (default 4)")
    p.add_argument(
        "--noise", type=float, default=1e-2, help="std of the noise on perspectives 1..P-1 (default 1e-2)"
    )
    p.add_argument(
        "--eval-every", type=int, default=10, help="fine-tuning steps between validations (default 10)"
    )
    p.add_argument("--val-windows", type=int, default=32, help="validation windows per domain (default 32)")
    p.add_argument("--val-len", type=int, default=256, help="bytes per validation window (default 256)")
    p.add_argument(
        "--max-bytes", type=int, default=2_000_000, help="cap on the stdlib train/val bytes (default 2e6)"
    )
    p.add_argument(
        "--snippet", type=int, default=120, help="bytes of held-out text in the alpha panel (default 120)"
    )
    p.add_argument(
        "--snippet-at",
        type=int,
        default=2400,
        help="offset of that text in the held-out bytes (default 2400)",
    )
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds (default 0 1 2)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0 = torch's default; 1 is much faster on a shared 2-core CPU)",
    )
    p.add_argument("--pretrain-only", action="store_true", help="pretrain (unless cached) and stop")
    p.add_argument("--pilot", action="store_true",
                   help="a learning-rate pilot run (e.g. --steps 30 --seeds 0): reported in its own table")  # fmt: skip
    p.add_argument("--report", action="store_true", help="only write the table and plot")
    args = p.parse_args()
    if not args.report:
        run(args)
    if not args.pretrain_only:
        report()


if __name__ == "__main__":
    main()
