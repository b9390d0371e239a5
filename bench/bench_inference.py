"""Benchmark of MethodeB inference: frames/s of the segmentation forward pass.

Two parts.

**Backends** (the product path): the bundled model (``checkpoints/em_small.ckpt``) on the real
blackswan flow (mirrored and negated copies fill a batch), at its 128 × 224, through every
installed backend of :mod:`Models.backends` (torch fp32 and bf16, onnxruntime, openvino) against
the authors' path, ``model.prediction`` in eager fp32 under ``torch.no_grad``. All fp32 runs of
one batch size are interleaved (one round calls each once), so a burst of load on a shared
machine hits them alike; frames/s = batch / median; the speed-up is against the authors' path in
the same rounds; bf16 is timed apart (``--bf16-repeats``). Each backend's output is compared with
the authors' (max |Δpred|, argmax agreement).

**Networks**: for each synthetic network (the CPU-sized U-Net, 4 levels × 16 features, and the
paper's default, 7 × 64), batch size (1 and 32), precision (fp32, bf16 autocast) and memory
format (channels_last on/off), ``model.prediction({'Flow': flow})`` runs under
``torch.inference_mode`` and is timed as the median of repeats. The bf16 output is compared
with fp32's. Each measurement gets at most ``--max-seconds`` (estimated from the smallest
batch): fewer repeats (at least one), or skipped and reported as such if one batch would not
fit; on a small CPU, the paper's net at batch 32 takes minutes.

Usage: ``python bench/bench_inference.py [--quick] [--threads 1] [--nets none|cpu-sized,paper]
[--backends torch,onnxruntime,openvino|none] [--device cpu|cuda] [--out bench/results/inference.json]``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_common import (  # noqa: E402
    NETS,
    announce,
    env_info,
    env_markdown,
    markdown_table,
    time_calls,
    write_results,
)

logger = logging.getLogger("bench_inference")



def bench_net(net: str, device: torch.device, batches: Sequence[int], repeats: int, warmup: int,
              max_seconds: float, img_size: Sequence[int], L: int) -> list[dict]:
    from bench_theta import synthetic_flows

    from Models.CoherenceNets.MethodeB import MethodeB

    torch.manual_seed(0)
    model = MethodeB(**NETS[net], img_size=list(img_size), nAffineMasks=L).to(device).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    flows = synthetic_flows(max(batches), img_size, seed=0)[0].to(device)
    rows: list[dict] = []
    per_frame_s: dict[tuple[str, bool], float] = {}
    for channels_last in (False, True):
        model = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        for precision in ("fp32", "bf16"):
            for batch in sorted(batches):
                flow = flows[:batch]
                if channels_last:
                    flow = flow.contiguous(memory_format=torch.channels_last)
                row = {"net": net, "params_M": params, "device": device.type, "batch": batch, "precision": precision,
                       "channels_last": channels_last}
                est = per_frame_s.get((precision, channels_last))  # from the smallest batch, an upper bound
                n_fit = int(max_seconds // (est * batch)) if est else repeats + warmup
                if n_fit < 1:
                    row["skipped"] = f"estimated {est * batch:.0f} s per batch > --max-seconds"
                    rows.append(row)
                    continue
                n_warm = min(warmup, n_fit - 1)
                n_rep = max(1, min(repeats, n_fit - n_warm))

                def run(flow=flow, precision=precision, model=model) -> torch.Tensor:
                    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                                enabled=precision == "bf16"):
                        return model.prediction({"Flow": flow})["Pred"]

                times = time_calls({"run": run}, n_rep, n_warm, sync)["run"]
                med = statistics.median(times)
                per_frame_s.setdefault((precision, channels_last), med / batch)
                row.update({"repeats": n_rep, "median_ms": 1e3 * med, "min_ms": 1e3 * min(times),
                            "frames_per_s": batch / med})
                if precision == "bf16":
                    with torch.inference_mode():
                        ref = model.prediction({"Flow": flow})["Pred"].float()
                        out = run().float()
                    row["bf16_max_abs_diff"] = (out - ref).abs().max().item()
                    row["bf16_label_agreement"] = (out.argmax(1) == ref.argmax(1)).float().mean().item()
                rows.append(row)
                logger.info("%s b=%d %s channels_last=%s: %s", net, batch, precision, channels_last,
                            f"{row['frames_per_s']:.1f} frames/s")
    return rows


def real_flows(batch: int) -> torch.Tensor:
    """(batch, 2, 128, 224): the blackswan flow, then its mirror image and their negations, cycled."""
    import numpy as np

    f = torch.from_numpy(np.load(HERE.parent / "tests" / "data" / "blackswan_flow_128x224.npy")).float()[None]
    mirrored = f.flip(3) * torch.tensor([-1.0, 1.0])[None, :, None, None]
    variants = [f, mirrored, -f, -mirrored]
    return torch.cat([variants[i % 4] for i in range(batch)]).contiguous()


def bench_backends(names: Sequence[str], batches: Sequence[int], repeats: int, warmup: int,
                   threads: int | None, cache_dir: Path, bf16_repeats: int = 1) -> list[dict]:
    """Rows of the backends part: one per (batch, backend, precision), the authors' path first."""
    from Models.backends import BackendError, make_backend
    from Models.CoherenceNets.MethodeB import MethodeB

    model = MethodeB.load_from_checkpoint(str(HERE.parent / "checkpoints" / "em_small.ckpt")).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    candidates = [(n, "fp32") for n in names] + [("torch", "bf16")] * ("torch" in names)
    backends, skipped = {}, {}
    for name, precision in candidates:
        t0 = time.perf_counter()
        try:
            backends[(name, precision)] = make_backend(model, name, precision, cache_dir=cache_dir, threads=threads)
        except BackendError as err:
            skipped[(name, precision)] = str(err)
            continue
        logger.info("%s %s ready in %.1f s", name, precision, time.perf_counter() - t0)

    rows: list[dict] = []
    for batch in batches:
        flow = real_flows(batch)

        def authors(flow=flow) -> torch.Tensor:
            with torch.no_grad():
                return model.prediction({"Flow": flow})["Pred"]

        fns = {("authors' eager", "fp32"): authors}
        fns.update({key: (lambda b=b, flow=flow: b(flow)) for key, b in backends.items()})
        ref = authors()
        quality = {}
        for key, fn in fns.items():
            out = fn()
            quality[key] = {"max_abs_diff": (out - ref).abs().max().item(),
                            "argmax_agreement": (out.argmax(1) == ref.argmax(1)).float().mean().item()}
        fp32 = {f"{k[0]}/{k[1]}": fn for k, fn in fns.items() if k[1] == "fp32"}
        times = time_calls(fp32, repeats, warmup)
        # bf16 apart, with fewer repeats: without bf16 units it is tens of times slower.
        times.update(time_calls({f"{k[0]}/{k[1]}": fn for k, fn in fns.items() if k[1] != "fp32"},
                                bf16_repeats, 0))
        base = statistics.median(times["authors' eager/fp32"])
        for key in fns:
            t = times[f"{key[0]}/{key[1]}"]
            med = statistics.median(t)
            rows.append({"net": "bundled em_small", "params_M": params, "backend": key[0], "precision": key[1],
                         "batch": batch, "repeats": len(t), "median_ms": 1e3 * med, "min_ms": 1e3 * min(t),
                         "frames_per_s": batch / med, "speedup": base / med, **quality[key]})
            logger.info("b=%d %s %s: %.1f frames/s (%.2fx)", batch, *key, batch / med, base / med)
        for key, why in skipped.items():
            rows.append({"net": "bundled em_small", "backend": key[0], "precision": key[1], "batch": batch,
                         "skipped": why})
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CPU-sized net, batch 1 and 32, 3 repeats")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="bench/results/inference.json")
    p.add_argument("--nets", default=None, help="comma-separated among cpu-sized,paper (default both; quick: "
                   "cpu-sized), or none")
    p.add_argument("--backends", default=None,
                   help="comma-separated among torch,onnxruntime,openvino (default: those installed), or none")
    p.add_argument("--backend-batches", default="1,8", help="batch sizes of the backends part")
    p.add_argument("--bf16-repeats", type=int, default=1, help="repeats of the torch bf16 backend (slow on CPUs "
                   "without bf16 units; timed apart from the fp32 rounds)")
    p.add_argument("--cache-dir", default="bench/results/export_cache", help="where the backends' exports are kept")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--img_size", type=int, nargs=2, default=(128, 224))
    p.add_argument("--L", type=int, default=2)
    p.add_argument("--repeats", type=int, default=None, help="default 7; quick 3")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=120.0,
                   help="skip a measurement estimated to take longer than this")
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    nets = [n for n in (a.nets or ("cpu-sized" if a.quick else "cpu-sized,paper")).split(",") if n != "none"]
    batches = [int(b) for b in a.batches.split(",")]
    repeats = a.repeats or (3 if a.quick else 7)
    from Models.backends import available_backends

    names = [n for n in (a.backends or ",".join(available_backends())).split(",") if n != "none"]
    backend_batches = [int(b) for b in a.backend_batches.split(",")]
    backend_rows = (bench_backends(names, backend_batches, repeats, a.warmup, a.threads, Path(a.cache_dir),
                                   a.bf16_repeats)
                    if names and device.type == "cpu" else [])
    rows = []
    for net in nets:
        rows.extend(bench_net(net, device, batches, repeats, a.warmup, a.max_seconds, a.img_size, a.L))
    info = env_info()
    print("## Inference\n")
    print(env_markdown(info) + "\n")
    if backend_rows:
        bcols = [("batch", "batch"), ("backend", "backend"), ("precision", "precision"), ("repeats", "repeats"),
                 ("median_ms", "median ms", ".1f"), ("frames_per_s", "frames/s", ".2f"),
                 ("speedup", "× authors' eager fp32", ".2f"), ("max_abs_diff", "max |Δpred|", ".1e"),
                 ("argmax_agreement", "argmax agreement", ".4f"), ("skipped", "skipped")]
        print("### Backends: the bundled model (em_small) on the real blackswan flow, 128 × 224, L = 2\n")
        print(markdown_table(backend_rows, bcols) + "\n")
    if rows:
        cols = [("net", "net"), ("params_M", "params (M)", ".2f"), ("batch", "batch"), ("precision", "precision"),
                ("channels_last", "channels_last"), ("repeats", "repeats"), ("median_ms", "median ms", ".1f"),
                ("min_ms", "min ms", ".1f"), ("frames_per_s", "frames/s", ".2f"),
                ("bf16_max_abs_diff", "bf16 max |Δpred|", ".2e"),
                ("bf16_label_agreement", "bf16 argmax agreement", ".4f"), ("skipped", "skipped")]
        print(f"### Networks: model.prediction under inference_mode, {a.img_size[0]} × {a.img_size[1]}, "
              f"L = {a.L}; device {a.device}.\n")
        print(markdown_table(rows, cols))
    meta = {"img_size": list(a.img_size), "L": a.L, "device": a.device, "batches": batches, "repeats": repeats,
            "backends": names, "backend_batches": backend_batches,
            "max_seconds": a.max_seconds, "quick": a.quick, "argv": list(sys.argv[1:] if argv is None else argv)}
    announce(write_results(a.out, [*backend_rows, *rows], meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
