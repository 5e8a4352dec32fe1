"""pvgate's composition root: the `pvgate` command line, ``pvgate run`` and ``pvgate demo``.

The only package that imports both `gateway` and `billing` (docs/architecture.md §1):

    cli.py       the command line; billing and the demo are imported only by the commands
                 that run them, so a gateway-only install needs neither
    run.py       ``pvgate run``: billing and the gateway supervisor in one process tree
    demo.py      ``pvgate demo``: ``run`` on embedded defaults, with a sample landing page
    embedded.py  Redis servers as child processes (demo, tests, benchmarks)
"""
