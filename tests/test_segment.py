"""Your own slice: reading PNG/JPEG/TIFF/.npy/NIfTI, prompt checks, and `python -m samhw segment`."""
import nibabel
import numpy as np
import pytest
import tifffile
from PIL import Image

from samhw.cli import main
from samhw.data import DataError
from samhw.imageio import make_prompt, overlay, read_slice, to_rgb8
from samhw.prompts import PromptError


def _picture(h: int = 40, w: int = 70) -> np.ndarray:
    """An asymmetric uint8 picture: a bright block at rows 5-14, columns 30-59."""
    image = np.full((h, w, 3), 20, np.uint8)
    image[5:15, 30:60] = (200, 180, 160)
    return image


@pytest.mark.parametrize("suffix", [".png", ".tif", ".npy"])
def test_lossless_formats_read_back_exactly(tmp_path, suffix):
    image = _picture()
    path = tmp_path / f"slice{suffix}"
    if suffix == ".png":
        Image.fromarray(image).save(path)
    elif suffix == ".tif":
        tifffile.imwrite(path, image)
    else:
        np.save(path, image)
    np.testing.assert_array_equal(read_slice(path), image)


def test_jpeg_grey_and_float_inputs_become_rgb8(tmp_path):
    Image.fromarray(_picture()).save(tmp_path / "s.jpg", quality=95)
    jpeg = read_slice(tmp_path / "s.jpg")
    assert jpeg.shape == (40, 70, 3) and jpeg.dtype == np.uint8
    assert jpeg[10, 45].mean() > 150 and jpeg[30, 10].mean() < 60  # the block stays where it was
    grey = np.zeros((30, 50), np.float32)
    grey[2:6, 40:48] = 3.5
    np.save(tmp_path / "g.npy", grey)
    rgb = read_slice(tmp_path / "g.npy")
    assert rgb.shape == (30, 50, 3) and rgb[3, 44].tolist() == [255, 255, 255] and rgb[20, 4].tolist() == [0, 0, 0]
    assert to_rgb8(np.ones((4, 5, 4), np.uint8) * 7).shape == (4, 5, 3)  # alpha dropped


def test_nifti_slice_k_is_data_k_transposed(tmp_path):
    volume = np.zeros((60, 36, 5), np.int16)  # x (first axis) 60 wide, y (second) 36 tall
    volume[40:50, 3:8, 2] = 900  # on slice 2 only: x 40-49, y 3-7
    nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), tmp_path / "v.nii.gz")
    image = read_slice(tmp_path / "v.nii.gz", 2)
    assert image.shape == (36, 60, 3)
    assert image[5, 45, 0] == 255 and image[45 % 36, 5, 0] == 0
    assert read_slice(tmp_path / "v.nii.gz", 1).max() == 0
    with pytest.raises(DataError, match="pass --slice K with K in 0..4"):
        read_slice(tmp_path / "v.nii.gz")
    with pytest.raises(DataError, match="outside the volume"):
        read_slice(tmp_path / "v.nii.gz", 5)


def test_unreadable_and_unknown_files_are_clear_errors(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="bad.png: cannot read this .png file"):
        read_slice(tmp_path / "bad.png")
    (tmp_path / "x.bmpx").write_bytes(b"")
    with pytest.raises(DataError, match="unknown image type"):
        read_slice(tmp_path / "x.bmpx")
    with pytest.raises(DataError, match="no such file"):
        read_slice(tmp_path / "missing.png")
    np.save(tmp_path / "vol.npy", np.zeros((3, 8, 8, 8)))
    with pytest.raises(DataError, match="expected a 2-D"):
        read_slice(tmp_path / "vol.npy")


def test_prompt_checks_use_xy_and_the_image_size():
    shape = (40, 70)  # H=40 rows, W=70 columns
    prompt = make_prompt(shape, points=[(65, 30)], negatives=[(2, 3)], box=(10, 5, 69, 39))
    assert prompt.points.tolist() == [[65, 30], [2, 3]] and prompt.labels.tolist() == [1, 0]
    with pytest.raises(PromptError, match="--point 30 65 is outside the 70x40 image"):
        make_prompt(shape, points=[(30, 65)])  # (x, y) swapped: y 65 is past the 40 rows
    with pytest.raises(PromptError, match="no prompt"):
        make_prompt(shape)
    with pytest.raises(PromptError, match="--box"):
        make_prompt(shape, box=(30, 5, 10, 20))


def test_overlay_marks_the_mask_and_points():
    image = _picture()
    mask = np.zeros((40, 70), bool)
    mask[5:15, 30:60] = True
    out = overlay(image, mask, make_prompt((40, 70), points=[(50, 30)]))
    assert out[10, 40, 2] > image[10, 40, 2]  # tinted blue on the mask
    assert (out[20, 10] == image[20, 10]).all()  # untouched off the mask
    assert out[30, 50].tolist() == [46, 204, 64]  # the positive point, at row 30, column 50


@pytest.mark.slow
def test_cli_segment_at_any_size_matches_the_slice_prediction(tmp_path, real_slices, lite_model, capsys):
    item = real_slices.slices[2]
    big = np.repeat(np.repeat(item.image, 2, axis=0), 2, axis=1)  # 512 x 512: the model sees the slice again
    Image.fromarray(big).save(tmp_path / "mine.png")
    ys, xs = np.nonzero(item.mask)
    box = [xs.min(), ys.min(), xs.max(), ys.max()]
    expected = lite_model.predict(lite_model.encode(item.image[None]), [make_prompt((256, 256), box=box)],
                                  (256, 256), False)[0][0]
    out = tmp_path / "mask.png"
    assert main(["segment", str(tmp_path / "mine.png"), "--box", *(str(2 * v + d) for v, d in zip(box, (0, 0, 1, 1))),
                 "--device", "cpu", "--out", str(out)]) == 0
    mask = np.asarray(Image.open(out)) > 0
    assert mask.shape == (512, 512)
    doubled = np.repeat(np.repeat(expected, 2, axis=0), 2, axis=1)
    assert (mask & doubled).sum() / (mask | doubled).sum() > 0.8
    assert np.asarray(Image.open(tmp_path / "mask_overlay.png")).shape == (512, 512, 3)
    assert "predicted IoU" in capsys.readouterr().out
    np.save(tmp_path / "wide.npy", item.image[:, :200, 0])  # grey, 256 x 200
    assert main(["segment", str(tmp_path / "wide.npy"), "--point", "150", "100", "--negative", "10", "250",
                 "--device", "cpu", "--out", str(tmp_path / "w.png"), "--overlay", str(tmp_path / "o.png")]) == 0
    assert np.asarray(Image.open(tmp_path / "w.png")).shape == (256, 200)
    assert (tmp_path / "o.png").is_file()


def test_cli_segment_errors_are_one_line(tmp_path, capsys):
    np.save(tmp_path / "s.npy", _picture())
    assert main(["segment", str(tmp_path / "s.npy"), "--point", "80", "10", "--out", str(tmp_path / "m.png")]) == 2
    assert capsys.readouterr().err.strip() == "error: --point 80 10 is outside the 70x40 image (x in 0..69, y in 0..39)"
    assert main(["segment", str(tmp_path / "s.npy"), "--out", str(tmp_path / "m.png")]) == 2
    assert "error: no prompt" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "nope.png"), "--point", "1", "1", "--out", str(tmp_path / "m.png")]) == 2
    assert "nope.png: no such file" in capsys.readouterr().err
