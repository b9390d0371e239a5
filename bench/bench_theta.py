"""Benchmark of the θ solvers (the M-step): time and objective of OLS, Optim and IRLS.

For every input kind × param_model × L × v_distance, each method fits θ for a batch through
``emseg.core.coherence_math.fit_theta`` (what training calls), timed as the median of interleaved
repeats; its objective is Σ_k Σ_i pred_k(i) d(flow(i), Xθ_k(i)) / N per sample (float64), reported
as the batch mean and as the worst (largest) per-sample ratio to Optim's.

Input kinds (batch B, I × J):

- ``random``: random soft masks (softmax of smooth random logits) on synthetic flows;
- ``synthetic``: synthetic flows with 5 % gross outliers, and soft masks close to their
  segmentation (what a network in training produces);
- ``blackswan``: random soft masks on the real DAVIS blackswan flow (tests/data);
- ``noise`` (stress case): random soft masks on a smooth random field plus strong white noise,
  where OLS is already within about 1 % of the optimum and L-BFGS converges in a few evaluations.

Synthetic flows come from ``csvflowdatamodule.synthetic.generate_sequence`` (camera-like
background motion, 1 to 3 affinely moving objects, blur and noise); without it (no OpenCV), from
a piecewise affine/quadratic generator here.

The bar for IRLS (l1 and l2): worst per-sample objective ≤ 1.001 × Optim's, in ≤ 1/10 of
Optim's time. ``Optim`` is L-BFGS (strong Wolfe) from OLS with max_iter 50 (``--optim-iters``),
the default of ``fit_theta_optim``; ``Optim100`` (max_iter 100) is also run as a reference for
the objective unless ``--quick``.

Usage: ``python bench/bench_theta.py [--quick] [--out bench/results/theta.json]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (  # noqa: E402
    announce,
    env_info,
    env_markdown,
    markdown_table,
    summarise_times,
    time_calls,
    write_results,
)

from utils import coherence_math as cm  # noqa: E402

logger = logging.getLogger("bench_theta")
Tensor = torch.Tensor

BLACKSWAN = Path(__file__).resolve().parent.parent / "tests" / "data" / "blackswan_flow_128x224.npy"
KINDS = ("random", "synthetic", "blackswan", "noise")
BAR_KINDS = ("random", "synthetic", "blackswan")
BAR_RATIO = 1.001
BAR_SPEEDUP = 10.0


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def smooth_field(g: torch.Generator, B: int, C: int, img_size: Sequence[int], coarse: tuple[int, int] = (6, 10)
                 ) -> Tensor:
    """Smooth random fields (B, C, I, J), about unit scale: bicubic upsampling of a coarse grid."""
    z = torch.randn(B, C, *coarse, generator=g)
    return F.interpolate(z, size=tuple(img_size), mode="bicubic", align_corners=False)


def random_soft_masks(g: torch.Generator, B: int, L: int, img_size: Sequence[int]) -> Tensor:
    """Random soft masks (B, L, I, J): softmax over L of smooth random logits plus pixel noise."""
    logits = 3.0 * smooth_field(g, B, L, img_size) + 0.5 * torch.randn(B, L, *img_size, generator=g)
    return torch.softmax(logits, 1)


def near_truth_masks(g: torch.Generator, fg: Tensor, L: int) -> Tensor:
    """Soft masks (B, L, I, J) close to a segmentation: layer 1 = foreground ``fg`` (B, I, J) bool,
    the background split among the other layers by smooth random regions; then softened."""
    B, I, J = fg.shape
    regions = smooth_field(g, B, L, (I, J))
    regions[:, 1] = -torch.inf
    label = torch.where(fg, torch.ones_like(fg, dtype=torch.long), regions.argmax(1))
    onehot = F.one_hot(label, L).permute(0, 3, 1, 2).float()
    logits = 4.0 * onehot + 1.5 * smooth_field(g, B, L, (I, J)) + 0.5 * torch.randn(B, L, I, J, generator=g)
    return torch.softmax(logits, 1)


def _fallback_synthetic(g: torch.Generator, B: int, img_size: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Piecewise parametric flows without OpenCV: a quadratic background and one affine region
    (centred basis, px units), with white and smooth noise. Returns (flow (B, 2, I, J), fg (B, I, J))."""
    I, J = img_size
    X = cm.make_basis("Quadratic", img_size, centered=True)  # (N, 6): [ij, i², j², i, j, 1]
    theta_bg = torch.randn(B, 6, 2, generator=g) * torch.tensor([1.0, 1.0, 1.0, 1.5, 1.5, 3.0])[:, None]
    theta_fg = torch.cat([torch.zeros(B, 3, 2), theta_bg[:, 3:] + 2.0 * torch.randn(B, 3, 2, generator=g)], 1)
    fg = smooth_field(g, B, 1, img_size, (3, 5))[:, 0] > 0.6
    bg_flow = torch.einsum("nf,bfc->bcn", X, theta_bg).reshape(B, 2, I, J)
    fg_flow = torch.einsum("nf,bfc->bcn", X, theta_fg).reshape(B, 2, I, J)
    flow = torch.where(fg[:, None], fg_flow, bg_flow)
    flow = flow + 0.05 * torch.randn(flow.shape, generator=g) + 0.2 * smooth_field(g, B, 2, img_size)
    return flow, fg


