"""MLflow entry point `report`: parse, config, run (see reverse_align.cli)."""

from reverse_align.cli import entrypoint

if __name__ == "__main__":
    entrypoint("report")
