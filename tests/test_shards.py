import colorsys
import json
import os
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dap.data import transforms as T
from dap.data.shards import SAMPLE_KEYS, ShardDataset, write_dataset
from dap.data.synthetic import Scene, Shell, make_scene, render
from dap.errors import DapError, DatasetLayoutError, UnreadableFileError
from dap.geometry import erp_rays, rotation_matrix

RES = (16, 32)


def write(root, count=5, **kw):
    opts = dict(kind="mixed", style="photo", resolution=RES, shard_size=2, seed=3, progress=False)
    opts.update(kw)
    return write_dataset(root, count, **opts)


def shard_bytes(root):
    return {p.name: p.read_bytes() for p in sorted(root.glob("shard-*.tar"))}


def test_round_trip_and_manifest(tmp_path):
    manifest = write(tmp_path)
    table = pq.read_table(manifest).to_pylist()
    assert [r["key"] for r in table] == [f"{i:08d}" for i in range(5)]
    assert [r["seed"] for r in table] == [3, 4, 5, 6, 7]
    assert [r["kind"] for r in table] == ["outdoor", "indoor", "outdoor", "indoor", "outdoor"]
    assert [r["shard"] for r in table] == ["shard-000000.tar"] * 2 + ["shard-000001.tar"] * 2 + ["shard-000002.tar"]
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:
        names = tar.getnames()
        assert names[:5] == ["00000000.depth.npy", "00000000.instance.png", "00000000.json", "00000000.mask.png",
                             "00000000.rgb.png"]
        assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in tar.getmembers())

    ds = ShardDataset(tmp_path)
    assert len(ds) == 5
    s = ds[1]
    assert set(s) == set(SAMPLE_KEYS) and s["kind"] == "indoor" and s["key"] == "00000001"
    want = render(make_scene(4, "indoor"), *RES, "photo")
    assert s["rgb"].shape == (3, *RES) and s["depth"].shape == (1, *RES) and s["rgb"].dtype == torch.float32
    assert np.array_equal(s["depth"][0].numpy(), want["depth"])
    assert np.abs(s["rgb"].permute(1, 2, 0).numpy() - want["rgb"]).max() <= 0.5 / 255 + 1e-6
    out = ds[0]  # outdoor: sky and beyond-range pixels are not valid
    want = render(make_scene(3, "outdoor"), *RES, "photo")
    assert np.array_equal(out["range_mask"][0].numpy(), want["range_mask"])
    assert np.array_equal(out["sky_mask"][0].numpy(), want["sky_mask"])
    assert torch.equal(out["valid"], (out["depth"] > 0) & (out["depth"] <= 100))
    row = table[0]
    d = want["depth"][~want["sky_mask"]]
    assert row["depth_max"] == pytest.approx(d.max()) and row["sky_fraction"] == pytest.approx(want["sky_mask"].mean())
    assert Scene.from_dict(json.loads(row["scene"])) == make_scene(3, "outdoor")

    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["rgb"].shape == (2, 3, *RES) and batch["key"] == ["00000000", "00000001"]


def test_same_settings_same_bytes(tmp_path):
    write(tmp_path / "a")
    write(tmp_path / "b")
    a, b = shard_bytes(tmp_path / "a"), shard_bytes(tmp_path / "b")
    assert len(a) == 3 and a == b
    assert (tmp_path / "a" / "manifest.parquet").read_bytes() == (tmp_path / "b" / "manifest.parquet").read_bytes()
    write(tmp_path / "c", style="clean")
    assert shard_bytes(tmp_path / "c") != a


def test_workers_give_the_same_bytes(tmp_path):
    write(tmp_path / "one", count=4)
    write(tmp_path / "two", count=4, workers=2)
    assert shard_bytes(tmp_path / "one") == shard_bytes(tmp_path / "two")


