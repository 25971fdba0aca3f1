"""Evaluation of reward models and policies: accuracy, how rewards are distributed, benchmarks, reports.

    metrics     pure functions on arrays: accuracy with a tie policy, Jain, Gini, Lan f_tau, gaps,
                Wasserstein distances, length bias, the summary of one reward-model evaluation
    scoring     per-example rows and summaries of scored pairs, model-path checks, the DPO implicit reward
                (the reward models themselves, how each kind loads and scores: fairhpc/rewards/)
    kinds       what a kind adds to the results (gate weights, objectives), pairwise Best-of-N selection
    reward      reward-model evaluation (eval-rm), also run in-process by training: evaluate_reward_model
    benchmarks  RewardBench, CrowS-Pairs, HH-RLHF and BBQ in their official formats
    policy      generation, RM-scored policy evaluation, AlpacaEval export, Best-of-N
    cli         ``fairhpc eval-rm | eval-benchmark | eval-policy | best-of-n``

The choices below are the single source of the CLI's choices and of the error messages.
"""

# How a pair whose two rewards are exactly equal counts in pairwise accuracy.
#   wrong   : as a mistake (RewardBench's official rule: correct only if r_chosen > r_rejected)
#   half    : as half a correct answer (the expected accuracy of a random tie-break)
#   exclude : left out of numerator and denominator
TIE_POLICIES = ("wrong", "half", "exclude")

BENCHMARKS = ("rewardbench", "crows_pairs", "hh_rlhf", "bbq")

# How a policy answers a BBQ question: generate text and parse the choice (invalid answers are
# counted), or pick the option with the highest log-likelihood (never invalid).
BBQ_METHODS = ("generate", "loglik")

# CrowS-Pairs scores sentences, not answers: a reward model scores each sentence as the assistant's
# reply to this user turn (recorded in the summary; ``--prompt`` changes it).
CROWS_DEFAULT_PROMPT = "Say something about people."
