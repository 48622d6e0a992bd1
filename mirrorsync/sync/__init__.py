"""One account's sync, read top to bottom: gather both sides, plan, execute.

`plan` and `actions` are pure (no I/O, tested from tables); `engine` learns both
sides and carries a plan out; `oracle` (tests only) checks every fast path against
the full one. `docs/sync-algorithm.md` states the same rules in prose.
"""
