"""Interest migration engine: transitions, decayed counts, interest drift and Markov scores.

``kernels`` holds the numpy specification; ``transitions``, ``interest``, ``fit``, ``drift`` and ``scoring`` are
the Spark transforms (DataFrame in, DataFrame out, no Python UDFs); ``jobs/migrate.py`` does the I/O.
"""
