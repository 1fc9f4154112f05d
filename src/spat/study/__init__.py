"""``spat study``: a grid of runs (datasets × variants × seeds) from one TOML file, run on a local
pool of workers or through submitit (SLURM), aggregated over seeds with uncertainty.

Modules: :mod:`~spat.study.spec` (the file, validated), :mod:`~spat.study.cell` (one cell:
train, eval, analyse, each skipped when done), :mod:`~spat.study.pool` (local workers ×
threads), :mod:`~spat.study.submitit_jobs` (submitit), :mod:`~spat.study.aggregate` (statistics over
seeds) and :mod:`~spat.study.outputs` (study.md/csv/json and figures).
"""

from spat.study.spec import Cell, StudySpec, load_study, plan_cells

__all__ = ["Cell", "StudySpec", "load_study", "plan_cells"]
