"""MLflow entry point `main`: the whole study (see reverse_align.pipeline)."""
from reverse_align.cli import entrypoint

if __name__ == "__main__":
    entrypoint("main")
