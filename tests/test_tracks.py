"""Track-level motion significance (emseg/core/tracks.py, issue 24 item 2): regions linked through
the flow accumulate their evidence, so a consistent slow mover is kept through the frames where one
flow cannot tell it from noise, and a blob that lives a frame or two is dropped."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emseg.app.segment.options import SegmentOptions
from emseg.app.segment.stages import SequenceStages, Step
from emseg.core.significance import significant_foreground
from emseg.core.tracks import TrackGate, carry_labels, link_regions

I, J = 40, 64


def _box(i0: int, i1: int, j0: int, j1: int) -> np.ndarray:
    m = np.zeros((I, J), np.int32)
    m[i0:i1, j0:j1] = 1
    return m


def test_carry_labels_follows_an_integer_shift_exactly():
    labels = _box(10, 20, 10, 30)
    flow = torch.zeros(2, I, J)
    flow[0] = -3.0  # each pixel of the current frame was 3 columns to the left in the previous one
    flow[1] = 2.0   # and 2 rows lower
    carried = carry_labels(labels, flow)
    np.testing.assert_array_equal(carried, np.roll(np.roll(labels, -2, 0), 3, 1))
    with pytest.raises(ValueError, match=r"expected flow_to_prev \(2, 40, 64\)"):
        carry_labels(labels, torch.zeros(2, I, J + 1))


def test_link_regions_links_by_overlap_and_leaves_strangers_alone():
    prev = _box(5, 15, 5, 15) + 2 * _box(25, 35, 40, 50)
    cur = _box(6, 16, 6, 16) + 2 * _box(25, 35, 10, 20)  # region 1 moved a pixel; region 2 is elsewhere
    assert link_regions(prev, 3, cur, 3) == {1: 1}
    # linked when the overlap is at least LINK_OVERLAP (0.2) of the smaller region (here 100 pixels)
    small = _box(10, 20, 10, 20)
    assert link_regions(small, 2, _box(18, 40, 0, 64), 2) == {1: 1}  # 2 rows of 10: 20 %
    assert link_regions(small, 2, _box(19, 40, 0, 64), 2) == {}      # 1 row: 10 %
    assert link_regions(small, 2, np.zeros((I, J), np.int32), 1) == {}


def _gate_run(gate: TrackGate, frames: list[tuple[np.ndarray, int, dict[int, float]]]) -> list[dict[int, bool]]:
    still = torch.zeros(2, I, J)
    out = []
    for t, (regions, n, z) in enumerate(frames):
        out += [keep for _, keep in gate.push(regions, n, z, None if t == 0 else still, payload=t)]
    return out + [keep for _, keep in gate.finish()]


def test_a_consistent_region_is_kept_where_its_one_frame_score_dips():
    scores = [1.3, 0.8, 1.2, 0.9, 1.4, 1.1, 0.7, 1.5, 1.2, 1.3]
    region = _box(10, 20, 10, 30)
    frames = [(region, 2, {1: z}) for z in scores]
    verdicts = _gate_run(TrackGate(), frames)
    assert [v[1] for v in verdicts] == [True] * 10
    one_frame = _gate_run(TrackGate(min_frames=1, horizon=0, memory=0), frames)
    assert [v[1] for v in one_frame] == [z > 1 for z in scores]  # the one-frame test, frame by frame


def test_a_blob_of_one_or_two_frames_is_dropped_however_strong():
    obj = _box(10, 20, 10, 30)
    frames = []
    for t in range(9):
        regions, n, z = obj.copy(), 2, {1: 1.5}
        if t == 4 or t in (6, 7):  # a blob in frame 4, another in frames 6-7, far from the object
            regions[28:34, 44:52] = 2
            n, z = 3, {1: 1.5, 2: 8.0}
        frames.append((regions, n, z))
    verdicts = _gate_run(TrackGate(), frames)
    assert all(v[1] for v in verdicts)
    assert [v.get(2) for v in verdicts] == [None] * 4 + [False, None, False, False, None]
    assert [v.get(2) for v in _gate_run(TrackGate(min_frames=1), frames)] == \
        [None] * 4 + [True, None, True, True, None]


def test_a_region_passing_alone_on_a_lasting_track_stays_and_fragments_do_not_outvote_it():
    """An object (scores 1.5) sheds a fragment of score 0.2 in frames 2-6, split off and linked to its track:
    the object is kept in every frame, and so is the fragment (it belongs to a lasting mover's track).
    A lasting region whose median stays under 1 is dropped even in the frames it passes alone."""
    obj = _box(10, 20, 10, 30)
    frames = []
    for t in range(9):
        regions, n, z = obj.copy(), 2, {1: 1.5}
        if 2 <= t <= 6:
            regions[10:20, 20:30] = 2  # the object's right half splits off as a region of its own
            n, z = 3, {1: 1.5, 2: 0.2}
        frames.append((regions, n, z))
    verdicts = _gate_run(TrackGate(), frames)
    assert all(v[1] for v in verdicts) and all(v[2] for v in verdicts[2:7])
    weak = [0.5, 1.2, 0.4, 0.6, 1.3, 0.5, 0.7, 0.6, 0.5]
    verdicts = _gate_run(TrackGate(), [(obj, 2, {1: z}) for z in weak])
    assert not any(v[1] for v in verdicts)
    assert [v[1] for v in _gate_run(TrackGate(min_frames=1, horizon=0, memory=0), [(obj, 2, {1: z}) for z in weak])] \
        == [z > 1 for z in weak]


def test_the_gate_holds_horizon_frames_back_and_forgets_the_past():
    gate = TrackGate(horizon=2, memory=1)
    region = _box(10, 20, 10, 30)
    still = torch.zeros(2, I, J)
    returned = [[p for p, _ in gate.push(region, 2, {1: 2.0}, None if t == 0 else still, payload=t)]
                for t in range(6)]
    # a frame waits for the horizon's frames; the first ones for a whole window (memory + horizon + 1)
    assert returned == [[], [], [], [0, 1], [2], [3]]
    assert len(gate._frames) <= 2 * (gate.memory + gate.horizon) + 1  # flat in the sequence's length
    assert [p for p, _ in gate.finish()] == [4, 5]
    assert gate.finish() == []


def test_a_broken_sequence_starts_its_tracks_afresh():
    """A region lives in frames 0-3 and the sequence breaks before frame 3 (no flow back to frame 2):
    in frame 3 it is a new track of one frame, dropped; linked, it continues a 4-frame track, kept."""
    region, empty = _box(10, 20, 10, 30), np.zeros((I, J), np.int32)
    still = torch.zeros(2, I, J)

    def run(broken: bool) -> list[dict[int, bool]]:
        gate = TrackGate(min_frames=3)
        out = []
        for t in range(7):
            labels, n = (region, 2) if t <= 3 else (empty, 1)
            back = None if t == 0 or (broken and t == 3) else still
            out += [keep for _, keep in gate.push(labels, n, {1: 2.0} if n == 2 else {}, back, payload=t)]
        return out + [keep for _, keep in gate.finish()]

    assert [v.get(1) for v in run(broken=False)] == [True] * 4 + [None] * 3
    assert [v.get(1) for v in run(broken=True)] == [True] * 3 + [False] + [None] * 3


def test_unscored_regions_are_dropped_and_bad_settings_refused():
    region = _box(10, 20, 10, 30)
    verdicts = _gate_run(TrackGate(), [(region, 2, {1: 2.0}), (region, 2, {1: math.nan}), (region, 2, {1: 2.0})])
    assert [v[1] for v in verdicts] == [True, False, True]
    for bad in ({"min_frames": 0}, {"horizon": -1}, {"threshold": math.inf}):
        with pytest.raises(ValueError, match="expected"):
            TrackGate(**bad)


# ------------------------------------------------------------------------------- through the stages
def _steps(n: int, seed: int, object_px: float, blob_at: int | None = None, noise: float = 0.25,
           jitter: float = 0.35):
    """Frames of a static scene with estimator noise (white, ``noise`` px, plus an error common to the
    object's pixels, ``jitter`` px: a region's flow errs as a whole, as an estimator's does); a 12 × 20
    object moving ``object_px`` to the right (in the network's input flow, a gap flow); a network that
    finds the object in every frame, and a blob of strong flow noise in frame ``blob_at`` only."""
    g = torch.Generator().manual_seed(seed)
    obj = torch.zeros(I, J, dtype=torch.bool)
    obj[12:24, 16:36] = True
    steps = []
    for t in range(n):
        flow = noise * torch.randn(2, I, J, generator=g)
        flow[0, obj] += object_px + jitter * float(torch.randn(1, generator=g))
        fg = obj.clone()
        if blob_at == t:
            blob = torch.zeros(I, J, dtype=torch.bool)
            blob[28:36, 44:56] = True
            flow[1, blob] += 3.0
            fg |= blob
        pred = torch.stack([(~fg).float(), fg.float()]) * 0.9 + 0.05
        still = torch.zeros(2, I, J)
        steps.append(Step(t, f"{t:05d}", pred, flow, still, None if t == 0 else still, None, None, meta={}))
    return steps, obj.numpy()


def _final_foreground(opts: SegmentOptions, steps: list[Step]) -> list[np.ndarray]:
    stages = SequenceStages(opts)
    out = stages.push_many(steps) + stages.finish()
    assert [s.t for s in out] == list(range(len(steps)))
    return [(s.meta["final"].argmax(0) == 1).numpy() for s in out]


def test_a_slow_object_is_kept_by_the_track_test_and_lost_by_the_one_frame_test():
    """An object displaced 1.2 px in the gap flow (0.3 px/frame over 4 frames) amid 0.25 px noise: the
    one-frame test loses it in some frames (3 of 12 here), the track test keeps it in every frame."""
    steps, obj = _steps(12, seed=2, object_px=1.2)
    one = [significant_foreground(s.pred, s.flow_in).foreground[obj].mean() > 0.9 for s in steps]
    assert 0 < sum(one) < len(one) - 1, one  # the one-frame test keeps it in some frames, not all
    fusion_off = {"fusion_weight": 0.0}
    alone = _final_foreground(SegmentOptions(track_frames=1, **fusion_off), _steps(12, 2, 1.2)[0])
    tracked = _final_foreground(SegmentOptions(track_frames=3, **fusion_off), _steps(12, 2, 1.2)[0])
    assert [bool(m[obj].mean() > 0.9) for m in alone] == one
    assert all(m[obj].mean() > 0.9 for m in tracked)
    assert not any(m[~obj].any() for m in tracked)


def test_a_noise_blob_in_a_single_frame_is_dropped_by_the_track_test_only():
    steps, obj = _steps(9, seed=4, object_px=3.0, blob_at=4)
    blob = np.zeros((I, J), bool)
    blob[28:36, 44:56] = True
    fusion_off = {"fusion_weight": 0.0}
    alone = _final_foreground(SegmentOptions(track_frames=1, **fusion_off), steps)
    assert alone[4][blob].mean() > 0.9  # strong enough to pass the one-frame test
    tracked = _final_foreground(SegmentOptions(track_frames=3, **fusion_off), _steps(9, 4, 3.0, blob_at=4)[0])
    assert not tracked[4][blob].any()
    assert all(m[obj].mean() > 0.9 for m in tracked)


# ------------------------------------------------------------------------------- model_eval's binariser
def test_the_binariser_judges_tracks_causally_across_batches():
    """Binariser(track_frames=3): frames in order over two batches of one sequence, and a second
    sequence; a single-frame noise blob is dropped, the lasting object kept from the sequence's third frame
    (the causal rule needs three frames of it), and each sequence starts afresh."""
    from emseg.core.binarisation import Binariser

    steps, obj = _steps(8, seed=4, object_px=3.0, blob_at=5)
    blob = np.zeros((I, J), bool)
    blob[28:36, 44:56] = True
    paths = [f"seq_a/{t:05d}.flo" for t in range(6)] + [f"seq_b/{t:05d}.flo" for t in range(2)]

    def run(binariser: Binariser) -> list[np.ndarray]:
        out = []
        for lo, hi in ((0, 4), (4, 8)):
            batch = {"Pred": torch.stack([s.pred for s in steps[lo:hi]]),
                     "Flow": torch.stack([s.flow_in for s in steps[lo:hi]]), "FlowPath": paths[lo:hi]}
            out += list(binariser.binarise(batch)["PredMask"].numpy())
        return out

    alone = run(Binariser(min_motion=2.0))
    tracked = run(Binariser(min_motion=2.0, track_frames=3))
    assert alone[5][blob].all() and not tracked[5][blob].any()
    assert [bool(m[obj].all()) for m in alone] == [True] * 8
    # causal: frame t needs min(3, t + 1) frames of the track; seq_b starts again
    assert [bool(m[obj].all()) for m in tracked] == [True] * 8
    with pytest.raises(KeyError, match="FlowPath"):
        Binariser(min_motion=2.0, track_frames=3).binarise({"Pred": steps[0].pred[None],
                                                            "Flow": steps[0].flow_in[None]})
    with pytest.raises(ValueError, match="track_frames"):
        Binariser(track_frames=0)


def test_model_eval_applies_the_track_rule_on_request(tiny_split, tmp_path):
    """model_eval.py --min_motion 2 --track_frames 3: its binariser judges tracks, the settings record it,
    every frame is scored; and the combinations that cannot work are one-line errors."""
    import json

    from emseg.app.evaluation_cli import parse_args
    from emseg.app.evaluation_run import load_model
    from emseg.core.hparams import ConfigError
    from tests.conftest import read_csv, run_cli

    base, prefix = tiny_split
    common = ["--model", "ClassicalEM", "--em_iterations", "3", "--img_size", "64", "112", "--base_dir", base,
              "--data_file", prefix, "--steps", "test", "--num_workers", "0", "--accelerator", "cpu",
              "--batch_size", "3"]
    args = parse_args([*common, "--save_dir", str(tmp_path / "x"), "--min_motion", "2", "--track_frames", "3"])
    model = load_model(args)
    assert model.binariser.track_frames == 3 and model.binariser.min_motion == 2.0
    assert load_model(parse_args([*common, "--save_dir", "y", "--min_motion", "2"])).binariser.track_frames == 1
    for bad, said in ((["--track_frames", "3"], "needs --min_motion"),
                      (["--min_motion", "2", "--track_frames", "3", "--resume"], "without --resume")):
        with pytest.raises(ConfigError, match=said):
            parse_args([*common, "--save_dir", "z", *bad])
    with pytest.raises(SystemExit):  # out of its range: argparse's one-line error
        parse_args([*common, "--save_dir", "z", "--min_motion", "2", "--track_frames", "8"])
    ev = tmp_path / "tracked"
    run_cli(["model_eval.py", *common, "--save_dir", str(ev), "--min_motion", "2", "--track_frames", "3"])
    assert len(read_csv(ev / "results_test.csv")) == 8
    assert json.loads((ev / "eval_settings.json").read_text())["track_frames"] == 3
