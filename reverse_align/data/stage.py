"""The `data` stage: forward set, held-out test sets (synthetic) and probe set."""

from __future__ import annotations

from reverse_align import tracking
from reverse_align.config import Config
from reverse_align.data import lengths as length_rule
from reverse_align.data import synthetic
from reverse_align.data.lengths import example_tokens
from reverse_align.data.schema import FORWARD, REVERSE, Record

STAGE = "data"


__all__ = ["example_tokens", "select_probe", "log_records", "run_data"]


def select_probe(records: list[Record], tokenizer, size: int) -> list[Record]:
    """The `size` forward items with the fewest tokens (§3.2), ties broken by id."""
    forward = [r for r in records if r.direction == FORWARD]
    ranked = sorted(forward, key=lambda r: (example_tokens(tokenizer, r), r.id))
    return ranked[:size]


def dataset_source(artifact_path: str):
    """Where a logged artifact can be read back, as an mlflow.data source.

    mlflow.data has no resolver for ``mlflow-artifacts:`` URIs (a remote
    `mlflow server` with proxied artifacts), so those become the server's HTTP URL.
    """
    import mlflow

    uri = f"{mlflow.active_run().info.artifact_uri}/{artifact_path}"
    if uri.startswith("mlflow-artifacts:"):
        from mlflow.data.http_dataset_source import HTTPDatasetSource

        path = uri.split(":", 1)[1].lstrip("/")
        return HTTPDatasetSource(f"{tracking.tracking_uri().rstrip('/')}/api/2.0/mlflow-artifacts/artifacts/{path}")
    return uri


def log_records(records: list[Record], artifact_path: str, name: str, context: str) -> None:
    """Records as a JSONL artifact and as an mlflow.data dataset input of the run."""
    import mlflow
    import pandas as pd

    rows = [r.to_dict() for r in records]
    tracking.log_jsonl(rows, artifact_path)
    frame = pd.DataFrame(rows, columns=list(Record.__dataclass_fields__))
    mlflow.log_input(mlflow.data.from_pandas(frame, source=dataset_source(artifact_path), name=name), context=context)


def run_data(cfg: Config) -> str:
    import mlflow

    tracking.setup()
    with tracking.stage_run(STAGE, cfg) as run:
        from reverse_align.models import load_tokenizer

        tokenizer = load_tokenizer(cfg)
        mlflow.set_tag(tracking.TAG_LENGTH_RULE, length_rule.RULE)
        metrics: dict[str, float] = {}
        if cfg.data.source == synthetic.SOURCE:
            world = synthetic.make_world(cfg.synthetic, cfg.data.seed)
            forward = world.records("train", FORWARD)
            if cfg.data.limit:
                forward = forward[: cfg.data.limit]
            log_records(world.records("test", FORWARD), tracking.ARTIFACT_TEST_FORWARD, "test_forward", "evaluation")
            log_records(world.records("test", REVERSE), tracking.ARTIFACT_TEST_REVERSE, "test_reverse", "evaluation")
            log_records(world.transfer_records(), tracking.ARTIFACT_TEST_TRANSFER, "test_transfer", "evaluation")
            metrics["data/transfer_count"] = len(world.transfer)
            metrics["data/test_count"] = len(world.test)
        else:
            from reverse_align.data.s1k import load_s1k

            measure = length_rule.TokenizerLengths(tokenizer)
            forward, stats = load_s1k(cfg.data.source, measure, cfg.model.max_length, cfg.data.limit)
            metrics.update({f"data/{k}": v for k, v in stats.items()})
        probe = select_probe(forward, tokenizer, cfg.data.probe_size)
        log_records(forward, tracking.ARTIFACT_FORWARD, "forward", "training")
        log_records(probe, tracking.ARTIFACT_PROBE, "probe", "probe")
        lengths = sorted(example_tokens(tokenizer, r) for r in forward)
        metrics.update(
            {
                "data/forward_count": len(forward),
                "data/probe_count": len(probe),
                "data/tokens_median": lengths[len(lengths) // 2],
                "data/tokens_max": lengths[-1],
            }
        )
        mlflow.log_metrics(metrics)
        print(f"data run {run.info.run_id}: {len(forward)} forward items, probe {len(probe)}")
        return run.info.run_id
