"""Backtester: a reference path that calls the live decision functions bar by bar, and a numba fast path
for the optimizer that tests pin to the same trades."""

import aura.strategy  # noqa: F401  (installs the numba cache locator before any kernel here is compiled)
