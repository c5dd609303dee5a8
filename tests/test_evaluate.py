"""The digits evaluation: the classifier generalises, and its Fréchet distance orders sample sets as it should."""
import numpy as np
import pytest
import torch

from difflab.evaluation import digits as evaluate
from difflab.training.data import load_dataset
from difflab.evaluation.metrics import frechet_distance, gaussian_stats


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """A cache private to the test session (shared with test_cli.py): the classifier is trained once."""
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.getbasetemp() / "difflab-cache"
        mp.setenv("DIFFLAB_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def test_split():
    return load_dataset("digits", split="test")


def test_classifier_accuracy_on_held_out_digits(test_split):
    accuracy = (evaluate.classify(test_split.x) == test_split.y).double().mean().item()
    assert accuracy > 0.95
    assert evaluate.evaluate_digits(test_split.x)["accuracy_of_classifier"] == pytest.approx(accuracy)


def test_held_out_digits_reach_the_reference_and_noise_does_not(test_split):
    result = evaluate.evaluate_digits(test_split.x)
    assert result["n"] == result["reference_n"] == 300
    assert result["fd"] == pytest.approx(result["reference_fd"])
    assert sum(result["class_histogram"]) == 300
    assert max(result["class_histogram"]) <= 40  # the test split is stratified: 30 per digit
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(300, 1, 8, 8, generator=g) * 2 - 1
    assert evaluate.digits_fd(noise) > 20 * result["reference_fd"]


def test_fd_grows_with_corruption(test_split):
    """Adding more pixel noise to real digits moves them further from the data: FD increases."""
    g = torch.Generator().manual_seed(1)
    n = torch.randn(test_split.x.shape, generator=g)
    fds = [evaluate.digits_fd((test_split.x + s * n).clamp(-1, 1)) for s in (0.0, 0.3, 0.6, 1.2)]
    assert all(a < b for a, b in zip(fds, fds[1:])), fds


def test_reference_matches_the_sample_size(test_split):
    result = evaluate.evaluate_digits(test_split.x[::3])
    assert result["n"] == result["reference_n"] == 100
    assert 0 < result["reference_fd"]


def test_fd_of_the_train_split_itself_is_zero():
    """The train statistics are the reference, so the train split is at distance 0 (up to round-off)."""
    train = load_dataset("digits", split="train")
    assert abs(evaluate.digits_fd(train.x)) < 1e-6


def test_frechet_distance_closed_forms():
    """Zero for identical statistics; |dmu|^2 + sum (sqrt(a) - sqrt(b))^2 for diagonal covariances."""
    rng = np.random.default_rng(0)
    mu, cov = gaussian_stats(rng.standard_normal((500, 6)))
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-8
    a, b = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    m1, m2 = rng.standard_normal(6), rng.standard_normal(6)
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_classifier_is_cached_and_reloaded(cache, test_split, monkeypatch):
    expected = evaluate.digits_features(test_split.x)
    (folder,) = [p for p in cache.iterdir() if p.name.startswith("digits-classifier-")]
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "classifier.json"}
    evaluate._reference.cache_clear()

    def no_training(*args):
        raise AssertionError("the cached classifier should have been loaded")

    monkeypatch.setattr(evaluate, "_train", no_training)
    np.testing.assert_array_equal(evaluate.digits_features(test_split.x), expected)


def test_random_shift_translates_each_image():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20, 1, 8, 8, generator=g) * 2 - 1
    out = evaluate._random_shift(x, 1, g)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    for xi, oi in zip(padded, out):
        crops = [xi[:, dy:dy + 8, dx:dx + 8] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(oi, c) for c in crops)


def test_wrong_shape_is_a_value_error():
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        evaluate.classify(torch.zeros(4, 3, 32, 32))
