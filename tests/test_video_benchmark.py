"""The composited video benchmark (``emseg.app.video_benchmark``): exact ground truth, determinism,
bounded camera, the new roles (and the original seven unchanged), exact motion, flicker and regions, the
scorer, and the former path ``evaluationmodule.video_benchmark``.

Textures are made here (no opencv-doc needed); frames are tiny (96 × 64, 6 frames).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from emseg.app import video_benchmark as vb

ROOT = Path(__file__).resolve().parents[1]

SIZE = (96, 64)
N = 6
ROLES3 = ("static_empty", "one_textured", "two_crossing")


@pytest.fixture(scope="module")
def textures(tmp_path_factory):
    """Nine backgrounds per split (one per role) and three object textures: noise, stripes, a black-framed
    photo. The first seven per split and the objects are drawn as before the new roles (the digest of the
    original roles' plan below was computed on exactly these files); the two more come from their own RNG."""
    d = tmp_path_factory.mktemp("textures")
    rng = np.random.default_rng(0)
    names = {"dev": [], "test": []}
    for split in names:
        for i in range(7):
            h, w = (50, 70) if i % 2 else (140, 180)  # small ones force an upscale
            yy, xx = np.mgrid[0:h, 0:w]
            img = np.stack([(xx * (3 + i)) % 256, (yy * 5) % 256, rng.integers(0, 256, (h, w))], -1)
            img = cv2.GaussianBlur(img.astype(np.uint8), (3, 3), 0)
            if i == 0:  # a painted frame the generator must crop away
                img[:4], img[-4:], img[:, :4], img[:, -4:] = 0, 0, 0, 0
            name = f"bg_{split}_{i}.png"
            cv2.imwrite(str(d / name), img)
            names[split].append(name)
    objs = []
    for i in range(3):
        img = rng.integers(0, 256, (60 + 10 * i, 80, 3)).astype(np.uint8)
        cv2.imwrite(str(d / f"obj{i}.png"), img)
        objs.append(f"obj{i}.png")
    extra = np.random.default_rng(1)
    for split in names:  # the new roles' backgrounds
        for i in range(7, 9):
            img = cv2.GaussianBlur(extra.integers(0, 256, (120, 160, 3)).astype(np.uint8), (5, 5), 0)
            name = f"bg_{split}_{i}.png"
            cv2.imwrite(str(d / name), img)
            names[split].append(name)
    return d, names, {"dev": objs, "test": objs}


def make(out, textures, seed=0, roles=ROLES3, splits=("dev",), **kw):
    d, bgs, objs = textures
    return vb.make_benchmark(out, d, seed=seed, n_frames=N, sizes=[SIZE], backgrounds=bgs, objects=objs,
                             roles=roles, splits=splits, **kw)


def mask_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("masks/*.png"))}


def test_same_seed_same_masks_other_seed_differs(tmp_path, textures):
    make(tmp_path / "a", textures, seed=3)
    make(tmp_path / "b", textures, seed=3)
    make(tmp_path / "c", textures, seed=4)
    a, b, c = (mask_bytes(tmp_path / k) for k in "abc")
    assert len(a) == len(ROLES3) * N
    assert a == b
    assert a != c
    man = json.loads((tmp_path / "a" / vb.MANIFEST).read_text())
    assert [s["name"] for s in man["sequences"]["dev"]] == list(ROLES3)
    table = (tmp_path / "a" / "SEQUENCES.md").read_text()
    assert all(f"| dev | {r} | 96×64 |" in table for r in ROLES3)
    assert table.count("obj") >= 3  # one_textured's object, two_crossing's two
    for s in man["sequences"]["dev"]:
        folder = tmp_path / "a" / s["path"]
        cap = cv2.VideoCapture(str(folder / s["video"]))
        frames = 0
        while True:
            ok, f = cap.read()
            if not ok:
                break
            assert f.shape == (SIZE[1], SIZE[0], 3)
            frames += 1
        assert frames == N


