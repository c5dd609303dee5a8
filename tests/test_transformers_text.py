"""DiT, text conditioning and latent diffusion against exact identities: adaLN-Zero starts every
block as the identity and the output at zero, patchify is a bijection, guidance at w = 1 is the
conditional model, the empty caption is the unconditional branch of guidance, and latent diffusion
through an orthogonal linear autoencoder is pixel diffusion of the transformed mixture."""
import math

import pytest
import torch

import difflab
from difflab.exact import GaussianMixture, random_mixture
from difflab.guidance import cfg
from difflab.nets import DiT, DiTConfig, UNet, UNetConfig
from difflab.nets.dit import patchify, sincos_position_embedding, unpatchify
from difflab.nets.text import BOS, PAD, TextConfig, Tokenizer, empty_caption

pytestmark = pytest.mark.usefixtures("one_thread")
TEXT = TextConfig(vocab=("red", "blue", "circle", "square", "top", "left", "center"), max_words=3, dim=32, depth=1,
                  num_heads=2)


def test_patchify_is_a_bijection():
    x = torch.randn(3, 4, 8, 12)
    tokens = patchify(x, 2)
    assert tokens.shape == (3, 4 * 6, 2 * 2 * 4)
    assert torch.equal(unpatchify(tokens, 2, 4, 8, 12), x)
    # each token is one p x p patch of every channel
    assert torch.equal(tokens[1, 0].reshape(2, 2, 4).permute(2, 0, 1), x[1, :, :2, :2])
    emb = sincos_position_embedding(16, 4)
    assert emb.shape == (16, 16) and len({tuple(r.tolist()) for r in emb}) == 16  # distinct positions


def test_adaln_zero_blocks_start_as_the_identity():
    torch.manual_seed(0)
    net = DiT(DiTConfig(in_channels=3, resolution=8, patch_size=2, hidden=32, depth=3, num_heads=2, num_classes=4,
                        text=TEXT.to_dict()))
    x = torch.randn(5, 3, 8, 8)
    tokens = Tokenizer(TEXT).encode(["red circle top", "blue", "", "square center", "left"])
    assert torch.equal(net(x, torch.randn(5), y=torch.tensor([0, 1, 2, 3, 4]), text=tokens), torch.zeros(5, 3, 8, 8))
    h = torch.randn(5, 16, 32)
    c = torch.randn(5, 32)
    context, pad = net.text(tokens)
    for block in net.blocks:
        assert torch.equal(block(h, c, context, pad), h)
    # after a gradient step the network is no longer trivial
    out = net(x, torch.randn(5), y=torch.zeros(5, dtype=torch.long), text=tokens)
    (out - torch.randn_like(out)).square().sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.out.parameters())


def test_tokenizer():
    tok = Tokenizer(TEXT)
    ids = tok.encode(["red circle top", ""])
    assert ids.tolist() == [[BOS, 2, 4, 6], [BOS, PAD, PAD, PAD]]
    assert tok.decode(ids) == ["red circle top", ""]
    assert torch.equal(empty_caption(ids), tok.encode(["", ""]))
    with pytest.raises(ValueError, match="unknown word 'green'.*vocabulary is: red, blue"):
        tok.encode("green circle")
    with pytest.raises(ValueError, match="at most 3"):
        tok.encode("red circle top left")


