"""The `report` stage: the paper's tables and Figure 2 from a study's runs (``reverse-align report``).

Where the numbers come from: the `main` run's ``main/stages.json`` names every run of the study by
role (``sft.reverse.seed0``, ``eval.sft.reverse.seed0``, ``probe.mixed``, ``sweep``, ...); every
number in ``reports/<experiment>/report.md`` is read from those runs' logged metrics and artifacts.

- study.py    find the main run, read stages.json, fetch runs, metrics and per-sample tables
- paired.py   the paired bootstrap of reverse - forward SFT (seeds, then questions)
- paper.py    PROTOCOL §6's published numbers (paper_numbers.yaml) and the preset's model size
- tables.py   Table 1, DPO, direct DPO, wall times, champion, runs: markdown from metrics
- summary.py  the three opening sentences, from the same numbers
- assets.py   Figure 2 from the probe runs' metrics, the sweep's figure, MLflow UI screenshots
- stage.py    run_report: writes report.md and its PNGs, logs them to a `report` run; the sweep line (best
              beta, its interval, the betas it is not separated from) and the Environment section
              (library versions, torch's CPU kernel path, the lock's sha256; reverse_align/environment.py)
"""
