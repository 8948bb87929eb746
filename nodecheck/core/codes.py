"""The words every layer shares: phases, tiers, exit codes, the default budget.

Nothing is imported here, on purpose: the hook forks its run (nodecheck.run.keeper) before
the rest of nodecheck is loaded, so that the run's imports are its own memory and not pages
it shares with the keeper (each page it wrote would be copied on its first write).
"""

from __future__ import annotations

HOOK_PHASES = ("prolog", "epilog", "health")
PHASES = (*HOOK_PHASES, "manual")
# "fast": reads what the hardware reports, fits a prolog. "deep": measures (seconds to
# minutes, docs/deep.md); runs only when asked for (`nodecheck run --tier deep`) or where
# a site configures its phases.
TIERS = ("fast", "deep")

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_INTERNAL = 2  # manual runs only: hooks never exit non-zero for our own bugs by default

# A hook run's budget when the config does not set budget_s.
DEFAULT_BUDGET_S = 20.0
