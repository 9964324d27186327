"""A local mixnet to run against: directory server, mixnodes, providers and their launcher.

Nothing here is imported by the client runtime; the two meet only in `loopix.topology` and
`loopix.wire`.
"""
