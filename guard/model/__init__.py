"""Policy → RuleSet: backend-neutral chains, rules, sets and named limits. No syntax here.

One job a module: ``matches`` and ``verdicts`` (what a rule can test and do), ``ruleset`` (rules, sets,
named limits, chains, and the RuleSet that refuses what no kernel could load), ``plans`` (what a build
takes besides the policy, decided for this host), ``build`` (the walk from policy to ruleset, and the
layout both backends render), ``banning`` (its escalation chains and the ban check) and ``synproxy``
(its SYN defence per port). Import from those: this package re-exports nothing, so a reader of a
ruleset (a renderer, a backend) loads neither the build nor the policy schema.
"""
