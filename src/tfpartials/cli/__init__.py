"""Command line: ``tfpartials COMMAND MODEL --data D ...``. Holds no maths."""
