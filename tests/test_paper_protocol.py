"""The paper's evaluation protocol (evaluationmodule/paper_protocol.py) on hand-computed cases."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluationmodule.paper_protocol import (
    PROTOCOLS,
    ProtocolError,
    format_table,
    main,
    protocol_scores,
    run_protocol,
)

# Per-frame J of two sequences: A (5 frames), B (3 frames)
J = {"A": [0.2, 0.5, 0.6, 0.7, 1.0], "B": [0.0, 0.3, 0.9]}


def _rows(status: dict[tuple[str, int], str] | None = None) -> list[dict]:
    rows = []
    for seq, js in J.items():
        for t, j in enumerate(js):
            st = (status or {}).get((seq, t), "ok")
            rows.append({"Flow": f"D/Flows/{seq}/{t:05d}.flo", "status": st, "jacc": j if st == "ok" else ""})
    return rows[::-1]  # order must not matter: frames are sorted within each sequence


def test_davis_is_the_mean_over_sequences_without_first_and_last_frames():
    r = protocol_scores(_rows(), "davis2016")
    # A: (0.5 + 0.6 + 0.7) / 3 = 0.6; B: 0.3 → mean over sequences 0.45
    assert r["J"] == pytest.approx(45.0) and r["averaging"] == "per-sequence mean"
    # per frame over the same frames: (0.5 + 0.6 + 0.7 + 0.3) / 4
    assert r["J_other"] == pytest.approx(52.5) and r["other_averaging"] == "per-frame mean"
    assert r["n_excluded_ends"] == 4 and r["n_frames"] == 4 and r["n_sequences"] == 2
    assert r["J_frames_all"] == pytest.approx(100 * 4.2 / 8)
    assert r["published"] == 69.3 and r["delta"] == pytest.approx(45.0 - 69.3)


@pytest.mark.parametrize("dataset,published", [("segtrackv2", 55.5), ("fbms59", 57.8)])
def test_segtrack_and_fbms_are_the_mean_over_frames(dataset, published):
    r = protocol_scores(_rows(), dataset)
    assert r["J"] == pytest.approx(100 * 4.2 / 8) and r["averaging"] == "per-frame mean"
    assert r["J_other"] == pytest.approx(100 * (0.6 + 0.4) / 2) and r["other_averaging"] == "per-sequence mean"
    assert r["n_excluded_ends"] == 0 and r["published"] == published


def test_unscored_rows_are_counted_not_averaged():
    r = protocol_scores(_rows({("B", 2): "missing", ("A", 0): "error: bad file"}), "segtrackv2")
    assert r["missing_rows"] == 1 and r["error_rows"] == 1 and r["scored_rows"] == 6 and r["total_rows"] == 8
    assert r["J"] == pytest.approx(100 * (0.5 + 0.6 + 0.7 + 1.0 + 0.0 + 0.3) / 6)
    # DAVIS: the ends are the sequence's first and last frames, scored or not
    d = protocol_scores(_rows({("B", 2): "missing"}), "davis2016")
    assert d["J"] == pytest.approx(100 * (0.6 + 0.3) / 2)
    table = format_table([r])
    assert "55.5" in table and "*" in table and "1 missing" in table


def test_table_sets_the_published_row_beside_ours():
    res = [protocol_scores(_rows(), d) for d in ("fbms59", "davis2016", "segtrackv2")]
    lines = format_table(res, label="authors' checkpoint").splitlines()
    assert lines[0] == "| J (%) | DAVIS2016 | SegTrackV2 | FBMS59 |"  # the paper's column order
    assert lines[2] == "| EM, published (TPAMI 2022) | 69.3 | 55.5 | 57.8 |"
    assert lines[3] == ("| authors' checkpoint (paper's averaging) | 45.0 (per-sequence mean) | "
                        "52.5 (per-frame mean) | 52.5 (per-frame mean) |")
    assert lines[4].startswith("| authors' checkpoint (other averaging) | 52.5 (per-frame mean) | 50.0 (per-sequence")


def _write_gt(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def test_end_to_end_predictions_are_resized_to_the_ground_truth_and_binarised_exceptbiggest(tmp_path):
    """Probabilities at half the GT's size (2 × 3 → 4 × 6): bilinear resizing puts the 0.5 crossing between
    output columns 1 and 2, so the foreground (the smaller label) is columns 0–1 exactly."""
    data, pred = tmp_path / "data", tmp_path / "pred"
    p1 = np.array([[0.9, 0.1, 0.1], [0.9, 0.1, 0.1]], np.float32)  # label 1 on the left third
    proba = np.stack([1 - p1, p1])  # (L=2, 2, 3)
    gts = {}
    for seq, n in (("s1", 3), ("s2", 3)):
        for t in range(n):
            gt = np.zeros((4, 6), bool)
            gt[:, : 1 + (t % 3)] = True  # 1, 2 or 3 columns: J = 1/2, 1, 2/3 against columns 0–1
            gts[(seq, t)] = gt
            _write_gt(data / "GT" / seq / f"{t:05d}.png", gt)
            (pred / "Flows" / seq).mkdir(parents=True, exist_ok=True)
            np.save(pred / "Flows" / seq / f"{t:05d}_proba.npy", proba)
    with open(data / "split_test.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Flow", "GtMask"])
        for seq, t in gts:
            w.writerow([f"Flows/{seq}/{t:05d}.flo", f"GT/{seq}/{t:05d}.png"])
    r = run_protocol("segtrackv2", pred, data / "split", data, tmp_path / "out", progress=False)
    assert r["J"] == pytest.approx(100 * (0.5 + 1 + 2 / 3) / 3) and r["scored_rows"] == 6
    d = run_protocol("davis2016", pred, data / "split", data, tmp_path / "out_davis", progress=False)
    assert d["J"] == pytest.approx(100.0)  # only the middle frame (J = 1) of each sequence counts
    saved = json.loads((tmp_path / "out" / "paper_protocol.json").read_text())
    assert saved["J"] == pytest.approx(r["J"]) and saved["source"] == PROTOCOLS["segtrackv2"].source


def test_cli_recomputes_from_scores_and_prints_the_table(tmp_path, capsys):
    scores = tmp_path / "scores.csv"
    rows = _rows()
    with open(scores, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main(["evaluate", "--dataset", "davis2016", "--scores", str(scores), "--out", str(tmp_path / "o")]) == 0
    assert "45.0 (per-sequence mean)" in capsys.readouterr().out
    assert main(["evaluate", "--dataset", "fbms59", "--scores", str(scores), "--out", str(tmp_path / "f")]) == 0
    capsys.readouterr()
    assert main(["table", str(tmp_path / "o"), str(tmp_path / "f" / "paper_protocol.json")]) == 0
    out = capsys.readouterr().out
    assert "| J (%) | DAVIS2016 | FBMS59 |" in out and "57.8" in out
    assert main(["table", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("paper_protocol: error:") and "nothing" in err and "\n" not in err
    with pytest.raises(ProtocolError, match="--dataset"):
        protocol_scores([], "davis2099")


def test_reproduction_script_checks_its_inputs_and_prints_the_table(tmp_path):
    import shutil
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "reproduce" / "paper.sh"
    bash = shutil.which("bash")
    if bash is None:  # pragma: no cover - every CI machine has bash
        pytest.skip("no bash")
    assert subprocess.run([bash, "-n", str(script)]).returncode == 0
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}
    r = subprocess.run([bash, str(script)], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "DATA_ROOT" in r.stderr
    out = tmp_path / "out"
    for ds in ("davis2016", "fbms59"):  # results of an earlier run: the table step only reads them
        d = out / "authors" / ds / "protocol"
        d.mkdir(parents=True)
        res = protocol_scores(_rows(), ds)
        res["label"] = "authors"
        (d / "paper_protocol.json").write_text(json.dumps(res))
    r = subprocess.run([bash, str(script)], capture_output=True, text=True,
                       env={**env, "DATA_ROOT": str(tmp_path), "OUT": str(out), "STEPS": "table"})
    assert r.returncode == 0, r.stderr
    assert "| authors (paper's averaging) | 45.0 (per-sequence mean) | 52.5 (per-frame mean) |" in r.stdout
    r = subprocess.run([bash, str(script)], capture_output=True, text=True,
                       env={**env, "DATA_ROOT": str(tmp_path), "OUT": str(out), "STEPS": "eval_trained"})
    assert r.returncode == 2 and "no checkpoint" in r.stderr