def test_resume_keeps_complete_shards_and_redoes_a_partial_one(tmp_path):
    write(tmp_path)
    before = shard_bytes(tmp_path)
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard-*.tar")}
    # an interrupted run: shard 1 never got its final name, only a half-written temp file
    (tmp_path / "shard-000001.tar").unlink()
    (tmp_path / ".shard-000001.tar.abc123.tmp.tar").write_bytes(b"partial")
    write(tmp_path)
    assert shard_bytes(tmp_path) == before
    after = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard-*.tar")}
    assert after["shard-000000.tar"] == mtimes["shard-000000.tar"]
    assert after["shard-000002.tar"] == mtimes["shard-000002.tar"]
    assert not list(tmp_path.glob(".*.tmp.tar"))
    assert len(ShardDataset(tmp_path)) == 5


def test_a_shard_cut_short_is_rendered_again(tmp_path):
    write(tmp_path)
    before = shard_bytes(tmp_path)
    shard = tmp_path / "shard-000001.tar"
    data = shard.read_bytes()
    # cut where a member ends (tar reads that back without an error, one sample short), then mid-member
    with tarfile.open(shard) as tar:
        last = tar.getmembers()[-1]
    for cut in (last.offset, len(data) // 3):
        shard.write_bytes(data[:cut])
        write(tmp_path)
        assert shard_bytes(tmp_path) == before
        assert len(ShardDataset(tmp_path)) == 5


def test_a_damaged_sample_names_itself_and_its_shard(tmp_path):
    from dap.errors import UnreadableFileError

    write(tmp_path, count=2)
    shard = tmp_path / "shard-000000.tar"
    with tarfile.open(shard) as tar:
        depth = next(m for m in tar.getmembers() if m.name == "00000001.depth.npy")
    data = bytearray(shard.read_bytes())
    data[depth.offset_data:depth.offset_data + 8] = b"\x00" * 8  # the .npy magic gone: numpy would suggest pickle
    shard.write_bytes(bytes(data))
    ds = ShardDataset(tmp_path)
    assert ds[0]["depth"].shape[1:] == RES
    with pytest.raises(UnreadableFileError, match=r"cannot decode sample 00000001 in .*shard-000000.tar"):
        ds[1]


def test_settings_mismatch_and_missing_manifest(tmp_path):
    write(tmp_path, count=2)
    with pytest.raises(DapError, match=r"other settings \(count: 2 -> 3\)"):
        write(tmp_path, count=3)
    with pytest.raises(DatasetLayoutError, match="manifest.parquet"):
        ShardDataset(tmp_path / "nothing")
    (tmp_path / "manifest.parquet").unlink()  # a run stopped after its last shard: was "pass a folder from dap synth"
    with pytest.raises(DatasetLayoutError, match="holds shards but no manifest.parquet.*rerun the same `dap synth`"):
        ShardDataset(tmp_path)
    write(tmp_path, count=2)  # ... which writes it
    assert len(ShardDataset(tmp_path)) == 2


def test_shards_no_run_recorded_are_refused_not_replaced(tmp_path):
    """WebDataset names its shards as we do: a folder of someone's shard-000000.tar got ours written over it, and a
    dataset whose synth_config.json was deleted was resumed with other settings into a manifest mixing both."""
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "shard-000000.tar").write_bytes(b"their shard")
    with pytest.raises(DapError, match="holds 1 shard file.*but no synth_config.json: not a `dap synth` dataset"):
        write(foreign, count=2)
    assert (foreign / "shard-000000.tar").read_bytes() == b"their shard"
    write(tmp_path / "ours", count=2)
    (tmp_path / "ours" / "synth_config.json").unlink()
    with pytest.raises(DapError, match="no synth_config.json"):
        write(tmp_path / "ours", count=2, seed=100)


def test_seeds_the_manifest_cannot_store_are_refused_before_rendering(tmp_path):
    with pytest.raises(DapError, match=r"seeds 9223372036854775806 to 9223372036854775808 pass the largest"):
        write(tmp_path, count=3, seed=2**63 - 2)
    assert not list(tmp_path.glob("shard-*"))  # was: every shard rendered, then an OverflowError in the manifest


