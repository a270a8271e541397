"""Interest migration engine: transitions, decayed counts, interest drift and Markov scores.

``kernels`` holds the arithmetic (the interest recurrence, the terms of ``p(u, i, t+1)``, the reason choice) as
batched numpy, the formula's only home; ``interest`` and ``bulk`` run it over buckets of users in grouped pandas
UDFs, ``spark_udfs.topk`` inside the scorer. ``transitions``, ``fit``, ``drift`` and ``scoring`` are the Spark
transforms around it (counts, the (a, b) fit, drift measures, state loading); ``jobs/migrate.py`` does the I/O.
"""
