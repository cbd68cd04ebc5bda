"""Array aliases without reference counting, for the backtest kernels' scratch buffers.

Numba increfs and decrefs, atomically, every array variable a called or inlined function binds.  The fast
backtest's passes call their cores (pipeline.plan_rows, signal.choose_into) on most bars with dozens of such
bindings, which cost more than the arithmetic; they hand those cores ``uncounted`` aliases of buffers they own
for the whole run instead, and mark the owners ``alive`` after the last use.
"""

from __future__ import annotations

from numba import types
from numba.extending import intrinsic
from numba.np.arrayobj import populate_array


@intrinsic
def uncounted(typingctx, arr):  # type: ignore[no-untyped-def]
    """The same array without its reference-count handle (meminfo NULL): numba increfs and decrefs every array
    variable a called or inlined function binds, atomically, and the portfolio pass plans on most bars with
    dozens of such bindings (pipeline.plan_rows' arguments and their row views).  Only for scratch buffers
    that the kernel owns for its whole run and never returns: the owner keeps the memory alive."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        src = context.make_array(sig.args[0])(context, builder, value=args[0])
        out = context.make_array(sig.return_type)(context, builder)
        populate_array(out, data=src.data, shape=src.shape, strides=src.strides, itemsize=src.itemsize,
                       meminfo=None)
        return out._getvalue()

    return arr(arr), codegen


@intrinsic
def alive(typingctx, arr):  # type: ignore[no-untyped-def]
    """A use of ``arr`` that emits no code: called after the last use of its ``uncounted`` aliases, it keeps
    numba from releasing the owner (numba releases a variable after its last use) while they are in use."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return context.get_dummy_value()

    return types.none(arr), codegen