def test_changed_texture_photos_are_other_settings(tmp_path):
    """Only the texture folders were recorded: a rerun after a photo in them changed resumed, mixing textures."""
    from dap.io import write_rgb

    textures = tmp_path / "tex"
    write_rgb(textures / "a.png", np.random.default_rng(0).random((160, 320, 3)))
    style = f"photo@{textures}"
    write(tmp_path / "out", count=2, style=style)
    write(tmp_path / "out", count=2, style=style)  # unchanged: resumes (nothing to do)
    write_rgb(textures / "a.png", np.random.default_rng(1).random((160, 320, 3)))
    with pytest.raises(DapError, match=r"other settings \(textures: '[0-9a-f]{16}' -> '[0-9a-f]{16}'\)"):
        write(tmp_path / "out", count=2, style=style)


# ---------------------------------------------------------------------------------------- augmentations


def room_sample(h=32, w=64):
    cam, lo, hi = (1.3, -1.4, 2.1), (0.0, -3.0, 0.0), (4.0, 0.0, 5.0)
    out = render(Scene(seed=0, kind="indoor", camera=cam, shells=[Shell(lo, hi, 0, 0, 0, 1)]), h, w)
    depth = torch.from_numpy(out["depth"])[None]
    rng = torch.Generator().manual_seed(0)
    mask = torch.rand(1, h, w, generator=rng) > 0.5
    sample = dict(rgb=torch.from_numpy(out["rgb"]).permute(2, 0, 1), depth=depth, valid=mask, range_mask=~mask,
                  key="k")
    return sample, (cam, lo, hi)


def test_yaw_roll_flip():
    s, _ = room_sample()
    r = T.roll_yaw(s, 5)
    for k in ("rgb", "depth", "valid", "range_mask"):
        assert torch.equal(r[k], torch.roll(s[k], 5, dims=-1))
    assert r["key"] == "k"
    f = T.flip_horizontal(s)
    assert not torch.equal(f["depth"], s["depth"]) and torch.equal(f["valid"], s["valid"].flip(-1))
    ff = T.flip_horizontal(f)
    assert all(torch.equal(ff[k], s[k]) for k in ("rgb", "depth", "valid", "range_mask"))
    g = torch.Generator().manual_seed(1)
    rolled = T.RandomYawRoll(g)(s)
    shifts = [k for k in range(64) if torch.equal(rolled["depth"], torch.roll(s["depth"], k, dims=-1))]
    assert len(shifts) >= 1 and torch.equal(rolled["valid"], torch.roll(s["valid"], shifts[0], dims=-1))


def test_sphere_rotation_moves_depth_consistently():
    s, (cam, lo, hi) = room_sample()
    # a yaw of k columns through the resampler equals a roll by -k (content moves left when turning right)
    y = T.rotate_sphere(s, yaw=360 * 4 / 64)
    assert torch.equal(y["depth"], torch.roll(s["depth"], -4, dims=-1))
    assert torch.equal(y["valid"], torch.roll(s["valid"], -4, dims=-1))
    assert torch.allclose(y["rgb"], torch.roll(s["rgb"], -4, dims=-1), atol=1e-4)
    # pitch: every output ray d shows the room along R @ d; compare to the analytic distance there
    p = T.rotate_sphere(s, pitch=30.0, roll=-15.0)
    r = rotation_matrix(pitch=30.0, roll=-15.0).numpy()
    d = erp_rays(32, 64).double().numpy() @ r.T
    t = np.where(d > 0, (np.asarray(hi) - cam) / d, (np.asarray(lo) - cam) / d).min(-1)
    err = np.abs(p["depth"][0].numpy() - t)
    assert np.median(err) < 0.05 and err.max() < 1.0
    assert set(np.unique(p["depth"].numpy())) <= set(np.unique(s["depth"].numpy()))  # nearest: no new values
    assert p["valid"].dtype == torch.bool and p["valid"].sum() > 0


