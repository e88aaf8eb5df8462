"""Scaling laws: sweeps of ordinary training runs, fits of L(N, D), and a compute planner.

- ``spec``: the sweep config (a training config plus a ``sweep:`` section) and its trial plan:
  a model-size ladder times token budgets, IsoFLOP budgets, or WSD cooldown branches.
- ``trial``: one trial = one ``pretrain train`` process in its own run dir, an MLflow child run
  of the sweep's parent; finished trials are skipped, killed ones resume from their checkpoint.
- ``dispatch``: where trials run -- one after another here, as Ray tasks, or as a SLURM array.
- ``sweep``: the driver (parent run, progress lines, dispatch).
- ``law`` / ``fit``: L(N, D) = E + A / N^alpha + B / D^beta (Approach 3) and IsoFLOP parabolas
  (Approach 2) as in Hoffmann et al. 2022, fitted the way Besiroglu et al. 2024 replicated it.
- ``points``: fit inputs from a CSV or from MLflow runs; ``plots``; ``plan``: the compute-optimal
  N and D for a budget, and a config for that size.

numpy/scipy only in ``law``/``fit``/``plan``; torch, DeepSpeed and MLflow are imported where needed.
"""
