"""RLCHF: many persona-prompted judges rank K responses per prompt, a social welfare function aggregates
their rankings, and SFT / DPO learn from the aggregate (docs/rlchf.md).

Modules: personas (persona sets, stratified sampling, generation), judges (candidates; the synthetic and
the transformers persona judges), parse (reading a ranking out of a judge's text), swf (the social welfare
functions), aggregate (rankings files -> aggregated rankings, preference pairs, SFT targets), evaluate
(per-group agreement of trained models, the RLHF vs RLCHF comparison), cli (the commands).
"""
