"""Results, provenance, plots and the HTML report (the atomic writers live in :mod:`tfpartials.io.writers`)."""
