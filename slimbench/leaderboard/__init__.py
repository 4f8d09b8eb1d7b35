"""Tables built from the results store: leaderboards (and, later, Pareto plots and claims)."""
