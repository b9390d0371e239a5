"""Benchmark of a full MethodeB training step, and of its overhead over the network alone.

A step is what training does per batch: ``model.training_step`` (forward, M-step θ fit, loss,
the per-frame rows) then backward and an Adam step. It is compared with the network's own
step: the same forward, backward and optimiser step with a trivial loss (``pred.mean()``); the
ratio full / network is the cost of the EM part (target ≤ 1.15 for the CPU-sized net with the
default θ method). The M-step alone (``fit_theta``) is timed on the same predictions too.

Configurations: the CPU-sized U-Net (4 levels, 16 features) and the paper's default (7 levels,
64 features, about 498 M parameters); batch 10 at 128 × 224 (on CPU the paper's net runs at
batch 2 with few steps: ``--paper-batch``, ``--paper-steps``). Every (configuration, mode) runs in
its own subprocess so that its peak memory is its own: peak RSS (``ru_maxrss``) on CPU, and
``torch.cuda.max_memory_allocated`` on CUDA.

``--precision bf16-mixed`` runs forward and loss under bf16 autocast, as training does with that flag.

**The temporal model** (``--clip_length T`` > 1, docs/METHOD.md §5) against the frame model at equal frames
per batch (unless ``--no_temporal``): the same ``--batch`` frames, served as ``--batch`` frames to the frame
model (IRLS, ``--param_model``) and as ``--batch`` / T clips of T frames to the temporal one (each
``--temporal_backbones``, IRLS, ``QuadraticST1``), all cut from one synthetic smooth-motion split
(``csvflowdatamodule.synthetic --motion smooth``, a sequence per clip); a second table gives per-frame step
times, frames/s, peak memory and the ratio to the frame model's step (target ≤ 1.5 on CPU for stack2d).

Usage: ``python bench/bench_train_step.py [--quick] [--device cpu|cuda] [--precision 32-true|bf16-mixed]
[--clip_length 5] [--temporal_backbones stack2d,unet3d] [--no_temporal] [--out bench/results/train_step.json]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_common import NETS, announce, env_info, env_markdown, markdown_table, write_results  # noqa: E402

logger = logging.getLogger("bench_train_step")

#: mode → theta_method (None: the trivial loss pred.mean(), the network alone)
MODES = {"network": None, "IRLS": "IRLS", "OLS": "OLS", "Optim": "Optim"}


# --------------------------------------------------------------------------------------------
# Worker: one configuration and mode, in its own process
# --------------------------------------------------------------------------------------------
def make_flow(batch: int, img_size: Sequence[int], seed: int) -> torch.Tensor:
    """A batch of synthetic flows (B, 2, I, J) (bench_theta's generator)."""
    from bench_theta import synthetic_flows

    return synthetic_flows(batch, img_size, seed)[0]


def time_calls(fn, n: int, device: torch.device) -> list[float]:
    """Seconds of ``n`` calls of ``fn()``, each between two device synchronisations (CUDA's kernels are
    asynchronous)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(n):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def timed_steps(step, device: torch.device, warmup: int, steps: int) -> list[float]:
    """``warmup`` untimed then ``steps`` timed training steps (``step()``); CUDA's peak memory counts from here."""
    warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer attached: logging is a no-op
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        step()
    return time_calls(step, steps, device)


def peak_memory(device: torch.device) -> dict[str, float]:
    """This process's peak RSS (Linux ``ru_maxrss``: KiB) and, on CUDA, the peak allocated memory, in MiB."""
    out = {"peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["cuda_peak_MiB"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_worker(cfg: dict) -> dict:
    """Time ``cfg['steps']`` training steps after ``cfg['warmup']``; return times and peak memory."""
    from emseg.core import coherence_math as cm
    from Models.CoherenceNets.MethodeB import MethodeB

    torch.manual_seed(0)
    device = torch.device(cfg["device"])
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    hp = {**NETS[cfg["net"]], "img_size": list(cfg["img_size"]), "nAffineMasks": cfg["L"],
          "param_model": cfg["param_model"], "v_distance": cfg["v_distance"],
          "theta_method": MODES[cfg["mode"]] or "IRLS"}
    model = MethodeB(**hp).to(device)
    model.train()
    opt = model.configure_optimizers()
    flow = make_flow(cfg["batch"], cfg["img_size"], seed=0).to(device)
    trivial = MODES[cfg["mode"]] is None
    # What Lightning's --precision bf16-mixed does: forward and loss under autocast (the θ fit turns
    # it off inside), backward and the optimiser step outside it.
    bf16 = cfg.get("precision", "32-true") == "bf16-mixed"

    def step() -> None:
        batch = {"Flow": flow}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if trivial:
                loss = model(flow).mean()
            else:
                loss = model.training_step(batch, 0)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = timed_steps(step, device, cfg["warmup"], cfg["steps"])
    out = {"step_times_s": times, "params_M": sum(p.numel() for p in model.parameters()) / 1e6}
    if not trivial:  # the M-step alone, on the current predictions
        with torch.no_grad():
            pred = model(flow)
        out["theta_times_s"] = time_calls(
            lambda: cm.fit_theta(pred, flow, cfg["param_model"], cfg["v_distance"], MODES[cfg["mode"]]),
            max(3, cfg["steps"]), device)
    return {**out, **peak_memory(device)}


def clip_data(n_frames: int, T: int, img_size: Sequence[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_frames`` synthetic smooth-motion flows as frames (n_frames, 2, I, J) and as the n_frames / T clips
    (n_frames / T, 2, T, I, J) they make (a sequence of T frames per clip; frame k is frame k % T of clip k // T)."""
    import tempfile

    from csvflowdatamodule.clips import CsvClipDataset
    from csvflowdatamodule.synthetic import make_synthetic_split

    if n_frames % T:
        raise ValueError(f"--batch {n_frames} must be a multiple of --clip_length {T} (equal frames per batch)")
    with tempfile.TemporaryDirectory(prefix="bench_clips_") as tmp:
        prefix = make_synthetic_split(tmp, "b", n_train=n_frames, n_val=1, n_test=1, img_size=tuple(img_size),
                                      seed=seed, frames_per_sequence=T, motion="smooth")
        ds = CsvClipDataset(f"{prefix}_train.csv", tmp, tuple(img_size), ["Flow"], clip_length=T, clip_stride=T)
        clips = torch.stack([ds[i]["Flow"] for i in range(len(ds))])
    frames = clips.transpose(1, 2).reshape(n_frames, 2, *clips.shape[3:])
    return frames, clips


def run_temporal_worker(cfg: dict) -> dict:
    """Time training steps of the frame model (``mode`` 'frame') or of a temporal one (``mode`` its
    ``--temporal_backbone``) on the same ``cfg['batch']`` frames; return times and peak memory."""
    from Models.CoherenceNets.MethodeB import MethodeB

    torch.manual_seed(0)
    device = torch.device(cfg["device"])
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    T = int(cfg["clip_length"])
    frames, clips = clip_data(cfg["batch"], T, cfg["img_size"], seed=0)
    hp = {**NETS[cfg["net"]], "img_size": list(cfg["img_size"]), "nAffineMasks": cfg["L"],
          "param_model": cfg["param_model"], "v_distance": cfg["v_distance"], "theta_method": "IRLS"}
    if cfg["mode"] != "frame":
        hp.update({"clip_length": T, "temporal_backbone": cfg["mode"]})
    model = MethodeB(**hp).to(device)
    model.train()
    opt = model.configure_optimizers()
    flow = (frames if cfg["mode"] == "frame" else clips).to(device)
    bf16 = cfg.get("precision", "32-true") == "bf16-mixed"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model.training_step({"Flow": flow}, 0)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = timed_steps(step, device, cfg["warmup"], cfg["steps"])
    return {"step_times_s": times, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            **peak_memory(device)}


def temporal_rows(a: argparse.Namespace, net: str, batch: int, steps: int) -> list[dict]:
    """The frame model and each temporal backbone on the same frames (one worker each, alternating
    over ``--rounds``); per-frame times and the ratio to the frame model's step."""
    modes = ["frame", *a.temporal_backbones.split(",")]
    results: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(a.rounds):
        for mode in modes:
            cfg = {"net": net, "mode": mode, "temporal": True, "device": a.device, "batch": batch,
                   "img_size": list(a.img_size), "L": a.L, "param_model": a.param_model, "v_distance": a.v_distance,
                   "clip_length": a.clip_length, "steps": steps, "warmup": a.warmup,
                   "threads": a.threads or torch.get_num_threads(), "precision": a.precision}
            logger.info("%s / %s: %d frames per batch, %d steps ...", net, mode, batch, steps)
            results[mode].append(spawn(cfg, a.timeout))
    rows = []
    for mode in modes:
        res = results[mode]
        times = [t for r in res for t in r["step_times_s"]]
        med = statistics.median(times)
        rows.append({"net": net, "params_M": res[0]["params_M"], "model": "frame" if mode == "frame" else
                     f"temporal {mode}", "clip_length": 1 if mode == "frame" else a.clip_length,
                     "samples": batch if mode == "frame" else batch // a.clip_length, "frames": batch,
                     "steps": len(times), "step_median_ms": 1e3 * med, "per_frame_ms": 1e3 * med / batch,
                     "frames_per_s": batch / med, "samples_per_s": (batch if mode == "frame" else
                                                                    batch // a.clip_length) / med,
                     "peak_rss_MiB": max(r["peak_rss_MiB"] for r in res),
                     "cuda_peak_MiB": max(r["cuda_peak_MiB"] for r in res) if "cuda_peak_MiB" in res[0] else None})
    for row in rows:
        row["ratio_to_frame"] = row["step_median_ms"] / rows[0]["step_median_ms"]
    return rows


def spawn(cfg: dict, timeout: float) -> dict:
    """Run one worker in a fresh interpreter; its last stdout line is the JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    if proc.returncode != 0:
        raise RuntimeError(f"worker {cfg} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="CPU-sized net only, IRLS and network modes, few steps")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="bench/results/train_step.json")
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--img_size", type=int, nargs=2, default=(128, 224))
    p.add_argument("--L", type=int, default=2, help="nAffineMasks (the model's default: 2)")
    p.add_argument("--param_model", default="Quadratic")
    p.add_argument("--v_distance", default="l1")
    p.add_argument("--nets", default=None,
                   help="comma-separated among cpu-sized,paper (default both; quick: cpu-sized)")
    p.add_argument("--modes", default=None,
                   help="comma-separated among network,IRLS,OLS,Optim (default all for the CPU-sized net; "
                        "network,IRLS for the paper's)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 12; quick 5)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--paper-batch", type=int, default=None, help="batch of the paper's net (default: 2 on CPU)")
    p.add_argument("--paper-steps", type=int, default=None, help="timed steps of the paper's net (default: 2 on CPU)")
    p.add_argument("--rounds", type=int, default=1, help="repeat every (net, mode) run this many times, "
                   "alternating; times are the median over all rounds' steps")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"],
                   help="as model_train.py's --precision: bf16-mixed runs forward and loss under bf16 autocast")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per worker")
    p.add_argument("--clip_length", type=int, default=5, help="T of the temporal model (--batch must be a multiple)")
    p.add_argument("--temporal_backbones", default="stack2d,unet3d", help="comma-separated --temporal_backbone "
                   "values timed against the frame model")
    p.add_argument("--no_temporal", action="store_true", help="skip the temporal model's table")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    if a.worker is not None:
        cfg = json.loads(a.worker)
        print(json.dumps(run_temporal_worker(cfg) if cfg.get("temporal") else run_worker(cfg)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if a.threads:
        torch.set_num_threads(a.threads)
    cpu = a.device == "cpu"
    nets = (a.nets or ("cpu-sized" if a.quick else "cpu-sized,paper")).split(",")
    steps = a.steps or (5 if a.quick else 12)
    rows = []
    for net in nets:
        paper = net == "paper"
        modes = (a.modes or ("network,IRLS" if a.quick or paper else "network,IRLS,OLS,Optim")).split(",")
        batch = (a.paper_batch or (2 if cpu else a.batch)) if paper else a.batch
        n_steps = (a.paper_steps or (2 if cpu else steps)) if paper else steps
        warmup = 1 if paper and cpu else a.warmup
        results: dict[str, list[dict]] = {m: [] for m in modes}
        for _ in range(a.rounds):
            for mode in modes:
                cfg = {"net": net, "mode": mode, "device": a.device, "batch": batch, "img_size": list(a.img_size),
                       "L": a.L, "param_model": a.param_model, "v_distance": a.v_distance, "steps": n_steps,
                       "warmup": warmup, "threads": a.threads or torch.get_num_threads(), "precision": a.precision}
                logger.info("%s / %s: batch %d, %d steps ...", net, mode, batch, n_steps)
                results[mode].append(spawn(cfg, a.timeout))
        base = None
        for mode in modes:
            res = results[mode]
            times = [t for r in res for t in r["step_times_s"]]
            med = statistics.median(times)
            row = {"net": net, "params_M": res[0]["params_M"], "mode": mode, "precision": a.precision,
                   "theta_method": MODES[mode] or "(pred.mean() loss)", "device": a.device, "batch": batch,
                   "steps": len(times), "step_median_ms": 1e3 * med, "step_min_ms": 1e3 * min(times),
                   "samples_per_s": batch / med,
                   "theta_median_ms": 1e3 * statistics.median([t for r in res for t in r["theta_times_s"]])
                   if "theta_times_s" in res[0] else None,
                   "peak_rss_MiB": max(r["peak_rss_MiB"] for r in res),
                   "cuda_peak_MiB": max(r["cuda_peak_MiB"] for r in res) if "cuda_peak_MiB" in res[0] else None}
            if mode == "network":
                base = row
            rows.append(row)
        for row in rows:
            if row["net"] == net and base is not None:
                row["ratio_to_network"] = row["step_median_ms"] / base["step_median_ms"]
                row["ratio_to_network_min"] = row["step_min_ms"] / base["step_min_ms"]

    info = env_info()
    cols = [("net", "net"), ("params_M", "params (M)", ".2f"), ("mode", "loss / θ"), ("precision", "precision"),
            ("batch", "batch"),
            ("steps", "steps"), ("step_median_ms", "step median ms", ".1f"), ("step_min_ms", "step min ms", ".1f"),
            ("samples_per_s", "samples/s", ".2f"), ("ratio_to_network", "× network step", ".3f"),
            ("ratio_to_network_min", "× network (min)", ".3f"), ("theta_median_ms", "θ fit ms", ".1f"),
            ("peak_rss_MiB", "peak RSS MiB", ".0f"), ("cuda_peak_MiB", "CUDA peak MiB", ".0f")]
    print("## Training step\n")
    print(env_markdown(info) + "\n")
    print(f"{a.img_size[0]} × {a.img_size[1]}, L = {a.L}, {a.param_model}, {a.v_distance}, Adam; device {a.device}. "
          "'network' = forward + backward + Adam with loss pred.mean(); the others = model.training_step "
          "(forward, θ, loss, per-frame rows) + backward + Adam.\n")
    print(markdown_table(rows, cols))
    trows: list[dict] = []
    if not a.no_temporal:
        trows = temporal_rows(a, "cpu-sized", a.batch, steps)
        tcols = [("net", "net"), ("model", "model"), ("clip_length", "T"), ("samples", "samples"),
                 ("frames", "frames"), ("steps", "steps"), ("step_median_ms", "step median ms", ".1f"),
                 ("per_frame_ms", "ms per frame", ".2f"), ("frames_per_s", "frames/s", ".1f"),
                 ("samples_per_s", "samples/s", ".2f"), ("ratio_to_frame", "× frame step", ".3f"),
                 ("peak_rss_MiB", "peak RSS MiB", ".0f"), ("cuda_peak_MiB", "CUDA peak MiB", ".0f")]
        print("\n## Temporal model against the frame model, equal frames per batch\n")
        print(f"{a.batch} frames per batch: {a.batch} frames (frame model, {a.param_model}) or "
              f"{a.batch // a.clip_length} clips of {a.clip_length} (temporal, QuadraticST1), synthetic smooth motion; "
              "IRLS; training_step + "
              "backward + Adam.\n")
        print(markdown_table(trows, tcols))
    rows = rows + trows
    meta = {"img_size": list(a.img_size), "L": a.L, "param_model": a.param_model, "v_distance": a.v_distance,
            "device": a.device, "precision": a.precision, "rounds": a.rounds, "quick": a.quick,
            "target_ratio_cpu_sized_IRLS": 1.15, "target_ratio_temporal_stack2d_cpu": 1.5,
            "clip_length": a.clip_length,
            "argv": list(sys.argv[1:] if argv is None else argv)}
    announce(write_results(a.out, rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
