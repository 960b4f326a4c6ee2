"""Linear operators: a small TF-native base, dense matrices, and curvature matrices of a model."""
