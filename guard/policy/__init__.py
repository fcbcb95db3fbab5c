"""YAML → validated, frozen Policy, one job a module: ``rates`` (the rate syntax and its ceilings: a
plain value the rule model computes with too), ``fields`` (the parsers for our own field syntax),
``schema`` (the sections, their keys and every default) and ``load`` (finding the file, and errors as
``FILE:LINE: field.path: message``). Import from those: this package re-exports nothing, so a caller
loads only what it uses.
"""
