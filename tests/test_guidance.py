"""Guidance: identities on exact Gaussian mixtures (one component per class), call counts, the
guidance interval, dynamic thresholding, errors, and the classifier's train/save/load round trip."""
import json

import numpy as np
import pytest
import torch

import difflab
from difflab.denoisers import CountingDenoiser
from difflab.exact import ring_mixture
from difflab.guidance import (ClassLogProb, cfg, check_classes, classifier_guidance, classifier_inputs,
                              dynamic_threshold, exact_log_prob, guided_denoiser, noisy_classifier_log_prob)
from difflab.nets import ClassifierConfig, NoisyClassifier

K = 4


@pytest.fixture(scope="module")
def gmm():
    return ring_mixture(K, radius=3.0, std=0.5)


def class_model(gmm):
    """The exact class-conditional "network": D(x, sigma, y) = E[x0 | x, y], and the unconditional
    E[x0 | x] for the null label y == K, counted per call."""

    def denoiser(x, sigma, y):
        uncond = gmm.denoiser(x, sigma)
        cond = gmm.denoiser(x, sigma, component=y.clamp(max=K - 1))
        return torch.where((y == K)[:, None], uncond, cond)

    return CountingDenoiser(denoiser)


def noisy_points(gmm, n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    sigma = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(np.log(0.01), np.log(50), generator=gen))
    x = gmm.sample(n, gen) + sigma[:, None] * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    y = torch.randint(0, K, (n,), generator=gen)
    return x, sigma, y


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance


def test_cfg_scale_one_and_zero_are_conditional_and_unconditional(gmm):
    x, sigma, y = noisy_points(gmm)
    model = class_model(gmm)
    cond, uncond = gmm.denoiser(x, sigma, component=y), gmm.denoiser(x, sigma)
    torch.testing.assert_close(cfg(model, 1.0, num_classes=K)(x, sigma, y=y), cond, atol=1e-10, rtol=0)
    torch.testing.assert_close(cfg(model, 0.0, num_classes=K)(x, sigma, y=y), uncond, atol=1e-10, rtol=0)
    for w in (0.5, 2.0, 7.5):
        expected = uncond + w * (cond - uncond)
        torch.testing.assert_close(cfg(model, w, num_classes=K)(x, sigma, y=y), expected, atol=1e-10, rtol=0)


def test_cfg_is_one_batched_call(gmm):
    x, sigma, y = noisy_points(gmm, n=32)
    model = class_model(gmm)
    guided = cfg(model, 3.0, num_classes=K)
    guided(x, sigma, y=y)
    assert (model.calls, model.evals) == (1, 64)
    model = class_model(gmm)
    cfg(model, 1.0, num_classes=K)(x, sigma, y=y)  # w = 1: nothing to guide, no null half
    assert (model.calls, model.evals) == (1, 32)
    model = class_model(gmm)
    difflab.sample(cfg(model, 3.0, num_classes=K), x, difflab.karras_sigmas(10, 0.01, 50), "heun", cond={"y": y})
    assert model.calls == 19 and model.evals == 19 * 64


def test_cfg_interval(gmm):
    x, sigma, y = noisy_points(gmm, n=200)
    lo, hi, w = 0.3, 3.0, 4.0
    model = class_model(gmm)
    out = cfg(model, w, num_classes=K, interval=(lo, hi))(x, sigma, y=y)
    cond, uncond = gmm.denoiser(x, sigma, component=y), gmm.denoiser(x, sigma)
    inside = (sigma > lo) & (sigma <= hi)
    assert 0 < inside.sum() < len(x)
    torch.testing.assert_close(out[~inside], cond[~inside], atol=1e-10, rtol=0)
    torch.testing.assert_close(out[inside], (uncond + w * (cond - uncond))[inside], atol=1e-10, rtol=0)
    assert (model.calls, model.evals) == (1, len(x) + int(inside.sum()))
    # A batch entirely outside the interval costs one un-doubled call.
    model = class_model(gmm)
    out = cfg(model, w, num_classes=K, interval=(lo, hi))(x, torch.full_like(sigma, 10.0), y=y)
    torch.testing.assert_close(out, gmm.denoiser(x, torch.full_like(sigma, 10.0), component=y), atol=1e-10, rtol=0)
    assert (model.calls, model.evals) == (1, len(x))


