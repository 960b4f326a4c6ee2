"""Pure derivative primitives over the objective of a model, a loss and data."""