def test_rerun_keeps_and_other_settings_refused(tmp_path, textures, caplog):
    make(tmp_path / "a", textures, seed=1)
    before = mask_bytes(tmp_path / "a")
    with caplog.at_level("INFO", logger="emseg.app.video_benchmark"):
        make(tmp_path / "a", textures, seed=1)
    assert "already complete" in caplog.text
    assert mask_bytes(tmp_path / "a") == before
    with pytest.raises(vb.BenchmarkError, match="other settings"):
        make(tmp_path / "a", textures, seed=2)
    make(tmp_path / "a", textures, seed=2, overwrite=True)
    assert mask_bytes(tmp_path / "a") != before


def test_missing_textures_say_how_to_install(tmp_path):
    with pytest.raises(SystemExit, match="apt-get install opencv-doc"):
        vb.main(["make", "--out", str(tmp_path / "o"), "--textures", str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="apt-get install opencv-doc"):
        vb.main(["make", "--out", str(tmp_path / "o"), "--textures", str(tmp_path / "empty")])


def _ellipse_spec(textures, camera_velocity):
    d, bgs, objs = textures
    cam = vb.CameraPath(center=(90.0, 70.0), velocity=camera_velocity)
    obj = vb.BlobObject(texture=objs["dev"][0], a=14.0, b=8.0, start=(40.0, 30.0), velocity=(1.0, 0.5),
                        angle0_deg=30.0, texture_scale=1.5)
    return vb.SequenceSpec(name="ell", split="dev", role="one_textured", description="", size=SIZE, n_frames=N,
                           background=bgs["dev"][1], photo_scale=3.0, camera=cam, objects=[obj], seed=5)


@pytest.mark.parametrize("camera_velocity", [(0.0, 0.0), (2.0, -1.0)])
def test_mask_is_the_analytic_ellipse(textures, camera_velocity):
    spec = _ellipse_spec(textures, camera_velocity)
    spec.noise_sigma = 0.0
    a, b, th = 14.0, 8.0, math.radians(30.0)
    yy, xx = np.mgrid[0:SIZE[1], 0:SIZE[0]].astype(float)
    tex = cv2.imread(str(textures[0] / spec.objects[0].texture)).astype(np.float32)
    photo = vb.trim_border(cv2.imread(str(textures[0] / spec.background)))
    scene = cv2.resize(photo, (round(photo.shape[1] * 3), round(photo.shape[0] * 3)),
                       interpolation=cv2.INTER_LINEAR).astype(np.float32)
    for t, (frame, mask) in enumerate(vb.render_sequence(spec, textures[0])):
        # a pure camera translation moves the object's image by minus the camera's displacement
        cx = 40.0 + 1.0 * t - camera_velocity[0] * t
        cy = 30.0 + 0.5 * t - camera_velocity[1] * t
        u = math.cos(th) * (xx - cx) + math.sin(th) * (yy - cy)
        v = -math.sin(th) * (xx - cx) + math.cos(th) * (yy - cy)
        q = (u / a) ** 2 + (v / b) ** 2
        ambiguous = np.abs(q - 1) < 1e-9
        assert not ambiguous.any()
        np.testing.assert_array_equal(mask, q < 1, err_msg=f"frame {t}")
        assert frame.shape == (SIZE[1], SIZE[0], 3) and frame.dtype == np.uint8
        assert 0.03 < mask.mean() < 0.2
        # inside, the object's texture moves with it (texture centre at the object's centre, 1.5 px per unit)
        tx = ((tex.shape[1] - 1) / 2 + 1.5 * u).astype(np.float32)
        ty = ((tex.shape[0] - 1) / 2 + 1.5 * v).astype(np.float32)
        want = cv2.remap(tex, tx, ty, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        inside = q < 0.7
        assert np.abs(frame[inside].astype(float) - want[inside]).max() <= 1.0
        # outside, the background is the photo seen through the translated camera window
        sx = (xx - (SIZE[0] - 1) / 2 + 90.0 + camera_velocity[0] * t).astype(np.float32)
        sy = (yy - (SIZE[1] - 1) / 2 + 70.0 + camera_velocity[1] * t).astype(np.float32)
        bg = cv2.remap(scene, sx, sy, cv2.INTER_LINEAR)
        outside = q > 1.5
        assert np.abs(frame[outside].astype(float) - bg[outside]).max() <= 1.0


def test_first_object_is_in_front(tmp_path, textures):
    d = tmp_path / "tex"
    shutil.copytree(textures[0], d)
    cv2.imwrite(str(d / "red.png"), np.full((40, 40, 3), (0, 0, 255), np.uint8))
    cv2.imwrite(str(d / "blue.png"), np.full((40, 40, 3), (255, 0, 0), np.uint8))
    spec = _ellipse_spec(textures, (0.0, 0.0))
    spec.noise_sigma = 0.0
    front = vb.BlobObject(texture="red.png", a=10.0, b=10.0, start=(48.0, 32.0), texture_scale=1.0)
    back = vb.BlobObject(texture="blue.png", a=10.0, b=10.0, start=(56.0, 32.0), texture_scale=1.0)
    spec.objects = [front, back]
    frame, mask = next(vb.render_sequence(spec, d))
    assert tuple(frame[32, 52]) == (0, 0, 255)  # in both discs: the first object's colour
    assert tuple(frame[32, 64]) == (255, 0, 0)  # only in the second
    yy, xx = np.mgrid[0:SIZE[1], 0:SIZE[0]]
    union = ((xx - 48) ** 2 + (yy - 32) ** 2 < 100) | ((xx - 56) ** 2 + (yy - 32) ** 2 < 100)
    np.testing.assert_array_equal(mask, union)


def test_no_object_sequences_have_empty_masks(tmp_path, textures):
    man = make(tmp_path / "b", textures, roles=("static_empty", "pan_empty"))
    for s in man["sequences"]["dev"]:
        masks = sorted((tmp_path / "b" / s["path"] / "masks").glob("*.png"))
        assert len(masks) == N
        for p in masks:
            assert not np.asarray(Image.open(p)).any()
        assert s["gt_fg_fraction_mean"] == 0.0


def test_camera_window_stays_inside_the_photo(textures):
    d, bgs, objs = textures
    for seed in range(3):
        for split in ("dev", "test"):
            specs = vb.plan_split(split, d, seed, n_frames=24, backgrounds=bgs[split], objects=objs[split],
                                  sizes=[SIZE, (120, 72)])
            assert [s.role for s in specs] == list(vb.ROLES)
            for spec in specs:
                photo = vb.trim_border(cv2.imread(str(d / spec.background)))
                ph, pw = round(photo.shape[0] * spec.photo_scale), round(photo.shape[1] * spec.photo_scale)
                for t in range(spec.n_frames):
                    c = vb.window_corners(spec.camera, t, spec.size, spec.n_frames)
                    assert (c >= 0).all() and (c[:, 0] <= pw - 1).all() and (c[:, 1] <= ph - 1).all(), \
                        (spec.role, t, c, (pw, ph))
    moving = [s for s in specs if s.role == "pan_empty"][0]
    c0 = vb.window_corners(moving.camera, 0, moving.size, moving.n_frames)
    c1 = vb.window_corners(moving.camera, moving.n_frames - 1, moving.size, moving.n_frames)
    assert np.abs(c1 - c0).max() > 5  # the camera does move


def test_painted_border_is_cropped(textures):
    d, bgs, _ = textures
    img = cv2.imread(str(d / bgs["dev"][0]))
    out = vb.trim_border(img)
    assert out.shape[0] <= img.shape[0] - 8 and out.shape[1] <= img.shape[1] - 8
    for edge in (out[0], out[-1], out[:, 0], out[:, -1]):  # no uniform painted line left
        assert np.ptp(cv2.cvtColor(edge[None], cv2.COLOR_BGR2GRAY)) >= 12


# ------------------------------------------------------------------------------------------ scorer
@pytest.fixture(scope="module")
def bench(tmp_path_factory, textures):
    out = tmp_path_factory.mktemp("bench")
    make(out, textures, roles=("static_empty", "one_textured"))
    return out


def _gt(bench, seq, t):
    return np.asarray(Image.open(bench / "dev" / seq / "masks" / f"{t:05d}.png")) > 0


def _write_pred(run, seq, t, mask):
    (run / seq).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(run / seq / f"{t:05d}_binary.png")


def _perfect_run(bench, run, last=False):
    for seq in ("static_empty", "one_textured"):
        for t in range(N if last else N - 1):
            _write_pred(run, seq, t, _gt(bench, seq, t))


def test_perfect_masks_score_one(tmp_path, bench):
    run = tmp_path / "run"
    _perfect_run(bench, run)
    res = vb.score_run(bench, "dev", run)
    assert len(res.per_frame) == 2 * (N - 1)  # frame N − 1 absent: allowed
    assert (res.per_frame["J"] == 1).all() and (res.per_frame["F"] == 1).all()
    assert res.summary["J_mean"] == 1.0 and res.summary["F_mean"] == 1.0
    for name in ("per_frame.csv", "per_sequence.csv", "summary.json"):
        assert (run / name).is_file()
    _write_pred(run, "one_textured", N - 1, _gt(bench, "one_textured", N - 1))
    assert len(vb.score_run(bench, "dev", run, write=False).per_frame) == 2 * (N - 1) + 1


def test_known_wrong_masks_give_hand_computed_j(tmp_path, bench):
    run = tmp_path / "run"
    _perfect_run(bench, run)
    gt0 = _gt(bench, "one_textured", 0)
    _write_pred(run, "one_textured", 0, np.ones_like(gt0))  # everything foreground: J = |gt| / (W H)
    gt1 = _gt(bench, "one_textured", 1)
    _write_pred(run, "one_textured", 1, np.zeros_like(gt1))  # nothing: J = 0, F = 0
    one_px = np.zeros_like(gt1)
    one_px[3, 3] = True
    _write_pred(run, "static_empty", 2, one_px)  # a false positive on an empty ground truth: 0
    res = vb.score_run(bench, "dev", run)
    pf = res.per_frame.set_index(["sequence", "frame"])
    assert pf.loc[("one_textured", 0), "J"] == pytest.approx(gt0.sum() / gt0.size)
    assert pf.loc[("one_textured", 1), "J"] == 0.0 and pf.loc[("one_textured", 1), "F"] == 0.0
    assert pf.loc[("static_empty", 2), "J"] == 0.0
    ps = res.per_sequence.set_index("sequence")
    expected = (gt0.sum() / gt0.size + 0 + 1 * (N - 3)) / (N - 1)
    assert ps.loc["one_textured", "J_mean"] == pytest.approx(expected)
    assert ps.loc["static_empty", "J_mean"] == pytest.approx((N - 2) / (N - 1))
    assert res.summary["J_mean"] == pytest.approx((expected + (N - 2) / (N - 1)) / 2)
    assert res.summary["J_mean_empty"] == pytest.approx((N - 2) / (N - 1))
    saved = json.loads((run / "summary.json").read_text())
    assert saved["J_mean"] == pytest.approx(res.summary["J_mean"])


def test_missing_or_wrong_size_mask_is_an_error(tmp_path, bench):
    run = tmp_path / "run"
    _perfect_run(bench, run)
    (run / "one_textured" / "00002_binary.png").unlink()
    with pytest.raises(vb.BenchmarkError, match=r"one_textured/00002_binary\.png: expected mask missing"):
        vb.score_run(bench, "dev", run)
    _write_pred(run, "one_textured", 2, np.zeros((10, 10), bool))
    with pytest.raises(vb.BenchmarkError, match=r"00002_binary\.png: predicted mask is 10x10"):
        vb.score_run(bench, "dev", run)
    assert not (run / "summary.json").exists()


def test_score_only_and_compare(tmp_path, bench, capsys):
    a, b = tmp_path / "A", tmp_path / "B"
    _perfect_run(bench, a)
    _perfect_run(bench, b)
    for t in range(N - 1):
        _write_pred(b, "one_textured", t, np.zeros((SIZE[1], SIZE[0]), bool))
    assert vb.main(["score", "--bench", str(bench), "--split", "dev", "--out", str(a), "--score_only",
                    "--label", "perfect"]) == 0
    assert vb.main(["score", "--bench", str(bench), "--split", "dev", "--out", str(b), "--score_only"]) == 0
    capsys.readouterr()
    plot = tmp_path / "cmp.png"
    assert vb.main(["compare", str(a), str(b), "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    assert "perfect" in text and "B" in text
    row = [ln for ln in text.splitlines() if ln.startswith("one_textured")][0]
    assert "1.000 / 1.000" in row and "0.000 / 0.000" in row
    assert plot.is_file() and plot.stat().st_size > 1000
    # the frames' figure: one row per frame, one column per run, with each panel's J
    frames = tmp_path / "frames.png"
    assert vb.main(["compare", str(a), str(b), "--plot", str(plot), "--frames", "one_textured:2", "static_empty:0",
                    "--frames_out", str(frames)]) == 0
    assert f"frames → {frames}" in capsys.readouterr().out
    with Image.open(frames) as im:
        assert im.width > im.height > 100  # two runs side by side, two rows
    for bad, msg in (("one_textured", "expected SEQUENCE:FRAME"), ("nope:1", "no sequence 'nope'"),
                     (f"one_textured:{N}", "has frames 0")):
        with pytest.raises(SystemExit, match=msg):
            vb.main(["compare", str(a), "--plot", str(plot), "--frames", bad, "--frames_out", str(frames)])
    shutil.rmtree(b / "static_empty")
    with pytest.raises(SystemExit, match="expected mask missing"):
        vb.main(["score", "--bench", str(bench), "--split", "dev", "--out", str(b), "--score_only"])


FAKE_SEGMENT = '''
import argparse, shutil, sys
from pathlib import Path
p = argparse.ArgumentParser()
p.add_argument("--video"); p.add_argument("--out"); p.add_argument("--fail", action="store_true")
p.add_argument("--tag")
a = p.parse_args()
if a.fail:
    sys.exit("fake segment: asked to fail")
masks = sorted((Path(a.video).parent / "masks").glob("*.png"))[:-1]  # like segment.py: N - 1 flows
out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
for m in masks:
    shutil.copy(m, out / (m.stem + "_binary.png"))
'''


def test_run_benchmark_runs_times_resumes_and_reports_failures(tmp_path, bench, caplog):
    script = tmp_path / "fake_segment.py"
    script.write_text(FAKE_SEGMENT)
    run = tmp_path / "runs" / "fake"
    res = vb.run_benchmark(bench, "dev", run, script=str(script), label="fake")
    assert res.summary["J_mean"] == 1.0 and res.summary["label"] == "fake"
    assert (res.per_sequence["fps"] > 0).all() and res.summary["fps"] > 0
    rec = json.loads((run / "one_textured" / "run.json").read_text())
    assert rec["n_masks"] == N - 1 and rec["returncode"] == 0
    with caplog.at_level("INFO", logger="emseg.app.video_benchmark"):
        vb.run_benchmark(bench, "dev", run, script=str(script))
    assert caplog.text.count("already done with this command") == 2
    caplog.clear()
    with caplog.at_level("INFO", logger="emseg.app.video_benchmark"):
        vb.run_benchmark(bench, "dev", run, ["--tag", "x"], script=str(script))  # another command: run again
    assert "already done" not in caplog.text
    assert vb.run_benchmark(bench, "dev", run, score_only=True).summary["segment_args"] == ["--tag", "x"]
    with pytest.raises(vb.BenchmarkError, match=r"static_empty: fake_segment.py failed \(exit 1.*asked to fail"):
        vb.run_benchmark(bench, "dev", run, ["--fail"], script=str(script))


# ------------------------------------------------------------------------------------------ the module's paths
def test_old_path_is_the_package_and_exposes_every_name():
    import evaluationmodule.video_benchmark as old

    assert old is vb
    for name in vb.__all__:  # the former single module's public names, each from its new home
        assert getattr(old, name) is getattr(vb, name), name
    from evaluationmodule.video_benchmark import make_benchmark, score_run  # noqa: F401
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vb.nope  # noqa: B018


# run as a fresh interpreter: MODULE's --help, then which heavy libraries it imported
HELP_IMPORTS = '''
import runpy, sys
sys.argv = ["prog", "--help"]
try:
    runpy.run_module(MODULE, run_name="__main__", alter_sys=True)
except SystemExit as e:
    assert e.code == 0, e.code
print("heavy:", sorted(m for m in ("torch", "pandas", "matplotlib") if m in sys.modules))
'''


@pytest.mark.parametrize("module", ["evaluationmodule.video_benchmark", "emseg.app.video_benchmark"])
def test_python_m_help_runs_without_heavy_imports(module):
    # under -m the old path must run the command line itself (a bare sys.modules alias would run nothing)
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"usage: python -m {module} " in out.stdout and "{make,score,compare,loss_check,truth_drift}" in out.stdout
    code = HELP_IMPORTS.replace("MODULE", repr(module))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("heavy: []"), out.stdout


def test_masks_are_read_with_the_core_rule(tmp_path):
    """Foreground where > 0 (``emseg.core.masks``), like every other reader of the project; the
    generator and segment.py write only 0 / 255, so their scores are those of the former > 127 rule."""
    img = np.zeros((4, 5), np.uint8)
    img[1, 2], img[2, 3] = 1, 255
    Image.fromarray(img).save(tmp_path / "m.png")
    np.testing.assert_array_equal(vb.read_mask(tmp_path / "m.png", (4, 5), "predicted mask"), img > 0)
    with pytest.raises(vb.BenchmarkError, match="predicted mask is 5x4, expected the video's 4x5"):
        vb.read_mask(tmp_path / "m.png", (5, 4), "predicted mask")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(vb.BenchmarkError, match="bad.png: unreadable ground-truth mask"):
        vb.read_mask(tmp_path / "bad.png", (4, 5), "ground-truth mask")


# ------------------------------------------------------------------------------------------ the new roles
def _rounded(x):
    """JSON-able ``x`` with floats to 6 significant digits (a digest robust to the last bits of libm)."""
    if isinstance(x, float):
        return float(f"{x:.6g}")
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_rounded(v) for v in x]
    return x


# sha256 of the original seven roles' specs (both splits, seeds 0 and 1, 12 frames, sizes 96×64 and 120×72, on
# the fixture's first seven backgrounds and three objects), printed by this digest's code run against the
# generator as it was before the new roles were added (the committed scenes.py, emseg 'core7' era). Any change to
# how the seven are drawn changes it; on the real textures, `make` before and after that change wrote the same
# 700 files (videos, masks, sequence.json) for the 14 original sequences.
CORE7_PLAN_SHA256 = "2f2ac8265f8958b1387b47d203f4dc32e5fcd49796b18303ba6f8216d8fd2f39"


def _core7_digest(d, bgs, objs, roles):
    specs = [s.to_json() for split in ("dev", "test") for seed in (0, 1)
             for s in vb.plan_split(split, d, seed, n_frames=12, backgrounds=bgs[split][:len(roles)],
                                    objects=objs[split], sizes=[(96, 64), (120, 72)], roles=roles)]
    return hashlib.sha256(json.dumps(_rounded(specs), sort_keys=True).encode()).hexdigest()


def test_the_original_seven_are_drawn_as_before(textures):
    d, bgs, objs = textures
    assert vb.ROLES[:7] == vb.CORE_ROLES and set(vb.NEW_ROLES) <= set(vb.ROLES)
    assert _core7_digest(d, bgs, objs, vb.CORE_ROLES) == CORE7_PLAN_SHA256
    # with the new roles after them, the seven specs are the same ones
    full = vb.plan_split("test", d, 0, n_frames=12, backgrounds=bgs["test"], objects=objs["test"], sizes=[SIZE])
    core = vb.plan_split("test", d, 0, n_frames=12, backgrounds=bgs["test"][:7], objects=objs["test"], sizes=[SIZE],
                         roles=vb.CORE_ROLES)
    assert [s.to_json() for s in full[:7]] == [s.to_json() for s in core]
    assert [s.role for s in full[7:]] == list(vb.NEW_ROLES)
    assert vb.SequenceSpec.from_json(json.loads(json.dumps(full[8].to_json()))) == full[8]


def test_new_roles_have_small_objects_of_the_intended_size(textures):
    d, bgs, objs = textures
    size = (192, 128)  # large enough for 1 % blobs to be more than a few pixels
    for seed in range(3):
        for split in ("dev", "test"):
            specs = {s.role: s for s in vb.plan_split(split, d, seed, n_frames=8, backgrounds=bgs[split],
                                                      objects=objs[split], sizes=[size])}
            for role, (lo, hi) in (("small_objects", (2, 3)), ("formation", (3, 5))):
                spec = specs[role]
                assert lo <= len(spec.objects) <= hi, (role, len(spec.objects))
                areas = [o.area() / (size[0] * size[1]) for o in spec.objects]
                assert all(0.01 - 1e-9 <= a <= 0.03 + 1e-9 for a in areas), (role, areas)
                for t, (_, mask) in enumerate(vb.render_sequence(spec, d)):
                    # wholly in view (no zoom): the masks hold the blobs' areas (at most, where they touch)
                    assert 0.85 * max(areas) < mask.mean() <= 1.03 * sum(areas), (role, t, mask.mean(), areas)
                    if role == "small_objects":  # kept apart: one region per object
                        assert cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1 == \
                            len(spec.objects)
            form = specs["formation"]
            assert len({o.texture for o in form.objects}) == 1  # one body
            assert len({o.velocity for o in form.objects}) == 1  # moving together …
            assert len({o.wobble for o in form.objects}) == len(form.objects)  # … each with a jitter of its own


def test_extending_a_benchmark_by_new_roles_keeps_its_sequences(tmp_path, textures, caplog):
    make(tmp_path / "a", textures, roles=("static_empty", "one_textured"))
    before = mask_bytes(tmp_path / "a")
    with caplog.at_level("INFO", logger="emseg.app.video_benchmark"):
        man = make(tmp_path / "a", textures, roles=("static_empty", "one_textured", "small_objects"))
    assert "adding the roles ['small_objects']" in caplog.text and caplog.text.count("already complete") == 2
    after = mask_bytes(tmp_path / "a")
    assert {k: v for k, v in after.items() if not k.startswith("dev/small_objects")} == before
    assert [s["name"] for s in man["sequences"]["dev"]] == ["static_empty", "one_textured", "small_objects"]
    with pytest.raises(vb.BenchmarkError, match="other settings"):  # dropping or reordering is not appending
        make(tmp_path / "a", textures, roles=("one_textured", "static_empty", "small_objects"))


# ------------------------------------------------------------------------------------------ motion, flicker, regions
def test_backward_motion_is_the_camera_and_object_motion(textures):
    spec = _ellipse_spec(textures, (2.0, -1.0))  # a translating camera, an object moving by (1, 0.5) in the scene
    for t in range(1, N):
        flow, valid = vb.backward_motion(spec, t)
        layers = vb.frame_layers(spec, t)
        # a background pixel of frame t was 2 px right and 1 px up in frame t − 1, the object's (1, −1.5)
        np.testing.assert_allclose(flow[layers == 0], np.broadcast_to([2.0, -1.0], flow[layers == 0].shape),
                                   atol=1e-4)
        np.testing.assert_allclose(flow[layers == 1], np.broadcast_to([1.0, -1.5], flow[layers == 1].shape),
                                   atol=1e-4)
        assert not valid[:, -2:].any() and valid[layers == 1].mean() > 0.8  # entering the view: unknown
    masks = [m for _, m in vb.render_sequence(spec, textures[0])]
    flows = [vb.backward_motion(spec, t) for t in range(1, N)]
    assert vb.flicker(masks, [f for f, _ in flows], [v for _, v in flows]) < 0.02  # the ground truth's floor


def test_flicker_exact_cases():
    h, w = 20, 30
    m = np.zeros((h, w), bool)
    m[5:12, 8:18] = True
    zero = np.zeros((h, w, 2), np.float32)
    assert vb.flicker([m, m, m], [zero, zero]) == 0.0  # static
    moved = np.roll(m, (2, 3), axis=(0, 1))  # the mask moves by (3, 2) px with the scene
    back = np.broadcast_to(np.array([-3.0, -2.0], np.float32), (h, w, 2)).copy()  # p of frame t was at p − (3, 2)
    assert vb.flicker_pair(m, moved, back) == 0.0
    assert vb.flicker_pair(m, moved, zero) > 0.3  # judged without the motion, it would flicker
    empty = np.zeros_like(m)
    assert vb.flicker([m, empty, m, empty, m], [zero] * 4) == 1.0  # toggling: every pair changes wholly
    assert vb.flicker([m, empty, empty], [zero] * 2) == 0.5  # vanishes (1), then two empty frames (0)
    half = m.copy()
    half[5:12, 13:18] = False
    assert vb.flicker_pair(m, half, zero) == pytest.approx(0.5)  # half the union changes label
    valid = np.ones((h, w), bool)
    valid[:, 13:] = False  # the changing half unknown: not counted
    assert vb.flicker_pair(m, half, zero, valid) == 0.0
    assert math.isnan(vb.flicker([m], []))


def test_region_counts_on_hand_built_masks():
    gt = np.zeros((40, 40), bool)
    gt[0:10, 0:10] = True  # region A, 100 px
    gt[10:20, 10:20] = True  # touches A at a corner only: one region with it (8-connectivity)
    gt[30:40, 0:10] = True  # region B, 100 px
    gt[30:40, 30:40] = True  # region C, 100 px
    pred = np.zeros_like(gt)
    pred[0:2, 0:10] = True  # 20 of A+'s 200 px: 10 % < 30 %, not found
    pred[30:33, 0:10] = True  # 30 of B's 100: exactly 30 %, found
    pred[30:32, 30:39] = True  # 18 of C's 100: not found …
    pred[22:28, 30:40] = True  # … and a region of 60 px off the ground truth: false
    pred[0:10, 25:35] = True  # a 100 px region, none of it on the ground truth: false
    counts = vb.region_counts(gt, pred)
    assert counts == {"gt_regions": 3, "gt_found": 1, "pred_regions": 5, "pred_false": 2}
    edge = np.zeros_like(gt)
    edge[30:40, 9:19] = True  # 10 of its 100 px on B: exactly 10 %, not false
    assert vb.region_counts(gt, edge) == {"gt_regions": 3, "gt_found": 0, "pred_regions": 1, "pred_false": 0}
    assert vb.region_counts(np.zeros_like(gt), np.zeros_like(gt)) == {"gt_regions": 0, "gt_found": 0,
                                                                     "pred_regions": 0, "pred_false": 0}


GROUP_KEYS = {"n_sequences", "sequences", "n_frames_scored", "J_mean", "F_mean", "JF", "J_mean_objects",
              "J_mean_empty", "pred_fg_mean_empty", "flicker", "flicker_gt", "region_recall", "gt_regions", "gt_found",
              "false_regions", "false_per_frame"}


def test_summary_reports_core7_new_and_all(tmp_path, textures, capsys):
    roles = ("static_empty", "one_textured", "small_objects")
    bench = tmp_path / "bench"
    make(bench, textures, roles=roles)
    run = tmp_path / "run"
    for seq in roles:
        for t in range(N - 1):
            _write_pred(run, seq, t, _gt(bench, seq, t))
    _write_pred(run, "static_empty", 2, np.ones((SIZE[1], SIZE[0]), bool))  # a false region, flickering
    res = vb.score_run(bench, "dev", run)
    sm = json.loads((run / "summary.json").read_text())
    assert set(sm["groups"]) == {"core7", "new", "all"}
    for g in sm["groups"].values():
        assert GROUP_KEYS <= set(g)
    assert sm["groups"]["core7"]["sequences"] == ["static_empty", "one_textured"]
    assert sm["groups"]["new"]["sequences"] == ["small_objects"] and sm["groups"]["new"]["J_mean_empty"] is None
    assert GROUP_KEYS - {"sequences"} <= set(sm)  # the top level: the whole split's
    assert sm["J_mean"] == pytest.approx(sm["groups"]["all"]["J_mean"])
    assert sm["false_regions"] == 1 and sm["false_per_frame"] == pytest.approx(1 / (3 * (N - 1)))
    assert sm["region_recall"] == 1.0 and sm["gt_regions"] == res.per_frame["gt_regions"].sum() > 2 * (N - 1)
    ps = res.per_sequence.set_index("sequence")
    # frames 1 → 2 and 2 → 3 change wholly; the other pairs are empty: 2 of N − 2 pairs
    assert ps.loc["static_empty", "flicker"] == pytest.approx(2 / (N - 2))
    assert ps.loc["small_objects", "flicker"] == pytest.approx(ps.loc["small_objects", "flicker_gt"])
    assert ps.loc["small_objects", "flicker_gt"] < 0.05
    assert {"flicker", "flicker_gt", "gt_regions", "gt_found", "pred_regions", "pred_false"} <= set(res.per_frame)
    table = vb.format_table(res.per_sequence, res.summary)
    assert all(ln in table for ln in ("core7", "new ", "all ", "flicker"))
    assert vb.main(["compare", str(run), "--plot", str(tmp_path / "c.png")]) == 0
    assert "mean core7" in capsys.readouterr().out
