"""Small real examples shipped with tfpartials: trained in seconds on bundled data, no download.

``digits_cnn()`` is a convolutional classifier on scikit-learn's 8×8 handwritten digits; ``diabetes_mlp()`` is
a regression MLP on scikit-learn's diabetes table, with its feature names.
"""

from .digits import DigitsExample, digits_cnn
from .tabular import TabularExample, diabetes_mlp

__all__ = ["digits_cnn", "DigitsExample", "diabetes_mlp", "TabularExample"]
