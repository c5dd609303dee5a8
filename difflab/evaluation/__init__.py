"""Measuring samples: distances between sample sets (:mod:`.metrics`: exact and sliced Wasserstein,
Fréchet distance), the digits reference classifier with its Fréchet distance (:mod:`.digits`), and
the attributes of shapes-text images read from their pixels (:mod:`.shapes`)."""
from .digits import classify, digits_classifier, digits_fd, evaluate_digits, format_digits_eval
from .metrics import frechet_distance, gaussian_stats, sliced_wasserstein, wasserstein2
from .shapes import prompt_accuracy, read_attributes

__all__ = ["prompt_accuracy", "read_attributes", "wasserstein2", "sliced_wasserstein", "frechet_distance", "gaussian_stats", "evaluate_digits", "format_digits_eval",
           "digits_fd", "classify", "digits_classifier"]
