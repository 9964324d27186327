"""Distributed load tests on Locust: one Locust worker per machine drives its share of the
identities through an ordinary child process running the loopix client runtime (uvloop and the C
core never run under gevent), and the master merges the workers' interval HdrHistograms and counts
into one LoadMetrics to write the same report as a single-machine run.

`protocol` holds the messages and the share arithmetic, `child` the runtime's entry point,
`bridge` the worker side (child process, Locust events), `merge` the master's exact merge,
`locustfile` the Locust glue and `command` the CLI. See docs/distributed.md.
"""
