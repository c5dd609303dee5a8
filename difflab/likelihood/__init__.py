"""Likelihood of diffusion models: the exact log-likelihood by the probability-flow ODE (:mod:`.ode`),
the variational bound of discrete-time models (:mod:`.elbo`) and the continuous-time bound of
Variational Diffusion Models (Kingma et al. 2021, :mod:`.vdm`), learned (Nichol & Dhariwal 2021,
:mod:`.learned`) and analytic (Bao et al. 2022, :mod:`.analytic`) reverse variances. See
docs/likelihood.md."""
from .analytic import analytic_dpm_gamma, analytic_dpm_variance
from .elbo import (ancestral_variance, discretized_gaussian_log_likelihood, elbo_bpd, elbo_terms,
                   fixed_variance, interpolated_log_variance, normal_kl, vlb_term_loss)
from .learned import LearnedVariance, hybrid_vlb_term, learned_log_variance_fn, learns_sigma, timesteps_of_sigma
from .ode import BIN_WIDTH, bits_per_dim, dequantize, ode_nll
from .vdm import (low_discrepancy_times, quantize_8bit, vdm_decoder_nll, vdm_diffusion_loss, vdm_elbo_bpd,
                  vdm_elbo_terms, vdm_gamma, vdm_prior_kl)

__all__ = ["ode_nll", "bits_per_dim", "dequantize", "BIN_WIDTH", "elbo_terms", "elbo_bpd",
           "normal_kl", "discretized_gaussian_log_likelihood", "fixed_variance",
           "interpolated_log_variance", "vlb_term_loss", "ancestral_variance",
           "analytic_dpm_gamma", "analytic_dpm_variance", "LearnedVariance", "learned_log_variance_fn",
           "learns_sigma", "hybrid_vlb_term", "timesteps_of_sigma", "vdm_elbo_terms", "vdm_elbo_bpd",
           "vdm_diffusion_loss", "vdm_prior_kl", "vdm_decoder_nll", "vdm_gamma", "quantize_8bit",
           "low_discrepancy_times"]
