"""twofold's method as a pure library: tasks, teacher client, labelling, SFT, reward model, RL, evaluation."""
