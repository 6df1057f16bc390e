"""What a run looks like: report.html (html.py, svg.py) from what a run wrote (rundir.py), the run list
(runs.py), and experiment trackers fed from metrics.jsonl (trackers.py)."""
