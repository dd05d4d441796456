"""The report's three opening sentences, generated from the same numbers as its tables.

Each sentence says what the runs show and how sure that is: an interval that holds zero, or a
difference smaller than the seeds' spread, is said to be no measured difference.
"""

from __future__ import annotations

import statistics

from reverse_align import tracking
from reverse_align.report.paired import Paired
from reverse_align.report.study import Study
from reverse_align.report.tables import Stat, paired_change

AVG = tracking.METRIC_EVAL_AVERAGE


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _pts(x: float) -> str:
    return f"{100 * x:+.1f} points"


def reverse_vs_forward(study: Study, average: Paired | None) -> str:
    rev, fwd = (
        Stat(tuple(study.seed_values("eval.sft.reverse", AVG).values())),
        Stat(tuple(study.seed_values("eval.sft.forward", AVG).values())),
    )
    if rev.mean is None or fwd.mean is None:
        return "Reverse against forward SFT cannot be compared: an SFT evaluation is missing (see Missing)."
    text = f"Reverse SFT (r1k) averages {_pct(rev.mean)} against {_pct(fwd.mean)} for forward SFT (s1k)"
    if average is None:
        return text + "; no per-question samples to pair, so no interval."
    text += f", a paired difference of {_pts(average.diff)} (95% interval {_pts(average.low)} to {_pts(average.high)}"
    per_base = average.seeds // max(1, average.bases)
    text += (
        f", {average.bases} base model{'s' if average.bases != 1 else ''}, {per_base} seed{'s' if per_base != 1 else ''}"
        f"{' each' if average.bases > 1 else ''} and the questions resampled)"
    )
    if average.low > 0:
        return text + ": reverse data did better, as the paper reports."
    if average.high < 0:
        return text + ": forward data did better, unlike the paper."
    return text + ": the interval holds zero, so these runs show no difference between the two."


def mixing(study: Study) -> str:
    means = {}
    spread = []
    for mix in ("forward", "reverse", "mixed", "mixed_half"):
        stat = Stat(tuple(study.seed_values(f"eval.sft.{mix}", AVG).values()))
        if stat.mean is not None:
            means[mix] = stat.mean
            spread += [stat.sd] if stat.sd is not None else []
    if "mixed" not in means or not ({"forward", "reverse"} & set(means)):
        return "Whether mixing hurt cannot be said: the mixed or both single-direction SFT evaluations are missing."
    best = max((m for m in ("forward", "reverse") if m in means), key=means.get)
    gap = means["mixed"] - means[best]
    text = (
        f"Mixing both directions (D) averages {_pct(means['mixed'])}, {_pts(gap)} against the better single "
        f"direction ({best}: {_pct(means[best])})"
    )
    if "mixed_half" in means:
        text += f", and {_pct(means['mixed_half'])} at one direction's budget (0.5k)"
    sd = max(spread) if spread else None
    if sd is None:
        return text + "; with one seed the spread is unmeasured, so this is no verdict on whether mixing hurt."
    if abs(gap) <= sd:
        return (
            text + f", within the seeds' spread (sd up to {_pts(sd).replace('+', '')}): no measured effect of mixing."
        )
    return text + (": mixing hurt, as the paper reports." if gap < 0 else ": mixing helped, unlike the paper.")


def dpo(study: Study) -> str:
    parts = []
    spread = []
    for on, label in (("forward", "s1k"), ("reverse", "r1k"), ("mixed", "D")):
        after, before = study.seed_values(f"eval.dpo.{on}", AVG), study.seed_values(f"eval.sft.{on}", AVG)
        change = paired_change(after, before)
        if change is not None:
            parts.append(f"{_pts(change)} on {label}")
            seeds = sorted(set(after) & set(before))
            if len(seeds) >= 2:
                spread.append(statistics.stdev(after[s] - before[s] for s in seeds))
    direct = Stat(tuple(study.seed_values("eval.dpo.direct", AVG).values()))
    base = Stat(tuple(study.base_values(AVG).values())).mean
    tail = ""
    if direct.mean is not None and base is not None:
        tail = f"; direct DPO from the base model reaches {_pct(direct.mean)} against the base's {_pct(base)}"
    if not parts:
        return "DPO's effect cannot be said: no DPO model has an evaluation beside its SFT model's" + tail + "."
    text = "DPO changed the SFT average by " + ", ".join(parts) + tail
    if not spread:
        return text + "; one seed each, so no spread to judge these changes against."
    return (
        text
        + f" (sd of the change over seeds up to {100 * max(spread):.1f} points; a smaller change is no measured effect)."
    )


def opening(study: Study, average: Paired | None) -> str:
    return " ".join([reverse_vs_forward(study, average), mixing(study), dpo(study)])
