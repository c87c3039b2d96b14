"""Experiments of the papers, as functions (the CLI wraps them)."""

from .simulate import SimulationResult, plot_simulation, simulate_uniform

__all__ = ["SimulationResult", "plot_simulation", "simulate_uniform"]
