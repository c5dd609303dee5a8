"""Measuring samples: distances between sample sets (:mod:`.metrics`: exact and sliced Wasserstein,
Fréchet distance), the digits reference classifier with its Fréchet distance (:mod:`.digits`), the
attributes of shapes-text images read from their pixels (:mod:`.shapes`), and scores of 1-D signals:
sample forecasts (CRPS, coverage, PIT) and audio spectra (:mod:`.signals`)."""
from .digits import classify, digits_classifier, digits_fd, evaluate_digits, format_digits_eval
from .metrics import frechet_distance, gaussian_stats, sliced_wasserstein, wasserstein2
from .shapes import prompt_accuracy, read_attributes
from .signals import (crps_gaussian, crps_samples, forecast_scores, fundamental_frequency, interval_coverage,
                      pit_histogram, pit_values, spectrogram)

__all__ = ["prompt_accuracy", "read_attributes", "wasserstein2", "sliced_wasserstein", "frechet_distance",
           "gaussian_stats", "evaluate_digits", "format_digits_eval", "digits_fd", "classify", "digits_classifier",
           "crps_samples", "crps_gaussian", "interval_coverage", "pit_values", "pit_histogram", "forecast_scores",
           "fundamental_frequency", "spectrogram"]
