"""Reading, checking and splitting kaggle_3m folders (synthetic ones, and the real shared copy)."""
import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile

from samhw.data import DataError, discover, load_dataset, read_mask, resolve_data_dir, split_of

REPO = Path(__file__).resolve().parents[1]


def write_slice(root: Path, study: str, n: int, mask: np.ndarray | None, image: np.ndarray | None = None) -> Path:
    folder = root / study
    folder.mkdir(parents=True, exist_ok=True)
    shape = (8, 10) if mask is None else mask.shape
    if image is None:
        image = np.random.default_rng(n).integers(0, 255, (*shape, 3), dtype=np.uint8)
    tifffile.imwrite(folder / f"{study}_{n}.tif", image)
    if mask is not None:
        tifffile.imwrite(folder / f"{study}_{n}_mask.tif", mask.astype(np.uint8) * 255)
    return folder / f"{study}_{n}.tif"


def tumor(shape=(8, 10)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[2:5, 3:8] = True
    return mask


@pytest.fixture
def kaggle(tmp_path) -> Path:
    """Two patients; one slice without tumor; slice numbers that sort wrongly as text (2 < 10)."""
    root = tmp_path / "kaggle_3m"
    for n in (2, 10, 3):
        write_slice(root, "TCGA_AA_0001_19990101", n, tumor())
    write_slice(root, "TCGA_AA_0001_19990101", 4, np.zeros((8, 10), bool))
    write_slice(root, "TCGA_BB_0002_20000202", 1, tumor())
    (root / "data.csv").write_text("Patient\n")
    return root


def test_discover_sorts_slices_by_number_and_names_patients(kaggle):
    records, orphans = discover(kaggle)
    assert orphans == []
    assert [r.slice_id for r in records] == [
        "TCGA_AA_0001_19990101_2", "TCGA_AA_0001_19990101_3", "TCGA_AA_0001_19990101_4",
        "TCGA_AA_0001_19990101_10", "TCGA_BB_0002_20000202_1"]
    assert {r.patient for r in records} == {"TCGA_AA_0001", "TCGA_BB_0002"}


def test_empty_masks_are_left_out_and_counted(kaggle):
    data = load_dataset(kaggle, "all")
    assert len(data) == 4 and data.empty == 1
    assert "left out 1 slices with an empty mask" in data.report()
    item = data.slices[0]
    assert item.image.shape == (8, 10, 3) and item.image.dtype == np.uint8
    assert item.mask.dtype == bool and item.mask.sum() == 15


def test_data_folder_resolution(kaggle, tmp_path, monkeypatch):
    monkeypatch.delenv("SAMHW_DATA", raising=False)
    assert resolve_data_dir(kaggle) == kaggle
    assert resolve_data_dir(kaggle.parent) == kaggle  # the unzipped archive's outer folder
    monkeypatch.setenv("SAMHW_DATA", str(kaggle))
    assert resolve_data_dir(None) == kaggle
    monkeypatch.delenv("SAMHW_DATA")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"data/kaggle_3m.*not a folder.*lgg-mri-segmentation"):
        resolve_data_dir(None)
    (tmp_path / "data").mkdir()
    kaggle.rename(tmp_path / "data" / "kaggle_3m")
    assert resolve_data_dir(None) == Path("data/kaggle_3m")


def test_a_folder_without_slices_is_refused(tmp_path):
    with pytest.raises(DataError, match="no TCGA"):
        discover(tmp_path)


def test_limit_spreads_over_patients(kaggle):
    data = load_dataset(kaggle, "all", limit=2)
    assert [s.slice_id for s in data.slices] == ["TCGA_AA_0001_19990101_2", "TCGA_BB_0002_20000202_1"]


# ----------------------------------------------------------------------------- bad input


