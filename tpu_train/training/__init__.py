"""Training: optimizer, train step, input pipeline, checkpoints, metrics and the loop that ties them."""
