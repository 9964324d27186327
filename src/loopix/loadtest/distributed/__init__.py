"""Distributed load tests on Locust: one Locust worker per machine drives its share of the
identities through an ordinary child process running the loopix client runtime (uvloop and the C
core never run under gevent), and the master merges the workers' interval HdrHistograms and counts
into one LoadMetrics to write the same report as a single-machine run.

`protocol` holds the messages and the share arithmetic, `child` the runtime's entry point,
`bridge` the worker's child process and Locust events, `merge` the master's exact merge,
`worker_side` / `master_side` the Locust glue of each role, `locustfile` the file Locust loads,
`command` the CLI. See docs/distributed.md.
"""
