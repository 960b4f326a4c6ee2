"""``python -m tfpartials``: the command line."""

from tfpartials.cli.main import console

if __name__ == "__main__":
    console()
