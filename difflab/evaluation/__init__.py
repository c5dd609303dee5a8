"""Measuring samples: distances between sample sets (:mod:`.metrics`: sliced Wasserstein, Fréchet
distance) and the digits reference classifier with its Fréchet distance (:mod:`.digits`)."""
from .digits import classify, digits_classifier, digits_fd, evaluate_digits, format_digits_eval
from .metrics import frechet_distance, gaussian_stats, sliced_wasserstein, wasserstein2

__all__ = ["wasserstein2", "sliced_wasserstein", "frechet_distance", "gaussian_stats", "evaluate_digits", "format_digits_eval",
           "digits_fd", "classify", "digits_classifier"]
