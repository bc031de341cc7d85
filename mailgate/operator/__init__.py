"""The mailgate operator: SmtpAccounts and their Secrets, pushed live to every gateway pod.

Layout, from the pure core outwards:

- ``plan``: which configuration each gateway should serve (limits split across
  gateways), a pure function of accounts, credentials and gateways;
- ``credentials`` and ``conditions``: Secret resolution and the status a user
  sees, pure as well;
- ``engine`` and ``syncer``: in-memory state and one push loop per gateway pod;
- ``admin``, ``pods``, ``status``, ``leader``, ``metrics``: the network edges
  (gateway admin API, Pod watch, status patches, Lease, Prometheus);
- ``handlers`` and ``runner``: the kopf layer and the process around it.

Named ``mailgate.operator`` on purpose: a top-level ``operator`` package would
shadow the standard library module.
"""
