"""Load tests: many identities driven by one client runtime, measured end to end.

`metrics` aggregates what a run produces (sends, returning loops, real messages, scheduler
lateness, node counters) into per-second rows and a final summary; `thresholds` turns k6-style
expressions into pass/fail; `report` writes summary.json, history.csv and report.html and renders
the HTML again from those files; `live` shows a run while it happens (terminal, Prometheus).
The measurement layer knows nothing of the runtime: it is fed plain counts and timestamps.
"""