def test_color_jitter_changes_only_rgb():
    s, _ = room_sample()
    j = T.ColorJitter(p=1.0, generator=torch.Generator().manual_seed(0))(s)
    assert j["depth"] is s["depth"] and j["valid"] is s["valid"]
    assert not torch.equal(j["rgb"], s["rgb"]) and 0 <= j["rgb"].min() and j["rgb"].max() <= 1
    assert T.ColorJitter(p=0.0)(s) is s
    x = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(T.hsv_to_rgb(T.rgb_to_hsv(x)), x, atol=1e-5)
    # the closed form against the standard library, hues across all six sectors and on their edges
    hsv = torch.tensor([[h / 12 for h in range(12)], [1.0, 0.5, 0.0, 0.3] * 3, [0.9, 0.2, 1.0] * 4])
    expected = torch.tensor([colorsys.hsv_to_rgb(*map(float, c)) for c in hsv.T]).T
    torch.testing.assert_close(T.hsv_to_rgb(hsv), expected.float(), atol=1e-6, rtol=0)


def test_exposure_gain_is_log_uniform_clipped_and_changes_only_rgb():
    """RandomExposure multiplies the image by one gain in [1/g, g] and clips."""
    s, _ = room_sample()
    s = {**s, "rgb": torch.linspace(0.25, 0.75, s["rgb"].numel()).reshape(s["rgb"].shape)}  # 0.25 x 2.5 < 1
    gains = []
    for seed in range(40):
        e = T.RandomExposure(2.5, p=1.0, generator=torch.Generator().manual_seed(seed))(s)
        assert e["depth"] is s["depth"] and e["valid"] is s["valid"] and 0 <= e["rgb"].min() and e["rgb"].max() <= 1
        unclipped = e["rgb"] < 0.999
        gain = (e["rgb"][unclipped] / s["rgb"][unclipped]).median().item()
        assert torch.allclose(e["rgb"], (s["rgb"] * gain).clamp(0, 1), atol=1e-5)
        gains.append(gain)
    assert 1 / 2.5 - 1e-4 <= min(gains) < 0.6 and 1.6 < max(gains) <= 2.5 + 1e-4
    assert sum(g < 1 for g in gains) >= 10 and sum(g > 1 for g in gains) >= 10  # both ways, log-uniform
    assert T.RandomExposure(2.5, p=0.0)(s) is s
    with pytest.raises(ValueError, match="max_gain is at least 1"):
        T.RandomExposure(0.5)


@pytest.mark.parametrize(("off", "on", "name"), [({"exposure": 1.0}, {"exposure": 2.0}, "RandomExposure"),
                                                  ({"highlights": 0}, {"highlights": 2}, "RandomHighlights"),
                                                  ({"vertical_gain": 1.0}, {"vertical_gain": 2.0},
                                                   "RandomVerticalGain")])
def test_optional_augmentations_are_off_by_default_and_come_last(off, on, name):
    """Switched off, an optional augmentation leaves the draws of the default ones as they were; switched on, it
    runs after them."""
    s, _ = room_sample()
    plain = T.train_transforms(generator=torch.Generator().manual_seed(3))(s)
    assert torch.equal(plain["rgb"], T.train_transforms(generator=torch.Generator().manual_seed(3), **off)(s)["rgb"])
    assert type(T.train_transforms(**on).transforms[-1]).__name__ == name