def synthetic_flows(B: int, img_size: Sequence[int], seed: int) -> tuple[Tensor, Tensor]:
    """B synthetic flows (B, 2, I, J) and their foreground masks (B, I, J) bool."""
    try:
        from csvflowdatamodule.synthetic import generate_sequence
    except ImportError:  # the data module needs OpenCV
        logger.warning("csvflowdatamodule.synthetic unavailable: using the built-in piecewise generator")
        return _fallback_synthetic(torch.Generator().manual_seed(seed), B, img_size)
    flows, masks = [], []
    size = (int(img_size[0]), int(img_size[1]))
    for b in range(B):
        rng = np.random.default_rng(np.random.SeedSequence([seed, b]))
        flow, mask = generate_sequence(rng, size, 1)[0]
        flows.append(torch.from_numpy(flow).permute(2, 0, 1))
        masks.append(torch.from_numpy(mask))
    return torch.stack(flows).float(), torch.stack(masks)


def add_outliers(g: torch.Generator, flow: Tensor, fraction: float = 0.05) -> Tensor:
    """Replace ``fraction`` of the pixels by gross outliers: vectors of 3 × the flow's spread."""
    B = flow.shape[0]
    spread = flow.flatten(1).std(1).clamp(min=1.0)[:, None, None, None]
    bad = torch.rand(B, 1, *flow.shape[2:], generator=g) < fraction
    return torch.where(bad, 3.0 * spread * torch.randn(flow.shape, generator=g), flow)


def make_inputs(kind: str, B: int, L: int, img_size: Sequence[int], seed: int) -> tuple[Tensor, Tensor]:
    """(pred (B, L, I, J), flow (B, 2, I, J)) of one input kind, deterministic given ``seed``."""
    g = torch.Generator().manual_seed(seed * 1000 + L)
    if kind == "random":
        flow, _ = synthetic_flows(B, img_size, seed)
        return random_soft_masks(g, B, L, img_size), flow
    if kind == "synthetic":
        flow, fg = synthetic_flows(B, img_size, seed)
        return near_truth_masks(g, fg, L), add_outliers(g, flow)
    if kind == "blackswan":
        flow = torch.from_numpy(np.load(BLACKSWAN)).float()
        if tuple(flow.shape[1:]) != tuple(img_size):
            flow = F.interpolate(flow[None], size=tuple(img_size), mode="bilinear", align_corners=False)[0]
        return random_soft_masks(g, B, L, img_size), flow[None].repeat(B, 1, 1, 1)
    if kind == "noise":
        flow = 2.0 * smooth_field(g, B, 2, img_size) + 0.5 * torch.randn(B, 2, *img_size, generator=g)
        return random_soft_masks(g, B, L, img_size), flow
    raise ValueError(f"unknown input kind {kind!r}; expected one of {KINDS}")


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------
def sample_objective(pred: Tensor, flow: Tensor, param_model: str, theta_c: Tensor, v_distance: str) -> np.ndarray:
    """Per-sample M-step objective (B,) in float64: Σ_k Σ_i pred_k d(flow, X'θ'_k) / N."""
    B, L, I, J = pred.shape
    Xc, _, _ = cm.conditioned_basis(param_model, (I, J))
    obj = cm.layer_objective(pred.reshape(B, L, -1).double(), flow.reshape(B, 2, -1).double(), Xc.double(),
                             theta_c.double(), v_distance)
    return obj.sum(1).numpy()


