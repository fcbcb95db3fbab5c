"""YAML → validated, frozen Policy, one job a module: ``rates`` (the rate syntax and its ceilings: a
plain value the rule model computes with too), ``fields`` (the parsers for our own field syntax, and
the base of every section), ``sources``, ``threats`` and ``runtime`` (the sections, their keys and
defaults), ``schema`` (the policy that holds them) and ``load`` (finding the file, and errors as
``FILE:LINE: field.path: message``). Import from those: this package re-exports nothing, so a caller
loads only what it uses.
"""