def test_dynamic_threshold():
    gen = torch.Generator().manual_seed(0)
    scales = torch.tensor([0.2, 0.5, 1, 2, 4, 8], dtype=torch.float64)[:, None, None, None]
    x0 = torch.randn(6, 3, 4, 4, generator=gen, dtype=torch.float64) * scales
    p = 0.9
    out = dynamic_threshold(x0, p)
    for a, b in zip(x0, out):
        s = max(1.0, float(np.percentile(a.abs().numpy(), 100 * p)))
        np.testing.assert_allclose(b.numpy(), np.clip(a.numpy(), -s, s) / s, atol=1e-6)
        assert b.abs().max() <= 1 + 1e-12
    torch.testing.assert_close(out[0], x0[0])  # already inside [-1, 1]: untouched (s = 1)
    assert (out[-1].abs() > 0.999).float().mean() > 0.05  # large values saturate at +-1 after the division


def test_cfg_applies_threshold_to_guided_x0(gmm):
    x, sigma, y = noisy_points(gmm)
    out = cfg(class_model(gmm), 5.0, num_classes=K, threshold=0.8)(x, sigma, y=y)
    cond, uncond = gmm.denoiser(x, sigma, component=y), gmm.denoiser(x, sigma)
    torch.testing.assert_close(out, dynamic_threshold(uncond + 5.0 * (cond - uncond), 0.8))


# ---------------------------------------------------------------------------------------------
# Classifier guidance


def test_classifier_guidance_with_exact_posterior_is_the_conditional_denoiser(gmm):
    """Bayes: grad log p(x|y) = grad log p(x) + grad log p(y|x), so D(x) + sigma^2 grad log p(y|x) = D(x|y)."""
    x, sigma, y = noisy_points(gmm, n=200)
    guided = classifier_guidance(gmm.denoiser, exact_log_prob(gmm), 1.0)
    torch.testing.assert_close(guided(x, sigma, y=y), gmm.denoiser(x, sigma, component=y), atol=1e-8, rtol=0)
    with torch.inference_mode():  # as TrainedModel.sample calls it
        torch.testing.assert_close(guided(x, sigma, y=y), gmm.denoiser(x, sigma, component=y), atol=1e-8, rtol=0)


def test_exact_log_prob_is_the_class_posterior(gmm):
    x, sigma, y = noisy_points(gmm)
    expected = gmm.class_posterior(x, sigma).log().gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(exact_log_prob(gmm)(x, sigma, y), expected)


@pytest.mark.parametrize("method", ["cfg", "classifier"])
def test_guided_sampling_lands_in_the_requested_class(gmm, method):
    n, gen = 1000, torch.Generator().manual_seed(1)
    sigmas = difflab.karras_sigmas(50, 0.002, 80.0)
    for k in (0, 2):
        y = torch.full((n,), k)
        if method == "cfg":
            denoiser = cfg(class_model(gmm), 2.0, num_classes=K)
        else:
            denoiser = classifier_guidance(gmm.denoiser, exact_log_prob(gmm), 1.0)
        x = 80.0 * torch.randn(n, 2, generator=gen, dtype=torch.float64)
        out = difflab.sample(denoiser, x, sigmas, "dpmpp_2m", cond={"y": y})
        nearest = torch.cdist(out, gmm.means).argmin(1)
        assert (nearest == k).double().mean() >= 0.99


def test_noisy_classifier_log_prob_matches_the_network():
    net = NoisyClassifier(ClassifierConfig(in_channels=1, resolution=8, base_channels=16, channel_mult=(1, 2),
                                           num_res_blocks=1, attn_resolutions=(), num_classes=3)).eval()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 1, 8, 8, generator=gen), torch.tensor([0, 1, 2, 0, 1])
    sigma = torch.tensor([0.01, 0.1, 1.0, 10.0, 80.0])
    log_p = noisy_classifier_log_prob(net)(x, sigma, y)
    logits = net(x / (sigma**2 + 0.25).sqrt()[:, None, None, None], sigma.log() / 4)
    torch.testing.assert_close(log_p, logits.log_softmax(1)[torch.arange(5), y])
    x_in, c_noise = classifier_inputs(x, sigma)
    assert x_in.dtype == c_noise.dtype == torch.float32
    # The guided denoiser shifts D by s sigma^2 grad log p (checked against autograd directly).
    base = lambda x, sigma: torch.zeros_like(x)  # noqa: E731
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(noisy_classifier_log_prob(net)(xr, sigma, y).sum(), xr)
    with torch.no_grad():
        out = classifier_guidance(base, noisy_classifier_log_prob(net), 2.5)(x, sigma, y=y)
    torch.testing.assert_close(out, 2.5 * sigma[:, None, None, None] ** 2 * grad)


