"""Pure decision logic shared by the live services, the backtester and the optimizer.

No I/O, no clock, no randomness: every function here maps plain data to plain data, so the same inputs
always give the same outputs in live trading and in a backtest.
"""

from aura.strategy import _jit

_jit.install()