class Recorder:
    """A denoiser that remembers its inputs and returns a function of x, sigma and the tokens."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, sigma, text=None, y=None):
        self.calls.append(text.clone())
        return x * 0.5 + text.float().sum(1, keepdim=True)


def test_guidance_with_captions():
    tokens = Tokenizer(TEXT).encode(["red circle top", "blue square", "left"])
    x, sigma = torch.randn(3, 2), torch.ones(3)
    den = Recorder()
    torch.testing.assert_close(cfg(den, 1.0)(x, sigma, text=tokens), den(x, sigma, text=tokens))
    den = Recorder()
    guided = cfg(den, 3.0)(x, sigma, text=tokens)
    (call,) = den.calls  # one batched call: the captions, then the empty captions
    assert torch.equal(call[:3], tokens) and torch.equal(call[3:], empty_caption(tokens))
    cond, uncond = den(x, sigma, text=tokens), den(x, sigma, text=empty_caption(tokens))
    torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond))
    torch.testing.assert_close(cfg(den, 0.0)(x, sigma, text=tokens), uncond)


def test_the_empty_caption_is_the_unconditional_branch_of_a_text_unet():
    torch.manual_seed(1)
    net = UNet(UNetConfig(in_channels=1, resolution=8, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                          attn_resolutions=(4,), num_heads=2, text=TEXT.to_dict()))
    for p in net.parameters():  # leave the zero initialisation, so the text path matters
        torch.nn.init.normal_(p, std=0.05)
    denoiser = difflab.NetworkDenoiser(net, prediction="edm").eval()
    x, sigma = torch.randn(2, 1, 8, 8), torch.full((2,), 1.3)
    tokens = Tokenizer(TEXT).encode(["red circle", "blue square top"])
    with torch.no_grad():
        unconditional = denoiser(x, sigma, text=empty_caption(tokens))
        guided_at_zero = cfg(denoiser, 0.0)(x, sigma, text=tokens)
        conditional = denoiser(x, sigma, text=tokens)
    torch.testing.assert_close(guided_at_zero, unconditional, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(conditional, unconditional)  # the caption reaches the output


def test_latent_diffusion_through_an_orthogonal_autoencoder_is_pixel_diffusion():
    """With z = Q x for an orthogonal Q, the latent data are the mixture with means Q mu (isotropic
    components are unchanged), its exact denoiser is D_z(z, s) = Q D_x(Q^T z, s), and sampling in
    the latent space from Q x_T, then decoding by Q^T, gives pixel sampling from x_T."""
    pixel = random_mixture(k=5, dim=16, seed=3)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    latent = GaussianMixture(pixel.means @ q.T, pixel.stds, weights=pixel.log_weights.exp())
    g = torch.Generator().manual_seed(5)
    x, sigma = 3 * torch.randn(64, 16, generator=g, dtype=torch.float64), torch.full((64,), 0.7, dtype=torch.float64)
    torch.testing.assert_close(latent(x @ q.T, sigma), pixel(x, sigma) @ q.T)
    x_T = 80 * torch.randn(64, 16, generator=g, dtype=torch.float64)
    sigmas = difflab.karras_sigmas(12, 0.002, 80.0).double()
    via_latents = difflab.sample(latent, x_T @ q.T, sigmas, "dpmpp_2m") @ q
    torch.testing.assert_close(via_latents, difflab.sample(pixel, x_T, sigmas, "dpmpp_2m"))
    assert math.isclose(float((q @ q.T - torch.eye(16, dtype=torch.float64)).abs().max()), 0, abs_tol=1e-12)


def test_guidance_of_a_four_channel_dit_moves_every_channel():
    """Classifier-free guidance of a latent DiT extrapolates all four channels, the fourth included
    (guiding only the first three leaves the fourth at the conditional output)."""
    torch.manual_seed(2)
    net = DiT(DiTConfig(in_channels=4, resolution=4, patch_size=2, hidden=32, depth=2, num_heads=2, num_classes=3))
    for p in net.parameters():  # leave adaLN-Zero's zero start, so the class matters
        torch.nn.init.normal_(p, std=0.05)
    denoiser = difflab.NetworkDenoiser(net, prediction="eps").eval()
    x, sigma, y = torch.randn(2, 4, 4, 4), torch.full((2,), 0.7), torch.tensor([0, 2])
    with torch.no_grad():
        cond, uncond = denoiser(x, sigma, y=y), denoiser(x, sigma, y=torch.full_like(y, 3))
        guided = cfg(denoiser, 4.0, num_classes=3)(x, sigma, y=y)
    torch.testing.assert_close(guided, uncond + 4.0 * (cond - uncond), rtol=1e-5, atol=1e-5)
    for c in range(4):
        assert (guided[:, c] - cond[:, c]).abs().max() > 1e-3