def test_vertical_gain_is_a_log_linear_ramp_from_top_to_bottom():
    """RandomVerticalGain multiplies each row by a gain that is log-linear from the top row to the bottom one, end
    gains in [1/g, g] drawn independently, and clips; columns are treated alike, depth and masks untouched."""
    s, _ = room_sample()
    s = {**s, "rgb": torch.full_like(s["rgb"], 0.3)}  # 0.3 x 2 < 1: nothing clips
    h = s["rgb"].shape[-2]
    ends = []
    for seed in range(40):
        out = T.RandomVerticalGain(2.0, p=1.0, generator=torch.Generator().manual_seed(seed))(s)
        assert out["depth"] is s["depth"] and out["valid"] is s["valid"]
        gain = out["rgb"] / 0.3
        assert torch.allclose(gain, gain[:, :, :1].expand_as(gain)) and torch.allclose(gain[0], gain[2])
        log_gain = gain[0, :, 0].log()
        torch.testing.assert_close(log_gain, torch.linspace(log_gain[0].item(), log_gain[-1].item(), h), atol=1e-5,
                                   rtol=0)
        ends.append((gain[0, 0, 0].item(), gain[0, -1, 0].item()))
    top, bottom = torch.tensor(ends).T
    assert 0.5 - 1e-4 <= min(top.min(), bottom.min()) and max(top.max(), bottom.max()) <= 2.0 + 1e-4
    assert (top > bottom).sum() >= 10 and (top < bottom).sum() >= 10  # brighter above or below, independently
    assert T.RandomVerticalGain(2.0, p=0.0)(s) is s
    bright = {**s, "rgb": torch.full_like(s["rgb"], 0.9)}
    outs = [T.RandomVerticalGain(2.0, p=1.0, generator=torch.Generator().manual_seed(seed))(bright)["rgb"]
            for seed in range(10)]
    assert all(o.max() <= 1.0 for o in outs) and any((o == 1.0).any() for o in outs)  # clipped, not wrapped
    with pytest.raises(ValueError, match="max_gain is at least 1"):
        T.RandomVerticalGain(0.5)


def test_highlights_only_brighten_white_spots_in_the_upper_rows():
    """RandomHighlights paints 1..count soft white spots (lamps, windows) in the upper two thirds of the rows and
    nothing else: pixels only get brighter, spot cores are white, depth and masks are the same objects."""
    s, _ = room_sample()
    s = {**s, "rgb": torch.full_like(s["rgb"], 0.2)}
    h = s["rgb"].shape[-2]
    for seed in range(30):
        out = T.RandomHighlights(4, p=1.0, generator=torch.Generator().manual_seed(seed))(s)
        assert out["depth"] is s["depth"] and out["valid"] is s["valid"]
        assert (out["rgb"] >= s["rgb"]).all() and out["rgb"].max() == 1.0
        lit_rows = torch.nonzero((out["rgb"] > 0.2).any(0).any(1)).flatten()
        assert lit_rows.max() < 0.67 * h + 0.03 * 2 * h  # centres above two thirds, plus a spot's reach
    assert T.RandomHighlights(4, p=0.0)(s) is s
    with pytest.raises(ValueError, match="count is at least 1"):
        T.RandomHighlights(0)


def test_train_transforms_through_a_loader(tmp_path):
    write(tmp_path, count=2, kind="outdoor")
    ds = ShardDataset(tmp_path, transform=T.train_transforms(generator=torch.Generator().manual_seed(0)))
    b = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert b["depth"].shape == (2, 1, *RES) and b["valid"].dtype == torch.bool
    assert not (b["valid"] & (b["depth"] == 0)).any()


def test_cli_synth(tmp_path, capsys):
    from dap import cli

    args = ["synth", "--count", "3", "--out", str(tmp_path), "--resolution", "16x32", "--shard-size", "2",
            "--kind", "indoor", "--no-progress"]
    assert cli.main(args) == 0
    assert "manifest" in capsys.readouterr().out
    assert [r["kind"] for r in pq.read_table(tmp_path / "manifest.parquet").to_pylist()] == ["indoor"] * 3
    assert cli.main(args[:-1] + ["--style", "photo"]) == 2  # other settings into the same folder: refused
    assert "other settings" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["synth", "--count", "1", "--out", str(tmp_path / "x"), "--resolution", "16x16"])
    assert "not 2:1" in capsys.readouterr().err


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_workers_end_when_dap_synth_is_killed(tmp_path):
    """After `kill -9` of `dap synth --workers 2` its workers went on rendering their shards into a folder no run
    held (and printed BrokenPipeError tracebacks when done)."""
    import signal
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "dap.cli", "synth", "--count", "128", "--shard-size", "64", "--workers", "2",
           "--resolution", "256x512", "--out", str(tmp_path / "d"), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not list((tmp_path / "d").glob(".shard-*.tmp.tar")) and time.monotonic() < deadline:
            time.sleep(0.2)  # a worker has begun a shard (written whole at its end: a temporary meanwhile)
        workers = [p for p in _children(proc.pid)
                   if b"multiprocessing" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert workers, "no worker process started"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 5  # a shard of 64 panoramas takes them far longer
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_alive, workers))
    finally:
        proc.kill()
        for p in workers:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass


