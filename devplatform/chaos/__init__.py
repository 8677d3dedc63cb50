"""`make chaos`: the whole pipeline under load while its parts die, and a ledger that says what was lost.

A chain of N stores plays the sample store's scenes (chain.py) through every service, with replicas
where they scale, on a three-node Apache Kafka cluster and a Redis with its append-only file; a POS
load (load.py) rings up sales and, at known times, frauds whose alerts must follow, and writes each
to a ledger. A fault schedule (faults.py) kills, stops and starves the parts in turn and then two
at once. At the end the checker (check.py) reads the topics, the receivers' records, Redis and the
evidence store and says, for every fraud in the ledger, whether its alert was raised once, paged
once per recipient and contact, and what its evidence holds; with the lag, the refund-to-page
latency and each process's memory through the run (monitor.py).
"""