# ---------------------------------------------------------------------------------------------
# Errors and the entry point


def test_errors_are_clear(gmm):
    x, sigma, _ = noisy_points(gmm, n=4)
    guided = cfg(class_model(gmm), 2.0, num_classes=K)
    for bad in (K, -1, 99):
        with pytest.raises(ValueError, match=f"class id {bad} is out of range: there are {K} classes"):
            guided(x, sigma, y=torch.tensor([0, 1, bad, 2]))
    with pytest.raises(ValueError, match="class labels y are missing"):
        guided(x, sigma)
    with pytest.raises(ValueError, match=f"class id {K} is out of range"):
        classifier_guidance(gmm.denoiser, exact_log_prob(gmm), 1.0)(x, sigma, y=K)
    with pytest.raises(ValueError, match="the classifier has 5 classes but the model has 10"):
        check_classes(10, 5)
    with pytest.raises(ValueError, match="the classifier has 4 classes but the model has 10"):
        guided_denoiser(class_model(gmm), y=1, num_classes=10, classifier=exact_log_prob(gmm))
    with pytest.raises(ValueError, match="needs a class-conditional model"):
        guided_denoiser(gmm.denoiser, y=1, num_classes=None, guidance=2.0)
    with pytest.raises(ValueError, match="interval"):
        cfg(class_model(gmm), 2.0, num_classes=K, interval=(3.0, 1.0))


def test_guided_denoiser_composes_both_methods(gmm):
    x, sigma, y = noisy_points(gmm)
    model = class_model(gmm)
    denoiser, cond = guided_denoiser(model, y=y, num_classes=K, guidance=3.0)
    torch.testing.assert_close(denoiser(x, sigma, **cond), cfg(model, 3.0, num_classes=K)(x, sigma, y=y))
    # An unconditional model guided by the exact posterior is the conditional oracle.
    denoiser, cond = guided_denoiser(gmm.denoiser, y=y, num_classes=None, classifier=exact_log_prob(gmm))
    torch.testing.assert_close(denoiser(x, sigma, **cond), gmm.denoiser(x, sigma, component=y), atol=1e-8, rtol=0)
    # CFG and classifier guidance together: D_w + s sigma^2 grad log p(y|x).
    denoiser, cond = guided_denoiser(model, y=y, num_classes=K, guidance=2.0, classifier=exact_log_prob(gmm),
                                     classifier_scale=0.5)
    shift = classifier_guidance(lambda x, s: torch.zeros_like(x), exact_log_prob(gmm), 0.5)(x, sigma, y=y)
    torch.testing.assert_close(denoiser(x, sigma, **cond), cfg(model, 2.0, num_classes=K)(x, sigma, y=y) + shift)
    assert isinstance(exact_log_prob(gmm), ClassLogProb)


# ---------------------------------------------------------------------------------------------
# Training the guidance classifier


def test_train_classifier_saves_and_loads(tmp_path):
    from difflab.training.classifier import load_classifier, train_classifier

    net = {"base_channels": 16, "channel_mult": [1], "pool": "average"}
    meta = train_classifier("digits", tmp_path / "cls", steps=3, batch_size=16, net=net, progress=False)
    saved = json.loads((tmp_path / "cls" / "classifier.json").read_text())
    assert saved["num_classes"] == meta["num_classes"] == 10 and saved["config"]["steps"] == 3
    assert set(saved["accuracy"]) == {"0.05", "0.2", "0.5", "1.0", "2.0", "5.0"}
    module, log_prob = load_classifier(tmp_path / "cls")
    assert log_prob.num_classes == 10 and not any(p.requires_grad for p in module.parameters())
    x = torch.randn(4, 1, 8, 8)
    lp = log_prob(x, torch.full((4,), 0.5), torch.tensor([0, 3, 7, 9]))
    assert lp.shape == (4,) and torch.all(lp <= 0)
    # Retraining into the same folder replaces it; a foreign non-empty folder is refused.
    train_classifier("digits", tmp_path / "cls", steps=1, batch_size=8, net=net, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a classifier directory"):
        train_classifier("digits", tmp_path / "other", steps=1, batch_size=8, net=net, progress=False)
    with pytest.raises(ValueError, match="not a readable classifier directory"):
        load_classifier(tmp_path / "other")