def bad_cases(root: Path):
    """(what, make it bad, the words the error must say)."""
    study = "TCGA_AA_0001_19990101"
    return [
        ("truncated", lambda: (root / study / f"{study}_3.tif").write_bytes(
            (root / study / f"{study}_3.tif").read_bytes()[:300]), f"{study}_3.tif: cannot read"),
        ("no mask", lambda: (root / study / f"{study}_3_mask.tif").unlink(), f"{study}_3.tif: image has no mask"),
        ("no image", lambda: (root / study / f"{study}_3.tif").unlink(), f"{study}_3_mask.tif: mask has no image"),
        ("shape", lambda: tifffile.imwrite(root / study / f"{study}_3.tif", np.zeros((9, 10, 3), np.uint8)),
         r"image is \(9, 10\) but its mask"),
        ("grey image", lambda: tifffile.imwrite(root / study / f"{study}_3.tif", np.zeros((8, 10), np.uint8)),
         r"expected an \(H, W, 3\) uint8 image"),
        ("non-binary", lambda: tifffile.imwrite(root / study / f"{study}_3_mask.tif",
                                                np.arange(80, dtype=np.uint8).reshape(8, 10)), "mask is not binary"),
        ("inverted", lambda: tifffile.imwrite(root / study / f"{study}_3_mask.tif", np.full((8, 10), 255, np.uint8)),
         "mask covers the whole image"),
    ]


@pytest.mark.parametrize("case", range(7))
def test_bad_input_is_a_clear_error_or_a_counted_skip(kaggle, case):
    what, spoil, words = bad_cases(kaggle)[case]
    spoil()
    with pytest.raises(DataError, match=words) as info:
        load_dataset(kaggle, "all")
    assert "--skip-bad" in str(info.value) or what in ("no mask", "no image")
    data = load_dataset(kaggle, "all", skip_bad=True)
    assert len(data) == 3 and len(data.skipped) == 1
    assert "TCGA_AA_0001_19990101_3" in str(data.skipped[0][0])
    assert "SKIPPED 1 bad slices" in data.report()


def test_read_mask_accepts_0_1_masks(tmp_path):
    tifffile.imwrite(tmp_path / "m.tif", tumor().astype(np.uint8))
    assert read_mask(tmp_path / "m.tif").sum() == 15


# ----------------------------------------------------------------------------- split


#: Synthetic patient ids, one hashing to each split (worked out once; the tests below check it).
SPLIT_PATIENTS = {"train": "TCGA_AA_0001", "val": "TCGA_CC_0005", "test": "TCGA_AA_0006"}


def test_split_is_the_committed_table_of_ids():
    """data/split.csv, committed, is a table of patient -> split made by the rule: a known answer for
    88 real ids (all three splits occur), checked without the data."""
    with open(REPO / "data" / "split.csv") as handle:
        table = {r["patient"]: r["split"] for r in csv.DictReader(handle)}
    assert set(table.values()) == {"train", "val", "test"}
    assert {p: split_of(p) for p in table} == table


def test_split_is_the_same_in_another_process():
    """Another interpreter with another string-hash seed gives every patient the same split (a
    split drawn from Python's salted hash() or from state left by earlier calls would not)."""
    import json
    import os
    import subprocess
    import sys

    patients = [f"TCGA_XX_{i:04d}" for i in range(400)]
    code = "import json, sys; from samhw.data import split_of; print(json.dumps([split_of(p) for p in json.loads(sys.argv[1])]))"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    other = json.loads(subprocess.run([sys.executable, "-c", code, json.dumps(patients)], env=env, cwd=REPO,
                                      capture_output=True, text=True, check=True).stdout)
    here = [split_of(p) for p in reversed(patients)][::-1]  # asked in another order here
    assert other == here
    shares = {s: here.count(s) / len(here) for s in ("train", "val", "test")}
    assert 0.14 < shares["test"] < 0.26 and 0.05 < shares["val"] < 0.15


def test_split_by_patient_never_by_slice(tmp_path):
    root = tmp_path / "kaggle_3m"
    for split, patient in SPLIT_PATIENTS.items():
        for n in (1, 2):
            write_slice(root, f"{patient}_19990101", n, tumor())
    for split, patient in SPLIT_PATIENTS.items():
        data = load_dataset(root, split)
        assert [s.patient for s in data.slices] == [patient, patient]  # each split runs, with its own patient
        assert all(split_of(s.patient) == split for s in data.slices)


def test_written_split_matches_the_rule_on_the_shared_copy(data_dir):
    with open(REPO / "data" / "split.csv") as handle:
        rows = list(csv.DictReader(handle))
    records, _ = discover(data_dir)
    counts = {}
    for r in records:
        counts[r.patient] = counts.get(r.patient, 0) + 1
    assert {r["patient"] for r in rows} == set(counts)
    for row in rows:
        assert row["split"] == split_of(row["patient"])
        assert int(row["slices"]) == counts[row["patient"]]
