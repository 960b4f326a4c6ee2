"""Results, provenance, atomic writers, plots and the HTML report."""
