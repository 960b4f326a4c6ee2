"""Loading models, data and losses safely."""
