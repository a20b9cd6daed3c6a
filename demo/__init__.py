"""The ``make demo`` run and the demo core-banking data set."""
