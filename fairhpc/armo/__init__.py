"""ArmoRM: absolute-rating multi-objective reward model with a mixture-of-experts gate (docs/armo.md).

Three stages on a frozen backbone (Wang, Xiong, Xie, Zhao, Zhang 2024, "Interpretable Preferences via
Multi-Objective Reward Modeling and Mixture-of-Experts"):

  embed    (:mod:`fairhpc.armo.embed`, ``fairhpc armo-embed``)   the backbone's last-token hidden state of
           prompt + response and its hidden state at the end of the prompt, in shards that resume one by one
  regress  (:mod:`fairhpc.armo.regress`, ``fairhpc armo-regress``) ridge regression from those states to K
           absolute ratings, the regularisation chosen per objective on a validation split
  gate     (fairhpc/tasks/armo.py, ``fairhpc train-armo``)    an MLP on the prompt state gives softmax weights
           over the K verbosity-decorrelated objectives; trained on preference pairs with the fairness
           objective (bt, fr, fc)

The final directory loads as one reward model: :func:`fairhpc.rewards.armo.load_armo` (the gate and
the assembled model live in fairhpc/rewards/armo.py).
"""
