"""The sweep's two figures: objective against beta (with each trial's 95% interval), and the optimization history."""

from __future__ import annotations

from pathlib import Path

OBJECTIVE_VS_BETA = "sweep_objective_vs_beta.png"
HISTORY = "sweep_history.png"


def draw(
    study, param: str, objective: str, out_dir: Path, close: list[float] | None = None, compared: int = 0
) -> list[Path]:
    """``close``: the betas the best is not separated from, of ``compared`` (sweep_stats); None: not tested."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    best = max(complete, key=lambda t: t.value)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([t.params[param] for t in complete], [t.value for t in complete], label="completed", zorder=3)
    with_ci = [t for t in complete if "ci_low" in t.user_attrs and "ci_high" in t.user_attrs]
    if with_ci:  # Wilson 95% intervals (reverse_align/sweep_stats.py); trials from before them have none
        ax.errorbar(
            [t.params[param] for t in with_ci],
            [t.value for t in with_ci],
            yerr=[
                [max(0.0, t.value - t.user_attrs["ci_low"]) for t in with_ci],
                [max(0.0, t.user_attrs["ci_high"] - t.value) for t in with_ci],
            ],
            fmt="none",
            ecolor="tab:blue",
            alpha=0.6,
            capsize=3,
            label=f"95% interval (n {with_ci[0].user_attrs.get('n', '?')})",
        )
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.scatter([t.params[param] for t in pruned], last, marker="x", color="grey", label="pruned (last checkpoint)")
    ax.scatter(
        [best.params[param]],
        [best.value],
        s=160,
        facecolors="none",
        edgecolors="red",
        label=f"best {param}={best.params[param]:g}",
    )
    if close:
        near = [t for t in complete if t.params[param] in close]
        ax.scatter(
            [t.params[param] for t in near],
            [t.value for t in near],
            s=110,
            facecolors="none",
            edgecolors="orange",
            label="not separated from best",
        )
    n_pruned = sum(t.state == TrialState.PRUNED for t in trials)
    title = f"{objective} against DPO {param}: {len(complete)} completed, {n_pruned} pruned trials"
    if close is not None and compared:
        title += f"\nbest {param} {best.params[param]:g} not separated from {len(close)} of {compared} others (exact McNemar, p<0.05)"
    # The study name is a hash of what the sweep depends on: it tells two sweeps apart, not what this one is.
    fig.text(0.99, 0.01, f"study {study.study_name}", ha="right", va="bottom", fontsize=6, color="grey")
    first = _finish(plt, fig, ax, f"DPO {param}", objective, title, out_dir / OBJECTIVE_VS_BETA)

    fig, ax = plt.subplots(figsize=(6, 4))
    numbers = [t.number for t in complete]
    values = [t.value for t in complete]
    running_best = [max(values[: i + 1]) for i in range(len(values))]
    ax.plot(numbers, values, "o", label="trial value")
    ax.step(numbers, running_best, where="post", color="red", label="best so far")
    for t in complete:
        ax.annotate(f"{t.params[param]:g}", (t.number, t.value), textcoords="offset points", xytext=(4, 4), fontsize=7)
    second = _finish(
        plt, fig, ax, "trial number", objective, f"optimization history (labels: {param})", out_dir / HISTORY
    )
    return [first, second]


def _finish(plt, fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    """Labels, grid and legend of one sweep figure, written to ``path``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
