"""Running models fast and lean: completion log-probs (a group's prompt once), the fused LM head + log-softmax,
the training pass, and the hardware heuristics (precision, attention, compile, lean activations). The maths of the
objectives is in :mod:`aha.algos`."""
