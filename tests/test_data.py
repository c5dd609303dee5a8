"""Tests for difflab.training.data and difflab.io.images: exact pixel mappings, the distributions' stated
moments and supports, split partitions, and batching as a pure function of (seed, step)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.io import images as imageio
from difflab.training.data import BUILTINS, TOY_SETS, DataError, Dataset, batch_indices, load_dataset


def _sorted_rows(x: torch.Tensor) -> np.ndarray:
    rows = x.flatten(1).numpy()
    return rows[np.lexsort(rows.T[::-1])]


# --- built-in sets ---------------------------------------------------------------------------------


def test_digits_split_is_a_stratified_partition():
    from sklearn.datasets import load_digits

    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    assert (len(train), len(test)) == (1497, 300)
    assert train.shape == (1, 8, 8) and train.kind == "image" and train.num_classes == 10
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert train.x.min() == -1 and train.x.max() == 1
    # Pixels are v / 8 - 1 for v in 0..16; together the splits are exactly the 1,797 images.
    assert torch.equal((train.x + 1) * 8, ((train.x + 1) * 8).round())
    full = torch.from_numpy(load_digits().images).float()[:, None] / 8 - 1
    assert np.array_equal(_sorted_rows(torch.cat([train.x, test.x])), _sorted_rows(full))
    # Stratified: each class has its share of the 300 test images, give or take one.
    share = torch.bincount(torch.cat([train.y, test.y]), minlength=10) * 300 / 1797
    assert (torch.bincount(test.y, minlength=10) - share).abs().max() <= 1


@pytest.mark.parametrize("name", list(TOY_SETS))
def test_toy_sets_deterministic_sized_and_standardised(name):
    a = load_dataset(name, size=123, seed=5)
    assert a.kind == "points" and a.x.shape == (123, 2) and a.x.dtype == torch.float32
    assert torch.equal(a.x, load_dataset(name, size=123, seed=5).x)
    assert not torch.equal(a.x[:50], load_dataset(name, size=123, seed=6).x[:50])
    assert not torch.equal(a.x[:50], load_dataset(name, size=123, seed=5, split="test").x[:50])
    assert len(load_dataset(name)) == 10_000 and len(load_dataset(name, split="test")) == 1_000
    # The scaling uses the exact moments: a large sample has mean ~0 and per-coordinate variance ~1
    # (standard errors are ~0.003 for 200,000 points).
    x = load_dataset(name, size=200_000).x.double()
    assert x.mean(0).abs().max() < 0.02
    assert abs(x.var(0).mean().item() - 1) < 0.02


def test_toy_supports_and_labels():
    board = load_dataset("checkerboard", size=5000).x * 2 / math.sqrt(3)  # back to [-2, 2]^2
    assert board.abs().max() <= 2 + 1e-5
    assert ((board.floor().sum(1) % 2) == 0).all()  # only the squares of one colour
    g = load_dataset("8gaussians", size=5000)
    angle = g.y * math.pi / 4
    centres = math.sqrt(2 * (1 - 0.2**2)) * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    assert g.num_classes == 8 and ((g.x - centres).norm(dim=1) < 6 * 0.2).all()
    rings = load_dataset("rings", size=5000)
    radius = rings.x.norm(dim=1) * math.sqrt(3.75 + 0.1**2)
    assert ((radius - (rings.y + 1)).abs() < 0.6).all()


def test_shapes_deterministic_balanced_two_coloured():
    a = load_dataset("shapes", size=2000, seed=1)
    assert a.x.shape == (2000, 3, 32, 32) and a.num_classes == 4 and len(a.class_names) == 4
    assert torch.equal(a.x, load_dataset("shapes", size=2000, seed=1).x)
    assert torch.equal(a.y, load_dataset("shapes", size=2000, seed=1).y)
    assert not torch.equal(a.x[:10], load_dataset("shapes", size=2000, seed=2).x[:10])
    assert a.x.min() >= -1 and a.x.max() <= 1
    assert torch.bincount(a.y, minlength=4).min() > 2000 / 4 * 0.85
    # Shapes never reach the corners, so a corner is background; the shape's colour is at least
    # 0.5 away in [0, 1] RGB (1.0 in [-1, 1]).
    corner = a.x[:, :, :1, :1]
    assert ((a.x - corner).norm(dim=1).flatten(1).max(1).values > 0.999).all()
    assert load_dataset("shapes", size=10, resolution=64).shape == (3, 64, 64)


def test_resolution_and_channels_conversion():
    assert load_dataset("digits", size=5, resolution=16, channels=3).shape == (3, 16, 16)
    rgb = load_dataset("shapes", size=5)
    gray = load_dataset("shapes", size=5, channels=1)
    luma = 0.299 * rgb.x[:, 0] + 0.587 * rgb.x[:, 1] + 0.114 * rgb.x[:, 2]
    torch.testing.assert_close(gray.x[:, 0], luma)
    with pytest.raises(DataError, match="points"):
        load_dataset("moons", resolution=8)


def test_unknown_name_lists_builtins():
    with pytest.raises(DataError) as info:
        load_dataset("mnistt")
    assert "mnistt" in str(info.value) and all(name in str(info.value) for name in BUILTINS)


# --- user data ---------------------------------------------------------------------------------------


def _png(path, colour, size=(12, 10), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)


def test_image_folder_with_classes(tmp_path):
    _png(tmp_path / "b_dogs" / "x.png", (0, 255, 51))
    _png(tmp_path / "a_cats" / "1.png", (255, 0, 0))
    _png(tmp_path / "a_cats" / "deeper" / "2.jpg", (255, 0, 0))
    (tmp_path / "notes.txt").write_text("not an image, not a candidate")
    ds = load_dataset(tmp_path, resolution=8)
    assert ds.class_names == ("a_cats", "b_dogs") and ds.num_classes == 2
    assert ds.x.shape == (3, 3, 8, 8) and ds.y.tolist() == [0, 0, 1]
    # Solid colours survive resizing exactly (png is lossless): u / 127.5 - 1.
    torch.testing.assert_close(ds.x[2, :, 4, 4], torch.tensor([0, 255, 51]) / 127.5 - 1)
    assert ds.name == tmp_path.name


def test_image_folder_flat_gray_mixed_sizes_and_modes(tmp_path):
    _png(tmp_path / "a.png", 255, size=(16, 20), mode="L")
    _png(tmp_path / "b.png", (0, 0, 0, 0), size=(10, 10), mode="RGBA")  # transparent -> white
    Image.fromarray(np.full((10, 10), 65535, np.uint16)).save(tmp_path / "c.png")  # 16-bit white
    with pytest.warns(UserWarning, match="different sizes"):
        ds = load_dataset(tmp_path)
    assert ds.y is None and ds.num_classes is None
    assert ds.x.shape == (3, 3, 10, 10)  # RGBA is colour, so all become RGB; smallest side 10
    torch.testing.assert_close(ds.x, torch.ones_like(ds.x))
    assert load_dataset(tmp_path, resolution=4, channels=1).x.shape == (3, 1, 4, 4)


def test_image_folder_broken_files_warn_and_are_counted(tmp_path):
    for i in range(3):
        _png(tmp_path / f"ok{i}.png", (10, 20, 30))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"skipped 2 of 5 .*broken\.png.*empty\.jpg"):
        ds = load_dataset(tmp_path)
    assert len(ds) == 3


def test_image_folder_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path)):
        load_dataset(tmp_path)  # empty
    (tmp_path / "bad.png").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"none of the 1 .*bad\.png"):  # the error alone, no warning before it
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "missing")
    with pytest.raises(DataError, match="not a readable image"):
        imageio.load_image(tmp_path / "bad.png")


def test_npz_uint8_nhwc_and_labels(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (6, 5, 7, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=pixels, labels=np.array([0, 1, 2, 0, 1, 2]))
    ds = load_dataset(tmp_path / "d.npz")
    assert ds.x.shape == (6, 3, 5, 7) and ds.num_classes == 3 and ds.name == "d"
    torch.testing.assert_close(ds.x, torch.from_numpy(pixels).permute(0, 3, 1, 2) / 127.5 - 1)
    # to_uint8 is the exact inverse of u / 127.5 - 1.
    assert torch.equal(imageio.to_uint8(ds.x).permute(0, 2, 3, 1), torch.from_numpy(pixels))
    assert len(load_dataset(tmp_path / "d.npz", size=4)) == 4


def test_npy_float_range_and_points(tmp_path):
    np.save(tmp_path / "wide.npy", np.linspace(-3, 2, 2 * 64).reshape(2, 1, 8, 8).astype(np.float32))
    with pytest.raises(DataError, match=r"wide\.npy.*\[-3, 2\]"):
        load_dataset(tmp_path / "wide.npy")
    np.save(tmp_path / "pts.npy", np.arange(10.0).reshape(5, 2) * 10)  # points: any range
    pts = load_dataset(tmp_path / "pts.npy")
    assert pts.kind == "points" and pts.shape == (2,) and pts.x.max() == 90
    np.savez(tmp_path / "nokey.npz", z=np.zeros((2, 2)))
    with pytest.raises(DataError, match="found z"):
        load_dataset(tmp_path / "nokey.npz")
    with pytest.raises(DataError, match="no 'test' split"):
        load_dataset(tmp_path / "pts.npy", split="test")


# --- batching ----------------------------------------------------------------------------------------


def test_batch_indices_pure_epochs_are_permutations():
    n, b = 12, 4
    assert torch.equal(batch_indices(n, b, seed=3, step=7), batch_indices(n, b, seed=3, step=7))
    assert not torch.equal(batch_indices(n, b, seed=3, step=7), batch_indices(n, b, seed=4, step=7))
    stream = torch.cat([batch_indices(n, b, seed=3, step=k) for k in range(9)])
    for epoch in stream.view(3, n):  # every sample exactly once per epoch, a new order each epoch
        assert sorted(epoch.tolist()) == list(range(n))
    assert not torch.equal(stream[:n], stream[n : 2 * n])
    # Batches that straddle epochs, and batches larger than the data set, are cut from the same stream.
    odd = torch.cat([batch_indices(n, 5, seed=3, step=k) for k in range(8)])
    assert torch.equal(odd[: 3 * n], stream[: 3 * n])
    assert torch.equal(batch_indices(n, 30, seed=3, step=0), stream[:30])


def test_batches_resume_bit_exactly():
    ds = load_dataset("moons", size=50)
    run = ds.batches(8, seed=1)
    first = [next(run) for _ in range(10)]
    resumed = ds.batches(8, seed=1, start_step=6)
    for k in range(6, 10):
        x, y = next(resumed)
        assert torch.equal(x, first[k][0]) and torch.equal(y, first[k][1])
    x, y = ds.batch(8, seed=1, step=3)
    idx = batch_indices(50, 8, seed=1, step=3)
    assert torch.equal(x, ds.x[idx]) and torch.equal(y, ds.y[idx])


def test_dataset_validation_and_info():
    ds = Dataset(torch.zeros(4, 3), torch.tensor([0, 2, 1, 2]))
    assert ds.num_classes == 3 and ds.info()["shape"] == [3] and ds.info()["kind"] == "points"
    with pytest.raises(DataError):
        Dataset(torch.zeros(4, 3), torch.tensor([0, 1, 2, 3]), num_classes=2)
    assert Dataset(torch.zeros(4, 3, 2)).kind == "signal"  # (N, C, L)
    with pytest.raises(DataError):
        Dataset(torch.zeros(4, 3, 2, 2, 1))
    with pytest.raises(DataError, match="sample rate"):
        Dataset(torch.zeros(4, 3), sample_rate=8000)


# --- imageio -----------------------------------------------------------------------------------------


def test_save_grid_size_and_nearest_upscaling(tmp_path):
    x = load_dataset("digits", size=10).x
    path = imageio.save_grid(x, tmp_path / "sub" / "grid.png")
    img = Image.open(path)
    # 8 px upscaled x4 to 32; 10 images in ceil(sqrt(10)) = 4 columns, 3 rows; 1 px padding.
    assert img.mode == "L" and img.size == (4 * 33 + 1, 3 * 33 + 1)
    tile = np.asarray(img)[1:33, 1:33]
    expected = imageio.to_uint8(x[0, 0]).numpy().repeat(4, 0).repeat(4, 1)
    assert np.array_equal(tile, expected)
    rgb = imageio.save_grid(load_dataset("shapes", size=3).x, tmp_path / "s.png", nrow=3, pad=0, scale=2)
    assert Image.open(rgb).size == (3 * 64, 64) and Image.open(rgb).mode == "RGB"


def test_save_scatter_writes_png(tmp_path):
    path = imageio.save_scatter(load_dataset("rings", size=300).x, tmp_path / "s.png",
                                reference=load_dataset("rings", size=300, seed=1).x, title="rings")
    assert Image.open(path).format == "PNG"
    with pytest.raises(ValueError):
        imageio.save_scatter(torch.zeros(5, 3), tmp_path / "bad.png")
