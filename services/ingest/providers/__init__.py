"""Candle providers behind one small interface (providers.base), in their default priority order:

binance_archive (data.binance.vision) -> ccxt_tail (exchange REST via ccxt) -> coingecko (last resort).
Import the modules directly; nothing is imported here so that ``providers.base`` stays dependency-free.
"""
