"""Experiments: the paper's section 5 grids, run over trials, aggregated, plotted, reported."""
