"""balance: WIT-style query matching and at most ``t`` pairs per query, to ``balanced/``."""
from pipeline.balance.stage import BalanceConfig, run_balance

__all__ = ["BalanceConfig", "run_balance"]