def methods_for(optim_iters: Sequence[int]) -> dict[str, tuple[str, dict]]:
    """Method name → (theta_method, solver keyword arguments)."""
    out: dict[str, tuple[str, dict]] = {"OLS": ("OLS", {})}
    for i, n in enumerate(optim_iters):
        out["Optim" if i == 0 else f"Optim{n}"] = ("Optim", {"max_iter": int(n)})
    out["IRLS"] = ("IRLS", {})
    return out


def bench_case(kind: str, param_model: str, L: int, v_distance: str, pred: Tensor, flow: Tensor,
               methods: dict[str, tuple[str, dict]], repeats: int) -> list[dict]:
    """Rows (one per method) for one configuration; pred and flow on the device to time on."""
    last: dict[str, Tensor] = {}

    def call(name: str, method: str, kw: dict) -> None:
        last[name] = cm.fit_theta(pred, flow, param_model, v_distance, method, **kw)[0]

    calls: dict[str, Callable[[], None]] = {name: (lambda n=name, m=m, kw=kw: call(n, m, kw))
                                            for name, (m, kw) in methods.items()}
    sync = torch.cuda.synchronize if pred.device.type == "cuda" else None
    times = time_calls(calls, repeats=repeats, warmup=1, sync=sync)
    objs = {name: sample_objective(pred.cpu(), flow.cpu(), param_model, last[name].cpu(), v_distance)
            for name in methods}
    ref_t = summarise_times(times["Optim"])["median_ms"]
    tiny = np.finfo(np.float64).tiny
    longer = [n for n in methods if n.startswith("Optim") and n != "Optim"]
    rows = []
    for name in methods:
        t = summarise_times(times[name])
        ratio = objs[name] / np.maximum(objs["Optim"], tiny)  # per sample
        rows.append({
            "kind": kind, "param_model": param_model, "L": L, "v_distance": v_distance, "method": name,
            **t, "speedup_vs_optim": ref_t / t["median_ms"],
            "objective_mean": float(objs[name].mean()),
            "ratio_worst": float(ratio.max()), "ratio_mean": float(ratio.mean()),
            **{f"ratio_worst_vs_{n}": float((objs[name] / np.maximum(objs[n], tiny)).max()) for n in longer},
            "finite": bool(np.isfinite(objs[name]).all()),
        })
    return rows


