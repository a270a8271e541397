"""Recommender models: plain torch modules, no Ray or Spark, so they load and test anywhere."""
