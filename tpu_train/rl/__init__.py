"""Reinforcement learning from execution feedback: GRPO whose problems are repopulated programs and
whose rewards come from running the model's own programs in the sandbox.

    config (configs/grpo_*.py) -> setup (model, mesh, tokenizer, environment) -> loop -> checkpoints
    environment.py  problems as a pure function of (seed, step), and rewards
    grpo.py         advantages, the clipped token-level loss, the jitted update
    loop.py         rollouts -> rewards -> updates, metrics, evaluation, checkpoints
    report.py       the reward curve and the before/after accuracy lines
"""
