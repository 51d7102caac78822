"""The actor-learner agent: one `Builder` makes actors, learner, replay, sources and evaluator,
for an in-process run (tests, debugging) and a distributed run on Ray alike."""
