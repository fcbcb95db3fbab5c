"""Throwaway network namespaces shared by the demo, the kernel tests and the benches.

``netns``: naming, creating and removing namespaces (stale ones of a killed run too), the
``Netns`` handle, veth pairs and uplinks. ``lock``: the machine-wide flood lock. Nothing here
ever touches the root namespace's ruleset.
"""
