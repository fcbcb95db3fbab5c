"""``nodeguard watch``: notice anything that disturbs our rules or out-prioritises them, repair at once.

``watcher.py`` checks and repairs, ``loop.py`` decides when (events, polls, the periodic
verification, retries), ``updates.py`` installs new sampling odds and ``ports: auto`` sets in place,
``ports.py`` holds the ``ports: auto`` set, ``state.py`` reads the
state the loop publishes for ``status``.
"""
