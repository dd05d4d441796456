"""Figure 2 (PROTOCOL §4): ALP(y+), ALP(y-) and the margin against the checkpoint, drawn from logged metrics.

Every point is read back from the tracking store (``MlflowClient.get_metric_history``
of ``alp/<phase>/<kind>/<test>``), never passed in: the figure shows what the
runs logged. SFT and DPO checkpoints are two panels side by side sharing the y axis.
"""

from __future__ import annotations

from dataclasses import dataclass

from reverse_align import tracking

KIND_TITLES = {"pos": "ALP(y+)", "neg": "ALP(y-)", "margin": "ALP(y+) - ALP(y-)"}
SHORT = {"forward": "f", "reverse": "r", "mixed": "m"}


@dataclass(frozen=True)
class Curve:
    label: str
    run_id: str
    test: str  # forward, reverse or mixed: T_f, T_r, T_m
    in_distribution: bool = True


def figure2_curves(runs_by_train_on: dict[str, str]) -> list[Curve]:
    """The paper's five curves, from the probe run trained on each of D_f, D_r, D_m (those that exist).

    In distribution (D_f,T_f), (D_r,T_r), (D_m,T_m); out of distribution (D_f,T_r), (D_r,T_f).
    """
    pairs = [
        ("forward", "forward", True), ("reverse", "reverse", True), ("mixed", "mixed", True),
        ("forward", "reverse", False), ("reverse", "forward", False),
    ]  # fmt: skip
    return [
        Curve(f"(D_{SHORT[train]}, T_{SHORT[test]})", runs_by_train_on[train], test, in_distribution)
        for train, test, in_distribution in pairs
        if train in runs_by_train_on
    ]


def draw(client, curves: list[Curve], kind: str, x_label: str = "epoch"):
    """A matplotlib figure of one quantity (``pos``, ``neg`` or ``margin``): a panel per phase with points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histories = {
        (curve, phase): sorted(
            client.get_metric_history(curve.run_id, tracking.metric_alp(phase, kind, curve.test)), key=lambda m: m.step
        )
        for curve in curves
        for phase in tracking.ALP_PHASES
    }
    phases = [p for p in tracking.ALP_PHASES if any(histories[(c, p)] for c in curves)]
    fig, axes = plt.subplots(1, max(1, len(phases)), figsize=(5 * max(1, len(phases)), 4), sharey=True, squeeze=False)
    for ax, phase in zip(axes[0], phases):
        for index, curve in enumerate(curves):
            history = histories[(curve, phase)]
            if not history:
                continue
            ax.plot(
                [m.step for m in history],
                [m.value for m in history],
                marker="o",
                linestyle="-" if curve.in_distribution else "--",
                color=f"C{index}",
                label=curve.label,
            )
        ax.set_title(f"{phase.upper()}: {KIND_TITLES[kind]}")
        start = "the base model" if phase == "sft" else "the model DPO starts from"
        ax.set_xlabel(f"{phase.upper()} {x_label} (0 = {start})")
        ax.grid(alpha=0.3)
        if kind == "margin":
            ax.axhline(0, color="grey", linewidth=0.8)
    axes[0][0].set_ylabel(KIND_TITLES[kind] + " per token")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def log_figures(client, curves: list[Curve], x_label: str = "epoch") -> None:
    """``figures/alp_pos.png``, ``alp_neg.png``, ``alp_margin.png`` into the active run."""
    import matplotlib.pyplot as plt
    import mlflow

    for kind, artifact in tracking.ALP_FIGURES.items():
        fig = draw(client, curves, kind, x_label)
        mlflow.log_figure(fig, artifact)
        plt.close(fig)
