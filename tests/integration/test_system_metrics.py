"""Every stage run logs MLflow system metrics (CPU, memory; GPU where pynvml sees one) while it works."""

import psutil
from conftest import run_cli

from reverse_align import tracking


def _pretrain_run(client, registered_model: str):
    experiment = client.get_experiment_by_name(tracking.experiment_name())
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.`{tracking.TAG_STAGE}` = 'pretrain' and params.`pretrain.registered_model` = '{registered_model}'",
    )
    assert len(runs) == 1
    return runs[0]


def test_a_stage_run_logs_cpu_and_memory_at_each_sample(client):
    name = "reverse-align-tiny-base-system-metrics"
    # A real stage in its own process, sampled every second (MLflow's variable) instead of every 10 s.
    result = run_cli(
        "pretrain", "--preset", "micro", "--set", f"pretrain.registered_model={name}",
        env={"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    run = _pretrain_run(client, name)
    assert run.info.status == "FINISHED"
    seconds = (run.info.end_time - run.info.start_time) / 1000
    cpu = client.get_metric_history(run.info.run_id, tracking.METRIC_SYSTEM_CPU)
    memory = client.get_metric_history(run.info.run_id, tracking.METRIC_SYSTEM_MEMORY)
    # One sample a second while the run was open (the last interval may end with the run, unlogged).
    assert 1 <= len(cpu) <= seconds + 1 and len(memory) == len(cpu)
    assert [m.step for m in cpu] == list(range(len(cpu)))
    assert all(0 <= m.value <= 100 for m in cpu)
    total_mb = psutil.virtual_memory().total / 1e6
    assert all(0 < m.value < total_mb for m in memory)


def test_mlflow_s_switch_turns_them_off(client):
    name = "reverse-align-tiny-base-no-system-metrics"
    result = run_cli(
        "pretrain", "--preset", "micro", "--set", f"pretrain.registered_model={name}",
        env={"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1", "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    run = _pretrain_run(client, name)
    assert run.info.status == "FINISHED"
    assert not [key for key in run.data.metrics if key.startswith("system/")]
