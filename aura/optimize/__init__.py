"""The walk-forward optimizer's pure core: folds, staged grids, successive halving, the objective, the gate.

No I/O beyond reading the grid file it is given, no clock, no bus: the service shell (services/optimizer), the
JetStream work queue, the CLI and the report call these functions.  Modules:

* ``folds``: walk-forward folds (rolling, anchored) as typed index ranges; ``final_train_window``;
* ``grids`` + ``grids.toml``: the four staged grids, validated against aura/strategy/params.py;
* ``objective``: benchmark-aligned window evaluation (the fast backtester) and the one objective;
* ``halving``: successive halving as a scheduler a coordinator drives (next batch / record / ladder / trials);
* ``stats``: Deflated Sharpe Ratio, PBO by CSCV, Hansen's SPA;
* ``gate``: the promotion decision on the validation windows, with which test failed and by how much;
* ``walkforward``: the whole procedure, sequential and in-process (the reference for the coordinator).
"""

import aura.strategy  # noqa: F401  (installs the numba cache locator before any kernel is compiled)