def bar_rows(rows: Sequence[dict]) -> list[dict]:
    """The IRLS bar per l1/l2 configuration: worst ratio ≤ 1.001 and speedup ≥ 10."""
    out = []
    for r in rows:
        if r["method"] != "IRLS" or r["v_distance"] == "squared":
            continue
        ok_obj = r["ratio_worst"] <= BAR_RATIO
        ok_time = r["speedup_vs_optim"] >= BAR_SPEEDUP
        extra = {k: v for k, v in r.items() if k.startswith("ratio_worst_vs_")}
        out.append({**{k: r[k] for k in ("kind", "param_model", "L", "v_distance")},
                    "ratio_worst": r["ratio_worst"], "speedup_vs_optim": r["speedup_vs_optim"], **extra,
                    "objective_ok": ok_obj, "time_ok": ok_time,
                    "verdict": "pass" if ok_obj and ok_time else "FAIL",
                    "in_bar": r["kind"] in BAR_KINDS})
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="short run: random/synthetic/blackswan, L = 2, l1, 2 repeats, no Optim100")
    p.add_argument("--out", default="bench/results/theta.json", help="JSON output path")
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--img_size", type=int, nargs=2, default=(128, 224))
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per method (default 5; quick 2)")
    p.add_argument("--kinds", default=None, help=f"comma-separated, among {','.join(KINDS)} (default all; "
                   "quick: the three of the bar)")
    p.add_argument("--models", default="Affine,Quadratic")
    p.add_argument("--layers", default=None, help="comma-separated L values (default 2,4; quick 2)")
    p.add_argument("--distances", default=None, help="default l1,l2,squared (quick: l1)")
    p.add_argument("--optim-iters", default=None,
                   help="L-BFGS max_iter values; the first is the 'Optim' baseline (default 50,100; quick 50)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="where the solvers run (inputs are made on CPU, then moved)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    repeats = a.repeats or (2 if a.quick else 5)
    layers = [int(v) for v in (a.layers or ("2" if a.quick else "2,4")).split(",")]
    distances = (a.distances or ("l1" if a.quick else "l1,l2,squared")).split(",")
    optim_iters = [int(v) for v in (a.optim_iters or ("50" if a.quick else "50,100")).split(",")]
    kinds = (a.kinds or (",".join(BAR_KINDS) if a.quick else ",".join(KINDS))).split(",")
    models = a.models.split(",")
    methods = methods_for(optim_iters)
    B, img_size = a.batch, tuple(a.img_size)

    rows: list[dict] = []
    for kind in kinds:
        for L in layers:
            pred, flow = (t.to(a.device) for t in make_inputs(kind, B, L, img_size, a.seed))
            for param_model in models:
                for vd in distances:
                    case = bench_case(kind, param_model, L, vd, pred, flow, methods, repeats)
                    rows.extend(case)
                    irls = next(r for r in case if r["method"] == "IRLS")
                    logger.info("%-9s %-9s L=%d %-7s IRLS %.1f ms (%.1fx Optim), worst ratio %.6f", kind, param_model,
                                L, vd, irls["median_ms"], irls["speedup_vs_optim"], irls["ratio_worst"])

    bars = bar_rows(rows)
    in_bar = [b for b in bars if b["in_bar"]]
    verdict = "pass" if in_bar and all(b["verdict"] == "pass" for b in in_bar) else "FAIL"
    info = env_info()
    cols = [("kind", "kind"), ("param_model", "model"), ("L", "L"), ("v_distance", "distance"), ("method", "method"),
            ("median_ms", "median ms", ".1f"), ("min_ms", "min ms", ".1f"),
            ("speedup_vs_optim", "× faster than Optim", ".1f"), ("objective_mean", "objective (mean)", ".5f"),
            ("ratio_mean", "mean ratio to Optim", ".6f"), ("ratio_worst", "worst ratio to Optim", ".6f")]
    extra_names = [n for n in methods if n.startswith("Optim") and n != "Optim"]
    bar_cols = [("kind", "kind"), ("param_model", "model"), ("L", "L"), ("v_distance", "distance"),
                ("ratio_worst", "IRLS worst ratio to Optim", ".6f"),
                *[(f"ratio_worst_vs_{n}", f"worst ratio to {n}", ".6f") for n in extra_names],
                ("speedup_vs_optim", "IRLS × faster", ".1f"), ("verdict", "bar"), ("in_bar", "in bar")]
    print("## θ solvers\n")
    print(env_markdown(info) + "\n")
    print(f"Device {a.device}; batch {B}, {img_size[0]} × {img_size[1]}, median of {repeats} interleaved repeats; "
          "Optim = L-BFGS "
          f"(strong Wolfe) from OLS, max_iter {optim_iters[0]}. Objective per sample, float64.\n")
    print(markdown_table(rows, cols) + "\n")
    print(f"## IRLS bar: worst per-sample objective ≤ {BAR_RATIO} × Optim's, ≥ {BAR_SPEEDUP:g}× faster\n")
    print(markdown_table(bars, bar_cols) + "\n")
    print(f"Verdict over {', '.join(k for k in kinds if k in BAR_KINDS)}: {verdict}"
          + ("; 'noise' is a stress case outside the bar." if "noise" in kinds else ""))
    meta = {"device": a.device, "batch": B, "img_size": list(img_size), "repeats": repeats, "layers": layers,
            "kinds": kinds, "models": models, "distances": distances, "optim_max_iter": optim_iters, "seed": a.seed,
            "quick": a.quick, "irls_schedule": [list(s) for s in cm.IRLS_SCHEDULE], "bar": bars,
            "verdict": verdict, "argv": list(sys.argv[1:] if argv is None else argv)}
    announce(write_results(a.out, rows, meta))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
