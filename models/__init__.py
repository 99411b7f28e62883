"""Reference models and their loaders."""

from edgeq.models.digits_cnn import DigitsCNN, digits_data, load_digits_cnn

__all__ = ["DigitsCNN", "digits_data", "load_digits_cnn"]