def test_shard_files_the_dataset_does_not_own_stay_out_of_its_manifest(tmp_path, capsys):
    """A copy of a shard in the folder ("shard-000000 copy.tar", or one of a larger earlier run) went into the
    manifest: 4 panoramas said, 6 rows read, two keys twice."""
    root = tmp_path / "d"
    write(root, count=4, shard_size=2)
    (root / "shard-000000 copy.tar").write_bytes((root / "shard-000000.tar").read_bytes())
    (root / "shard-000005.tar").write_bytes((root / "shard-000001.tar").read_bytes())
    capsys.readouterr()
    write(root, count=4, shard_size=2)
    data = ShardDataset(root)
    assert len(data) == 4 and sorted(data[i]["key"] for i in range(4)) == [f"{i:08d}" for i in range(4)]
    assert "2 other shard file(s)" in capsys.readouterr().err


def test_a_damaged_manifest_is_rebuilt_by_the_command_its_message_names(tmp_path):
    """ShardDataset said to rebuild a cut-short manifest with the same `dap synth`, which refused it as "one `dap
    synth` did not write"."""
    root = tmp_path / "d"
    write(root, count=4)
    want = pq.read_table(root / "manifest.parquet")
    (root / "manifest.parquet").write_bytes((root / "manifest.parquet").read_bytes()[:100])
    with pytest.raises(DapError, match="Rebuild it from the shards with `dap synth` and the same settings"):
        ShardDataset(root)
    write(root, count=4)
    assert pq.read_table(root / "manifest.parquet").equals(want) and len(ShardDataset(root)) == 4


def test_a_manifest_edited_by_hand_is_refused_not_read_wrong(tmp_path):
    """A row repeated in manifest.parquet was scored (and trained on) twice; a manifest of no rows scored nothing
    with exit 0; one without the style column was a pyarrow KeyError traceback."""
    import pyarrow as pa

    root = tmp_path / "d"
    write(root, count=3)
    table = pq.read_table(root / "manifest.parquet")
    for edited, problem in ((pa.concat_tables([table, table.slice(0, 1)]), "lists the panorama 00000000 twice"),
                            (table.slice(0, 0), "lists no panoramas"),
                            (table.drop_columns(["style"]), r"lacks the column\(s\) style")):
        pq.write_table(edited, root / "manifest.parquet")
        with pytest.raises(DatasetLayoutError, match=f"the manifest of .*d {problem}"):
            ShardDataset(root)


def test_a_shard_cut_between_members_is_named_before_its_samples_are_drawn(tmp_path):
    """A shard cut short at a member boundary still opens: training ran until it drew a lost sample ("has no member
    00000007.rgb.png", two steps in)."""
    import tarfile

    root = tmp_path / "d"
    write(root, count=4, shard_size=2)
    shard = root / "shard-000001.tar"
    with tarfile.open(shard) as tar:
        cut = next(m for m in tar.getmembers() if m.name.startswith("00000003")).offset  # the last sample's header
    shard.write_bytes(shard.read_bytes()[:cut])
    with pytest.raises(UnreadableFileError, match=r"shard-000001.tar lacks sample 00000003's files \(1 sample"):
        ShardDataset(root)


def test_a_dataset_of_another_renderer_version_says_no_option_resumes_it(tmp_path):
    """"Rerun with the same settings to resume it (renderer: 2 -> 3)": no option sets the renderer version."""
    root = tmp_path / "d"
    write(root, count=2)
    config = json.loads((root / "synth_config.json").read_text())
    (root / "synth_config.json").write_text(json.dumps({**config, "renderer": config["renderer"] - 1}))
    with pytest.raises(DapError, match=r"written by renderer version \d+; this dap renders version \d+, so it cannot "
                                       r"add to it. Choose a new --out"):
        write(root, count=2)
