"""The sweep's two figures: objective against beta, and the optimization history."""

from __future__ import annotations

from pathlib import Path

OBJECTIVE_VS_BETA = "sweep_objective_vs_beta.png"
HISTORY = "sweep_history.png"


def draw(study, param: str, objective: str, out_dir: Path) -> list[Path]:
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
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.scatter([t.params[param] for t in pruned], last, marker="x", color="grey", label="pruned (last checkpoint)")
    ax.scatter([best.params[param]], [best.value], s=160, facecolors="none", edgecolors="red", label=f"best {param}={best.params[param]:g}")
    ax.set_xlabel(f"DPO {param}")
    ax.set_ylabel(objective)
    ax.set_title(f"{study.study_name}\n{len(complete)} completed trials", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    first = out_dir / OBJECTIVE_VS_BETA
    fig.savefig(first, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    numbers = [t.number for t in complete]
    values = [t.value for t in complete]
    running_best = [max(values[: i + 1]) for i in range(len(values))]
    ax.plot(numbers, values, "o", label="trial value")
    ax.step(numbers, running_best, where="post", color="red", label="best so far")
    for t in complete:
        ax.annotate(f"{t.params[param]:g}", (t.number, t.value), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("trial number")
    ax.set_ylabel(objective)
    ax.set_title("optimization history (labels: beta)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    second = out_dir / HISTORY
    fig.savefig(second, dpi=120)
    plt.close(fig)
    return [first, second]
