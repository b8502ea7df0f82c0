"""Pure domain of wflo-jupyter: money, step specs and results, events, errors.

Imports nothing outside the standard library and itself (a unit test checks this).
"""
