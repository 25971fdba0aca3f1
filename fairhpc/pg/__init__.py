"""Policy-gradient RLHF with reward dropout (Lee & Lim, 2024) on the fairhpc engine (docs/pg.md).

core.py       dropout masks, the offpolicy / reinforce / ppo losses, GAE (plain tensor functions)
sampling.py   batched greedy / stochastic / top-k generation
reward.py     the reward: a reward model of this project or a classifier's target-label probability
synthetic.py  the offline task: a planted attribute and its classifier (`fairhpc pg-classifier`)
report.py     the Pareto front of reward vs likelihood across runs (`fairhpc pg-report`)
The training task itself is fairhpc/tasks/pg.py (`fairhpc train-pg`).
"""
